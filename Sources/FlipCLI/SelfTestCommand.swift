import ArgumentParser
import FlipBNN
import FlipComm
import FlipTensor
import FlipTraining
import Foundation
import Logging

struct SelfTestCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "selftest",
    abstract: "Check every fast kernel a model uses against plain reference loops on this CPU.",
    discussion: """
      Runs each kernel the model's quantized layers can use on this machine (the fp32, int8 and XNOR \
      forward products, the backward passes, the fused kernel pass) on a few samples of the \
      layers' own shapes, compares each with a plain double-precision loop, and prints a table: \
      kernel, layer, implementation (oneDNN's name for the one it picked on this CPU), max error \
      relative to the sum of the terms' magnitudes, tolerance (0: must be exact), result. Exits \
      0 only when every kernel passes. Without --model or --config it checks every preset.

      oneDNN picks its kernels per CPU (AVX2, AVX-512, VNNI, AMX) and ONEDNN_MAX_CPU_ISA caps \
      the choice (e.g. ONEDNN_MAX_CPU_ISA=AVX2 behaves like an older CPU), so run it on each \
      node type of a cluster before a long job: `mpirun --hostfile H --map-by node -np NODES \
      flip selftest --config run.yaml`. `flip train` runs the same check for its model at \
      start-up on every rank (--skip-selftest to opt out).
      """)

  @OptionGroup var modelOptions: ModelOptions
  @Option(name: .long, help: "Samples per check (default 3).")
  var batch = 3
  @Option(
    name: .long,
    help:
      "The input shape as H,W,C or N (default: the config's, else 224,224,3 for Larq Zoo's networks and Fashion-MNIST's 28,28,1 for the others).",
    transform: parseShape)
  var inputShape: [Int]?
  @Flag(name: .long, help: "Print the result as JSON (one object per model).")
  var json = false
  @Flag(name: .long, help: "Print debug logs.")
  var verbose = false

  func validate() throws {
    if batch <= 0 { throw ValidationError("--batch must be positive, got \(batch)") }
  }

  func run() throws {
    var allPassed = true
    try Runtime.run(verbose: verbose) { communicator, _ in
      let configs =
        modelOptions.model == nil && modelOptions.config == nil
        ? ModelPreset.allCases.map { RunSettings(preset: $0) } : [try modelOptions.resolve()]
      let host = ProcessInfo.processInfo.hostName
      for config in configs {
        let preset = ModelPreset(rawValue: config.model)
        let shape = inputShape ?? config.inputShape ?? preset?.defaultInputShape ?? [28, 28, 1]
        let layers = config.layers(forInputShape: shape, classes: preset?.defaultClasses ?? 10)
        let start = DispatchTime.now().uptimeNanoseconds
        let checks = try KernelSelfTest.run(specs: layers, inputShape: shape, batch: batch)
        let ms = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6
        let passed = checks.allSatisfy(\.passed)
        allPassed = allPassed && passed
        if json {
          let rows = checks.map {
            SelfTestReport.Check(
              kernel: $0.kernel, layer: $0.layer, implementation: $0.implementation,
              max_error: $0.maxError.isFinite ? Double($0.maxError) : -1, tolerance: Double($0.tolerance),
              passed: $0.passed)
          }
          let report = SelfTestReport(
            model: config.model, host: host, rank: communicator.rank, cpu: CPUInfo.modelName,
            isa: OneDNN.effectiveISA, onednn: OneDNN.version, passed: passed, milliseconds: ms, checks: rows)
          print(try jsonLine(report))
        } else {
          print(
            "\(config.model) on \(host)\(communicator.size > 1 ? " (rank \(communicator.rank))" : ""): \(CPUInfo.modelName), oneDNN \(OneDNN.version) ISA \(OneDNN.effectiveISA)\(CPUInfo.isaCap.map { " (ONEDNN_MAX_CPU_ISA=\($0))" } ?? "")"
          )
          print(KernelCheckTable.render(checks))
          print(
            "\(checks.filter(\.passed).count) of \(checks.count) kernels pass (\(String(format: "%.0f", ms)) ms)\n")
        }
      }
      if !allPassed {
        throw ValidationError("some kernels disagree with their references on this CPU (see the table)")
      }
    }
  }
}

/// The table `flip selftest` prints.
enum KernelCheckTable {
  static func render(_ checks: [KernelCheck]) -> String {
    let header = ["kernel", "layer", "implementation", "max error", "tolerance", "result"]
    let rows = checks.map {
      [
        $0.kernel, $0.layer, $0.implementation, $0.maxError == 0 ? "0" : String(format: "%.2e", $0.maxError),
        $0.tolerance == 0 ? "exact" : String(format: "%.0e", $0.tolerance), $0.passed ? "pass" : "FAIL",
      ]
    }
    let widths = header.indices.map { c in ([header] + rows).map { $0[c].count }.max()! }
    func line(_ cells: [String]) -> String {
      zip(cells, widths).map { $0.padding(toLength: $1, withPad: " ", startingAt: 0) }.joined(separator: "  ")
    }
    return ([line(header)] + rows.map(line)).joined(separator: "\n")
  }
}

/// What the start-up log and `flip selftest` say about the CPU.
enum CPUInfo {
  /// `model name` of /proc/cpuinfo, e.g. `AMD EPYC 7B13` (or `unknown CPU`).
  static let modelName: String = {
    guard let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
      let line = text.split(separator: "\n").first(where: { $0.hasPrefix("model name") }),
      let colon = line.firstIndex(of: ":")
    else { return "unknown CPU" }
    return line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
  }()

  /// The cap on oneDNN's ISA set in the environment, if any.
  static var isaCap: String? { ProcessInfo.processInfo.environment["ONEDNN_MAX_CPU_ISA"] }
}

/// Parses `H,W,C` or `N` into a shape.
func parseShape(_ text: String) throws -> [Int] {
  let parts = text.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) }
  guard !parts.isEmpty, parts.allSatisfy({ ($0 ?? 0) > 0 }) else {
    throw ValidationError("a shape is positive integers separated by commas (e.g. 28,28,1), got '\(text)'")
  }
  return parts.map { $0! }
}

extension BinaryForwardPolicy: ExpressibleByArgument {}
extension BackwardPrecision: ExpressibleByArgument {}
extension WirePolicy: ExpressibleByArgument {}

/// `flip selftest --json`: one line per model.
struct SelfTestReport: Encodable {
  struct Check: Encodable {
    var kernel: String
    var layer: String
    var implementation: String
    var max_error: Double
    var tolerance: Double
    var passed: Bool
  }
  var model: String
  var host: String
  var rank: Int
  var cpu: String
  var isa: String
  var onednn: String
  var passed: Bool
  var milliseconds: Double
  var checks: [Check]
}
