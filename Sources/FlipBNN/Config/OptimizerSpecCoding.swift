import Foundation

/// `OptimizerSpec` in config files: Keras's and Larq's names (`adam`, `learning_rate`,
/// `beta_1`, `bop`, `gamma`), read strictly and written back whole. Every hyperparameter is a
/// number or a schedule mapping.
extension OptimizerSpec: Codable {
  public init(from decoder: Decoder) throws {
    self = try OptimizerSpec(config: try ConfigValue(from: decoder), path: ConfigPath.text(decoder.codingPath))
  }

  public func encode(to encoder: Encoder) throws { try config.encode(to: encoder) }

  /// Parses an optimizer mapping (`{type: adam, learning_rate: 0.001}`) and checks its ranges.
  public init(config value: ConfigValue, path: String) throws {
    let m = try ConfigMap(value, path: path)
    guard let type = try m.string("type") else {
      throw m.error("type", "an optimizer needs a type: adam, sgd, bop or case")
    }
    switch type {
    case "adam":
      let d = OptimizerDefaults.self
      self = .adam(
        learningRate: try Self.hyper(m, "learning_rate", d.adamLearningRate),
        beta1: try Self.hyper(m, "beta_1", d.adamBeta1), beta2: try Self.hyper(m, "beta_2", d.adamBeta2),
        epsilon: try Self.hyper(m, "epsilon", d.adamEpsilon))
    case "sgd":
      self = .sgd(
        learningRate: try Self.hyper(m, "learning_rate", OptimizerDefaults.sgdLearningRate),
        momentum: try Self.hyper(m, "momentum", OptimizerDefaults.sgdMomentum), nesterov: try m.bool("nesterov") ?? false)
    case "bop":
      self = .bop(
        gamma: try Self.hyper(m, "gamma", OptimizerDefaults.bopGamma),
        threshold: try Self.hyper(m, "threshold", OptimizerDefaults.bopThreshold))
    case "case":
      var cases: [(VariablePredicate, OptimizerSpec)] = []
      for (i, item) in (try m.list("cases") ?? []).enumerated() {
        let c = try ConfigMap(item, path: m.path(of: "cases[\(i)]"))
        guard let p = try c.string("predicate"), let predicate = VariablePredicate(rawValue: p) else {
          throw c.error("predicate", "must be binary (Larq's Bop.is_binary_variable) or non_binary")
        }
        guard let o = c.raw("optimizer") else { throw c.error("optimizer", "each case needs an optimizer") }
        cases.append((predicate, try OptimizerSpec(config: o, path: c.path(of: "optimizer"))))
        try c.finish(accepted: ["predicate", "optimizer"])
      }
      let fallback = try m.raw("default").map { try OptimizerSpec(config: $0, path: m.path(of: "default")) }
      self = .caseOptimizer(cases: cases, default: fallback)
    default:
      throw m.error("type", BNNError.unknownOptimizer(type).description)
    }
    try m.finish()
    do { try validate() } catch let e as BNNError { throw ConfigError(path: path, message: e.description) }
  }

  /// A hyperparameter is a number or a schedule mapping, e.g.
  /// `{schedule: cosine_decay, initial: 1e-3, decay_steps: 1000, alpha: 0, unit: step}`.
  static func hyper(_ m: ConfigMap, _ key: String, _ fallback: Double) throws -> Hyperparameter {
    guard let v = m.raw(key) else { return .constant(fallback) }
    guard case .map = v else {
      guard let d = try m.double(key) else { return .constant(fallback) }
      return .constant(d)
    }
    let s = try ConfigMap(v, path: m.path(of: key))
    let unitName = try s.string("unit") ?? "step"
    guard let unit = ScheduleUnit(rawValue: unitName) else {
      throw s.error("unit", "must be step or epoch, got '\(unitName)'")
    }
    let schedule = try Schedule(config: s)
    do { try schedule.validate(owner: m.path(of: key)) } catch let e as BNNError {
      throw s.error("schedule", e.description)
    }
    return Hyperparameter(schedule, unit: unit)
  }

  /// The optimizer as a config mapping, every hyperparameter written out.
  public var config: ConfigValue {
    func h(_ x: Hyperparameter) -> ConfigValue { x.config }
    switch self {
    case .adam(let lr, let b1, let b2, let eps):
      return .map(["type": "adam", "learning_rate": h(lr), "beta_1": h(b1), "beta_2": h(b2), "epsilon": h(eps)])
    case .sgd(let lr, let mom, let nesterov):
      return .map(["type": "sgd", "learning_rate": h(lr), "momentum": h(mom), "nesterov": .bool(nesterov)])
    case .bop(let g, let t): return .map(["type": "bop", "gamma": h(g), "threshold": h(t)])
    case .caseOptimizer(let cases, let fallback):
      var m: [String: ConfigValue] = [
        "type": "case",
        "cases": .list(cases.map { .map(["predicate": .string($0.0.rawValue), "optimizer": $0.1.config]) }),
      ]
      if let fallback { m["default"] = fallback.config }
      return .map(m)
    }
  }

  /// Checks the ranges Keras and Larq allow, whatever wrote the spec (a flag, a config file, a
  /// checkpoint): learning rates and ε positive, β in [0, 1), momentum in [0, 1], Bop's γ in
  /// (0, 1] and τ ≥ 0. A schedule is checked at its first step, where a learning rate may be 0
  /// (a warm-up from 0).
  public func validate() throws {
    func check(_ h: Hyperparameter, _ owner: String, _ name: String, _ ok: (Double) -> Bool, _ range: String) throws {
      try h.schedule.validate(owner: owner)
      let v = h.schedule.resolvingRunLength(1).value(at: 0)
      let warmsUp = name == "learning_rate" && h.schedule != .constant(v) && v == 0
      guard ok(v) || warmsUp else {
        throw BNNError.invalidParameter(owner: owner, parameter: name, reason: "must be \(range), got \(v)")
      }
    }
    switch self {
    case .adam(let lr, let b1, let b2, let eps):
      try check(lr, "adam", "learning_rate", { $0 > 0 }, "positive")
      try check(b1, "adam", "beta_1", { $0 >= 0 && $0 < 1 }, "in [0, 1)")
      try check(b2, "adam", "beta_2", { $0 >= 0 && $0 < 1 }, "in [0, 1)")
      try check(eps, "adam", "epsilon", { $0 > 0 }, "positive")
    case .sgd(let lr, let momentum, _):
      try check(lr, "sgd", "learning_rate", { $0 > 0 }, "positive")
      try check(momentum, "sgd", "momentum", { $0 >= 0 && $0 <= 1 }, "in [0, 1]")
    case .bop(let gamma, let threshold):
      try check(gamma, "bop", "gamma", { $0 > 0 && $0 <= 1 }, "in (0, 1]")
      try check(threshold, "bop", "threshold", { $0 >= 0 }, "≥ 0")
    case .caseOptimizer(let cases, let fallback):
      for c in cases { try c.1.validate() }
      try fallback?.validate()
    }
  }

  /// The same optimizer with every learning rate passed through `transform` (Adam's and SGD's;
  /// Bop has none, and keeps its γ). An optimizer without any learning rate is an error.
  public func mappingLearningRates(_ transform: (Hyperparameter) -> Hyperparameter) throws -> OptimizerSpec {
    switch self {
    case .adam(let lr, let b1, let b2, let eps):
      return .adam(learningRate: transform(lr), beta1: b1, beta2: b2, epsilon: eps)
    case .sgd(let lr, let m, let n): return .sgd(learningRate: transform(lr), momentum: m, nesterov: n)
    case .bop:
      throw BNNError.invalidParameter(
        owner: "bop", parameter: "learning_rate",
        reason: "lr_scaling and warmup_epochs need a learning rate; bop has gamma and threshold")
    case .caseOptimizer(let cases, let fallback):
      let mapped = cases.map { c -> (VariablePredicate, OptimizerSpec) in
        (c.0, (try? c.1.mappingLearningRates(transform)) ?? c.1)
      }
      return .caseOptimizer(cases: mapped, default: try fallback?.mappingLearningRates(transform))
    }
  }

  /// The same optimizer with a constant learning rate (`--learning-rate`).
  public func withLearningRate(_ lr: Double) throws -> OptimizerSpec {
    switch self {
    case .adam(_, let b1, let b2, let eps):
      return .adam(learningRate: .constant(lr), beta1: b1, beta2: b2, epsilon: eps)
    case .sgd(_, let m, let n): return .sgd(learningRate: .constant(lr), momentum: m, nesterov: n)
    case .bop:
      throw BNNError.invalidParameter(
        owner: "bop", parameter: "learning_rate",
        reason: "does not apply to bop (it has gamma and threshold); set them in the config")
    case .caseOptimizer(let cases, let fallback):
      guard let fallback else {
        throw BNNError.invalidParameter(
          owner: "case", parameter: "learning_rate", reason: "needs a default optimizer in the case optimizer")
      }
      return .caseOptimizer(cases: cases, default: try fallback.withLearningRate(lr))
    }
  }
}

extension ConfigValue: ExpressibleByStringLiteral {
  public init(stringLiteral value: String) { self = .string(value) }
}

extension Hyperparameter {
  /// A number, or the schedule's mapping with its unit.
  public var config: ConfigValue {
    if case .constant(let v) = schedule, unit == .step { return .double(v) }
    guard case .map(var m) = schedule.config else { return schedule.config }
    m["unit"] = .string(unit.rawValue)
    return .map(m)
  }
}

extension Schedule {
  /// Parses a schedule mapping (`schedule: cosine_decay, ...`).
  init(config s: ConfigMap) throws {
    guard let name = try s.string("schedule") else {
      throw s.error(
        "schedule",
        "a schedule needs a name: constant, exponential_decay, step_decay, cosine_decay, polynomial_decay, "
          + "linear_warmup")
    }
    func need(_ k: String) throws -> Double {
      guard let v = try s.double(k) else { throw s.error(k, "is required for \(name)") }
      return v
    }
    func needInt(_ k: String) throws -> Int {
      guard let v = try s.int(k) else { throw s.error(k, "is required for \(name)") }
      return v
    }
    func inner(_ k: String, _ why: String) throws -> Schedule {
      guard let m = try s.map(k) else { throw s.error(k, why) }
      return try Schedule(config: m)
    }
    switch name {
    case "constant": self = .constant(try need("value"))
    case "exponential_decay":
      self = .exponentialDecay(
        initial: try need("initial"), decaySteps: try needInt("decay_steps"), decayRate: try need("decay_rate"),
        staircase: try s.bool("staircase") ?? false)
    case "step_decay", "piecewise_constant":
      guard let b = try s.ints("boundaries"), let v = try s.doubles("values") else {
        throw s.error("boundaries", "step_decay needs boundaries and values")
      }
      self = .stepDecay(boundaries: b, values: v)
    case "cosine_decay":
      // `decay_steps: run`: every step of the run (resolved when the run starts).
      let run = s.values["decay_steps"] == .string("run")
      let steps = run ? Schedule.runLength : try needInt("decay_steps")
      if run { _ = s.raw("decay_steps") }
      self = .cosineDecay(initial: try need("initial"), decaySteps: steps, alpha: try s.double("alpha") ?? 0)
    case "polynomial_decay":
      // Keras's PolynomialDecay: end_learning_rate 0.0001 and power 1 unless given.
      let run = s.values["decay_steps"] == .string("run")
      let steps = run ? Schedule.runLength : try needInt("decay_steps")
      if run { _ = s.raw("decay_steps") }
      self = .polynomialDecay(
        initial: try need("initial"), decaySteps: steps, end: try s.double("end") ?? 0.0001,
        power: try s.double("power") ?? 1)
    case "scaled":
      self = .scaled(factor: try need("factor"), inner: try inner("inner", "scaled needs the schedule it scales under 'inner'"))
    case "linear_warmup":
      self = .linearWarmup(
        warmup: try needInt("warmup_steps"), start: try s.double("start") ?? 0,
        then: try inner("then", "linear_warmup needs the schedule that follows it under 'then'"))
    default:
      throw s.error("schedule", BNNError.unknownSchedule(name).description)
    }
    _ = try s.string("unit")
    try s.finish()
  }

  /// The schedule as a config mapping.
  public var config: ConfigValue {
    switch self {
    case .constant(let v): return .map(["schedule": "constant", "value": .double(v)])
    case .exponentialDecay(let i, let steps, let rate, let stair):
      return .map([
        "schedule": "exponential_decay", "initial": .double(i), "decay_steps": .int(steps),
        "decay_rate": .double(rate), "staircase": .bool(stair),
      ])
    case .stepDecay(let b, let v):
      return .map(["schedule": "step_decay", "boundaries": .ints(b), "values": .list(v.map { .double($0) })])
    case .cosineDecay(let i, let steps, let alpha):
      let decaySteps: ConfigValue = steps == Schedule.runLength ? "run" : .int(steps)
      return .map(["schedule": "cosine_decay", "initial": .double(i), "decay_steps": decaySteps, "alpha": .double(alpha)])
    case .polynomialDecay(let i, let steps, let end, let power):
      let decaySteps: ConfigValue = steps == Schedule.runLength ? "run" : .int(steps)
      return .map([
        "schedule": "polynomial_decay", "initial": .double(i), "decay_steps": decaySteps, "end": .double(end),
        "power": .double(power),
      ])
    case .scaled(let factor, let inner):
      return .map(["schedule": "scaled", "factor": .double(factor), "inner": inner.config])
    case .linearWarmup(let w, let start, let then):
      return .map(["schedule": "linear_warmup", "warmup_steps": .int(w), "start": .double(start), "then": then.config])
    }
  }
}
