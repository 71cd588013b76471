import Dispatch
import FlipComm
import Foundation
import Logging

/// Rank 0's watch on collectives that do not complete, like Horovod's stall inspector.
///
/// Every rank publishes its position (global step and phase) on rank 0's progress board (an
/// MPI one-sided window, `Communicator.openProgressBoard`) as it enters each phase; rank 0
/// also notes when it starts waiting in a collective. A thread of rank 0's own reads the board
/// without any MPI call: when rank 0 has waited `warning` seconds, it logs one line naming
/// the collective, the step and every rank that has not reached it
/// (`stall: step 120, gradient bucket 3 waited 60 s for rank 1`); after `timeout` seconds
/// (if set) it ends the job (`MPI_Abort`), and the last checkpoint stays.
public final class StallInspector: @unchecked Sendable {
  /// A phase of a step, in the order a step goes through them.
  public enum Phase: Sendable, Equatable {
    case compute, bucket(Int), gathers, allreduce, metrics, replicaCheck, evaluation, checkpoint

    var code: Int64 {
      switch self {
      case .compute: return 1
      case .bucket(let b): return 10 + Int64(min(b, 1400))
      case .gathers: return 1500
      case .allreduce: return 1600
      case .metrics: return 2000
      case .replicaCheck: return 3000
      case .evaluation: return 4000
      case .checkpoint: return 5000
      }
    }

    var name: String {
      switch self {
      case .compute: return "compute"
      case .bucket(let b): return "gradient bucket \(b)"
      case .gathers: return "the all-gathers of the updated variables"
      case .allreduce: return "the gradient all-reduce"
      case .metrics: return "the step's metrics all-reduce"
      case .replicaCheck: return "the replica check"
      case .evaluation: return "evaluation"
      case .checkpoint: return "the checkpoint"
      }
    }
  }

  let communicator: Communicator
  public let warning: Double
  public let timeout: Double?
  let logger: Logger
  private let condition = NSCondition()
  private var waitingSince: UInt64?
  private var waitingPosition: Int64 = -1
  private var waitingStep = 0
  private var waitingName = ""
  private var warnedPosition: Int64 = -1
  private var stopped = false
  /// Lines rank 0 logged (for tests).
  public private(set) var reports: [String] = []

  /// Opens the progress board (collective). Without one (one process, or a transport without
  /// one-sided windows) the inspector does nothing.
  public init(communicator: Communicator, warning: Double, timeout: Double?, logger: Logger) throws {
    self.communicator = communicator
    self.warning = warning
    self.timeout = timeout
    self.logger = logger
    guard communicator.size > 1 else { return }
    do {
      guard try communicator.openProgressBoard() else { return }
    } catch {
      // Collective failure: every rank gets it. Training goes on without the inspector.
      if communicator.isRoot {
        logger.warning("stall inspector off: this transport has no one-sided window for it (\(error))")
      }
      return
    }
    if communicator.isRoot {
      let thread = Thread { [weak self] in self?.watch() }
      thread.name = "flip-stall-inspector"
      thread.start()
    }
  }

  deinit { stop() }

  /// Stops rank 0's thread.
  public func stop() {
    condition.lock()
    stopped = true
    condition.signal()
    condition.unlock()
  }

  /// This rank enters `phase` of global step `step`; `waiting` when it is about to block in
  /// a collective.
  public func enter(step: Int, _ phase: Phase, waiting: Bool) throws {
    let position = Int64(step) << 16 | phase.code
    try communicator.publishProgress(position)
    guard communicator.isRoot else { return }
    condition.lock()
    waitingSince = waiting ? DispatchTime.now().uptimeNanoseconds : nil
    waitingPosition = position
    waitingStep = step
    waitingName = phase.name
    condition.unlock()
  }

  /// Rank 0's thread: every 0.2 s, compares how long rank 0 has waited with the limits.
  private func watch() {
    condition.lock()
    defer { condition.unlock() }
    while !stopped {
      _ = condition.wait(until: Date(timeIntervalSinceNow: 0.2))
      guard !stopped, let since = waitingSince else { continue }
      let waited = Double(DispatchTime.now().uptimeNanoseconds - since) / 1e9
      guard waited >= warning else { continue }
      let behind = (communicator.publishedProgress() ?? []).enumerated().filter { $0.element < waitingPosition }
        .map(\.offset)
      guard !behind.isEmpty else { continue }
      let ranks = behind.map { "rank \($0)" }.joined(separator: ", ")
      let line = "stall: step \(waitingStep), \(waitingName) waited \(Int(waited)) s for \(ranks)"
      if warnedPosition != waitingPosition {
        warnedPosition = waitingPosition
        reports.append(line)
        logger.warning("\(line)")
      }
      if let timeout, waited >= timeout {
        logger.error(
          "\(line); --stall-timeout \(Int(timeout)) s reached: ending the job (the last checkpoint is kept)")
        communicator.abort(code: 1)
      }
    }
  }
}
