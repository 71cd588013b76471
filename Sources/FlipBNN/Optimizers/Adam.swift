import FlipTensor
import Foundation

/// Adam exactly as Keras 2.15 (`keras/optimizers/adam.py`), per variable:
///
///     t = iterations + 1
///     α = lr · √(1 − β2^t) / (1 − β1^t)
///     m ← m + (g − m)·(1 − β1)
///     v ← v + (g² − v)·(1 − β2)
///     w ← w − α·m / (√v + ε)
///
/// ε is added to the uncorrected √v (not the paper's m̂/(√v̂ + ε)). Defaults
/// `lr 1e-3, β1 0.9, β2 0.999, ε 1e-7`.
public final class Adam: Optimizer {
  public let name = "adam"
  public let learningRate: Hyperparameter
  public let beta1: Hyperparameter
  public let beta2: Hyperparameter
  public let epsilon: Hyperparameter
  public var iterations = 0
  private var views: [ParameterView] = []
  /// (P) first and second moments, in the store's layout.
  private var m = FloatBuffer(count: 0)
  private var v = FloatBuffer(count: 0)

  public init(
    learningRate: Hyperparameter = .constant(OptimizerDefaults.adamLearningRate),
    beta1: Hyperparameter = .constant(OptimizerDefaults.adamBeta1),
    beta2: Hyperparameter = .constant(OptimizerDefaults.adamBeta2),
    epsilon: Hyperparameter = .constant(OptimizerDefaults.adamEpsilon)
  ) {
    self.learningRate = learningRate
    self.beta1 = beta1
    self.beta2 = beta2
    self.epsilon = epsilon
  }

  public func prepare(store: ParameterStore, views: [ParameterView]) throws {
    self.views = views
    m = FloatBuffer(count: store.values.count)
    v = FloatBuffer(count: store.values.count)
  }

  public func hyperparameters(_ clock: TrainingClock) -> [String: Double] {
    [
      "learning_rate": learningRate.value(clock), "beta_1": beta1.value(clock), "beta_2": beta2.value(clock),
      "epsilon": epsilon.value(clock),
    ]
  }

  public var stateBuffers: [(name: String, buffer: FloatBuffer, views: [ParameterView])] {
    [("adam.m", m, views), ("adam.v", v, views)]
  }

  public func update(store: ParameterStore, clock: TrainingClock, gradientScale: Float, part: ParameterPart) {
    let b1 = beta1.value(clock)
    let b2 = beta2.value(clock)
    let t = Double(iterations + 1)
    let alpha = Float(learningRate.value(clock) * (1 - pow(b2, t)).squareRoot() / (1 - pow(b1, t)))
    let oneMinusB1 = Float(1 - b1)
    let oneMinusB2 = Float(1 - b2)
    let eps = Float(epsilon.value(clock))
    for view in views {
      let w = store.values.pointer + view.offset
      let g = store.gradients.pointer + view.offset
      let mp = m.pointer + view.offset
      let vp = v.pointer + view.offset
      let (lo, hi) = view.constraint.bounds
      part.forEachChunk(of: view, compute: store.compute) { range in
        // 16 lanes at a time (explicit SIMD: the compiler does not vectorize the scalar loop
        // over four pointers that may alias), then the same arithmetic on the tail: every
        // operation is elementwise IEEE, so both give the same bits.
        var i = range.lowerBound
        let vectorEnd = range.lowerBound + (range.count & ~15)
        let scale16 = SIMD16<Float>(repeating: gradientScale)
        let b1v = SIMD16<Float>(repeating: oneMinusB1)
        let b2v = SIMD16<Float>(repeating: oneMinusB2)
        let alphaV = SIMD16<Float>(repeating: alpha)
        let epsV = SIMD16<Float>(repeating: eps)
        let loV = SIMD16<Float>(repeating: lo)
        let hiV = SIMD16<Float>(repeating: hi)
        while i < vectorEnd {
          let gi = load16(g + i) * scale16
          let m0 = load16(mp + i)
          let v0 = load16(vp + i)
          let mi = m0 + (gi - m0) * b1v
          let vi = v0 + (gi * gi - v0) * b2v
          store16(mi, mp + i)
          store16(vi, vp + i)
          let wi = load16(w + i) - (mi * alphaV) / (vi.squareRoot() + epsV)
          // max then min, as the scalar min(max(w, lo), hi).
          let above = wi.replacing(with: loV, where: loV .> wi)
          store16(above.replacing(with: hiV, where: hiV .< above), w + i)
          i += 16
        }
        while i < range.upperBound {
          let gi = g[i] * gradientScale
          let mi = mp[i] + (gi - mp[i]) * oneMinusB1
          let vi = vp[i] + (gi * gi - vp[i]) * oneMinusB2
          mp[i] = mi
          vp[i] = vi
          let wi = w[i] - (mi * alpha) / (vi.squareRoot() + eps)
          w[i] = min(max(wi, lo), hi)
          i += 1
        }
      }
    }
  }
}

@inline(__always)
func load16(_ p: UnsafeMutablePointer<Float>) -> SIMD16<Float> {
  UnsafeRawPointer(p).loadUnaligned(as: SIMD16<Float>.self)
}

@inline(__always)
func store16(_ v: SIMD16<Float>, _ p: UnsafeMutablePointer<Float>) {
  UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD16<Float>.self)
}

/// SGD as Keras 2.15: without momentum `w ← w − lr·g`; with momentum `μ`:
/// `b ← μ·b − lr·g`, then `w ← w + b`, or with Nesterov `w ← w + μ·b − lr·g`.
public final class SGD: Optimizer {
  public let name = "sgd"
  public let learningRate: Hyperparameter
  public let momentum: Hyperparameter
  public let nesterov: Bool
  public var iterations = 0
  private var views: [ParameterView] = []
  /// (P) momentum buffer.
  private var velocity = FloatBuffer(count: 0)

  public init(
    learningRate: Hyperparameter = .constant(OptimizerDefaults.sgdLearningRate),
    momentum: Hyperparameter = .constant(OptimizerDefaults.sgdMomentum), nesterov: Bool = false
  ) {
    self.learningRate = learningRate
    self.momentum = momentum
    self.nesterov = nesterov
  }

  public func prepare(store: ParameterStore, views: [ParameterView]) throws {
    self.views = views
    velocity = FloatBuffer(count: store.values.count)
  }

  public func hyperparameters(_ clock: TrainingClock) -> [String: Double] {
    ["learning_rate": learningRate.value(clock), "momentum": momentum.value(clock)]
  }

  public var stateBuffers: [(name: String, buffer: FloatBuffer, views: [ParameterView])] {
    [("sgd.momentum", velocity, views)]
  }

  public func update(store: ParameterStore, clock: TrainingClock, gradientScale: Float, part: ParameterPart) {
    let lr = Float(learningRate.value(clock))
    let mu = Float(momentum.value(clock))
    for view in views {
      let w = store.values.pointer + view.offset
      let g = store.gradients.pointer + view.offset
      let b = velocity.pointer + view.offset
      let (lo, hi) = view.constraint.bounds
      part.forEachChunk(of: view, compute: store.compute) { range in
        for i in range {
          let gi = g[i] * gradientScale
          var wi = w[i]
          if mu == 0 {
            wi -= lr * gi
          } else {
            let bi = mu * b[i] - lr * gi
            b[i] = bi
            wi += nesterov ? mu * bi - lr * gi : bi
          }
          w[i] = min(max(wi, lo), hi)
        }
      }
    }
  }
}

/// Bop (Helwegen et al. 2019), as `larq.optimizers.Bop`, per binary variable:
///
///     m ← m + γ·(g − m)
///     w ← −sign(w)  where w·m > τ   (a flip)
///     w ←  sign(w)  elsewhere       (so weights are ±1 after the first step)
///
/// `sign(0) = +1`. Defaults `γ 1e-4, τ 1e-8`. No latent weights and no clip.
public final class Bop: Optimizer {
  public let name = "bop"
  public let gamma: Hyperparameter
  public let threshold: Hyperparameter
  public var iterations = 0
  private var views: [ParameterView] = []
  /// (P) momentum.
  private var m = FloatBuffer(count: 0)

  public init(
    gamma: Hyperparameter = .constant(OptimizerDefaults.bopGamma),
    threshold: Hyperparameter = .constant(OptimizerDefaults.bopThreshold)
  ) {
    self.gamma = gamma
    self.threshold = threshold
  }

  public func prepare(store: ParameterStore, views: [ParameterView]) throws {
    self.views = views
    m = FloatBuffer(count: store.values.count)
  }

  public func hyperparameters(_ clock: TrainingClock) -> [String: Double] {
    ["gamma": gamma.value(clock), "threshold": threshold.value(clock)]
  }

  public var stateBuffers: [(name: String, buffer: FloatBuffer, views: [ParameterView])] {
    [("bop.m", m, views)]
  }

  public func update(store: ParameterStore, clock: TrainingClock, gradientScale: Float, part: ParameterPart) {
    let g = Float(gamma.value(clock))
    let tau = Float(threshold.value(clock))
    for view in views {
      let w = store.values.pointer + view.offset
      let grad = store.gradients.pointer + view.offset
      let mp = m.pointer + view.offset
      let (lo, hi) = view.constraint.bounds
      part.forEachChunk(of: view, compute: store.compute) { range in
        for i in range {
          let mi = mp[i] + g * (grad[i] * gradientScale - mp[i])
          mp[i] = mi
          let s = binarySign(w[i])
          let wi = w[i] * mi > tau ? -s : s
          w[i] = min(max(wi, lo), hi)
        }
      }
    }
  }
}

/// Larq's `CaseOptimizer`: routes each trainable variable to exactly one optimizer — the
/// first whose predicate claims it (a variable claimed by two is an error), or `default`.
/// Larq's usual setup: `(binary, Bop)` with Adam as the default for everything else.
public final class CaseOptimizer: Optimizer {
  public let name = "case"
  public let cases: [(VariablePredicate, Optimizer)]
  public let defaultOptimizer: Optimizer?
  /// Steps taken; setting it (a restored checkpoint) sets every routed optimizer's count too.
  public var iterations = 0 {
    didSet { for o in active where o.iterations != iterations { o.iterations = iterations } }
  }
  private var active: [Optimizer] = []

  public init(cases: [(VariablePredicate, Optimizer)], default: Optimizer?) {
    self.cases = cases
    self.defaultOptimizer = `default`
  }

  public func prepare(store: ParameterStore, views: [ParameterView]) throws {
    var claimed = [[ParameterView]](repeating: [], count: cases.count)
    var rest: [ParameterView] = []
    for v in views {
      let owners = cases.indices.filter { cases[$0].0.matches(v) }
      if owners.count > 1 {
        throw BNNError.variableClaimedTwice(
          variable: v.name, optimizers: owners.map { "\(cases[$0].1.name) (\(cases[$0].0.rawValue))" })
      }
      if let o = owners.first { claimed[o].append(v) } else { rest.append(v) }
    }
    if !rest.isEmpty && defaultOptimizer == nil { throw BNNError.variableUnclaimed(variable: rest[0].name) }
    active = []
    for (i, c) in cases.enumerated() {
      try c.1.prepare(store: store, views: claimed[i])
      active.append(c.1)
    }
    if let d = defaultOptimizer {
      try d.prepare(store: store, views: rest)
      active.append(d)
    }
  }

  public func update(store: ParameterStore, clock: TrainingClock, gradientScale: Float, part: ParameterPart) {
    // `apply` counts the step on this optimizer, which sets the routed ones' counts too.
    for o in active { o.update(store: store, clock: clock, gradientScale: gradientScale, part: part) }
  }

  public func hyperparameters(_ clock: TrainingClock) -> [String: Double] {
    var all: [String: Double] = [:]
    for o in active {
      for (k, v) in o.hyperparameters(clock) { all["\(o.name).\(k)"] = v }
    }
    if let d = defaultOptimizer, let lr = d.hyperparameters(clock)["learning_rate"] { all["learning_rate"] = lr }
    return all
  }

  public var stateBuffers: [(name: String, buffer: FloatBuffer, views: [ParameterView])] {
    active.flatMap(\.stateBuffers)
  }
}
