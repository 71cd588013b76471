import FlipComm
import FlipTensor
import FlipTraining
import Foundation
import Logging

/// Process-wide setup shared by the commands: logging, threads, the communicator.
enum Runtime {
  /// Logs go to standard error; ranks above 0 log warnings and errors only, prefixed by rank.
  static func makeLogger(rank: Int, verbose: Bool) -> Logger {
    var logger = Logger(label: "flip") { _ in FlipLogHandler(rank: rank) }
    logger.logLevel = rank == 0 ? (verbose ? .debug : .info) : .warning
    return logger
  }

  /// Sets oneDNN's thread count (explicitly, never from the environment) and returns it.
  static func configureThreads(_ requested: Int?, localRanks: Int) -> Int {
    let cores = ProcessInfo.processInfo.activeProcessorCount
    let n = requested ?? max(1, cores / max(1, localRanks))
    OneDNN.setThreads(n)
    return n
  }

  /// One line on the compute setup, logged at start-up.
  static func describeCompute(threads: Int, communicator: Communicator) -> String {
    "oneDNN \(OneDNN.version) ISA \(OneDNN.effectiveISA), \(threads) thread\(threads == 1 ? "" : "s") per rank, "
      + "\(communicator.size) rank\(communicator.size == 1 ? "" : "s") (\(communicator is SingleProcessCommunicator ? "single process" : MPIRuntime.libraryVersion))"
  }

  /// The communicator of this process. This build runs one process; started by `mpirun` with
  /// more than one rank it refuses, rather than let N copies train alone and overwrite each
  /// other's files.
  static func makeCommunicator() throws -> Communicator {
    let env = ProcessInfo.processInfo.environment
    if let size = env["OMPI_COMM_WORLD_SIZE"].flatMap(Int.init), size > 1 {
      throw TrainingError.invalidArgument(
        "started by mpirun with \(size) ranks, but this build of flip trains in one process; run it without mpirun (or with -np 1)"
      )
    }
    return SingleProcessCommunicator()
  }
}

/// A compact log format: `flip: message` on rank 0, `flip[rank 3] warning: message` elsewhere.
struct FlipLogHandler: LogHandler {
  let rank: Int
  var logLevel: Logger.Level = .info
  var metadata: Logger.Metadata = [:]

  subscript(metadataKey key: String) -> Logger.Metadata.Value? {
    get { metadata[key] }
    set { metadata[key] = newValue }
  }

  func log(
    level: Logger.Level, message: Logger.Message, metadata: Logger.Metadata?, source: String, file: String,
    function: String, line: UInt
  ) {
    let who = rank == 0 ? "flip" : "flip[rank \(rank)]"
    let tag = level >= .warning ? " \(level)" : ""
    FileHandle.standardError.write(Data("\(who)\(tag): \(message)\n".utf8))
  }
}
