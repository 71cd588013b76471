import ArgumentParser
import Foundation

/// `flip plot`: training curves of runs as a PNG, drawn by matplotlib through
/// `scripts/plot-runs.py`.
struct PlotCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "plot",
    abstract: "Draw the training curves of one or more runs (loss, accuracy, flip_ratio per layer) as a PNG.",
    discussion: """
      Reads each run directory's metrics.jsonl and draws training and test loss and accuracy \
      against the epoch (runs overlaid, labelled by directory) and each run's flip_ratio per \
      quantized layer. Drawn by matplotlib through scripts/plot-runs.py: the Python is \
      FLIP_PLOT_PYTHON, else the repository's .build/plot-venv (scripts/plot-venv.sh makes it \
      from PyPI), else python3.

        flip plot runs/mlp runs/cnn --out curves.png
      """)

  @Argument(help: "Run directories (each with a metrics.jsonl).")
  var runs: [String]
  @Option(name: .long, help: "The PNG to write (default curves.png).")
  var out = "curves.png"

  func validate() throws {
    if runs.isEmpty { throw ValidationError("name at least one run directory") }
    for run in runs where !FileManager.default.fileExists(atPath: run + "/metrics.jsonl") {
      throw ValidationError("\(run)/metrics.jsonl: no such file (is \(run) a flip train run directory?)")
    }
  }

  func run() throws {
    let repository = Self.repository()
    let script = repository + "/scripts/plot-runs.py"
    guard FileManager.default.fileExists(atPath: script) else {
      throw ValidationError("scripts/plot-runs.py not found beside this flip binary (looked in \(repository))")
    }
    let environment = ProcessInfo.processInfo.environment
    let venv = repository + "/.build/plot-venv/bin/python"
    let python =
      environment["FLIP_PLOT_PYTHON"] ?? (FileManager.default.isExecutableFile(atPath: venv) ? venv : "/usr/bin/env")
    let arguments = (python == "/usr/bin/env" ? ["python3"] : []) + [script, out] + runs
    let process = Process()
    process.executableURL = URL(fileURLWithPath: python)
    process.arguments = arguments
    do { try process.run() } catch {
      throw ValidationError("cannot run \(python): \(error.localizedDescription); set FLIP_PLOT_PYTHON")
    }
    process.waitUntilExit()
    guard process.terminationStatus == 0 else {
      throw ValidationError(
        "plotting failed (\(python) exited \(process.terminationStatus)); if matplotlib is missing, run scripts/plot-venv.sh")
    }
  }

  /// The repository the binary was built in: `.build/<configuration>/flip` → two levels up.
  static func repository() -> String {
    let binary = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
    var dir = binary.deletingLastPathComponent()
    for _ in 0..<4 {
      if FileManager.default.fileExists(atPath: dir.path + "/scripts/plot-runs.py") { return dir.path }
      dir = dir.deletingLastPathComponent()
    }
    return FileManager.default.currentDirectoryPath
  }
}
