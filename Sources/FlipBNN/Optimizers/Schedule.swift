import Foundation

/// A hyperparameter's value over training: a constant or a schedule, as Keras's
/// `LearningRateSchedule`s and Larq's `HyperparameterScheduler` define them.
///
/// `t` is the number of optimizer steps already taken (Keras's `iterations`) when the schedule
/// runs per step, or the 0-based epoch index when it runs per epoch.
public indirect enum Schedule: Equatable, Sendable {
  case constant(Double)
  /// `v = initial · rate^(t/decay_steps)`, the exponent floored when `staircase` (Keras's
  /// `ExponentialDecay`).
  case exponentialDecay(initial: Double, decaySteps: Int, decayRate: Double, staircase: Bool)
  /// `values[i]` for `boundaries[i−1] < t ≤ boundaries[i]` (Keras's `PiecewiseConstantDecay`).
  case stepDecay(boundaries: [Int], values: [Double])
  /// `v = initial · ((1 − α)·½(1 + cos(π·min(t, decay_steps)/decay_steps)) + α)` (Keras's `CosineDecay`).
  case cosineDecay(initial: Double, decaySteps: Int, alpha: Double)
  /// `v = (initial − end)·(1 − min(t, decay_steps)/decay_steps)^power + end` (Keras's
  /// `PolynomialDecay` without `cycle`; power 1 and end 0: linear decay to 0).
  case polynomialDecay(initial: Double, decaySteps: Int, end: Double, power: Double)
  /// `v = start + (then(0) − start)·t/warmup` for `t < warmup`, then `then(t − warmup)`
  /// (Goyal et al. 2017; Keras 3's `warmup_steps`).
  case linearWarmup(warmup: Int, start: Double, then: Schedule)
  /// `v = factor · inner(t)` (linear learning-rate scaling for large batches, Goyal et al.).
  case scaled(factor: Double, inner: Schedule)

  public func value(at t: Int) -> Double {
    switch self {
    case .constant(let v): return v
    case .exponentialDecay(let initial, let steps, let rate, let staircase):
      var p = Double(t) / Double(steps)
      if staircase { p = p.rounded(.down) }
      return initial * pow(rate, p)
    case .stepDecay(let boundaries, let values):
      for (i, b) in boundaries.enumerated() where t <= b { return values[i] }
      return values[boundaries.count]
    case .cosineDecay(let initial, let steps, let alpha):
      let progress = Double(min(t, steps)) / Double(steps)
      let cosine = 0.5 * (1 + cos(Double.pi * progress))
      return initial * ((1 - alpha) * cosine + alpha)
    case .polynomialDecay(let initial, let steps, let end, let power):
      let progress = Double(min(t, steps)) / Double(steps)
      return (initial - end) * pow(1 - progress, power) + end
    case .linearWarmup(let warmup, let start, let then):
      if t < warmup { return start + (then.value(at: 0) - start) * Double(t) / Double(warmup) }
      return then.value(at: t - warmup)
    case .scaled(let factor, let inner):
      return factor * inner.value(at: t)
    }
  }

  /// `decay_steps` meaning every step of the run (`decay_steps: run` in configs); replaced by
  /// the run's step count when it starts (`resolvingRunLength`).
  public static let runLength = 0

  /// The schedule with `runLength` decay steps replaced by `totalSteps`.
  public func resolvingRunLength(_ totalSteps: Int) -> Schedule {
    switch self {
    case .cosineDecay(let i, let steps, let alpha) where steps == Self.runLength:
      return .cosineDecay(initial: i, decaySteps: totalSteps, alpha: alpha)
    case .polynomialDecay(let i, let steps, let end, let power) where steps == Self.runLength:
      return .polynomialDecay(initial: i, decaySteps: totalSteps, end: end, power: power)
    case .linearWarmup(let w, let start, let then):
      return .linearWarmup(warmup: w, start: start, then: then.resolvingRunLength(max(1, totalSteps - w)))
    case .scaled(let factor, let inner): return .scaled(factor: factor, inner: inner.resolvingRunLength(totalSteps))
    default: return self
    }
  }

  /// Checks the parameters a user wrote.
  public func validate(owner: String) throws {
    func bad(_ p: String, _ why: String) -> BNNError { .invalidParameter(owner: owner, parameter: p, reason: why) }
    switch self {
    case .constant: break
    case .exponentialDecay(_, let steps, let rate, _):
      if steps <= 0 { throw bad("decay_steps", "must be positive, got \(steps)") }
      if rate <= 0 { throw bad("decay_rate", "must be positive, got \(rate)") }
    case .stepDecay(let boundaries, let values):
      if values.count != boundaries.count + 1 {
        throw bad(
          "values", "needs one more value than boundaries (\(boundaries.count) boundaries, \(values.count) values)")
      }
      if zip(boundaries, boundaries.dropFirst()).contains(where: { $0 >= $1 }) {
        throw bad("boundaries", "must increase strictly, got \(boundaries)")
      }
    case .cosineDecay(_, let steps, let alpha):
      if steps < 0 { throw bad("decay_steps", "must be positive (or run), got \(steps)") }
      if alpha < 0 || alpha > 1 { throw bad("alpha", "must be in [0, 1], got \(alpha)") }
    case .polynomialDecay(_, let steps, let end, let power):
      if steps < 0 { throw bad("decay_steps", "must be positive (or run), got \(steps)") }
      if !(power > 0) || !power.isFinite { throw bad("power", "must be positive, got \(power)") }
      if !end.isFinite { throw bad("end", "must be finite, got \(end)") }
    case .linearWarmup(let warmup, _, let then):
      if warmup <= 0 { throw bad("warmup_steps", "must be positive, got \(warmup)") }
      try then.validate(owner: owner)
    case .scaled(let factor, let inner):
      if !(factor > 0) { throw bad("factor", "must be positive, got \(factor)") }
      try inner.validate(owner: owner)
    }
  }
}

/// Whether a schedule advances with optimizer steps or with epochs.
public enum ScheduleUnit: String, Sendable, Equatable {
  case step, epoch
}

/// A hyperparameter driven by a schedule (any optimizer hyperparameter: Adam's learning
/// rate, Bop's γ and τ, ...).
public struct Hyperparameter: Equatable, Sendable {
  public var schedule: Schedule
  public var unit: ScheduleUnit
  public init(_ schedule: Schedule, unit: ScheduleUnit = .step) {
    self.schedule = schedule
    self.unit = unit
  }
  public static func constant(_ v: Double) -> Hyperparameter { Hyperparameter(.constant(v)) }

  /// The value for the step about to be taken.
  public func value(_ clock: TrainingClock) -> Double {
    schedule.value(at: unit == .step ? clock.step : clock.epoch)
  }
}

/// Where training is: optimizer steps taken so far, and the current 0-based epoch.
public struct TrainingClock: Equatable, Sendable {
  public var step: Int
  public var epoch: Int
  public init(step: Int = 0, epoch: Int = 0) {
    self.step = step
    self.epoch = epoch
  }
}
