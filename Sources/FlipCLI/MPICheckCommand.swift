import ArgumentParser
import FlipTraining
import Foundation

/// `flip mpi-check`: the job's communication, checked on known patterns before a long run.
struct MPICheckCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "mpi-check",
    abstract: "Check every collective that training uses, on the ranks of this job.",
    discussion: """
      Run it the way you run training (same mpirun flags, hostfile and transport):

        mpirun -np 4 --hostfile hostfiles/<cluster> .build/release/flip mpi-check

      Each rank contributes known values whose sums are exact, through the calls training
      makes: blocking and started all-reduces (bucketed, with a bucket cap smaller than a
      tensor, one bucket, an empty gradient), the sharded step's reduce-scatter and all-gather,
      broadcasts and checksum gathers, at sizes from 0 to over 4 MB. Prints the checks that
      passed; a wrong result names the check and the element, and the job exits non-zero.
      Without mpirun it runs on one process.
      """)

  @Flag(
    name: .long,
    help: ArgumentHelp(
      "Also time the sharded step's collectives (fp32 and bf16 reduce-scatter, all-gather) from 1 KiB to 16 MiB and fit latency and bandwidth.",
      discussion:
        "Prints, per collective, the time per call at each size and the fit t = (N − 1)·α + β·bytes sent per rank; scripts/scaling-model.py predicts step times for more nodes from the --json output."
    ))
  var timing = false
  @Option(name: .long, help: "With --timing: calls per size and round (default 10).")
  var repeats = 10
  @Flag(name: .long, help: "With --timing: print the timings and fits as one JSON object.")
  var json = false
  @Flag(name: .long, help: "Print debug logs.")
  var verbose = false

  func validate() throws {
    if repeats <= 0 { throw ValidationError("--repeats must be positive, got \(repeats)") }
    if json && !timing { throw ValidationError("--json needs --timing") }
  }

  static let sizes = [1 << 10, 1 << 12, 1 << 14, 1 << 16, 1 << 18, 1 << 20, 1 << 22, 1 << 24]

  func run() throws {
    try Runtime.run(verbose: verbose) { communicator, logger in
      var check = CommunicationCheck(communicator: communicator)
      try check.run()
      for name in check.passed { logger.debug("passed: \(name)") }
      if communicator.isRoot && !json {
        print(
          "mpi-check: \(communicator.size) rank\(communicator.size == 1 ? "" : "s"), \(check.passed.count) checks passed"
        )
      }
      guard timing else { return }
      let hosts = try communicator.hostCount()
      let points = try CommunicationTiming(communicator: communicator).measure(sizes: Self.sizes, repeats: repeats)
      let fits = CommunicationTiming.fit(points, ranks: communicator.size)
      guard communicator.isRoot else { return }
      if json {
        let report = TimingReport(
          ranks: communicator.size, hosts: hosts,
          points: points.map {
            .init(collective: $0.collective, buffer_bytes: $0.bufferBytes, sent_bytes: $0.sentBytes, ms: $0.milliseconds)
          },
          fits: fits.map {
            .init(
              collective: $0.collective, alpha_ms: $0.alphaMilliseconds, beta_ms_per_byte: $0.betaMillisecondsPerByte,
              gbit_per_s: $0.gigabitsPerSecond)
          })
        print(try jsonLine(report))
        return
      }
      print("timing on \(communicator.size) ranks, \(hosts) host\(hosts == 1 ? "" : "s") (ms per call, median of 3 rounds of \(repeats)):")
      print("buffer".padding(toLength: 10, withPad: " ", startingAt: 0) + CommunicationTiming.collectives.map { $0.padding(toLength: 22, withPad: " ", startingAt: 0) }.joined())
      for size in Self.sizes {
        let row = CommunicationTiming.collectives.map { name in
          let p = points.first { $0.collective == name && abs($0.bufferBytes - size) <= communicator.size * 4 }
          return String(format: "%-22.3f", p?.milliseconds ?? .nan)
        }
        print(ByteCountFormatter.string(fromByteCount: Int64(size), countStyle: .binary).padding(toLength: 10, withPad: " ", startingAt: 0) + row.joined())
      }
      for f in fits {
        print(
          String(
            format: "%@: α = %.3f ms per message, β = %.2f Gbit/s", f.collective, f.alphaMilliseconds,
            f.gigabitsPerSecond))
      }
    }
  }
}

/// `flip mpi-check --timing --json`: the measured points and the fitted links.
struct TimingReport: Encodable {
  struct Point: Encodable {
    var collective: String
    var buffer_bytes: Int
    var sent_bytes: Int
    var ms: Double
  }
  struct Fit: Encodable {
    var collective: String
    var alpha_ms: Double
    var beta_ms_per_byte: Double
    var gbit_per_s: Double
  }
  var ranks: Int
  var hosts: Int
  var points: [Point]
  var fits: [Fit]
}

/// `value` as one line of JSON with sorted keys (the commands' `--json` output).
func jsonLine<T: Encodable>(_ value: T) throws -> String {
  let encoder = JSONEncoder()
  encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
  return String(decoding: try encoder.encode(value), as: UTF8.self)
}
