import Foundation
import Testing

@testable import FlipTraining

/// An emulated cluster of `scripts/cluster.sh` (network namespaces joined by a bridge) for
/// one test: ranks on different hosts talk over TCP across real (virtual) links.
struct EmulatedCluster {
  static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .deletingLastPathComponent().deletingLastPathComponent().path
  static let script = repository + "/scripts/cluster.sh"
  static let prefix = "flipt"

  /// Why emulated hosts cannot be made here (nil when they can): not root, or namespaces,
  /// bridges or /etc/hosts not writable (an unprivileged container). Found by making a
  /// one-host cluster and removing it.
  static let unavailableReason: String? = {
    guard geteuid() == 0 else { return "emulated hosts need root (ip netns)" }
    guard let probe = try? runProcess(script, ["up", "1", "--prefix", "fliptprobe"]) else {
      return "cannot run \(script)"
    }
    _ = try? runProcess(script, ["down", "--prefix", "fliptprobe"])
    guard probe.status == 0 else {
      return "cluster.sh cannot make hosts here: \(probe.stderr.trimmingCharacters(in: .whitespacesAndNewlines))"
    }
    return nil
  }()

  static var skipComment: Comment { Comment(rawValue: "skipped: \(unavailableReason ?? "")") }

  /// The mpirun flags that launch ranks on the hosts.
  let flags: [String]

  /// Brings up `hosts` hosts (links capped at `rate` when given); call `down()` after.
  static func up(hosts: Int, rate: String? = nil) throws -> EmulatedCluster {
    let up = try runProcess(
      script, ["up", String(hosts), "--prefix", prefix] + (rate.map { ["--rate", $0] } ?? []))
    guard up.status == 0 else {
      throw TrainingError.invalidArgument("cluster.sh up failed (\(up.status)): \(up.stderr)")
    }
    let flags = try runProcess(script, ["flags", "--prefix", prefix])
    guard flags.status == 0 else { throw TrainingError.invalidArgument("cluster.sh flags failed: \(flags.stderr)") }
    return EmulatedCluster(
      flags: flags.stdout.split(whereSeparator: \.isWhitespace).map(String.init))
  }

  func down() { _ = try? runProcess(Self.script, ["down", "--prefix", Self.prefix]) }

  /// `flipt-h1:k,flipt-h2:k,...`: `perHost` slots on each of `hosts` hosts.
  static func hosts(_ hosts: Int, perHost: Int) -> String {
    (1...hosts).map { "\(prefix)-h\($0):\(perHost)" }.joined(separator: ",")
  }

  /// `flip arguments` on `ranks` ranks spread evenly over `hosts` hosts.
  func launch(_ ranks: Int, hosts: Int, _ arguments: [String], environment: [String: String] = [:]) throws
    -> ProcessResult
  {
    var args = flags + ["-np", String(ranks), "--host", Self.hosts(hosts, perHost: ranks / hosts)]
    for (k, v) in environment { args += ["-x", "\(k)=\(v)"] }
    return try runProcess(MPITests.mpirun, args + [flipExecutable] + arguments)
  }
}

/// Training across emulated hosts (part of the serialized MPI suite). Skipped, with the reason
/// printed, where network namespaces cannot be made.
extension MPITests {
  @Test(.enabled(if: EmulatedCluster.unavailableReason == nil, EmulatedCluster.skipComment))
  func twoAndFourRanksOnTwoHostsTrainLikeOneProcess() throws {
    let cluster = try EmulatedCluster.up(hosts: 2)
    defer { cluster.down() }
    let dir = temporaryDirectory("flip-hosts")
    writeToyDataset(to: dir, train: 250, test: 64)
    try Self.noBatchNorm.write(toFile: dir + "/tiny.yaml", atomically: true, encoding: .utf8)
    let common = [
      "train", "--config", dir + "/tiny.yaml", "--data", dir, "--epochs", "2", "--batch-size", "32", "--threads", "1",
      "--check-every", "1", "--wire", "fp32",
    ]
    let single = try runFlip(common + ["--out", dir + "/one"])
    #expect(single.status == 0, "\(single.stderr)")
    for ranks in [2, 4] {
      let r = try cluster.launch(ranks, hosts: 2, common + ["--out", dir + "/\(ranks)"])
      #expect(r.status == 0, "\(ranks) ranks: \(r.stderr)")
      try expectSameTraining(dir + "/one", dir + "/\(ranks)", epochs: 2)
    }
    // Across hosts `--wire auto` picks the compact wire.
    let auto = try cluster.launch(
      2, hosts: 2, Array(common.dropLast(2)) + ["--out", dir + "/auto", "--progress", "lines"])
    #expect(auto.status == 0, "\(auto.stderr)")
    #expect(auto.stderr.contains("compact wire"), "\(auto.stderr)")
  }

  @Test(.enabled(if: EmulatedCluster.unavailableReason == nil, EmulatedCluster.skipComment))
  func mpiCheckPassesAcrossHosts() throws {
    let cluster = try EmulatedCluster.up(hosts: 2, rate: "1gbit")
    defer { cluster.down() }
    for ranks in [2, 4] {
      let r = try cluster.launch(ranks, hosts: 2, ["mpi-check"])
      #expect(r.status == 0, "\(r.stderr)")
      #expect(r.stdout.contains("mpi-check: \(ranks) ranks, 22 checks passed"), "\(r.stdout)")
    }
  }

  @Test(.enabled(if: EmulatedCluster.unavailableReason == nil, EmulatedCluster.skipComment))
  func aKilledRankEndsTheJobOnBothHosts() throws {
    let cluster = try EmulatedCluster.up(hosts: 2)
    defer { cluster.down() }
    let dir = try ResumeTests.setUp()
    let start = Date()
    let r = try cluster.launch(
      2, hosts: 2, resumeArguments(dir, out: dir + "/run"), environment: ["FLIP_TEST_FAULT": "kill:1:5"])
    #expect(r.status != 0)
    #expect(Date().timeIntervalSince(start) < 30)
    // The checkpoint before the kill is intact.
    _ = try ModelFile.read(path: dir + "/run/ckpt-000003.safetensors")
  }

  /// Stopped by SIGUSR1 on the second host at step 5, then resumed across the hosts (on the
  /// compact wire, which `auto` picks there): the same bits as the run that never stopped.
  /// BatchNorm's moving statistics are the exception: the stop's checkpoint averages them
  /// across ranks once more than the uninterrupted run does (they feed only evaluation, so
  /// weights and optimizer state are unaffected), and averaging at another step rounds
  /// differently.
  @Test(.enabled(if: EmulatedCluster.unavailableReason == nil, EmulatedCluster.skipComment))
  func aStoppedRunResumesAcrossHostsBitForBit() throws {
    let cluster = try EmulatedCluster.up(hosts: 2)
    defer { cluster.down() }
    let dir = try ResumeTests.setUp()
    let whole = try cluster.launch(2, hosts: 2, resumeArguments(dir, out: dir + "/whole"))
    #expect(whole.status == 0, "\(whole.stderr)")
    let stopped = try cluster.launch(
      2, hosts: 2, resumeArguments(dir, out: dir + "/run"), environment: ["FLIP_TEST_FAULT": "usr1:1:5"])
    #expect(stopped.status == 0, "\(stopped.stderr)")
    #expect(stopped.stderr.contains("stopped at step 5"), "\(stopped.stderr)")
    let resumed = try cluster.launch(2, hosts: 2, ["train", "--resume", dir + "/run", "--threads", "1", "--quiet"])
    #expect(resumed.status == 0, "\(resumed.stderr)")
    for file in ["ckpt-000024.safetensors", "model.safetensors"] {
      let (a, _) = try ModelFile.read(path: dir + "/whole/" + file)
      let (b, _) = try ModelFile.read(path: dir + "/run/" + file)
      #expect(Set(a.keys) == Set(b.keys))
      for (name, t) in a {
        let other = b[name]?.values ?? []
        if name.contains("moving_") {
          #expect(allClose(t.values, other, tol: 1e-5), "\(name) in \(file)")
        } else {
          #expect(t.values.map(\.bitPattern) == other.map(\.bitPattern), "\(name) in \(file)")
        }
      }
    }
  }
}
