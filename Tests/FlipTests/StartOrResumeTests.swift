import Foundation
import Testing

@testable import FlipTraining

/// `flip train --resume-or-start DIR` (one process): the one command of every job in a chain
/// starts the run, continues it, exits 75 when stopped to be continued, and refuses settings
/// that are not the run's.
@Suite("start or resume", .serialized)
struct StartOrResumeTests {
  static func command(_ dir: String, epochs: Int = 3, extra: [String] = []) -> [String] {
    [
      "train", "--config", dir + "/m.yaml", "--data", dir, "--epochs", String(epochs), "--batch-size", "32",
      "--threads", "1",
      "--checkpoint-every", "3", "--resume-or-start", dir + "/run", "--quiet",
    ] + extra
  }

  /// A job killed before its first checkpoint, one stopped at step 5, one at step 13, one that
  /// finishes and one with nothing left to do: the same command each time, and the same bits
  /// and epoch metrics as the run never stopped.
  @Test func oneCommandStartsContinuesAndFinishesAChain() throws {
    let dir = try ResumeTests.setUp()
    let whole = try ResumeTests.train(dir, out: dir + "/whole")
    #expect(whole.status == 0, "\(whole.stderr)")
    let killed = try runFlip(Self.command(dir), environment: ["FLIP_TEST_FAULT": "kill:0:2"])
    #expect(killed.status != 0)
    #expect(try CheckpointFiles.list(dir + "/run").isEmpty)
    let first = try runFlip(Self.command(dir), environment: ["FLIP_TEST_FAULT": "usr1:0:5"])
    #expect(first.status == 75, "\(first.stderr)")
    #expect(first.stderr.contains("holds no checkpoint: starting a new run"), "\(first.stderr)")
    #expect(first.stderr.contains("stopped at step 5 (signal SIGUSR1)"), "\(first.stderr)")
    #expect(first.stderr.contains("Continue with: the same command (flip train ... --resume-or-start \(dir)/run)"))
    let second = try runFlip(Self.command(dir), environment: ["FLIP_TEST_FAULT": "term:0:13"])
    #expect(second.status == 75, "\(second.stderr)")
    #expect(second.stderr.contains("resuming from \(dir)/run/ckpt-000005.safetensors"), "\(second.stderr)")
    let third = try runFlip(Self.command(dir))
    #expect(third.status == 0, "\(third.stderr)")
    #expect(third.stderr.contains("resuming from \(dir)/run/ckpt-000013.safetensors"), "\(third.stderr)")
    try ResumeTests.expectBitIdentical(dir + "/whole/ckpt-000024.safetensors", dir + "/run/ckpt-000024.safetensors")
    try ResumeTests.expectBitIdentical(dir + "/whole/model.safetensors", dir + "/run/model.safetensors")
    #expect(
      try ResumeTests.epochRows(dir + "/whole/metrics.jsonl") == ResumeTests.epochRows(dir + "/run/metrics.jsonl"))
    let again = try runFlip(Self.command(dir))
    #expect(again.status == 0, "\(again.stderr)")
    #expect(again.stderr.contains("has already trained 3 of 3 epochs"), "\(again.stderr)")
  }

  /// Settings a resume keeps are compared with the run's, and each difference is named; the
  /// run's files are left as they were. Keys a resume may change (epochs) are taken.
  @Test func otherSettingsAreRefusedNamingEachDifference() throws {
    let dir = try ResumeTests.setUp()
    let first = try runFlip(Self.command(dir), environment: ["FLIP_TEST_FAULT": "usr1:0:5"])
    #expect(first.status == 75, "\(first.stderr)")
    let other = try runFlip(Self.command(dir, extra: ["--seed", "1", "--learning-rate", "0.5"]))
    #expect(other.status == 1, "\(other.stderr)")
    #expect(other.stderr.contains("\(dir)/run holds a run with other settings: "), "\(other.stderr)")
    #expect(other.stderr.contains("seed: the run's 0, given 1"), "\(other.stderr)")
    #expect(other.stderr.contains("optimizer: the run's"), "\(other.stderr)")
    #expect(try CheckpointFiles.list(dir + "/run").map(\.step) == [3, 5])
    let clash = try runFlip(Self.command(dir, extra: ["--out", dir + "/x"]))
    #expect(
      clash.status != 0 && clash.stderr.contains("--out cannot be given with --resume-or-start"), "\(clash.stderr)")
    let longer = try runFlip(Self.command(dir, epochs: 4))
    #expect(longer.status == 0, "\(longer.stderr)")
    let rows = try readMetrics(dir + "/run/metrics.jsonl").filter { $0["kind"] as? String == "epoch" }
    #expect(rows.map { $0["epoch"] as? Int } == [1, 2, 3, 4])
  }
}
