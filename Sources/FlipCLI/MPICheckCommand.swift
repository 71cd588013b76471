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

  @Flag(name: .long, help: "Print debug logs.")
  var verbose = false

  func run() throws {
    try Runtime.run(verbose: verbose) { communicator, logger in
      var check = CommunicationCheck(communicator: communicator)
      try check.run()
      for name in check.passed { logger.debug("passed: \(name)") }
      if communicator.isRoot {
        print(
          "mpi-check: \(communicator.size) rank\(communicator.size == 1 ? "" : "s"), \(check.passed.count) checks passed"
        )
      }
    }
  }
}
