import Foundation

/// A fault a test makes a rank inject into itself at the start of a (global, 1-based) step.
public struct InjectedFault: Sendable, Equatable {
  public enum Action: Sendable, Equatable {
    /// Throw an error (the job must end non-zero at once).
    case fail
    /// SIGKILL itself (nothing can be cleaned up; the last checkpoint must be valid).
    case kill
    /// Raise this signal (a stop request, or SIGSTOP: a rank that hangs).
    case signal(Int32)
    /// Change one weight on this rank only (the replica checksum must catch it).
    case perturb
    /// Run the int8 convolutions unscaled, as before they were made exact on every ISA: on
    /// an ISA without VNNI their results are wrong (the start-up kernel check must catch it).
    /// Applied before training starts, whatever the step.
    case unscaledInt8
  }
  public var action: Action
  public var rank: Int
  public var step: Int
  public init(action: Action, rank: Int, step: Int) {
    self.action = action
    self.rank = rank
    self.step = step
  }

  /// Parses `action:rank:step` (action: fail, kill, usr1, term, int, stop, perturb, unscaled-int8),
  /// e.g. `kill:0:5`.
  public init?(_ text: String) {
    let parts = text.split(separator: ":").map(String.init)
    guard parts.count == 3, let rank = Int(parts[1]), let step = Int(parts[2]), rank >= 0, step >= 1 else { return nil }
    switch parts[0].lowercased() {
    case "fail": action = .fail
    case "kill": action = .kill
    case "usr1": action = .signal(SIGUSR1)
    case "term": action = .signal(SIGTERM)
    case "int": action = .signal(SIGINT)
    case "stop": action = .signal(SIGSTOP)
    case "perturb": action = .perturb
    case "unscaled-int8": action = .unscaledInt8
    default: return nil
    }
    self.rank = rank
    self.step = step
  }
}

extension Trainer {
  /// Makes this rank inject `faults` into itself at the start of their steps (tests; the
  /// built binary reads them from `FLIP_TEST_FAULT`).
  func injectFaults(_ faults: [InjectedFault]) {
    let mine = faults.filter { $0.rank == communicator.rank }
    guard !mine.isEmpty else { return }
    beforeStep = { [unowned self] step in
      for f in mine where f.step == step {
        switch f.action {
        case .fail: throw TrainingError.invalidArgument("injected failure at step \(f.step) (FLIP_TEST_FAULT)")
        case .kill:
          // The checkpoints submitted so far reach the disk first, so tests know which one a
          // resume starts from; then nothing is cleaned up.
          _ = checkpointWriter?.wait()
          kill(getpid(), SIGKILL)
        case .signal(let s): raise(s)
        case .perturb: model.store.values.pointer[0] = model.store.values.pointer[0].nextUp
        case .unscaledInt8: break  // applied before training starts (flip train)
        }
      }
    }
  }
}

extension InjectedFault {
  /// The faults `FLIP_TEST_FAULT` asks for (`action:rank:step[,...]`); none when it is unset.
  public static func fromEnvironment() throws -> [InjectedFault] {
    guard let faults = ProcessInfo.processInfo.environment["FLIP_TEST_FAULT"] else { return [] }
    return try faults.split(separator: ",").map { text in
      guard let f = InjectedFault(String(text)) else {
        throw TrainingError.invalidArgument(
          "FLIP_TEST_FAULT must be action:rank:step[,...] (action: fail, kill, usr1, term, int, stop, perturb, unscaled-int8), got \(faults)"
        )
      }
      return f
    }
  }
}
