import Foundation
import Testing

/// `flip plot`: curves of runs as a PNG (matplotlib through scripts/plot-runs.py).
@Suite("flip plot")
struct PlotCommandTests {
  /// A Python with matplotlib: FLIP_PLOT_PYTHON, or the repository's .build/plot-venv.
  static let python: String? = {
    let candidates = [
      ProcessInfo.processInfo.environment["FLIP_PLOT_PYTHON"],
      EmulatedCluster.repository + "/.build/plot-venv/bin/python",
    ]
    return candidates.compactMap { $0 }.first { p in
      (try? runProcess(p, ["-c", "import matplotlib"]))?.status == 0
    }
  }()

  static let skip: Comment = "no Python with matplotlib (scripts/plot-venv.sh makes .build/plot-venv from PyPI)"

  @Test(.enabled(if: python != nil, skip))
  func drawsThePNGOfTwoRuns() throws {
    let dir = temporaryDirectory("flip-plot")
    writeToyDataset(to: dir, train: 64, test: 16)
    try CLITests.tinyModel.write(toFile: dir + "/tiny.yaml", atomically: true, encoding: .utf8)
    for seed in ["0", "1"] {
      let r = try runFlip([
        "train", "--config", dir + "/tiny.yaml", "--data", dir, "--epochs", "2", "--batch-size", "16", "--threads", "1",
        "--seed", seed, "--out", dir + "/run-" + seed, "--quiet",
      ])
      #expect(r.status == 0, "\(r.stderr)")
    }
    let r = try runFlip(
      ["plot", dir + "/run-0", dir + "/run-1", "--out", dir + "/curves.png"], environment: ["FLIP_PLOT_PYTHON": Self.python!])
    #expect(r.status == 0, "\(r.stderr)")
    let png = try #require(FileManager.default.contents(atPath: dir + "/curves.png"))
    #expect(png.prefix(8) == Data([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]), "a PNG signature")
    #expect(png.count > 20_000)
  }

  @Test func badRunsAreErrors() throws {
    let missing = try runFlip(["plot", "/nonexistent/run", "--out", "/tmp/x.png"])
    #expect(missing.status != 0)
    #expect(missing.stderr.contains("/nonexistent/run/metrics.jsonl: no such file"), "\(missing.stderr)")
    let dir = temporaryDirectory("flip-plot")
    try "not json\n".write(toFile: dir + "/metrics.jsonl", atomically: true, encoding: .utf8)
    if let python = Self.python {
      let broken = try runFlip(["plot", dir, "--out", dir + "/x.png"], environment: ["FLIP_PLOT_PYTHON": python])
      #expect(broken.status != 0)
      #expect(broken.stderr.contains("metrics.jsonl:1: not JSON"), "\(broken.stderr)")
      // A string where a number belongs is refused, not drawn.
      try #"{"kind": "epoch", "epoch": 1, "loss": "0.5", "accuracy": 0.8, "test_loss": 0.6, "test_accuracy": 0.7}"#
        .write(toFile: dir + "/metrics.jsonl", atomically: true, encoding: .utf8)
      let strings = try runFlip(["plot", dir, "--out", dir + "/x.png"], environment: ["FLIP_PLOT_PYTHON": python])
      #expect(strings.status != 0)
      #expect(strings.stderr.contains("metrics.jsonl:1: loss must be a number, found '0.5'"), "\(strings.stderr)")
      #expect(!FileManager.default.fileExists(atPath: dir + "/x.png"))
    }
  }
}
