import Foundation
import Testing

@testable import FlipTraining

/// A SLURM cluster of `scripts/cluster.sh up N --slurm` on emulated hosts (prefix `flips`,
/// apart from the multi-host tests' `flipt`), driven as a user would: `sbatch`, `scancel`,
/// `scontrol`, with `scripts/slurm-example.sh` as the batch script.
struct SLURMCluster {
  static let prefix = "flips"
  static let batchScript = EmulatedCluster.repository + "/scripts/slurm-example.sh"

  /// Why a SLURM cluster cannot be made here (nil when it can): no emulated hosts, or Debian's
  /// slurm-wlm and munge neither installed nor installable.
  static let unavailableReason: String? = {
    if let reason = EmulatedCluster.unavailableReason { return reason }
    guard let install = try? runProcess(EmulatedCluster.script, ["install-slurm"]) else {
      return "cannot run \(EmulatedCluster.script)"
    }
    guard install.status == 0 else {
      return "SLURM cannot be had: \(install.stderr.trimmingCharacters(in: .whitespacesAndNewlines))"
    }
    return nil
  }()

  static var skipComment: Comment { Comment(rawValue: "skipped: \(unavailableReason ?? "")") }

  /// The hosts' subnet (A.B.C.0/24), which Open MPI is told to use.
  let subnet: String

  /// Brings up `hosts` SLURM nodes; call `down()` after.
  static func up(hosts: Int) throws -> SLURMCluster {
    let up = try runProcess(EmulatedCluster.script, ["up", String(hosts), "--slurm", "--prefix", prefix])
    guard up.status == 0 else {
      throw TrainingError.invalidArgument("cluster.sh up --slurm failed (\(up.status)): \(up.stderr)")
    }
    let flags = try runProcess(EmulatedCluster.script, ["flags", "--prefix", prefix]).stdout
    let words = flags.split(whereSeparator: \.isWhitespace).map(String.init)
    guard let i = words.firstIndex(of: "btl_tcp_if_include"), i + 1 < words.count else {
      throw TrainingError.invalidArgument("cluster.sh flags printed no subnet: \(flags)")
    }
    return SLURMCluster(subnet: words[i + 1])
  }

  func down() { _ = try? runProcess(EmulatedCluster.script, ["down", "--prefix", Self.prefix]) }

  /// Open MPI over TCP on the hosts' subnet, as root.
  var openMPIEnvironment: [String: String] {
    [
      "OMPI_MCA_pml": "ob1", "OMPI_MCA_btl": "self,tcp", "OMPI_MCA_btl_tcp_if_include": subnet,
      "OMPI_MCA_oob_tcp_if_include": subnet, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    ]
  }

  /// `sbatch -N 2 --ntasks-per-node 1 -t 15 scripts/slurm-example.sh CONFIG RUN extra...`
  /// (the issue's command; the log goes to RUN.log), with the flip under test, no core
  /// binding (the hosts share this machine's cores) and Open MPI on the hosts' subnet.
  func submit(config: String, run: String, _ extra: [String], environment: [String: String] = [:]) throws -> String {
    let env = openMPIEnvironment.merging(["FLIP": flipExecutable, "FLIP_BIND": "none"]) { $1 }
      .merging(environment) { $1 }
    let args = ["--parsable", "-N", "2", "--ntasks-per-node", "1", "-t", "15", "-o", run + ".log"]
    let r = try runProcess("/usr/bin/sbatch", args + [Self.batchScript, config, run] + extra, environment: env)
    let id = r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    guard r.status == 0, Int(id) != nil else { throw TrainingError.invalidArgument("sbatch failed: \(r.stderr)") }
    return id
  }

  /// The job's `JobState` and `Restarts` (`scontrol show job`).
  func job(_ id: String) -> (state: String, restarts: Int) {
    let text = (try? runProcess("/usr/bin/scontrol", ["show", "job", id, "-o"]).stdout) ?? ""
    func field(_ name: String) -> String? {
      text.split(separator: " ").first { $0.hasPrefix(name + "=") }.map { String($0.dropFirst(name.count + 1)) }
    }
    return (field("JobState") ?? "?", Int(field("Restarts") ?? "") ?? -1)
  }

  /// Polls `condition` every 0.1 s until it holds; false after `seconds`.
  static func wait(seconds: Double, _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
      if try condition() { return true }
      usleep(100_000)
    }
    return try condition()
  }

  /// Waits for the job to end (COMPLETED, FAILED, ...); its final state.
  func finish(_ id: String, seconds: Double = 240) -> String {
    _ = Self.wait(seconds: seconds) { !["PENDING", "RUNNING", "REQUEUED", "COMPLETING", "?"].contains(job(id).state) }
    return job(id).state
  }

  /// `scancel --signal=USR1 --batch`: what SLURM sends the batch shell before the time limit.
  func signal(_ id: String) throws {
    let r = try runProcess("/usr/bin/scancel", ["--signal=USR1", "--batch", id])
    guard r.status == 0 else { throw TrainingError.invalidArgument("scancel failed: \(r.stderr)") }
  }

  /// `cluster.sh node-down I` (every process of host I killed) or `node-up I`.
  func node(_ action: String, _ host: Int) throws {
    let r = try runProcess(EmulatedCluster.script, ["node-\(action)", String(host), "--prefix", Self.prefix])
    guard r.status == 0 else { throw TrainingError.invalidArgument("cluster.sh node-\(action) failed: \(r.stderr)") }
  }

  /// The rows of a run directory's job record, `slurm-jobs.jsonl`.
  static func record(_ run: String) -> [[String: Any]] {
    (try? readMetrics(run + "/slurm-jobs.jsonl")) ?? []
  }
}

/// Runs longer than a job on 2 emulated SLURM nodes (part of the serialized MPI suite, so they
/// never share this machine's cores or its subnets with the multi-host tests). Skipped, with
/// the reason printed, where namespaces or the SLURM packages cannot be had.
extension MPITests {
  /// BinaryNet's MLP (the `binarynet-mlp` preset's layers: ste_sign, weight_clip, BatchNorm
  /// without scale, Adam) at width 128, so that a debug build takes about 0.1 s a step.
  static let narrowBinaryNet = """
    model: binarynet-mlp-128
    layers:
      - {type: Flatten}
      - {type: QuantDense, units: 128, kernel_quantizer: ste_sign, kernel_constraint: weight_clip, use_bias: false}
      - {type: BatchNormalization, momentum: 0.9, scale: false}
      - {type: QuantDense, units: 128, input_quantizer: ste_sign, kernel_quantizer: ste_sign, kernel_constraint: weight_clip, use_bias: false}
      - {type: BatchNormalization, momentum: 0.9, scale: false}
      - {type: QuantDense, units: 128, input_quantizer: ste_sign, kernel_quantizer: ste_sign, kernel_constraint: weight_clip, use_bias: false}
      - {type: BatchNormalization, momentum: 0.9, scale: false}
      - {type: QuantDense, units: 2, input_quantizer: ste_sign, kernel_quantizer: ste_sign, kernel_constraint: weight_clip, use_bias: false}
      - {type: BatchNormalization, momentum: 0.9, scale: false}
      - {type: Activation, activation: softmax}
    """

  /// The data, the config, `flip train` options after them (4 epochs of 8 steps, a checkpoint
  /// every 3), and the uninterrupted 2-rank run in `dir/whole`.
  func slurmSetUp() throws -> (dir: String, config: String, options: [String]) {
    let dir = temporaryDirectory("flip-slurm")
    writeToyDataset(to: dir, train: 250, test: 64)
    try Self.narrowBinaryNet.write(toFile: dir + "/mlp.yaml", atomically: true, encoding: .utf8)
    let options = [
      "--data", dir, "--epochs", "4", "--batch-size", "32", "--checkpoint-every", "3", "--wire", "compact", "--quiet",
    ]
    let whole = try launch(
      2, ["train", "--config", dir + "/mlp.yaml", "--out", dir + "/whole", "--threads", "1"] + options)
    #expect(whole.status == 0, "\(whole.stderr)")
    return (dir, dir + "/mlp.yaml", options)
  }

  /// The chained run ends as the uninterrupted one: weights and optimizer state bit for bit,
  /// the same training losses and accuracies. BatchNorm's moving statistics (and through them
  /// the test metrics) only up to rounding: a stop's checkpoint averages them across ranks at
  /// a step where the uninterrupted run does not (as in aStoppedRunResumesAcrossHostsBitForBit).
  func expectSameRun(_ dir: String, _ run: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
    for file in ["ckpt-000032.safetensors", "model.safetensors"] {
      let (a, ma) = try ModelFile.read(path: dir + "/whole/" + file)
      let (b, mb) = try ModelFile.read(path: run + "/" + file)
      #expect(Set(a.keys) == Set(b.keys), sourceLocation: sourceLocation)
      for (name, t) in a {
        let other = b[name]?.values ?? []
        let same =
          name.contains("moving_")
          ? allClose(t.values, other, tol: 1e-5) : t.values.map(\.bitPattern) == other.map(\.bitPattern)
        #expect(same, "\(name) in \(file)", sourceLocation: sourceLocation)
      }
      #expect(ma["position"] == mb["position"] && ma["optimizer"] == mb["optimizer"], sourceLocation: sourceLocation)
    }
    let rows = { (path: String) in
      try readMetrics(path + "/metrics.jsonl").filter { $0["kind"] as? String == "epoch" }
    }
    let (a, b) = (try rows(dir + "/whole"), try rows(run))
    #expect(a.count == 4 && b.count == 4, sourceLocation: sourceLocation)
    for (x, y) in zip(a, b) {
      #expect(x["loss"] as? Double == y["loss"] as? Double, sourceLocation: sourceLocation)
      #expect(x["accuracy"] as? Double == y["accuracy"] as? Double, sourceLocation: sourceLocation)
      let (lx, ly) = (x["test_loss"] as? Double ?? -1, y["test_loss"] as? Double ?? 1)
      #expect(abs(lx - ly) < 1e-4, "test loss \(lx) vs \(ly)", sourceLocation: sourceLocation)
      #expect(x["test_accuracy"] as? Double == y["test_accuracy"] as? Double, sourceLocation: sourceLocation)
    }
  }

  /// Each job-record row as `event restart outcome` (`start 0`, `end 0 stopped`).
  static func events(_ run: String) -> [String] {
    SLURMCluster.record(run).map { row in
      ["\(row["event"] ?? "?")", "\(row["restart"] ?? "?")", row["outcome"] as? String].compactMap { $0 }
        .joined(separator: " ")
    }
  }

  /// Waits until the run in `run` has a checkpoint after step `step` while the job runs.
  static func checkpoint(after step: Int, in run: String, job: String, of cluster: SLURMCluster) -> Bool {
    SLURMCluster.wait(seconds: 120) {
      cluster.job(job).state == "RUNNING" && ((try? CheckpointFiles.list(run)) ?? []).contains { $0.step > step }
    }
  }

  /// The issue's scenario: the job is signalled twice before it finishes (`scancel --signal=USR1
  /// --batch` standing in for the time limit), stops with a checkpoint each time, requeues
  /// itself, and runs three times under one job id to the end of the uninterrupted run.
  @Test(.enabled(if: SLURMCluster.unavailableReason == nil, SLURMCluster.skipComment))
  func aSLURMJobStoppedTwiceRequeuesItselfAndEndsAsOneRun() throws {
    let cluster = try SLURMCluster.up(hosts: 2)
    defer { cluster.down() }
    let (dir, config, options) = try slurmSetUp()
    let run = dir + "/run"
    let id = try cluster.submit(config: config, run: run, options)
    let log = { (try? String(contentsOfFile: run + ".log", encoding: .utf8)) ?? "(no log)" }
    var stopped = 0
    for restart in 0..<2 {
      #expect(Self.checkpoint(after: stopped, in: run, job: id, of: cluster), "run \(restart): \(log())")
      try cluster.signal(id)
      let ended = SLURMCluster.wait(seconds: 60) { Self.events(run).count == 2 * restart + 2 }
      #expect(ended, "run \(restart) did not end: \(Self.events(run)) \(log())")
      stopped = try CheckpointFiles.list(run).map(\.step).max() ?? 0
      #expect(stopped < 32, "run \(restart) finished before the signal: \(log())")
    }
    #expect(cluster.finish(id) == "COMPLETED", "\(log())")
    #expect(cluster.job(id).restarts == 2)
    let events = ["start 0", "end 0 stopped", "start 1", "end 1 stopped", "start 2", "end 2 finished"]
    #expect(Self.events(run) == events, "\(log())")
    #expect(Set(SLURMCluster.record(run).map { "\($0["job"] ?? "")" }) == [id])
    #expect(log().components(separatedBy: "(signal SIGUSR1)").count == 3, "\(log())")
    try expectSameRun(dir, run)
  }

  /// A node that fails (its slurmd and the job's processes on it killed): the job ends, is
  /// requeued, and once the node is back resumes from the newest checkpoint written before
  /// the failure, ending with the uninterrupted run's bits.
  @Test(.enabled(if: SLURMCluster.unavailableReason == nil, SLURMCluster.skipComment))
  func aSLURMJobWhoseNodeFailsResumesOnceTheNodeIsBack() throws {
    let cluster = try SLURMCluster.up(hosts: 2)
    defer { cluster.down() }
    let (dir, config, options) = try slurmSetUp()
    let run = dir + "/run"
    let id = try cluster.submit(config: config, run: run, options)
    let log = { (try? String(contentsOfFile: run + ".log", encoding: .utf8)) ?? "(no log)" }
    #expect(Self.checkpoint(after: 0, in: run, job: id, of: cluster), "\(log())")
    try cluster.node("down", 2)  // the batch shell runs on the first node
    let newest = try CheckpointFiles.list(run).map(\.step).max() ?? 0
    let ended = SLURMCluster.wait(seconds: 60) { Self.events(run).count >= 2 }
    #expect(ended, "the job did not end after the node failure: \(Self.events(run)) \(log())")
    try cluster.node("up", 2)
    #expect(cluster.finish(id) == "COMPLETED", "\(log())")
    #expect(Self.events(run).first { $0.hasPrefix("end 0") } == "end 0 failed", "\(Self.events(run))")
    #expect(Self.events(run).last == "end \(cluster.job(id).restarts) finished", "\(Self.events(run))")
    #expect(log().contains("resuming from \(run)/ckpt-\(String(format: "%06d", newest)).safetensors"), "\(log())")
    try expectSameRun(dir, run)
  }

  /// Inside an allocation the ranks start under `srun --mpi=pmix` as well as under `mpirun`
  /// (which the batch script uses): Flip takes a PMIx launch for an MPI one.
  @Test(.enabled(if: SLURMCluster.unavailableReason == nil, SLURMCluster.skipComment))
  func srunWithPMIxStartsTheRanksOnTwoNodes() throws {
    let cluster = try SLURMCluster.up(hosts: 2)
    defer { cluster.down() }
    let r = try runProcess(
      "/usr/bin/srun", ["-N", "2", "--ntasks-per-node", "1", "--mpi=pmix", "-t", "2", flipExecutable, "mpi-check"],
      environment: cluster.openMPIEnvironment)
    #expect(r.status == 0, "\(r.stderr)")
    #expect(r.stdout.contains("mpi-check: 2 ranks, 22 checks passed"), "\(r.stdout) \(r.stderr)")
  }

  /// A job that fails every time (here: its config file is missing) is requeued
  /// FLIP_MAX_RESTARTS times and then left to fail.
  @Test(.enabled(if: SLURMCluster.unavailableReason == nil, SLURMCluster.skipComment))
  func aSLURMJobThatKeepsFailingStopsRequeueingAfterMaxRestarts() throws {
    let cluster = try SLURMCluster.up(hosts: 2)
    defer { cluster.down() }
    let dir = temporaryDirectory("flip-slurm")
    let run = dir + "/run"
    let id = try cluster.submit(
      config: dir + "/missing.yaml", run: run, ["--data", dir], environment: ["FLIP_MAX_RESTARTS": "2"])
    #expect(cluster.finish(id) == "FAILED")
    #expect(cluster.job(id).restarts == 2)
    let ends = SLURMCluster.record(run).filter { $0["event"] as? String == "end" }
    #expect(ends.map { $0["outcome"] as? String } == ["failed", "failed", "failed"], "\(ends)")
    #expect(ends.map { $0["requeued"] as? Bool } == [true, true, false], "\(ends)")
  }
}

/// The batch script's decisions without SLURM: `mpirun` and `scontrol` replaced by stubs that
/// exit with a chosen status and log their arguments, `SLURM_JOB_ID` and `SLURM_RESTART_COUNT`
/// set as SLURM sets them.
@Suite("slurm-example.sh decisions")
struct SLURMScriptTests {
  /// Runs the script once as run `restart` of job 7 whose `mpirun` exits `status`; the
  /// script's status, and the `scontrol` and `mpirun` calls it made.
  static func run(_ dir: String, restart: Int, status: Int, maxRestarts: Int = 3) throws -> (
    status: Int32, scontrol: String, mpirun: String
  ) {
    let bin = dir + "/bin"
    try FileManager.default.createDirectory(atPath: bin, withIntermediateDirectories: true)
    for (name, exit) in [("mpirun", status), ("scontrol", 0)] {
      let stub = "#!/bin/sh\necho \"$*\" >> \(dir)/\(name).calls\nexit \(exit)\n"
      try stub.write(toFile: bin + "/" + name, atomically: true, encoding: .utf8)
      chmod(bin + "/" + name, 0o755)
    }
    for name in ["mpirun", "scontrol"] { try? FileManager.default.removeItem(atPath: "\(dir)/\(name).calls") }
    let env = [
      "PATH": bin + ":" + (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"),
      "SLURM_JOB_ID": "7", "SLURM_RESTART_COUNT": String(restart), "FLIP_MAX_RESTARTS": String(maxRestarts),
    ]
    let r = try runProcess("/bin/bash", [SLURMCluster.batchScript, dir + "/c.yaml", dir + "/run"], environment: env)
    let calls = { (name: String) in (try? String(contentsOfFile: "\(dir)/\(name).calls", encoding: .utf8)) ?? "" }
    return (r.status, calls("scontrol"), calls("mpirun"))
  }

  @Test func requeuesOnStatus75OnlyAndCountsFailuresInARow() throws {
    let dir = temporaryDirectory("flip-slurm-script")
    let stopped = try Self.run(dir, restart: 0, status: 75)
    #expect(stopped.status == 0 && stopped.scontrol == "requeue 7\n", "\(stopped)")
    #expect(stopped.mpirun.contains("train --config \(dir)/c.yaml --resume-or-start \(dir)/run"), "\(stopped)")
    // Three failures in a row are requeued; the fourth is not.
    for restart in 1...3 {
      let failed = try Self.run(dir, restart: restart, status: 1)
      #expect(failed.status == 0 && failed.scontrol == "requeue 7\n", "run \(restart): \(failed)")
    }
    let last = try Self.run(dir, restart: 4, status: 1)
    #expect(last.status == 1 && last.scontrol.isEmpty, "\(last)")
    let finished = try Self.run(dir, restart: 5, status: 0, maxRestarts: 9)
    #expect(finished.status == 0 && finished.scontrol.isEmpty, "\(finished)")
    let outcomes = SLURMCluster.record(dir + "/run").compactMap { $0["outcome"] as? String }
    #expect(outcomes == ["stopped", "failed", "failed", "failed", "failed", "finished"])
  }

  /// A start without an end (the batch node died) counts as a failure; past the limit the
  /// script gives up without starting flip. A run that stopped to be continued resets the count.
  @Test func aRunWithoutAnEndCountsAsFailedAndTheLimitGivesUp() throws {
    let dir = temporaryDirectory("flip-slurm-script")
    try FileManager.default.createDirectory(atPath: dir + "/run", withIntermediateDirectories: true)
    let rows = [
      #"{"job": "7", "restart": 0, "event": "start"}"#,
      #"{"job": "7", "restart": 0, "event": "end", "status": 1, "outcome": "failed", "requeued": true}"#,
      #"{"job": "7", "restart": 1, "event": "start"}"#,
      #"{"job": "7", "restart": 2, "event": "start"}"#,
      #"{"job": "7", "restart": 2, "event": "end", "status": 75, "outcome": "stopped", "requeued": true}"#,
      #"{"job": "7", "restart": 3, "event": "start"}"#,
      #"{"job": "8", "restart": 0, "event": "start"}"#,
      #"{"job": "7", "restart": 4, "event": "start"}"#,
    ]
    try (rows.joined(separator: "\n") + "\n").write(
      toFile: dir + "/run/slurm-jobs.jsonl", atomically: true, encoding: .utf8)
    // Runs 3 and 4 of job 7 have no end: two failures since run 2 stopped; job 8 is another job.
    let allowed = try Self.run(dir, restart: 5, status: 75, maxRestarts: 2)
    #expect(allowed.status == 0 && !allowed.mpirun.isEmpty, "\(allowed)")
    let lost = #"{"job": "7", "restart": 6, "event": "start"}"# + "\n"
    try (try String(contentsOfFile: dir + "/run/slurm-jobs.jsonl", encoding: .utf8) + lost + lost + lost)
      .write(toFile: dir + "/run/slurm-jobs.jsonl", atomically: true, encoding: .utf8)
    let refused = try Self.run(dir, restart: 7, status: 0, maxRestarts: 2)
    #expect(refused.status == 1 && refused.mpirun.isEmpty && refused.scontrol.isEmpty, "\(refused)")
    #expect(SLURMCluster.record(dir + "/run").last?["outcome"] as? String == "gave-up")
  }
}
