import FlipTensor
import Foundation
import Testing

@testable import FlipBNN
import FlipTraining

// Optimizers, constraints and schedules against hand-computed values (the formulas of Keras 2.15
// Adam and SGD, Larq Bop and CaseOptimizer, weight_clip, Keras learning-rate schedules).

/// One trainable vector variable of `precision` bits holding `values`.
private func vectorStore(_ values: [Float], precision: Int = 32) -> ParameterStore {
  let store = makeStore([
    ParameterSpec(role: .kernel, shape: [values.count], precision: precision, initializer: .zeros)
  ])
  for (i, v) in values.enumerated() { store.values[i] = v }
  return store
}

private func setGradients(_ store: ParameterStore, _ g: [Float]) {
  precondition(g.count == store.gradients.count)
  for (i, v) in g.enumerated() { store.gradients[i] = v }
}

@Suite("Optimizers")
struct OptimizerTests {

  // MARK: Adam

  @Test("Adam: the first two steps equal Keras 2.15's formula (ε on the uncorrected √v)")
  func adamTwoSteps() throws {
    let w0: [Float] = [0.5, -0.3, 1.0, 0.0, 2.0]
    let g1: [Float] = [0.1, -0.2, 1e-6, 0, -3]
    let g2: [Float] = [0.3, 0.1, -1e-6, 0.5, -3]
    let lr = 0.01
    let b1 = 0.9
    let b2 = 0.999
    let eps = 1e-7
    let store = vectorStore(w0)
    let adam = Adam(learningRate: .constant(lr))
    try adam.prepare(store: store)

    // Expected, in double precision, from the formula.
    var w = w0.map(Double.init)
    var m = [Double](repeating: 0, count: 5)
    var v = m
    var expected: [[Double]] = []
    for (t, g) in [g1, g2].enumerated() {
      let step = Double(t + 1)
      let alpha = lr * (1 - pow(b2, step)).squareRoot() / (1 - pow(b1, step))
      for i in 0..<5 {
        let gi = Double(g[i])
        m[i] = b1 * m[i] + (1 - b1) * gi
        v[i] = b2 * v[i] + (1 - b2) * gi * gi
        w[i] -= alpha * m[i] / (v[i].squareRoot() + eps)
      }
      expected.append(w)
    }
    for (t, g) in [g1, g2].enumerated() {
      setGradients(store, g)
      adam.apply(store: store, clock: TrainingClock(step: t))
      for i in 0..<5 {
        #expect(
          close(Double(store.values[i]), expected[t][i], tol: 1e-6),
          "step \(t + 1) w[\(i)] = \(store.values[i]) vs \(expected[t][i])")
      }
    }
    #expect(adam.iterations == 2)

    // Hand numbers for step 1: α₁ = lr·√0.001/0.1, m = 0.1g, √v = √0.001·|g|, so a large g moves
    // w by α₁·0.1/√0.001 = lr (Adam's first step is lr·sign(g)); g = 1e-6 moves w by only
    // lr·√0.001·1e-7/(√0.001·1e-6 + 1e-7) ≈ 0.2403·lr because ε sits on the uncorrected √v
    // (the paper's m̂/(√v̂ + ε) would give ≈ 0.9091·lr).
    #expect(close(expected[0][0], 0.5 - 0.01, tol: 1e-6))
    #expect(close(expected[0][4], 2.0 + 0.01, tol: 1e-6))
    #expect(close(expected[0][2], 1.0 - 0.01 * 0.2402530734, tol: 1e-9))
    #expect(expected[0][3] == 0)
  }

  @Test("Adam's 16-lane body and scalar tail both compute Keras's float update exactly, with weight_clip")
  func adamVectorBodyEqualsTheFormula() throws {
    let n = 16 * 4 + 9
    let store = makeStore([
      ParameterSpec(role: .kernel, shape: [n], precision: 1, constraint: .weightClip(clipValue: 1), initializer: .zeros)
    ])
    var w0 = randomValues(n, seed: 11, in: -1...1)
    // Pushed past +1 in the vector body and past −1 in the tail.
    w0[5] = 0.99
    w0[n - 2] = -0.99
    for i in 0..<n { store.values[i] = w0[i] }
    let adam = Adam(learningRate: .constant(0.05))
    try adam.prepare(store: store)
    var w = w0
    var m = [Float](repeating: 0, count: n)
    var v = m
    for step in 0..<3 {
      var g = randomValues(n, seed: UInt64(20 + step), in: -4...4)
      g[5] = -3
      g[n - 2] = 3
      setGradients(store, g)
      adam.apply(store: store, clock: TrainingClock(step: step), gradientScale: 0.25)
      let t = Double(step + 1)
      let alpha = Float(0.05 * (1 - pow(0.999, t)).squareRoot() / (1 - pow(0.9, t)))
      for i in 0..<n {
        let gi = g[i] * 0.25
        m[i] = m[i] + (gi - m[i]) * Float(1 - 0.9)
        v[i] = v[i] + (gi * gi - v[i]) * Float(1 - 0.999)
        w[i] = min(max(w[i] - (m[i] * alpha) / (v[i].squareRoot() + Float(1e-7)), -1), 1)
      }
      #expect(store.values.array == w, "step \(step + 1)")
    }
    #expect(w[5] == 1 && w[n - 2] == -1, "the clip was exercised")
  }

  @Test("Adam defaults and hyperparameters follow the schedule's clock")
  func adamDefaults() throws {
    let adam = Adam()
    let h = adam.hyperparameters(TrainingClock())
    #expect(h["learning_rate"] == 1e-3 && h["beta_1"] == 0.9 && h["beta_2"] == 0.999 && h["epsilon"] == 1e-7)
    // A learning rate that is 0 after step 0 stops the updates; the moments still move.
    let scheduled = Adam(learningRate: Hyperparameter(.stepDecay(boundaries: [0], values: [0.01, 0])))
    let store = vectorStore([1])
    try scheduled.prepare(store: store)
    setGradients(store, [1])
    scheduled.apply(store: store, clock: TrainingClock(step: 0))
    let afterFirst = store.values[0]
    #expect(close(afterFirst, 0.99, tol: 1e-6))
    scheduled.apply(store: store, clock: TrainingClock(step: 1))
    #expect(store.values[0] == afterFirst)
  }

  // MARK: SGD

  @Test("SGD: plain, momentum, and Nesterov momentum (Keras 2.15)")
  func sgd() throws {
    let w0: [Float] = [1, -2]
    let g1: [Float] = [0.5, -1]
    let g2: [Float] = [0.25, 2]
    func run(momentum: Double, nesterov: Bool) throws -> [[Float]] {
      let store = vectorStore(w0)
      let opt = SGD(learningRate: .constant(0.1), momentum: .constant(momentum), nesterov: nesterov)
      try opt.prepare(store: store)
      var out: [[Float]] = []
      for g in [g1, g2] {
        setGradients(store, g)
        opt.apply(store: store, clock: TrainingClock())
        out.append(store.values.array)
      }
      return out
    }
    // Plain: w − 0.1·g.
    let plain = try run(momentum: 0, nesterov: false)
    #expect(allClose(plain[0], [0.95, -1.9], tol: 1e-6) && allClose(plain[1], [0.925, -2.1], tol: 1e-6))
    // Momentum 0.9: b₁ = −0.1·g₁ = [−0.05, 0.1]; b₂ = 0.9·b₁ − 0.1·g₂ = [−0.07, −0.11].
    let momentum = try run(momentum: 0.9, nesterov: false)
    #expect(allClose(momentum[0], [0.95, -1.9], tol: 1e-6), "\(momentum[0])")
    #expect(allClose(momentum[1], [0.88, -2.01], tol: 1e-6), "\(momentum[1])")
    // Nesterov: w ← w + 0.9·b − 0.1·g: [0.905, −1.81], then [0.817, −2.109].
    let nesterov = try run(momentum: 0.9, nesterov: true)
    #expect(allClose(nesterov[0], [0.905, -1.81], tol: 1e-6), "\(nesterov[0])")
    #expect(allClose(nesterov[1], [0.817, -2.109], tol: 1e-6), "\(nesterov[1])")
  }

  // MARK: Bop

  @Test("Bop: flips exactly where w·m > τ; w·m == τ keeps sign(w); w = 0 counts as +1; ±1 after one step")
  func bop() throws {
    // γ = 0.5, τ = 0.25: every product below is exact in binary floating point.
    let w0: [Float] = [0.3, -0.5, 0.0, 1.0, -1.0, 0.8, -0.2]
    let g1: [Float] = [2.0, -2.0, 2.0, 0.5, -0.5, -1.0, 1.0]
    // m₁ = 0.5·g₁ = [1, −1, 1, 0.25, −0.25, −0.5, 0.5]; w·m₁ = [0.3, 0.5, 0, 0.25, 0.25, −0.4, −0.1].
    let store = vectorStore(w0, precision: 1)
    let bop = Bop(gamma: .constant(0.5), threshold: .constant(0.25))
    try bop.prepare(store: store)
    setGradients(store, g1)
    bop.apply(store: store, clock: TrainingClock())
    #expect(store.values.array == [-1, 1, 1, 1, -1, 1, -1])
    #expect(store.values.array.allSatisfy { $0 == 1 || $0 == -1 })
    // m₂ = m₁ + 0.5·(g₂ − m₁) = [0.5, −0.5, 1, 0.125, −0.125, −0.25, 0.25]; only index 2 has w·m > τ.
    setGradients(store, [0, 0, 1, 0, 0, 0, 0])
    bop.apply(store: store, clock: TrainingClock(step: 1))
    #expect(store.values.array == [-1, 1, -1, 1, -1, 1, -1])
    let momentum = try #require(bop.stateBuffers.first { $0.name == "bop.m" })
    #expect(momentum.buffer.array == [0.5, -0.5, 1, 0.125, -0.125, -0.25, 0.25])
    #expect(bop.iterations == 2)
  }

  @Test("Bop defaults: γ 1e-4, τ 1e-8 — a small momentum against the weight never flips it")
  func bopDefaults() throws {
    let bop = Bop()
    let h = bop.hyperparameters(TrainingClock())
    #expect(h["gamma"] == 1e-4 && h["threshold"] == 1e-8)
    let store = vectorStore([1, -1, 1, -1], precision: 1)
    try bop.prepare(store: store)
    // m = 1e-4·g: w·m = [1e-4, 1e-4, −1e-4, 1e-12 ≤ τ].
    setGradients(store, [1, -1, -1, -1e-8])
    bop.apply(store: store, clock: TrainingClock())
    #expect(store.values.array == [-1, 1, 1, -1])
  }

  // MARK: CaseOptimizer

  @Test("CaseOptimizer routes precision-1 variables to Bop and the rest to Adam")
  func caseOptimizerRouting() throws {
    let store = makeStore([
      ParameterSpec(role: .kernel, shape: [2, 2], precision: 1, initializer: .zeros),
      ParameterSpec(role: .bias, shape: [2], initializer: .zeros),
    ])
    let w0: [Float] = [0.3, -0.5, 0.7, -0.1, 0.5, -0.5]
    for (i, v) in w0.enumerated() { store.values[i] = v }
    setGradients(store, [1, -1, -1, 1, 0.2, -0.4])
    let spec = OptimizerSpec.caseOptimizer(
      cases: [(.binary, .bop(gamma: .constant(0.5), threshold: .constant(0.1)))], default: .adam(learningRate: 0.01))
    let opt = try spec.make()
    #expect(opt is CaseOptimizer)
    try opt.prepare(store: store)
    let byName = Dictionary(uniqueKeysWithValues: opt.stateBuffers.map { ($0.name, $0.views.map(\.name)) })
    #expect(byName["bop.m"] == ["layers.0.l.kernel"])
    #expect(byName["adam.m"] == ["layers.0.l.bias"])
    opt.apply(store: store, clock: TrainingClock())
    // Kernel by Bop: m = 0.5·g = [0.5, −0.5, −0.5, 0.5]; w·m = [0.15, 0.25, −0.35, −0.05].
    #expect(Array(store.values.array[0..<4]) == [-1, 1, 1, -1])
    // Bias by Adam's first step: lr·sign(g).
    #expect(close(store.values[4], 0.49, tol: 1e-6) && close(store.values[5], -0.49, tol: 1e-6))
    let h = opt.hyperparameters(TrainingClock())
    #expect(h["learning_rate"] == 0.01 && h["bop.gamma"] == 0.5)
  }

  @Test("CaseOptimizer: a variable claimed twice, or unclaimed without a default, is an error")
  func caseOptimizerErrors() throws {
    let store = makeStore([
      ParameterSpec(role: .kernel, shape: [2], precision: 1, initializer: .zeros),
      ParameterSpec(role: .bias, shape: [2], initializer: .zeros),
    ])
    let twice = CaseOptimizer(cases: [(.binary, Bop()), (.binary, Bop())], default: Adam())
    let e1 = #expect(throws: BNNError.self) { try twice.prepare(store: store) }
    guard case .variableClaimedTwice(let variable, let optimizers)? = e1 else {
      Issue.record("expected variableClaimedTwice, got \(String(describing: e1))")
      return
    }
    #expect(variable == "layers.0.l.kernel")
    #expect(optimizers.count == 2)

    let unclaimed = CaseOptimizer(cases: [(.binary, Bop())], default: nil)
    #expect(throws: BNNError.variableUnclaimed(variable: "layers.0.l.bias")) { try unclaimed.prepare(store: store) }

    // Both predicates with no default cover everything.
    let covered = CaseOptimizer(cases: [(.binary, Bop()), (.nonBinary, Adam())], default: nil)
    try covered.prepare(store: store)
  }

  // MARK: Constraints

  @Test("weight_clip through store.applyConstraints clips only constrained views")
  func weightClip() throws {
    let store = makeStore([
      ParameterSpec(
        role: .kernel, shape: [5], precision: 1, constraint: .weightClip(clipValue: 1), initializer: .zeros),
      ParameterSpec(role: .bias, shape: [2], initializer: .zeros),
    ])
    let before: [Float] = [1.5, -2, 0.3, -1, 1, 5, -7]
    for (i, v) in before.enumerated() { store.values[i] = v }
    store.applyConstraints()
    #expect(store.values.array == [1, -1, 0.3, -1, 1, 5, -7])
    let half = makeStore([
      ParameterSpec(role: .kernel, shape: [3], constraint: .weightClip(clipValue: 0.5), initializer: .zeros)
    ])
    for (i, v) in [Float(0.7), -0.2, -0.6].enumerated() { half.values[i] = v }
    half.applyConstraints()
    #expect(half.values.array == [0.5, -0.2, -0.5])
    #expect(KernelConstraint.weightClip(clipValue: 1).name == "weight_clip")
  }

  // MARK: Schedules

  @Test("constant and exponential decay (continuous and staircase)")
  func exponentialDecay() {
    #expect(Schedule.constant(0.1).value(at: 12345) == 0.1)
    let smooth = Schedule.exponentialDecay(initial: 0.1, decaySteps: 10, decayRate: 0.5, staircase: false)
    #expect(close(smooth.value(at: 0), 0.1, tol: 1e-12))
    #expect(close(smooth.value(at: 5), 0.1 * 0.5.squareRoot(), tol: 1e-12))
    #expect(close(smooth.value(at: 20), 0.025, tol: 1e-12))
    let stairs = Schedule.exponentialDecay(initial: 0.1, decaySteps: 10, decayRate: 0.5, staircase: true)
    #expect(stairs.value(at: 9) == 0.1)
    #expect(close(stairs.value(at: 10), 0.05, tol: 1e-12))
    #expect(close(stairs.value(at: 19), 0.05, tol: 1e-12))
    #expect(close(stairs.value(at: 25), 0.025, tol: 1e-12))
  }

  @Test("step decay is Keras's PiecewiseConstantDecay: values[0] for t ≤ b0")
  func stepDecay() {
    let s = Schedule.stepDecay(boundaries: [10, 20], values: [1, 0.5, 0.1])
    let expected: [(Int, Double)] = [(0, 1), (9, 1), (10, 1), (11, 0.5), (20, 0.5), (21, 0.1), (1000, 0.1)]
    for (t, v) in expected { #expect(s.value(at: t) == v, "t = \(t)") }
  }

  @Test("cosine decay (Keras CosineDecay) with and without alpha")
  func cosineDecay() {
    let s = Schedule.cosineDecay(initial: 1, decaySteps: 100, alpha: 0)
    #expect(close(s.value(at: 0), 1, tol: 1e-12))
    #expect(close(s.value(at: 25), 0.5 * (1 + cos(Double.pi / 4)), tol: 1e-12))
    #expect(close(s.value(at: 25), 0.8535533905932737, tol: 1e-12))
    #expect(close(s.value(at: 50), 0.5, tol: 1e-12))
    #expect(close(s.value(at: 100), 0, tol: 1e-12))
    #expect(close(s.value(at: 250), 0, tol: 1e-12))
    let a = Schedule.cosineDecay(initial: 0.2, decaySteps: 100, alpha: 0.1)
    #expect(close(a.value(at: 50), 0.2 * 0.55, tol: 1e-12))
    #expect(close(a.value(at: 100), 0.02, tol: 1e-12))
    #expect(close(a.value(at: 1000), 0.02, tol: 1e-12))
  }

  /// Keras's PolynomialDecay (cycle off) by hand; power 1 and end 0 is Larq Zoo's Bi-Real Net
  /// schedule (linear to 0 over the run); `decay_steps: run` is resolved when the run starts;
  /// the config round-trips with Keras's defaults (end 0.0001, power 1).
  @Test func polynomialDecay() throws {
    let linear = Schedule.polynomialDecay(initial: 5e-3, decaySteps: 100, end: 0, power: 1)
    for (t, v) in [(0, 5e-3), (25, 3.75e-3), (50, 2.5e-3), (100, 0), (400, 0)] {
      #expect(close(linear.value(at: t), v, tol: 1e-15), "t = \(t)")
    }
    let square = Schedule.polynomialDecay(initial: 1, decaySteps: 10, end: 0.1, power: 2)
    #expect(close(square.value(at: 5), 0.9 * 0.25 + 0.1, tol: 1e-15))
    #expect(close(square.value(at: 10), 0.1, tol: 1e-15) && close(square.value(at: 11), 0.1, tol: 1e-15))
    let run = Schedule.polynomialDecay(initial: 1, decaySteps: Schedule.runLength, end: 0, power: 1)
    #expect(run.resolvingRunLength(40) == .polynomialDecay(initial: 1, decaySteps: 40, end: 0, power: 1))
    let yaml = "model: larq-cnn\noptimizer: {type: adam, learning_rate: {schedule: polynomial_decay, initial: 0.005, decay_steps: run}}\n"
    let spec = try RunSettings.parse(yaml: yaml, file: "p.yaml").optimizer
    guard case .adam(let lr, _, _, _) = spec else { Issue.record("\(spec)"); return }
    #expect(lr.schedule == .polynomialDecay(initial: 0.005, decaySteps: Schedule.runLength, end: 0.0001, power: 1))
    #expect(try RunSettings.parse(yaml: try RunSettings.parse(yaml: yaml, file: "p").yaml(), file: "q").optimizer == spec)
    #expect(throws: BNNError.self) {
      try Schedule.polynomialDecay(initial: 1, decaySteps: 10, end: 0, power: 0).validate(owner: "adam")
    }
  }

  @Test("linear warmup, then cosine decay from the warmup's end")
  func linearWarmup() {
    let s = Schedule.linearWarmup(warmup: 10, start: 0, then: .cosineDecay(initial: 1, decaySteps: 100, alpha: 0))
    #expect(s.value(at: 0) == 0)
    #expect(close(s.value(at: 5), 0.5, tol: 1e-12))
    #expect(close(s.value(at: 9), 0.9, tol: 1e-12))
    #expect(close(s.value(at: 10), 1, tol: 1e-12))
    #expect(close(s.value(at: 60), 0.5, tol: 1e-12))
    #expect(close(s.value(at: 110), 0, tol: 1e-12))
    let fromStart = Schedule.linearWarmup(warmup: 4, start: 0.1, then: .constant(0.5))
    #expect(close(fromStart.value(at: 2), 0.3, tol: 1e-12))
    #expect(fromStart.value(at: 4) == 0.5)
  }

  @Test("schedule validation names the bad parameter")
  func scheduleValidation() {
    let bad: [(Schedule, String)] = [
      (.stepDecay(boundaries: [10], values: [1]), "values"),
      (.stepDecay(boundaries: [10, 10], values: [1, 2, 3]), "boundaries"),
      (.exponentialDecay(initial: 1, decaySteps: 0, decayRate: 0.5, staircase: false), "decay_steps"),
      (.exponentialDecay(initial: 1, decaySteps: 10, decayRate: 0, staircase: false), "decay_rate"),
      (.cosineDecay(initial: 1, decaySteps: 10, alpha: 1.5), "alpha"),
      (.linearWarmup(warmup: 0, start: 0, then: .constant(1)), "warmup_steps"),
      (.linearWarmup(warmup: 5, start: 0, then: .cosineDecay(initial: 1, decaySteps: -1, alpha: 0)), "decay_steps"),
    ]
    for (schedule, parameter) in bad {
      let e = #expect(throws: BNNError.self) { try schedule.validate(owner: "adam") }
      guard case .invalidParameter(let owner, let p, _)? = e else {
        Issue.record("\(schedule): expected invalidParameter, got \(String(describing: e))")
        continue
      }
      #expect(owner == "adam" && p == parameter, "\(schedule)")
    }
    #expect(throws: Never.self) { try Schedule.stepDecay(boundaries: [1, 2], values: [3, 2, 1]).validate(owner: "x") }
  }

  @Test("a Hyperparameter with unit .epoch reads clock.epoch, with .step reads clock.step")
  func hyperparameterUnits() {
    let schedule = Schedule.stepDecay(boundaries: [1], values: [1, 0.1])
    let perEpoch = Hyperparameter(schedule, unit: .epoch)
    let perStep = Hyperparameter(schedule, unit: .step)
    #expect(perEpoch.value(TrainingClock(step: 1000, epoch: 1)) == 1)
    #expect(perEpoch.value(TrainingClock(step: 0, epoch: 2)) == 0.1)
    #expect(perStep.value(TrainingClock(step: 1000, epoch: 1)) == 0.1)
    #expect(perStep.value(TrainingClock(step: 1, epoch: 5)) == 1)
    #expect(Hyperparameter.constant(3).value(TrainingClock(step: 9, epoch: 9)) == 3)
  }

  @Test("an epoch-driven learning rate changes Adam's step")
  func adamEpochSchedule() throws {
    let lr = Hyperparameter(.stepDecay(boundaries: [0], values: [0.01, 0.001]), unit: .epoch)
    let store = vectorStore([0, 0])
    let adam = Adam(learningRate: lr)
    try adam.prepare(store: store)
    setGradients(store, [1, 1])
    adam.apply(store: store, clock: TrainingClock(step: 0, epoch: 0))
    #expect(close(store.values[0], -0.01, tol: 1e-6))
    // Second step in epoch 1 at lr 1e-3: m = 0.19, v = 0.001999, α = 1e-3·√(1−0.999²)/(1−0.81).
    adam.apply(store: store, clock: TrainingClock(step: 1, epoch: 1))
    let alpha = 1e-3 * (1 - 0.999 * 0.999).squareRoot() / (1 - 0.81)
    let want = -0.01 - alpha * 0.19 / ((0.001999).squareRoot() + 1e-7)
    #expect(close(Double(store.values[0]), want, tol: 1e-6), "\(store.values[0]) vs \(want)")
  }

  @Test func slicedUpdatesComposeToTheFullUpdate() throws {
    // The sharded step: updating disjoint slices of the flat buffer equals one full update.
    for spec in [
      OptimizerSpec.adam(learningRate: 0.01),
      .sgd(learningRate: .constant(0.1), momentum: .constant(0.9), nesterov: true),
      .bop(gamma: .constant(0.5), threshold: .constant(1e-3)),
    ] {
      // A small BinaryNet: binary kernels (Bop's precision-1 variables) and BatchNorm betas.
      var layers = ModelPreset.binarynetMLP.layers
      for i in layers.indices where layers[i].kind == .quantDense { layers[i].units = layers[i].units == 10 ? 10 : 24 }
      let model = try Model(specs: layers, inputShape: [4, 4, 1], seed: 1)
      let store = model.store
      let g = randomValues(store.gradients.count, seed: 3)
      // One optimizer per slice, as each rank has its own: each updates only its slice.
      func run(parts: [ParameterPart]) throws -> [Float] {
        let copy = try Model(specs: layers, inputShape: [4, 4, 1], seed: 1)
        let optimizers = try parts.map { _ in try spec.make() }
        for o in optimizers { try o.prepare(store: copy.store) }
        for step in 0..<3 {
          g.withUnsafeBufferPointer { copy.store.gradients.pointer.update(from: $0.baseAddress!, count: g.count) }
          for (o, part) in zip(optimizers, parts) {
            o.apply(store: copy.store, clock: TrainingClock(step: step), gradientScale: 0.5, part: part)
          }
        }
        return copy.store.values.array
      }
      let p = store.values.count
      let full = try run(parts: [.whole])
      let thirds = try run(parts: [.init([0..<(p / 3)]), .init([(p / 3)..<(2 * p / 3 + 5)]), .init([(2 * p / 3 + 5)..<p])])
      #expect(full == thirds, "\(spec)")
      // Several parts per optimizer, as the bucketed sharded step gives each rank.
      let interleaved = try run(parts: [.init([0..<7, 20..<(p / 2)]), .init([7..<20, (p / 2)..<p])])
      #expect(full == interleaved, "\(spec)")
    }
  }
}
