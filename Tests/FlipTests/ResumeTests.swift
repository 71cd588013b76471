import Foundation
import Testing

@testable import FlipTraining

/// Checkpoints and resuming of the built `flip` (one process): bit-for-bit continuation after
/// a SIGKILL mid-epoch and at an epoch boundary, corrupt newest checkpoints, stop signals.
@Suite("checkpoint and resume", .serialized)
struct ResumeTests {
  /// BatchNorm, Dropout and a Bop/Adam case optimizer with an epoch-unit schedule: every kind
  /// of state a checkpoint must carry.
  static let model = """
    model: tiny-resume
    layers:
      - {type: Flatten}
      - {type: QuantDense, units: 16, kernel_quantizer: ste_sign, kernel_constraint: weight_clip, use_bias: false}
      - {type: BatchNormalization, momentum: 0.9}
      - {type: Dropout, rate: 0.2}
      - {type: QuantDense, units: 2, input_quantizer: ste_sign, kernel_quantizer: {type: noop, precision: 1}, use_bias: false}
      - {type: BatchNormalization, momentum: 0.9}
      - {type: Activation, activation: softmax}
    optimizer:
      type: case
      cases:
        - predicate: binary
          optimizer: {type: bop, gamma: {schedule: exponential_decay, initial: 1e-3, decay_steps: 1, decay_rate: 0.5, unit: epoch}, threshold: 1e-6}
      default: {type: adam, learning_rate: 0.01}
    """

  /// A toy data set (8 steps per epoch of batch 32, the last one 26) and the config.
  static func setUp(model: String = model) throws -> String {
    let dir = temporaryDirectory("flip-resume")
    writeToyDataset(to: dir, train: 250, test: 64)
    try model.write(toFile: dir + "/m.yaml", atomically: true, encoding: .utf8)
    return dir
  }

  static func train(_ dir: String, out: String, extra: [String] = [], environment: [String: String]? = nil) throws
    -> ProcessResult
  {
    try runFlip(
      [
        "train", "--config", dir + "/m.yaml", "--data", dir, "--epochs", "3", "--batch-size", "32", "--threads", "1",
        "--checkpoint-every", "3", "--out", out, "--quiet",
      ] + extra, environment: environment)
  }

  /// Every tensor (weights, BN statistics, optimizer state) of two files, bit for bit.
  static func expectBitIdentical(_ a: String, _ b: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
    let (x, mx) = try ModelFile.read(path: a)
    let (y, my) = try ModelFile.read(path: b)
    #expect(Set(x.keys) == Set(y.keys), sourceLocation: sourceLocation)
    for (name, t) in x {
      let same = t.values.map(\.bitPattern) == (y[name]?.values.map(\.bitPattern) ?? [])
      #expect(same, "\(name) differs between \(a) and \(b)", sourceLocation: sourceLocation)
    }
    #expect(mx["position"] == my["position"], sourceLocation: sourceLocation)
    #expect(mx["optimizer"] == my["optimizer"], sourceLocation: sourceLocation)
  }

  /// Starts a run of 100,000 epochs (`executable`: `flip`, or `mpirun` with `launcher`
  /// arguments before `flip`), sends `signal` to that process once the first checkpoint
  /// exists, and waits for it to end.
  static func signalLongRun(_ executable: String, _ launcher: [String], dir: String, signal: Int32) throws
    -> ProcessResult
  {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: executable)
    p.arguments =
      launcher + [
        "train", "--config", dir + "/m.yaml", "--data", dir, "--epochs", "100000", "--batch-size", "32", "--threads",
        "1", "--out", dir + "/run", "--quiet",
      ]
    let err = Pipe()
    p.standardError = err
    p.standardOutput = FileHandle.nullDevice
    unblockStopSignalsForChildren()
    try p.run()
    let deadline = Date().addingTimeInterval(60)
    while (try? CheckpointFiles.list(dir + "/run"))?.isEmpty ?? true, Date() < deadline { usleep(20_000) }
    kill(p.processIdentifier, signal)
    let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    p.waitUntilExit()
    return ProcessResult(status: p.terminationStatus, stdout: "", stderr: text)
  }

  static func epochRows(_ path: String) throws -> [String] {
    try readMetrics(path).filter { $0["kind"] as? String == "epoch" }.map { row in
      var r = row
      r["seconds"] = nil
      r["images_per_second"] = nil
      r["data_wait_seconds"] = nil
      // The first step after a resume has no previous kernel to count flips against.
      r["flip_ratio"] = nil
      return String(decoding: try JSONSerialization.data(withJSONObject: r, options: [.sortedKeys]), as: UTF8.self)
    }
  }

  @Test(arguments: [("mid-epoch", 11), ("epoch boundary", 17)])
  func killedAndResumedRunIsBitIdentical(label: String, killStep: Int) throws {
    let dir = try Self.setUp()
    let whole = try Self.train(dir, out: dir + "/whole")
    #expect(whole.status == 0, "\(whole.stderr)")
    let killed = try Self.train(dir, out: dir + "/killed", environment: ["FLIP_TEST_FAULT": "kill:0:\(killStep)"])
    #expect(killed.status != 0, "the run was to be killed at step \(killStep) (\(label))")
    #expect(!FileManager.default.fileExists(atPath: dir + "/killed/model.safetensors"))
    let resumed = try runFlip(["train", "--resume", dir + "/killed", "--threads", "1", "--quiet"])
    #expect(resumed.status == 0, "\(resumed.stderr)")
    let from = killStep == 11 ? 9 : 16
    #expect(
      resumed.stderr.contains("resuming from \(dir)/killed/ckpt-\(String(format: "%06d", from)).safetensors"),
      "\(resumed.stderr)")
    try Self.expectBitIdentical(dir + "/whole/ckpt-000024.safetensors", dir + "/killed/ckpt-000024.safetensors")
    try Self.expectBitIdentical(dir + "/whole/model.safetensors", dir + "/killed/model.safetensors")
    // The epoch rows (loss, accuracy, test figures) continue exactly, without duplicates.
    #expect(try Self.epochRows(dir + "/whole/metrics.jsonl") == Self.epochRows(dir + "/killed/metrics.jsonl"))
    // Only the newest 3 checkpoints are kept.
    let kept = try CheckpointFiles.list(dir + "/killed").map(\.step)
    #expect(kept == [18, 21, 24])
  }

  @Test func corruptNewestCheckpointFallsBackToThePreviousOne() throws {
    let dir = try Self.setUp()
    let whole = try Self.train(dir, out: dir + "/whole")
    #expect(whole.status == 0, "\(whole.stderr)")
    let killed = try Self.train(dir, out: dir + "/run", environment: ["FLIP_TEST_FAULT": "kill:0:14"])
    #expect(killed.status != 0)
    // Flip one byte in the payload of the newest checkpoint (step 12).
    let newest = dir + "/run/ckpt-000012.safetensors"
    var bytes = try Data(contentsOf: URL(fileURLWithPath: newest))
    bytes[bytes.count - 5] ^= 0x40
    try bytes.write(to: URL(fileURLWithPath: newest))
    let resumed = try runFlip(["train", "--resume", dir + "/run", "--threads", "1", "--quiet"])
    #expect(resumed.status == 0, "\(resumed.stderr)")
    #expect(resumed.stderr.contains("ckpt-000012.safetensors: payload checksum mismatch"), "\(resumed.stderr)")
    #expect(resumed.stderr.contains("resuming from \(dir)/run/ckpt-000009.safetensors"), "\(resumed.stderr)")
    try Self.expectBitIdentical(dir + "/whole/model.safetensors", dir + "/run/model.safetensors")
  }

  @Test func resumeErrors() throws {
    let dir = try Self.setUp()
    let empty = try runFlip(["train", "--resume", dir, "--quiet"])
    #expect(empty.status != 0)
    #expect(empty.stderr.contains("holds no checkpoints"), "\(empty.stderr)")
    let missing = try runFlip(["train", "--resume", dir + "/nope"])
    #expect(missing.status != 0)
    #expect(missing.stderr.contains("\(dir)/nope: no such file"), "\(missing.stderr)")
    let conflicting = try runFlip(["train", "--resume", dir, "--batch-size", "64"])
    #expect(conflicting.status != 0)
    #expect(conflicting.stderr.contains("--batch-size cannot be given with --resume"), "\(conflicting.stderr)")
    // A finished run says how to continue it; more epochs extend it.
    let done = try Self.train(dir, out: dir + "/done", extra: ["--epochs", "1"])
    #expect(done.status == 0, "\(done.stderr)")
    let again = try runFlip(["train", "--resume", dir + "/done", "--threads", "1"])
    #expect(again.status == 0)
    #expect(again.stderr.contains("already trained 1 of 1 epochs"), "\(again.stderr)")
    let more = try runFlip(["train", "--resume", dir + "/done", "--epochs", "2", "--threads", "1", "--quiet"])
    #expect(more.status == 0, "\(more.stderr)")
    #expect(try Self.epochRows(dir + "/done/metrics.jsonl").count == 2)
    // A new run into a directory with checkpoints must not mix them up.
    let clash = try Self.train(dir, out: dir + "/done")
    #expect(clash.status != 0)
    #expect(clash.stderr.contains("continue it with --resume"), "\(clash.stderr)")
  }

  @Test func failedCheckpointWriteStopsOrContinuesAndKeepsEarlierOnes() throws {
    let dir = try Self.setUp()
    let first = try Self.train(dir, out: dir + "/run", extra: ["--epochs", "1"])
    #expect(first.status == 0, "\(first.stderr)")
    // A non-empty directory where the next checkpoint goes: the rename into place fails.
    try FileManager.default.createDirectory(
      atPath: dir + "/run/ckpt-000016.safetensors/blocker", withIntermediateDirectories: true)
    let stopped = try runFlip(["train", "--resume", dir + "/run", "--epochs", "2", "--threads", "1", "--quiet"])
    #expect(stopped.status != 0)
    #expect(stopped.stderr.contains("checkpoint at step 16 was not written"), "\(stopped.stderr)")
    #expect(stopped.stderr.contains("earlier checkpoints in \(dir)/run are intact"), "\(stopped.stderr)")
    #expect(try CheckpointFiles.list(dir + "/run").map(\.step) == [9, 12, 15])
    _ = try ModelFile.read(path: dir + "/run/ckpt-000015.safetensors")
    let continued = try runFlip([
      "train", "--resume", dir + "/run", "--epochs", "3", "--threads", "1", "--quiet", "--on-checkpoint-error",
      "continue",
    ])
    #expect(continued.status == 0, "\(continued.stderr)")
    #expect(continued.stderr.contains("training continues"), "\(continued.stderr)")
    _ = try ModelFile.read(path: dir + "/run/ckpt-000024.safetensors")
  }

  @Test func stopSignalWritesACheckpointAndExitsZero() throws {
    let dir = try Self.setUp()
    let whole = try Self.train(dir, out: dir + "/whole")
    let stopped = try Self.train(dir, out: dir + "/run", environment: ["FLIP_TEST_FAULT": "term:0:5"])
    #expect(stopped.status == 0, "\(stopped.stderr)")
    #expect(stopped.stderr.contains("stopped at step 5 (signal SIGTERM)"), "\(stopped.stderr)")
    #expect(stopped.stderr.contains("Continue with: flip train --resume \(dir)/run"), "\(stopped.stderr)")
    #expect(try CheckpointFiles.list(dir + "/run").map(\.step).last == 5)
    let resumed = try runFlip(["train", "--resume", dir + "/run", "--threads", "1", "--quiet"])
    #expect(resumed.status == 0, "\(resumed.stderr)")
    // On one process the stop changes nothing: the result is the uninterrupted run's.
    #expect(whole.status == 0)
    try Self.expectBitIdentical(dir + "/whole/model.safetensors", dir + "/run/model.safetensors")
  }

  @Test func secondInterruptExitsAtOnce() throws {
    let dir = try Self.setUp()
    // Two SIGINTs raised back to back at step 5: the second one must not wait for the step.
    let r = try Self.train(dir, out: dir + "/run", environment: ["FLIP_TEST_FAULT": "int:0:5,int:0:5"])
    #expect(r.status == 130, "\(r.stderr)")
    #expect(r.stderr.contains("second interrupt, exiting at once"), "\(r.stderr)")
    let one = try Self.train(dir, out: dir + "/one", environment: ["FLIP_TEST_FAULT": "int:0:5"])
    #expect(one.status == 0, "\(one.stderr)")
    #expect(one.stderr.contains("stopped at step 5 (signal SIGINT)"), "\(one.stderr)")
  }

  @Test func externalSigterm() throws {
    let dir = try Self.setUp()
    let r = try Self.signalLongRun(flipExecutable, [], dir: dir, signal: SIGTERM)
    #expect(r.status == 0, "\(r.stderr)")
    #expect(r.stderr.contains("(signal SIGTERM)"), "\(r.stderr)")
    let stop = try CheckpointFiles.list(dir + "/run").last!
    _ = try ModelFile.read(path: stop.path)
  }
}
