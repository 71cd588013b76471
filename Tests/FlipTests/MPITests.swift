import Foundation
import Testing

@testable import FlipTraining

/// The built `flip` under `mpirun -np 2`, kept on loopback (serialized: each launches a job).
@Suite("flip under mpirun", .serialized)
struct MPITests {
  static let mpirun = "/usr/bin/mpirun"

  /// `mpirun -np N` on this machine only; `tcp` forces the transport that crosses hosts.
  func launch(_ ranks: Int, _ arguments: [String], tcp: Bool = false, environment: [String: String] = [:]) throws
    -> ProcessResult
  {
    var args = ["-np", String(ranks), "--oversubscribe", "--allow-run-as-root", "--mca", "oob_tcp_if_include", "lo"]
    if tcp { args += ["--mca", "pml", "ob1", "--mca", "btl", "self,tcp", "--mca", "btl_tcp_if_include", "lo"] }
    for (k, v) in environment { args += ["-x", "\(k)=\(v)"] }
    return try runProcess(Self.mpirun, args + [flipExecutable] + arguments)
  }

  static let noBatchNorm = """
    model: tiny-dense
    layers:
      - {type: Flatten}
      - {type: QuantDense, units: 16, kernel_quantizer: ste_sign, kernel_constraint: weight_clip}
      - {type: Activation, activation: relu}
      - {type: Dense, units: 2}
      - {type: Activation, activation: softmax}
    optimizer: {type: adam, learning_rate: 0.01}
    """

  @Test func twoRanksTrainLikeOneProcess() throws {
    let dir = temporaryDirectory("flip-mpi")
    writeToyDataset(to: dir, train: 250, test: 64)
    try Self.noBatchNorm.write(toFile: dir + "/tiny.yaml", atomically: true, encoding: .utf8)
    let common = [
      "train", "--config", dir + "/tiny.yaml", "--data", dir, "--epochs", "2", "--batch-size", "32", "--threads", "1",
      "--check-every", "1",
    ]
    let single = try runFlip(common + ["--out", dir + "/one"])
    #expect(single.status == 0, "\(single.stderr)")
    // Tiny buckets: every layer's gradients all-reduced as its own message during backward.
    let pair = try launch(
      2, common + ["--out", dir + "/two", "--no-shard-optimizer", "--bucket-mb", "0.0001"], tcp: true)
    #expect(pair.status == 0, "\(pair.stderr)")
    // One rank prints progress; the others are quiet.
    #expect(pair.stdout.components(separatedBy: "Epoch 2/2").count == 2)
    #expect(pair.stderr.contains("2 ranks"))
    // The sharded (ZeRO-1) step, the default: reduce-scatter, update 1/N, all-gather.
    let sharded = try launch(2, common + ["--out", dir + "/zero"])
    #expect(sharded.status == 0, "\(sharded.stderr)")
    // Sharded with a bucket per variable: each bucket is updated and gathered as soon as its
    // reduce-scatter completes, during backward.
    let pipelined = try launch(2, common + ["--out", dir + "/zero-buckets", "--bucket-mb", "0.0001"])
    #expect(pipelined.status == 0, "\(pipelined.stderr)")
    try expectSameTraining(dir + "/one", dir + "/two", epochs: 2)
    try expectSameTraining(dir + "/one", dir + "/zero", epochs: 2)
    let (wb, _) = try ModelFile.read(path: dir + "/two/model.safetensors")
    let (wz, _) = try ModelFile.read(path: dir + "/zero/model.safetensors")
    let (wp, _) = try ModelFile.read(path: dir + "/zero-buckets/model.safetensors")
    for (name, t) in wb {
      // On 2 ranks every reduction is a + b whatever the bucketing, and the update is
      // elementwise: the three 2-rank runs end with the same bits.
      #expect(t.values == wz[name]!.values, "\(name): sharded differs from the all-reduce")
      #expect(t.values == wp[name]!.values, "\(name): sharded by bucket differs from the all-reduce")
    }
  }

  /// Two runs of the same global batches, one with more ranks: the same steps and test
  /// accuracy, losses and weights equal up to float summation order (sums of gradients and
  /// metrics are added in another order; weights over a few steps of Adam within 1e-3).
  func expectSameTraining(_ one: String, _ other: String, epochs: Int) throws {
    let a = try readMetrics(one + "/metrics.jsonl").filter { $0["kind"] as? String == "epoch" }
    let b = try readMetrics(other + "/metrics.jsonl").filter { $0["kind"] as? String == "epoch" }
    #expect(a.count == epochs && b.count == epochs)
    for (x, y) in zip(a, b) {
      #expect(x["step"] as! Int == y["step"] as! Int)
      #expect(abs((x["loss"] as! Double) - (y["loss"] as! Double)) < 1e-4)
      #expect(abs((x["accuracy"] as! Double) - (y["accuracy"] as! Double)) < 1e-9)
      #expect(abs((x["test_loss"] as! Double) - (y["test_loss"] as! Double)) < 1e-3)
      #expect(x["test_accuracy"] as! Double == y["test_accuracy"] as! Double)
    }
    let (wa, _) = try ModelFile.read(path: one + "/model.safetensors")
    let (wb, _) = try ModelFile.read(path: other + "/model.safetensors")
    #expect(Set(wa.keys) == Set(wb.keys))
    for (name, t) in wa {
      let d = zip(t.values, wb[name]!.values).map { abs($0 - $1) }.max() ?? 0
      #expect(d < 1e-3, "\(name) differs by \(d) in \(other)")
    }
  }

  /// Every collective of training on known exact sums: 2 ranks over shared memory, 3 ranks
  /// (oversubscribed) over TCP on loopback.
  @Test func mpiCheckPassesOnTwoAndThreeRanks() throws {
    let two = try launch(2, ["mpi-check"])
    #expect(two.status == 0, "\(two.stderr)")
    #expect(two.stdout.contains("mpi-check: 2 ranks, 22 checks passed"), "\(two.stdout)")
    let three = try launch(3, ["mpi-check"], tcp: true)
    #expect(three.status == 0, "\(three.stderr)")
    #expect(three.stdout.contains("mpi-check: 3 ranks, 22 checks passed"), "\(three.stdout)")
  }

  /// 3 ranks (oversubscribed, over TCP) with an uneven last batch: 250 samples in batches of
  /// 48 end with 10, split 4/3/3. Gradients, loss and accuracy are weighted by sample counts,
  /// so the run matches one process up to float summation order.
  @Test func threeRanksWithAnUnevenLastBatchTrainLikeOneProcess() throws {
    let dir = temporaryDirectory("flip-mpi")
    writeToyDataset(to: dir, train: 250, test: 61)
    try Self.noBatchNorm.write(toFile: dir + "/tiny.yaml", atomically: true, encoding: .utf8)
    let common = [
      "train", "--config", dir + "/tiny.yaml", "--data", dir, "--epochs", "2", "--batch-size", "48", "--threads", "1",
      "--check-every", "1", "--bucket-mb", "0.0001",
    ]
    let single = try runFlip(common + ["--out", dir + "/one"])
    #expect(single.status == 0, "\(single.stderr)")
    let three = try launch(3, common + ["--out", dir + "/three"], tcp: true)
    #expect(three.status == 0, "\(three.stderr)")
    // 6 steps an epoch: five batches of 48 and the last of 10.
    let rows = try readMetrics(dir + "/one/metrics.jsonl").filter { $0["kind"] as? String == "epoch" }
    for x in rows { #expect(x["step"] as! Int == 6 * (x["epoch"] as! Int)) }
    try expectSameTraining(dir + "/one", dir + "/three", epochs: 2)
  }

  @Test func syncBatchNormOnTwoRanksMatchesOneProcess() throws {
    let dir = temporaryDirectory("flip-mpi")
    writeToyDataset(to: dir, train: 250, test: 64)
    try CLITests.tinyModel.write(toFile: dir + "/bn.yaml", atomically: true, encoding: .utf8)
    let common = [
      "train", "--config", dir + "/bn.yaml", "--data", dir, "--epochs", "2", "--batch-size", "32", "--threads", "1",
    ]
    let single = try runFlip(common + ["--out", dir + "/one"])
    #expect(single.status == 0, "\(single.stderr)")
    let synced = try launch(2, common + ["--out", dir + "/sync", "--sync-bn"])
    #expect(synced.status == 0, "\(synced.stderr)")
    let local = try launch(2, common + ["--out", dir + "/local"])
    #expect(local.status == 0, "\(local.stderr)")
    let (one, _) = try ModelFile.read(path: dir + "/one/model.safetensors")
    let (sync, _) = try ModelFile.read(path: dir + "/sync/model.safetensors")
    let (loc, _) = try ModelFile.read(path: dir + "/local/model.safetensors")
    func maxDifference(_ a: [String: SafeTensors.Tensor], _ b: [String: SafeTensors.Tensor]) -> Float {
      a.map { name, t in zip(t.values, b[name]!.values).map { abs($0 - $1) }.max() ?? 0 }.max() ?? 0
    }
    // Global batch statistics: the same model as one process, up to float summation order
    // (moving statistics included); local statistics give a visibly different one.
    #expect(maxDifference(one, sync) < 1e-3)
    #expect(maxDifference(one, loc) > 1e-3)
  }

  @Test func batchNormModelLearnsOnTwoRanks() throws {
    let dir = temporaryDirectory("flip-mpi")
    writeToyDataset(to: dir, train: 256, test: 64, gzip: true)
    try CLITests.tinyModel.write(toFile: dir + "/bn.yaml", atomically: true, encoding: .utf8)
    let r = try launch(
      2,
      [
        "train", "--config", dir + "/bn.yaml", "--data", dir, "--epochs", "3", "--batch-size", "32", "--out",
        dir + "/run",
      ])
    #expect(r.status == 0, "\(r.stderr)")
    let rows = try readMetrics(dir + "/run/metrics.jsonl").filter { $0["kind"] as? String == "epoch" }
    #expect(rows.count == 3)
    #expect((rows.last!["test_accuracy"] as! Double) > 0.85)
    let e = try runFlip(["evaluate", "--run", dir + "/run", "--threads", "1"])
    #expect(e.status == 0)
    #expect(e.stdout.contains(String(format: "test_accuracy: %.4f", rows.last!["test_accuracy"] as! Double)))
  }

  @Test func runsWithTheRepositoryHostfile() throws {
    let dir = temporaryDirectory("flip-mpi")
    writeToyDataset(to: dir, train: 64, test: 16)
    try CLITests.tinyModel.write(toFile: dir + "/bn.yaml", atomically: true, encoding: .utf8)
    let hostfile = ConfigTests.root + "/hostfiles/localhost"
    let r = try runProcess(
      Self.mpirun,
      [
        "-np", "2", "--hostfile", hostfile, "--allow-run-as-root", "--mca", "oob_tcp_if_include", "lo", flipExecutable,
        "train", "--config", dir + "/bn.yaml", "--data", dir, "--epochs", "1", "--batch-size", "16", "--out",
        dir + "/run",
      ])
    #expect(r.status == 0, "\(r.stderr)")
    #expect(r.stderr.contains("2 ranks"))
  }

  @Test func batchNotDivisibleByRanksIsAnError() throws {
    let dir = temporaryDirectory("flip-mpi")
    writeToyDataset(to: dir, train: 64, test: 16)
    try CLITests.tinyModel.write(toFile: dir + "/bn.yaml", atomically: true, encoding: .utf8)
    let r = try launch(
      2, ["train", "--config", dir + "/bn.yaml", "--data", dir, "--batch-size", "33", "--out", dir + "/run"])
    #expect(r.status != 0)
    #expect(r.stderr.contains("global batch size 33 is not divisible by the number of ranks 2"), "\(r.stderr)")
  }

  @Test func aFailingRankEndsTheWholeJob() throws {
    let dir = temporaryDirectory("flip-mpi")
    writeToyDataset(to: dir, train: 256, test: 16)
    try CLITests.tinyModel.write(toFile: dir + "/bn.yaml", atomically: true, encoding: .utf8)
    let start = Date()
    let r = try launch(
      2,
      [
        "train", "--config", dir + "/bn.yaml", "--data", dir, "--epochs", "50", "--batch-size", "32", "--out",
        dir + "/run",
      ],
      environment: ["FLIP_TEST_FAULT": "fail:1:5"])
    #expect(r.status != 0)
    #expect(r.stderr.contains("flip[rank 1]: error: injected failure at step 5"), "\(r.stderr)")
    #expect(Date().timeIntervalSince(start) < 30)
  }

  /// `flip bench --json` in every mode: the row describes the run that was made, the five
  /// parts of the step's time split add up to the measured step, and the hidden fraction is
  /// 1 − communication wait / communication alone, from the row's own figures.
  @Test func benchReportsTheStepTimeSplit() throws {
    let dir = temporaryDirectory("flip-mpi")
    writeToyDataset(to: dir, train: 256, test: 16)
    try CLITests.tinyModel.write(toFile: dir + "/bn.yaml", atomically: true, encoding: .utf8)
    let args = [
      "bench", "--config", dir + "/bn.yaml", "--data", dir, "--batch-size", "64", "--steps", "20", "--warmup", "1",
      "--threads", "1", "--json",
    ]
    let thread = ["--mpi-progress", "thread"]
    for (ranks, extra) in [
      (1, [String]()), (2, []), (2, ["--no-shard-optimizer"]), (2, thread + ["--no-shard-optimizer"]), (2, thread),
    ] {
      let r = ranks == 1 ? try runFlip(args + extra) : try launch(ranks, args + extra)
      #expect(r.status == 0, "\(r.stderr)")
      let row = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
      let mode = "\(ranks) ranks \(extra): \(row)"
      // The run it describes.
      #expect(row["ranks"] as? Int == ranks, "\(mode)")
      #expect(row["steps"] as? Int == 20 && row["batch_size"] as? Int == 64 && row["threads"] as? Int == 1, "\(mode)")
      #expect(row["sharded_optimizer"] as? Bool == (ranks > 1 && !extra.contains("--no-shard-optimizer")), "\(mode)")
      #expect(row["mpi_progress"] as? String == (extra.contains("thread") ? "thread" : "testall"), "\(mode)")
      // Every figure of the split is there, for every number of ranks.
      func figure(_ key: String) throws -> Double { try #require(row[key] as? Double, "\(key) missing: \(mode)") }
      let step = try figure("ms_per_step")
      let data = try figure("data_ms"), compute = try figure("compute_ms"), optimizer = try figure("optimizer_ms")
      let wait = try figure("communication_wait_ms"), imbalance = try figure("imbalance_wait_ms")
      let alone = try figure("communication_alone_ms"), hidden = try figure("hidden_fraction")
      // Every phase of the step is timed, and the five phases are the step: outside them are
      // only the gradient zeroing and the loop. One process times its phases inside the
      // bench's own clock, so they cannot add up to more. With 2 ranks the parts are the
      // ranks' means and the step is rank 0's clock, which starts when rank 0 leaves the
      // barrier (the other rank may leave it earlier): a looser bound, still well below 2×
      // (figures summed over the ranks, or per run instead of per step).
      #expect(data > 0 && compute > 0 && optimizer > 0, "\(mode)")
      let parts = data + compute + optimizer + wait + imbalance
      #expect(parts >= step * 0.5, "parts \(parts) ms of a \(step) ms step: \(mode)")
      #expect(parts <= step * (ranks == 1 ? 1.001 : 1.5), "parts \(parts) ms of a \(step) ms step: \(mode)")
      if ranks == 1 {
        // One process: nothing to wait for, nothing to communicate, nothing hidden.
        #expect(imbalance == 0 && alone == 0 && hidden == 0, "\(mode)")
        #expect(wait < step * 0.1, "\(mode)")
      } else {
        #expect(alone > 0, "\(mode)")
        #expect(abs(hidden - (1 - wait / alone)) <= 1e-9 * max(1, abs(hidden)), "\(mode)")
      }
    }
  }

  /// A weight changed on rank 1 alone: the replica checksum stops the job, naming the rank.
  /// (With the all-reduce step: the sharded step re-sends every weight from its owner each
  /// step, so a replica cannot stay different there.)
  @Test func divergedReplicasStopTheJobNamingTheRank() throws {
    let dir = temporaryDirectory("flip-mpi")
    writeToyDataset(to: dir, train: 128, test: 16)
    try Self.noBatchNorm.write(toFile: dir + "/tiny.yaml", atomically: true, encoding: .utf8)
    let r = try launch(
      2,
      [
        "train", "--config", dir + "/tiny.yaml", "--data", dir, "--epochs", "2", "--batch-size", "32", "--threads", "1",
        "--check-every", "2", "--no-shard-optimizer", "--out", dir + "/run",
      ],
      environment: ["FLIP_TEST_FAULT": "perturb:1:3"])
    #expect(r.status != 0)
    #expect(
      r.stderr.contains("the model replicas differ at step 4: ranks 1 disagree with rank 0"), "\(r.stderr)")
  }

  @Test func ranksWithDifferentSettingsAreAnError() throws {
    let dir = temporaryDirectory("flip-mpi")
    writeToyDataset(to: dir, train: 64, test: 16)
    let common = ["train", "--config", "", "--data", dir, "--epochs", "1", "--batch-size", "32", "--out", dir + "/run"]
    try Self.noBatchNorm.write(toFile: dir + "/tiny.yaml", atomically: true, encoding: .utf8)
    var args = common
    args[2] = dir + "/tiny.yaml"
    // MPMD: one rank with seed 0, the other with seed 1.
    let r = try runProcess(
      Self.mpirun,
      ["--oversubscribe", "--allow-run-as-root", "--mca", "oob_tcp_if_include", "lo", "-np", "1", flipExecutable]
        + args + ["--seed", "0", ":", "-np", "1", flipExecutable] + args + ["--seed", "1"])
    #expect(r.status != 0)
    #expect(r.stderr.contains("ranks 1 were started with other settings than rank 0"), "\(r.stderr)")
  }

  /// Under the repository's hostfile (localhost, 2 slots), 2 ranks share the node: each
  /// defaults to cores ÷ 2 compute threads, counted from the ranks MPI places on the node.
  /// (No binding, so each rank sees every core as the test does.)
  @Test func ranksOfTheRepositoryHostfileShareTheNodesCores() throws {
    let dir = temporaryDirectory("flip-mpi")
    let config = """
      model: tiny-synthetic
      input_shape: [4, 4, 1]
      layers:
        - {type: Flatten}
        - {type: QuantDense, units: 16, kernel_quantizer: ste_sign, kernel_constraint: weight_clip}
        - {type: Dense, units: 10}
        - {type: Activation, activation: softmax}
      optimizer: {type: adam}
      """
    try config.write(toFile: dir + "/tiny.yaml", atomically: true, encoding: .utf8)
    let r = try runProcess(
      Self.mpirun,
      [
        "-np", "2", "--hostfile", ConfigTests.root + "/hostfiles/localhost", "--bind-to", "none", "--allow-run-as-root",
        "--mca", "oob_tcp_if_include", "lo", flipExecutable, "bench", "--config", dir + "/tiny.yaml", "--synthetic",
        "--batch-size", "8", "--steps", "1", "--warmup", "0", "--json",
      ])
    #expect(r.status == 0, "\(r.stderr)")
    let row = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], "\(r.stdout)")
    let threads = max(1, ProcessInfo.processInfo.activeProcessorCount / 2)
    #expect(row["ranks"] as? Int == 2 && row["threads"] as? Int == threads, "\(row)")
  }
}
