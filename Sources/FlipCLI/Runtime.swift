import ArgumentParser
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
  @discardableResult
  static func configureThreads(_ requested: Int?, localRanks: Int) -> Int {
    let cores = ProcessInfo.processInfo.activeProcessorCount
    let n = requested ?? max(1, cores / max(1, localRanks))
    OneDNN.setThreads(n)
    return n
  }

  /// `configureThreads`, with the compute setup logged.
  @discardableResult
  static func configureThreads(_ requested: Int?, localRanks: Int, logger: Logger, communicator: Communicator) -> Int {
    let threads = configureThreads(requested, localRanks: localRanks)
    logger.info("\(describeCompute(threads: threads, communicator: communicator))")
    return threads
  }

  /// One line on the compute setup, logged at start-up.
  static func describeCompute(threads: Int, communicator: Communicator) -> String {
    "oneDNN \(OneDNN.version) ISA \(OneDNN.effectiveISA), \(threads) thread\(threads == 1 ? "" : "s") per rank, "
      + "\(communicator.size) rank\(communicator.size == 1 ? "" : "s") (\(communicator is SingleProcessCommunicator ? "single process" : MPIRuntime.libraryVersion))"
  }

  /// The communicator of this process: MPI's world when started by `mpirun`, else one process.
  static func makeCommunicator(progressThread: Bool = false) throws -> Communicator {
    MPIRuntime.launchedByMPI ? try MPICommunicator(progressThread: progressThread) : SingleProcessCommunicator()
  }

  /// Runs a command's `body` with this process's communicator and logger, then finalizes MPI.
  /// Any error is printed once per failing rank as one line, and ends the whole job
  /// (`MPI_Abort` when there are other ranks, so none is left waiting in a collective).
  static func run(verbose: Bool, progressThread: Bool = false, _ body: (Communicator, Logger) throws -> Void) throws {
    let communicator: Communicator
    do { communicator = try makeCommunicator(progressThread: progressThread) } catch {
      report(error, rank: 0)
      throw ExitCode.failure
    }
    let logger = makeLogger(rank: communicator.rank, verbose: verbose)
    do {
      try body(communicator, logger)
    } catch {
      report(error, rank: communicator.rank)
      if communicator.size > 1 { communicator.abort(code: 1) }
      communicator.finalize()
      throw ExitCode.failure
    }
    communicator.finalize()
  }

  static func report(_ error: Error, rank: Int) {
    let who = rank == 0 ? "flip" : "flip[rank \(rank)]"
    let text = (error as? ValidationError)?.message ?? "\(error)"
    FileHandle.standardError.write(Data("\(who): error: \(text)\n".utf8))
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

  func log(event: LogEvent) {
    let who = rank == 0 ? "flip" : "flip[rank \(rank)]"
    let tag = event.level >= .warning ? " \(event.level)" : ""
    FileHandle.standardError.write(Data("\(who)\(tag): \(event.message)\n".utf8))
  }

}
