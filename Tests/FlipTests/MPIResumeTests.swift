import Foundation
import Testing

@testable import FlipTraining

/// Checkpoints, resuming and stop signals under `mpirun` (part of the serialized MPI suite).
extension MPITests {
  func resumeArguments(_ dir: String, out: String, wire: String = "auto", extra: [String] = []) -> [String] {
    [
      "train", "--config", dir + "/m.yaml", "--data", dir, "--epochs", "3", "--batch-size", "32", "--threads", "1",
      "--checkpoint-every", "3", "--out", out, "--quiet", "--wire", wire,
    ] + extra
  }

  /// Micro-steps and sync BatchNorm are the run's settings: a resumed run keeps both (they are
  /// in config.yaml and in the checkpoint's settings entry) and ends with the same bits.
  @Test func accumulateAndSyncBatchNormSurviveAResume() throws {
    let dir = try ResumeTests.setUp()
    try killAndResume(dir, wire: "fp32", extra: ["--accumulate", "2", "--sync-bn"])
    let config = try String(contentsOfFile: dir + "/run/config.yaml", encoding: .utf8)
    #expect(config.contains("accumulate: 2\n") && config.contains("sync_bn: true\n"), "\(config)")
    let (_, metadata) = try ModelFile.read(path: dir + "/run/ckpt-000024.safetensors")
    let settings = try SettingsEntry.read(metadata, file: "ckpt-000024")
    #expect(settings.accumulate == 2 && settings.syncBN)
  }

  /// Also on the compact wire, where each rank holds the latent weights of its own slices
  /// only: checkpoints gather them, and a resumed run continues bit for bit.
  @Test(arguments: ["fp32", "compact"])
  func twoRanksKilledAndResumedAreBitIdentical(wire: String) throws {
    let dir = try ResumeTests.setUp()
    try killAndResume(dir, wire: wire)
    if wire == "compact" {
      let rows = try readMetrics(dir + "/whole/metrics.jsonl").filter { $0["kind"] as? String == "epoch" }
      #expect((rows.last?["test_accuracy"] as? Double ?? 0) >= 0.9, "\(rows.last ?? [:])")
    }
  }

  /// `magnitude_aware_sign` kernels (Bi-Real Net's) on the compact wire: the per-channel
  /// means every rank takes from the gathered sums are those a resumed run computes from the
  /// checkpoint's latent weights, so it continues bit for bit.
  @Test func magnitudeAwareKernelsOnTheCompactWireResumeBitIdentical() throws {
    let dir = try ResumeTests.setUp(
      model: """
        model: tiny-magnitude-aware
        layers:
          - {type: Flatten}
          - {type: QuantDense, units: 24, kernel_quantizer: magnitude_aware_sign, kernel_constraint: weight_clip, use_bias: false}
          - {type: BatchNormalization, momentum: 0.9}
          - {type: QuantDense, units: 2, input_quantizer: ste_sign, kernel_quantizer: magnitude_aware_sign, kernel_constraint: weight_clip, use_bias: false}
          - {type: BatchNormalization, momentum: 0.9}
          - {type: Activation, activation: softmax}
        optimizer: {type: adam, learning_rate: 0.01}
        """)
    try killAndResume(dir, wire: "compact")
  }

  /// Trains the config in `dir` on 2 ranks once whole and once with rank 1 killed at step 11,
  /// then resumed from the step-9 checkpoint; expects the same bits at the end.
  func killAndResume(
    _ dir: String, wire: String, extra: [String] = [], sourceLocation: SourceLocation = #_sourceLocation
  ) throws {
    let whole = try launch(2, resumeArguments(dir, out: dir + "/whole", wire: wire, extra: extra))
    #expect(whole.status == 0, "\(whole.stderr)", sourceLocation: sourceLocation)
    // Rank 1 is SIGKILLed mid-epoch: the job ends non-zero within seconds.
    let start = Date()
    let killed = try launch(
      2, resumeArguments(dir, out: dir + "/run", wire: wire, extra: extra), environment: ["FLIP_TEST_FAULT": "kill:1:11"])
    #expect(killed.status != 0, sourceLocation: sourceLocation)
    #expect(Date().timeIntervalSince(start) < 30, sourceLocation: sourceLocation)
    _ = try ModelFile.read(path: dir + "/run/ckpt-000009.safetensors")
    let resumed = try launch(2, ["train", "--resume", dir + "/run", "--threads", "1", "--quiet", "--wire", wire])
    #expect(resumed.status == 0, "\(resumed.stderr)", sourceLocation: sourceLocation)
    #expect(
      resumed.stderr.contains("resuming from \(dir)/run/ckpt-000009.safetensors"), "\(resumed.stderr)",
      sourceLocation: sourceLocation)
    try ResumeTests.expectBitIdentical(
      dir + "/whole/ckpt-000024.safetensors", dir + "/run/ckpt-000024.safetensors", sourceLocation: sourceLocation)
    try ResumeTests.expectBitIdentical(
      dir + "/whole/model.safetensors", dir + "/run/model.safetensors", sourceLocation: sourceLocation)
  }

  /// A run saved on 2 ranks continues on 1, and one saved on 1 on 2. On 1 rank with
  /// `--accumulate 2` the micro-batches and the order of the gradient sums are the 2 ranks'
  /// (the sampler's parts and `ContributionTree` depend on ranks × micro-steps only), so the
  /// run ends with the weights of an uninterrupted 2-rank run, bit for bit.
  @Test func resumesOnADifferentNumberOfRanks() throws {
    let dir = try ResumeTests.setUp()
    let whole = try launch(2, resumeArguments(dir, out: dir + "/whole"))
    #expect(whole.status == 0, "\(whole.stderr)")
    let killed = try launch(2, resumeArguments(dir, out: dir + "/run"), environment: ["FLIP_TEST_FAULT": "kill:0:11"])
    #expect(killed.status != 0)
    // Saved on 2 ranks, continued on 1: the same global batches in the same micro-batches.
    let one = try runFlip(["train", "--resume", dir + "/run", "--threads", "1", "--quiet", "--accumulate", "2"])
    #expect(one.status == 0, "\(one.stderr)")
    #expect(one.stderr.contains("saved on 2 ranks, continuing on 1)"), "\(one.stderr)")
    let trained = { (run: String) in
      try ModelFile.read(path: dir + "/\(run)/model.safetensors").tensors.filter { !$0.key.contains("moving_") }
        .mapValues { $0.values.map(\.bitPattern) }
    }
    let (continued, uninterrupted) = (try trained("run"), try trained("whole"))
    #expect(!continued.isEmpty && continued == uninterrupted, "resumed on 1 rank × 2 micro-steps: other weights")
    // Saved on 1, continued on 2 (via a single-process run killed at an epoch boundary).
    let single = try ResumeTests.train(dir, out: dir + "/single", environment: ["FLIP_TEST_FAULT": "kill:0:17"])
    #expect(single.status != 0)
    let two = try launch(2, ["train", "--resume", dir + "/single", "--threads", "1", "--quiet"])
    #expect(two.status == 0, "\(two.stderr)")
    #expect(
      two.stderr.contains(
        "(saved on 1 rank, continuing on 2; ranks × accumulate was 1 × 1, now 2 × 1, so each micro-batch (and its BatchNorm statistics) has another size)"
      ),
      "\(two.stderr.split(separator: "\n").filter { $0.contains("resuming") })")
    for run in ["run", "single"] {
      let rows = try readMetrics(dir + "/\(run)/metrics.jsonl").filter { $0["kind"] as? String == "epoch" }
      #expect(rows.map { $0["epoch"] as! Int } == [1, 2, 3])
      #expect((rows.last?["test_accuracy"] as? Double ?? 0) >= 0.9, "\(run): \(rows.last ?? [:])")
    }
  }

  @Test func aStopSignalOnOneRankStopsAllRanksAtTheSameStep() throws {
    let dir = try ResumeTests.setUp()
    let r = try launch(2, resumeArguments(dir, out: dir + "/run"), environment: ["FLIP_TEST_FAULT": "usr1:1:5"])
    #expect(r.status == 0, "\(r.stderr)")
    #expect(r.stderr.contains("stopped at step 5 (signal SIGUSR1)") == false, "rank 0 did not get the signal")
    #expect(r.stderr.contains("stopped at step 5 (a stop request on 1 other rank)"), "\(r.stderr)")
    #expect(r.stderr.contains("Continue with: mpirun -np 2 flip train --resume \(dir)/run"), "\(r.stderr)")
    #expect(try CheckpointFiles.list(dir + "/run").map(\.step).last == 5)
  }

  @Test func sigusr1ToMpirunStopsTheJobWithACheckpoint() throws {
    let dir = try ResumeTests.setUp()
    // mpirun forwards SIGUSR1 to every rank.
    let launcher = ["-np", "2", "--oversubscribe", "--allow-run-as-root", "--mca", "oob_tcp_if_include", "lo"]
    let r = try ResumeTests.signalLongRun(Self.mpirun, launcher + [flipExecutable], dir: dir, signal: SIGUSR1)
    #expect(r.status == 0, "\(r.stderr)")
    #expect(r.stderr.contains("(signal SIGUSR1)"), "\(r.stderr)")
    let newest = try CheckpointFiles.list(dir + "/run").last!
    let (_, metadata) = try ModelFile.read(path: newest.path)
    #expect(metadata["world_size"] == "2")
  }
}

extension MPITests {
  /// Augmented training (crop-flip, drawn per (seed, epoch, image)) on 2 ranks, killed
  /// mid-epoch and resumed: the same bits as the uninterrupted run, and not those of a run
  /// without augmentation. A resume takes the run's augmentation, never a flag's.
  @Test func augmentedTwoRankRunKilledAndResumedIsBitIdentical() throws {
    let dir = try ResumeTests.setUp()
    let augmented = ["--augment", "crop-flip"]
    let whole = try launch(2, resumeArguments(dir, out: dir + "/whole") + augmented)
    #expect(whole.status == 0, "\(whole.stderr)")
    let plain = try launch(2, resumeArguments(dir, out: dir + "/plain"))
    #expect(plain.status == 0, "\(plain.stderr)")
    let killed = try launch(
      2, resumeArguments(dir, out: dir + "/run") + augmented, environment: ["FLIP_TEST_FAULT": "kill:1:11"])
    #expect(killed.status != 0)
    let refused = try runFlip(["train", "--resume", dir + "/run", "--augment", "crop"])
    #expect(refused.status != 0)
    #expect(refused.stderr.contains("--augment cannot be given with --resume"), "\(refused.stderr)")
    let resumed = try launch(2, ["train", "--resume", dir + "/run", "--threads", "1", "--quiet"])
    #expect(resumed.status == 0, "\(resumed.stderr)")
    try ResumeTests.expectBitIdentical(dir + "/whole/ckpt-000024.safetensors", dir + "/run/ckpt-000024.safetensors")
    try ResumeTests.expectBitIdentical(dir + "/whole/model.safetensors", dir + "/run/model.safetensors")
    let a = try ModelFile.read(path: dir + "/whole/model.safetensors").0
    let b = try ModelFile.read(path: dir + "/plain/model.safetensors").0
    #expect(a.contains { name, t in t.values != b[name]?.values }, "augmentation changed nothing")
  }
}
