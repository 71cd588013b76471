import FlipTensor

/// An optimizer updates the variables it owns from their gradients, which the trainer has
/// already averaged over the global batch. Distribution wraps the step; an optimizer never
/// knows how many ranks there are.
public protocol Optimizer: AnyObject {
  /// Larq's/Keras's name: `adam`, `sgd`, `bop`, `case`.
  var name: String { get }
  /// Takes ownership of `views` and allocates the state for them.
  func prepare(store: ParameterStore, views: [ParameterView]) throws
  /// The update of the current step (iteration `iterations + 1`) for the owned variables from
  /// `gradientScale · store.gradients` (the trainer passes 1/global batch to turn summed
  /// gradients into means), without counting the step. Each view's kernel constraint is applied
  /// right after its update, in the same pass over memory.
  ///
  /// Only the elements in `part` are updated (`.whole` for all; the sharded step's exchange
  /// hands each rank's optimizer the part it owns, a bucket at a time). `apply` then counts the
  /// step.
  func update(store: ParameterStore, clock: TrainingClock, gradientScale: Float, part: ParameterPart)
  /// Current hyperparameter values by name (for logs and metrics).
  func hyperparameters(_ clock: TrainingClock) -> [String: Double]
  /// Optimizer state as named flat buffers (name suffix, buffer with the store's layout, views
  /// it covers) plus scalar counters, for checkpoints and cross-rank checksums.
  var stateBuffers: [(name: String, buffer: FloatBuffer, views: [ParameterView])] { get }
  var iterations: Int { get set }
}

extension Optimizer {
  /// One step: `update`, then the step counted (`iterations += 1`).
  public func apply(
    store: ParameterStore, clock: TrainingClock, gradientScale: Float, part: ParameterPart = .whole
  ) {
    update(store: store, clock: clock, gradientScale: gradientScale, part: part)
    iterations += 1
  }

  /// One update from the gradients as they are.
  public func apply(store: ParameterStore, clock: TrainingClock) {
    apply(store: store, clock: clock, gradientScale: 1)
  }

  /// Prepares the optimizer for all trainable variables of `store`.
  public func prepare(store: ParameterStore) throws { try prepare(store: store, views: store.views) }
}

/// Which variables an optimizer claims inside a `CaseOptimizer`.
public enum VariablePredicate: String, Sendable, Equatable {
  /// Larq's `Bop.is_binary_variable`: variables whose precision is 1.
  case binary
  /// Variables whose precision is not 1.
  case nonBinary = "non_binary"

  public func matches(_ v: ParameterView) -> Bool {
    switch self {
    case .binary: return v.precision == 1
    case .nonBinary: return v.precision != 1
    }
  }
}

/// An optimizer as a config describes it.
public indirect enum OptimizerSpec: Equatable, Sendable {
  /// Keras 2.15 Adam; defaults `lr 1e-3, β1 0.9, β2 0.999, ε 1e-7`.
  case adam(learningRate: Hyperparameter, beta1: Hyperparameter, beta2: Hyperparameter, epsilon: Hyperparameter)
  /// Keras 2.15 SGD; defaults `lr 0.01, momentum 0, nesterov false`.
  case sgd(learningRate: Hyperparameter, momentum: Hyperparameter, nesterov: Bool)
  /// Larq Bop; defaults `γ 1e-4, τ 1e-8`.
  case bop(gamma: Hyperparameter, threshold: Hyperparameter)
  /// Larq CaseOptimizer: each (predicate, optimizer) claims variables; the rest go to `default`.
  case caseOptimizer(cases: [(VariablePredicate, OptimizerSpec)], default: OptimizerSpec?)

  /// Adam with Keras's defaults but for the learning rate.
  public static func adam(learningRate: Double = OptimizerDefaults.adamLearningRate) -> OptimizerSpec {
    .adam(learningRate: .constant(learningRate))
  }

  /// Adam with Keras's defaults but for the learning rate's schedule.
  public static func adam(learningRate: Hyperparameter) -> OptimizerSpec {
    .adam(
      learningRate: learningRate, beta1: .constant(OptimizerDefaults.adamBeta1),
      beta2: .constant(OptimizerDefaults.adamBeta2), epsilon: .constant(OptimizerDefaults.adamEpsilon))
  }

  public static func == (a: OptimizerSpec, b: OptimizerSpec) -> Bool {
    switch (a, b) {
    case (.adam(let l1, let b11, let b21, let e1), .adam(let l2, let b12, let b22, let e2)):
      return l1 == l2 && b11 == b12 && b21 == b22 && e1 == e2
    case (.sgd(let l1, let m1, let n1), .sgd(let l2, let m2, let n2)): return l1 == l2 && m1 == m2 && n1 == n2
    case (.bop(let g1, let t1), .bop(let g2, let t2)): return g1 == g2 && t1 == t2
    case (.caseOptimizer(let c1, let d1), .caseOptimizer(let c2, let d2)):
      return d1 == d2 && c1.count == c2.count && zip(c1, c2).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
    default: return false
    }
  }

  /// The optimizer with every `decay_steps: run` schedule given the run's `totalSteps`.
  public func resolvingRunLength(totalSteps: Int) -> OptimizerSpec {
    func r(_ h: Hyperparameter) -> Hyperparameter {
      Hyperparameter(h.schedule.resolvingRunLength(h.unit == .step ? totalSteps : max(1, totalSteps)), unit: h.unit)
    }
    switch self {
    case .adam(let lr, let b1, let b2, let eps): return .adam(learningRate: r(lr), beta1: r(b1), beta2: r(b2), epsilon: r(eps))
    case .sgd(let lr, let m, let n): return .sgd(learningRate: r(lr), momentum: r(m), nesterov: n)
    case .bop(let g, let t): return .bop(gamma: r(g), threshold: r(t))
    case .caseOptimizer(let cases, let fallback):
      return .caseOptimizer(
        cases: cases.map { ($0.0, $0.1.resolvingRunLength(totalSteps: totalSteps)) },
        default: fallback?.resolvingRunLength(totalSteps: totalSteps))
    }
  }

  /// Whether a schedule still waits for the run's length (`decay_steps: run`).
  var waitsForRunLength: Bool {
    func w(_ h: Hyperparameter) -> Bool { h.schedule.resolvingRunLength(1) != h.schedule }
    switch self {
    case .adam(let lr, let b1, let b2, let eps): return [lr, b1, b2, eps].contains(where: w)
    case .sgd(let lr, let m, _): return w(lr) || w(m)
    case .bop(let g, let t): return w(g) || w(t)
    case .caseOptimizer(let cases, let fallback):
      return cases.contains { $0.1.waitsForRunLength } || (fallback?.waitsForRunLength ?? false)
    }
  }

  public func make() throws -> Optimizer {
    guard !waitsForRunLength else {
      throw BNNError.invalidParameter(
        owner: "schedule", parameter: "decay_steps",
        reason: "'run' needs the run's length: resolve it with resolvingRunLength(totalSteps:) first")
    }
    switch self {
    case .adam(let lr, let b1, let b2, let eps):
      try lr.schedule.validate(owner: "adam")
      return Adam(learningRate: lr, beta1: b1, beta2: b2, epsilon: eps)
    case .sgd(let lr, let momentum, let nesterov):
      try lr.schedule.validate(owner: "sgd")
      return SGD(learningRate: lr, momentum: momentum, nesterov: nesterov)
    case .bop(let gamma, let threshold):
      try gamma.schedule.validate(owner: "bop")
      return Bop(gamma: gamma, threshold: threshold)
    case .caseOptimizer(let cases, let fallback):
      return CaseOptimizer(cases: try cases.map { ($0.0, try $0.1.make()) }, default: try fallback?.make())
    }
  }
}

/// Keras 2.15's and Larq's optimizer defaults, stated once: for the optimizers' initializers,
/// the specs and config files.
public enum OptimizerDefaults {
  public static let adamLearningRate = 1e-3
  public static let adamBeta1 = 0.9
  public static let adamBeta2 = 0.999
  public static let adamEpsilon = 1e-7
  public static let sgdLearningRate = 0.01
  public static let sgdMomentum = 0.0
  public static let bopGamma = 1e-4
  public static let bopThreshold = 1e-8
}
