import FlipBNN
import FlipComm
import Foundation
import Logging
import Testing

@testable import FlipTraining

/// The release build of `flip` (`scripts/test.sh` builds it): Larq Zoo's networks at 64×64 take
/// minutes per run in a debug build.
let releaseFlipExecutable = "\(ConfigTests.root)/.build/release/flip"

/// Larq Zoo's networks train (part of the serialized MPI suite).
extension MPITests {
  /// Each of Larq Zoo's networks, with its own recipe scaled to the small batch (`--lr-scaling
  /// linear`: × 8/256, no warm-up), on a small image folder at 64×64 (3 classes, batches of 8,
  /// 2 epochs): the second epoch's training loss is below the first's and its training
  /// accuracy above chance. One process of 2 micro-steps (`--accumulate 2`) and `mpirun -np 2`
  /// train the same micro-batches of 4 (BatchNorm normalizes each alike) and add their
  /// gradients in the same order, so their loss curves are equal (to the double sums of the
  /// metrics) and so are their final weights, bit for bit. (With `--sync-bn` and one process of
  /// 8, the sums over the batch would be ordered differently: the curves then agree for two
  /// steps and drift apart after, 7 % at quicknet-large's third step, because Adam's first
  /// updates are about ±lr for any gradient above ε and a few latent signs flip.)
  /// For birealnet18, quicknet and binary-densenet28, a 2-rank run's own settings (its
  /// `config.yaml`; one epoch at 32×32) on 2 ranks as threads of this process (`ThreadGroup`)
  /// end with the same weights, bit for bit, and the same step losses.
  @Test(
    .enabled(if: FileManager.default.isExecutableFile(atPath: releaseFlipExecutable), "needs swift build -c release"))
  func larqZooNetworksTrainOnOneAndTwoRanks() throws {
    let dir = temporaryDirectory("flip-zoo-train")
    try writeImageFolder(dir, classes: 3, perClass: 8, valPerClass: 2, width: 72, height: 68)
    let env = ["FLIP_CACHE_DIR": dir + "/cache"]
    defer { try? FileManager.default.removeItem(atPath: dir) }
    for preset in ModelPreset.allCases where preset.isZoo {
      // Each network's runs (two checkpoints and the model each: 0.6 GB for quicknet-large's
      // pair) go once it is checked, so the test never holds more than one network's.
      defer {
        for run in ["1", "2", "short", "threads"] {
          try? FileManager.default.removeItem(atPath: dir + "/\(preset.rawValue)-\(run)")
        }
      }
      let args = { (out: String, size: Int, epochs: Int) in
        [
          "train", "--model", preset.rawValue, "--data", dir, "--image-size", "\(size)", "--epochs", "\(epochs)",
          "--batch-size", "8", "--warmup-epochs", "0", "--lr-scaling", "linear", "--threads", "1",
          "--log-every", "1", "--out", dir + "/\(preset.rawValue)-\(out)", "--quiet",
        ]
      }
      let onTwoRanks = { (arguments: [String]) in
        let two = try runProcess(
          Self.mpirun,
          ["-np", "2", "--oversubscribe", "--allow-run-as-root", "--mca", "oob_tcp_if_include", "lo"]
            + env.flatMap { ["-x", "\($0)=\($1)"] } + [releaseFlipExecutable] + arguments)
        try #require(two.status == 0, "\(preset): \(two.stderr)")
      }
      let one = try runProcess(releaseFlipExecutable, args("1", 64, 2) + ["--accumulate", "2"], environment: env)
      try #require(one.status == 0, "\(preset): \(one.stderr)")
      try onTwoRanks(args("2", 64, 2))
      let rows = { (run: String, kind: String) in
        try readMetrics(dir + "/\(preset.rawValue)-\(run)/metrics.jsonl").filter { $0["kind"] as? String == kind }
      }
      let steps = try rows("1", "step").map { $0["loss"] as? Double ?? .nan }
      let stepsOnTwo = try rows("2", "step").map { $0["loss"] as? Double ?? .nan }
      let accuracy = try rows("1", "epoch").map { $0["accuracy"] as? Double ?? 0 }
      try #require(steps.count == 6 && stepsOnTwo.count == 6 && accuracy.count == 2, "\(preset)")
      // The second epoch's mean step loss below the first's (quicknet-large, the deepest,
      // falls the least: 1.55 to 1.33 in one run).
      #expect(steps[3...].reduce(0, +) < steps[..<3].reduce(0, +), "\(preset): losses \(steps)")
      #expect(accuracy[1] > 1.0 / 3, "\(preset): accuracy \(accuracy)")
      for (a, b) in zip(steps, stepsOnTwo) {
        #expect(abs(a - b) <= 1e-9 * a, "\(preset): \(steps) on 1 rank of 2 micro-steps, \(stepsOnTwo) on 2 ranks")
      }
      let weights = { (run: String) in
        try ModelFile.read(path: dir + "/\(preset.rawValue)-\(run)/model.safetensors").tensors.mapValues {
          $0.values.map(\.bitPattern)
        }
      }
      let (onOne, onTwo) = (try weights("1"), try weights("2"))
      #expect(!onOne.isEmpty && onOne.keys == onTwo.keys, "\(preset)")
      for (name, values) in onOne where !name.contains("moving_") {
        #expect(values == onTwo[name], "\(preset): \(name) differs between 1 rank of 2 micro-steps and 2 ranks")
      }
      // A shorter run (one epoch at 32×32) on 2 MPI ranks, then with its settings on 2 in-process
      // ranks. Those run this test's debug build, about a minute per network, so only for three
      // networks that between them hold every kind of layer of the six.
      guard [.birealnet18, .quicknet, .binaryDenseNet28].contains(preset) else { continue }
      try onTwoRanks(args("short", 32, 1))
      let settings = try RunSettings.parse(
        yaml: String(contentsOfFile: dir + "/\(preset.rawValue)-short/config.yaml", encoding: .utf8), file: "config.yaml")
      let threadsDirectory = dir + "/\(preset.rawValue)-threads"
      let outcomes = ThreadGroup(size: 2).run { communicator -> RunOutcome in
        var environment = RunEnvironment(
          communicator: communicator, logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() },
          progress: ProgressReporter(enabled: false))
        environment.skipSelftest = true
        return try TrainingRun.start(settings, in: threadsDirectory, overwrite: true, environment: environment).train()
      }
      for outcome in outcomes { _ = try outcome.get() }
      let (mpi, threads) = (try weights("short"), try weights("threads"))
      #expect(!mpi.isEmpty && mpi == threads, "\(preset): 2 MPI ranks and 2 in-process ranks trained other weights")
      let stepsOnThreads = try readMetrics(threadsDirectory + "/metrics.jsonl").filter { $0["kind"] as? String == "step" }
        .map { $0["loss"] as? Double ?? .nan }
      #expect(stepsOnThreads == (try rows("short", "step").map { $0["loss"] as? Double ?? .nan }), "\(preset)")
    }
  }
}
