import ArgumentParser
import FlipBNN
import FlipTensor
import FlipTraining
import Foundation
import Yams

/// Everything that defines a training run. Read from a YAML file (see `configs/`), overridden
/// by command-line flags, and saved as `config.yaml` in the run directory with every layer
/// written out, so `flip evaluate` can rebuild the model.
public struct RunConfig: Equatable {
  /// A preset's name, or `custom`.
  public var model = "custom"
  public var layers: [LayerSpec] = []
  /// The shape of one input sample; by default the data set's.
  public var inputShape: [Int]?
  public var optimizer = OptimizerSpec.adam()
  public var epochs = 10
  /// The GLOBAL batch size (all ranks together).
  public var batchSize = 512
  public var seed: UInt64 = 0
  public var data = DataSplits.defaultDirectory
  public var logEverySteps = 50
  /// Augmentation of the training images (`augment: none | crop | crop-flip`; default none).
  /// Part of the run: saved in config.yaml and in every checkpoint's config, so a resumed run
  /// augments as the run it continues.
  public var augment = AugmentationMode.none

  public init() {}

  /// The preset's architecture and training setup: Larq's (Adam 1e-3, batch 512, 10 epochs),
  /// or for the residual presets Adam from 1e-3 with cosine decay to 0 over the run, batch 256.
  public init(preset: ModelPreset) {
    model = preset.rawValue
    layers = preset.layers
    if let o = preset.optimizer { optimizer = o }
    batchSize = preset.batchSize
    augment = preset == .birealnet || preset == .quicknet ? .cropFlip : .none
  }

  /// For a preset's config: the last Dense layer gives one output per class of the data set
  /// (the input layer follows the images by itself).
  public mutating func adaptOutput(toClasses classes: Int) {
    guard ModelPreset(rawValue: model) != nil,
      let last = layers.lastIndex(where: { $0.kind == .dense || $0.kind == .quantDense })
    else { return }
    layers[last].units = classes
  }

  static let topKeys = [
    "model", "layers", "input_shape", "optimizer", "epochs", "batch_size", "seed", "data", "log_every_steps",
    "augment",
  ]

  /// Parses YAML text; `file` names the source in errors.
  public static func parse(yaml text: String, file: String) throws -> RunConfig {
    let object: Any?
    do { object = try Yams.load(yaml: text) } catch {
      throw ConfigError(file: file, path: "", message: "not valid YAML: \(error)")
    }
    let top = try ConfigMap(object, file: file, path: "")
    var c = RunConfig()
    if let name = try top.string("model") {
      c.model = name
      if let preset = ModelPreset(rawValue: name) {
        c.layers = preset.layers
      } else if !top.has("layers") {
        throw top.error(
          "model",
          "unknown preset '\(name)' (known: \(ModelPreset.allCases.map(\.rawValue).joined(separator: ", "))); or list the layers under 'layers'"
        )
      }
    }
    if let list = try top.list("layers") {
      c.layers = try list.enumerated().map { i, v in
        try parseLayer(try ConfigMap(v, file: file, path: "layers[\(i)]"))
      }
    }
    if c.layers.isEmpty {
      throw top.error("layers", "the config names no model: give 'model: <preset>' or a list of 'layers'")
    }
    c.inputShape = try top.ints("input_shape")
    if let o = try top.map("optimizer") { c.optimizer = try parseOptimizer(o) }
    c.epochs = try top.int("epochs") ?? c.epochs
    c.batchSize = try top.int("batch_size") ?? c.batchSize
    if let s = try top.int("seed") {
      guard s >= 0 else { throw top.error("seed", "must be ≥ 0, got \(s)") }
      c.seed = UInt64(s)
    }
    c.data = try top.string("data") ?? c.data
    c.logEverySteps = try top.int("log_every_steps") ?? c.logEverySteps
    if let a = try top.string("augment") {
      guard let mode = AugmentationMode(rawValue: a) else {
        throw top.error("augment", "unknown augmentation '\(a)' (accepted: \(AugmentationMode.names))")
      }
      c.augment = mode
    }
    try top.finish(accepted: topKeys)
    return c
  }

  /// Reads and parses a config file.
  public static func load(path: String) throws -> RunConfig {
    guard FileManager.default.fileExists(atPath: path) else {
      throw TrainingError.fileNotFound(
        path: path, hint: "Pass an existing YAML file to --config (examples in configs/).")
    }
    guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
      throw TrainingError.unreadable(path: path, reason: "not readable as UTF-8 text")
    }
    return try parse(yaml: text, file: path)
  }

  // MARK: Layers

  static let layerKeys: [LayerKind: [String]] = [
    .quantDense: ["type", "units", "input_quantizer", "kernel_quantizer", "kernel_constraint", "use_bias"],
    .dense: ["type", "units", "kernel_constraint", "use_bias"],
    .quantConv2D: [
      "type", "filters", "kernel_size", "strides", "padding", "pad_values", "input_quantizer", "kernel_quantizer",
      "kernel_constraint", "use_bias",
    ],
    .conv2D: ["type", "filters", "kernel_size", "strides", "padding", "kernel_constraint", "use_bias"],
    .batchNormalization: ["type", "momentum", "epsilon", "center", "scale"],
    .maxPool2D: ["type", "pool_size", "strides", "padding"],
    .averagePooling2D: ["type", "pool_size", "strides", "padding"],
    .globalAveragePooling2D: ["type", "keepdims"],
    .depthwiseConv2D: [
      "type", "kernel_size", "strides", "padding", "depth_multiplier", "depthwise_constraint", "use_bias",
    ],
    .quantDepthwiseConv2D: [
      "type", "kernel_size", "strides", "padding", "pad_values", "depth_multiplier", "input_quantizer",
      "depthwise_quantizer", "depthwise_constraint", "use_bias",
    ],
    .flatten: ["type"],
    .activation: ["type", "activation"],
    .dropout: ["type", "rate"],
    .add: ["type"],
    .concatenate: ["type", "axis"],
  ].mapValues { keys in
    // Every layer takes a name and its inputs (Keras's functional API); Dense and Conv2D
    // layers their kernel's initializer.
    let initializer = keys.contains("kernel_quantizer") || keys.contains("kernel_constraint") ? ["kernel_initializer"] : []
    return keys + ["name", "inputs"] + initializer
  }

  static func parseLayer(_ m: ConfigMap) throws -> LayerSpec {
    guard let typeName = try m.string("type") else {
      throw m.error("type", "every layer needs a type (\(LayerKind.allCases.map(\.rawValue).joined(separator: ", ")))")
    }
    let aliases = [
      "MaxPooling2D": "MaxPool2D", "BatchNorm": "BatchNormalization", "AvgPool2D": "AveragePooling2D",
      "GlobalAvgPool2D": "GlobalAveragePooling2D",
    ]
    guard let kind = LayerKind(rawValue: aliases[typeName] ?? typeName) else {
      throw m.error("type", BNNError.unknownLayer(typeName).description)
    }
    var s = LayerSpec(kind)
    s.name = try m.string("name")
    if let raw = m.raw("inputs") as? String {
      s.inputs = [raw]
    } else if let list = try m.list("inputs") {
      s.inputs = try list.enumerated().map { i, v in
        guard let name = v as? String else { throw m.error("inputs", "item \(i) must be a layer name, got \(v)") }
        return name
      }
    }
    if s.isMerge && (s.inputs?.count ?? 0) < 2 {
      throw m.error("inputs", "\(kind.rawValue) needs the names of at least 2 layers under inputs")
    }
    if let a = try m.int("axis"), a != -1 && a != 3 {
      throw m.error("axis", "Concatenate joins the channels (axis -1) only, got \(a)")
    }
    if let i = try m.string("kernel_initializer") {
      guard let initializer = Initializer(name: i) else {
        throw m.error("kernel_initializer", "unknown initializer '\(i)' (accepted: glorot_uniform, glorot_normal, zeros, ones)")
      }
      s.kernelInitializer = initializer
    }
    let accepted = layerKeys[kind]!
    for key in m.values.keys where !accepted.contains(key) {
      throw m.error(
        key, "unknown key '\(key)' for \(kind.rawValue) (accepted: \(accepted.dropFirst().joined(separator: ", ")))")
    }
    s.units = try m.int("units")
    s.filters = try m.int("filters")
    // Keras takes one integer for a square window: kernel_size 3 means (3, 3).
    func pair(_ v: [Int]?) -> [Int]? { v.map { $0.count == 1 ? [$0[0], $0[0]] : $0 } }
    s.kernelSize = pair(try m.ints("kernel_size"))
    s.strides = pair(try m.ints("strides"))
    s.poolSize = pair(try m.ints("pool_size"))
    if let p = try m.string("padding") {
      guard let padding = Padding(rawValue: p) else { throw m.error("padding", "must be valid or same, got '\(p)'") }
      s.padding = padding
    }
    if let v = try m.double("pad_values") { s.padValues = Float(v) }
    s.inputQuantizer = try parseQuantizer(m, "input_quantizer")
    // The depthwise layers' kernel is `depthwise_kernel`: its quantizer and constraint keys say so.
    s.kernelQuantizer = try parseQuantizer(m, s.isDepthwise ? "depthwise_quantizer" : "kernel_quantizer")
    s.kernelConstraint = try parseConstraint(m, s.isDepthwise ? "depthwise_constraint" : "kernel_constraint")
    if let d = try m.int("depth_multiplier") { s.depthMultiplier = d }
    s.keepdims = try m.bool("keepdims") ?? false
    s.useBias = try m.bool("use_bias") ?? true
    if let v = try m.double("momentum") { s.momentum = Float(v) }
    if let v = try m.double("epsilon") { s.epsilon = Float(v) }
    s.center = try m.bool("center") ?? true
    s.scale = try m.bool("scale") ?? true
    if let a = try m.string("activation") {
      guard let kind = ActivationKind(rawValue: a) else {
        throw m.error("activation", BNNError.unknownActivation(a).description)
      }
      s.activation = kind
    }
    if let r = try m.double("rate") { s.rate = Float(r) }
    try m.finish()
    return s
  }

  /// A quantizer is a name (`ste_sign`) or a mapping (`{type: ste_sign, clip_value: 1.0}`);
  /// `clip_value: null` means no clipping, as in Larq.
  static func parseQuantizer(_ m: ConfigMap, _ key: String) throws -> QuantizerSpec? {
    guard let v = m.raw(key) else { return nil }
    let spec: QuantizerSpec
    if let name = v as? String {
      spec = QuantizerSpec(name)
    } else {
      let q = try ConfigMap(v, file: m.file, path: m.path + "." + key)
      guard let name = try q.string("type") else {
        throw q.error("type", "a quantizer mapping needs a type, e.g. ste_sign")
      }
      var parameters: [String: Double] = [:]
      var mode: String?
      for k in q.values.keys.sorted() where k != "type" {
        if k == "mode" {
          mode = try q.string("mode")
        } else if q.values[k] is NSNull {
          _ = q.raw(k)
          parameters[k] = .nan
        } else if let b = q.values[k] as? Bool {
          _ = q.raw(k)
          parameters[k] = b ? 1 : 0
        } else {
          parameters[k] = try q.double(k)
        }
      }
      spec = QuantizerSpec(name, parameters: parameters, mode: mode)
    }
    do { _ = try spec.make() } catch let e as BNNError { throw m.error(key, e.description) }
    return spec.name == "none" ? nil : spec
  }

  static func parseConstraint(_ m: ConfigMap, _ key: String) throws -> KernelConstraint? {
    guard let v = m.raw(key) else { return nil }
    var name: String
    var clip = 1.0
    if let s = v as? String {
      name = s
    } else {
      let c = try ConfigMap(v, file: m.file, path: m.path + "." + key)
      name = try c.string("type") ?? ""
      clip = try c.double("clip_value") ?? 1
      try c.finish(accepted: ["type", "clip_value"])
    }
    switch name {
    case "none": return nil
    case "weight_clip":
      guard clip > 0 else { throw m.error(key, "clip_value must be positive, got \(clip)") }
      return .weightClip(clipValue: Float(clip))
    default: throw m.error(key, BNNError.unknownConstraint(name).description)
    }
  }

  // MARK: Optimizers and schedules

  static func parseOptimizer(_ m: ConfigMap) throws -> OptimizerSpec {
    guard let type = try m.string("type") else {
      throw m.error("type", "an optimizer needs a type: adam, sgd, bop or case")
    }
    let spec: OptimizerSpec
    switch type {
    case "adam":
      spec = .adam(
        learningRate: try hyper(m, "learning_rate", 1e-3), beta1: try hyper(m, "beta_1", 0.9),
        beta2: try hyper(m, "beta_2", 0.999), epsilon: try hyper(m, "epsilon", 1e-7))
    case "sgd":
      spec = .sgd(
        learningRate: try hyper(m, "learning_rate", 0.01), momentum: try hyper(m, "momentum", 0),
        nesterov: try m.bool("nesterov") ?? false)
    case "bop":
      spec = .bop(gamma: try hyper(m, "gamma", 1e-4), threshold: try hyper(m, "threshold", 1e-8))
    case "case":
      var cases: [(VariablePredicate, OptimizerSpec)] = []
      for (i, item) in (try m.list("cases") ?? []).enumerated() {
        let c = try ConfigMap(item, file: m.file, path: "\(m.path).cases[\(i)]")
        guard let p = try c.string("predicate"), let predicate = VariablePredicate(rawValue: p) else {
          throw c.error("predicate", "must be binary (Larq's Bop.is_binary_variable) or non_binary")
        }
        guard let o = try c.map("optimizer") else { throw c.error("optimizer", "each case needs an optimizer") }
        cases.append((predicate, try parseOptimizer(o)))
        try c.finish(accepted: ["predicate", "optimizer"])
      }
      let fallback = try m.map("default").map(parseOptimizer)
      spec = .caseOptimizer(cases: cases, default: fallback)
    default:
      throw m.error("type", BNNError.unknownOptimizer(type).description)
    }
    try m.finish()
    return spec
  }

  /// A hyperparameter is a number or a schedule mapping, e.g.
  /// `{schedule: cosine_decay, initial: 1e-3, decay_steps: 1000, alpha: 0, unit: step}`.
  static func hyper(_ m: ConfigMap, _ key: String, _ fallback: Double) throws -> Hyperparameter {
    guard let v = m.values[key], !(v is NSNull) else {
      _ = m.raw(key)
      return .constant(fallback)
    }
    if !(v is [String: Any]) && !(v is [AnyHashable: Any]) {
      guard let d = try m.double(key) else { return .constant(fallback) }
      return .constant(d)
    }
    let s = try m.map(key)!
    let unitName = try s.string("unit") ?? "step"
    guard let unit = ScheduleUnit(rawValue: unitName) else {
      throw s.error("unit", "must be step or epoch, got '\(unitName)'")
    }
    let schedule = try parseSchedule(s)
    do { try schedule.validate(owner: "\(m.path).\(key)") } catch let e as BNNError {
      throw s.error("schedule", e.description)
    }
    return Hyperparameter(schedule, unit: unit)
  }

  static func parseSchedule(_ s: ConfigMap) throws -> Schedule {
    guard let name = try s.string("schedule") else {
      throw s.error(
        "schedule", "a schedule needs a name: constant, exponential_decay, step_decay, cosine_decay, linear_warmup")
    }
    func need(_ k: String) throws -> Double {
      guard let v = try s.double(k) else { throw s.error(k, "is required for \(name)") }
      return v
    }
    func needInt(_ k: String) throws -> Int {
      guard let v = try s.int(k) else { throw s.error(k, "is required for \(name)") }
      return v
    }
    let result: Schedule
    switch name {
    case "constant": result = .constant(try need("value"))
    case "exponential_decay":
      result = .exponentialDecay(
        initial: try need("initial"), decaySteps: try needInt("decay_steps"), decayRate: try need("decay_rate"),
        staircase: try s.bool("staircase") ?? false)
    case "step_decay", "piecewise_constant":
      guard let b = try s.ints("boundaries"), let v = try s.doubles("values") else {
        throw s.error("boundaries", "step_decay needs boundaries and values")
      }
      result = .stepDecay(boundaries: b, values: v)
    case "cosine_decay":
      // `decay_steps: run`: every step of the run (resolved when the run starts).
      let steps = s.raw("decay_steps") as? String == "run" ? Schedule.runLength : try needInt("decay_steps")
      result = .cosineDecay(initial: try need("initial"), decaySteps: steps, alpha: try s.double("alpha") ?? 0)
    case "scaled":
      guard let inner = try s.map("inner") else {
        throw s.error("inner", "scaled needs the schedule it scales under 'inner'")
      }
      result = .scaled(factor: try need("factor"), inner: try parseSchedule(inner))
    case "linear_warmup":
      guard let then = try s.map("then") else {
        throw s.error("then", "linear_warmup needs the schedule that follows it under 'then'")
      }
      result = .linearWarmup(
        warmup: try needInt("warmup_steps"), start: try s.double("start") ?? 0, then: try parseSchedule(then))
    default:
      throw s.error("schedule", BNNError.unknownSchedule(name).description)
    }
    _ = try s.string("unit")
    try s.finish()
    return result
  }

  // MARK: Writing

  /// The config as YAML, every layer written out (the run directory's `config.yaml`).
  public func yaml() throws -> String {
    var top: [String: Any] = [
      "model": model, "layers": layers.map(Self.emit), "optimizer": Self.emit(optimizer), "epochs": epochs,
      "batch_size": batchSize, "seed": Int(seed), "data": data, "log_every_steps": logEverySteps,
      "augment": augment.rawValue,
    ]
    if let inputShape { top["input_shape"] = inputShape }
    return try Yams.dump(object: top, sortKeys: true)
  }

  static func emit(_ s: LayerSpec) -> [String: Any] {
    var m: [String: Any] = ["type": s.kind.rawValue]
    let keys = layerKeys[s.kind]!
    if let name = s.name { m["name"] = name }
    if let inputs = s.inputs { m["inputs"] = inputs }
    if s.kernelInitializer != .glorotUniform { m["kernel_initializer"] = s.kernelInitializer.name }
    // Writes only the keys this kind accepts (so e.g. `padding` goes to convolutions and pools only).
    func put(_ k: String, _ v: Any?) { if let v, keys.contains(k) { m[k] = v } }
    put("units", s.units)
    put("filters", s.filters)
    put("kernel_size", s.kernelSize)
    put("strides", s.strides)
    put("pool_size", s.poolSize)
    put("padding", s.padding.rawValue)
    put("pad_values", decimal(s.padValues))
    put("depth_multiplier", s.depthMultiplier)
    put("keepdims", s.keepdims)
    put("input_quantizer", s.inputQuantizer.map(emit))
    put(s.isDepthwise ? "depthwise_quantizer" : "kernel_quantizer", s.kernelQuantizer.map(emit))
    if let c = s.kernelConstraint, case .weightClip(let v) = c {
      put(
        s.isDepthwise ? "depthwise_constraint" : "kernel_constraint", ["type": "weight_clip", "clip_value": decimal(v)])
    }
    put("use_bias", s.useBias)
    if s.kind == .batchNormalization {
      put("momentum", decimal(s.momentum))
      put("epsilon", decimal(s.epsilon))
      put("center", s.center)
      put("scale", s.scale)
    }
    put("activation", s.activation?.rawValue)
    put("rate", s.rate.map(decimal))
    return m
  }

  /// A Float as the double with the same shortest decimal text (0.9, not 0.899999976…), so
  /// written configs read as they were written and parse back to the same Float.
  static func decimal(_ f: Float) -> Double { Double(f.description) ?? Double(f) }

  static func emit(_ q: QuantizerSpec) -> Any {
    if q.parameters.isEmpty && q.mode == nil { return q.name }
    var m: [String: Any] = ["type": q.name]
    for (k, v) in q.parameters { m[k] = v.isNaN ? NSNull() : v }
    if let mode = q.mode { m["mode"] = mode }
    return m
  }

  static func emit(_ h: Hyperparameter) -> Any {
    if case .constant(let v) = h.schedule, h.unit == .step { return v }
    var m = emit(h.schedule)
    m["unit"] = h.unit.rawValue
    return m
  }

  static func emit(_ s: Schedule) -> [String: Any] {
    switch s {
    case .constant(let v): return ["schedule": "constant", "value": v]
    case .exponentialDecay(let i, let steps, let rate, let stair):
      return [
        "schedule": "exponential_decay", "initial": i, "decay_steps": steps, "decay_rate": rate, "staircase": stair,
      ]
    case .stepDecay(let b, let v): return ["schedule": "step_decay", "boundaries": b, "values": v]
    case .cosineDecay(let i, let steps, let alpha):
      let decaySteps: Any = steps == Schedule.runLength ? "run" : steps
      return ["schedule": "cosine_decay", "initial": i, "decay_steps": decaySteps, "alpha": alpha]
    case .scaled(let factor, let inner): return ["schedule": "scaled", "factor": factor, "inner": emit(inner)]
    case .linearWarmup(let w, let start, let then):
      return ["schedule": "linear_warmup", "warmup_steps": w, "start": start, "then": emit(then)]
    }
  }

  static func emit(_ o: OptimizerSpec) -> [String: Any] {
    switch o {
    case .adam(let lr, let b1, let b2, let eps):
      return ["type": "adam", "learning_rate": emit(lr), "beta_1": emit(b1), "beta_2": emit(b2), "epsilon": emit(eps)]
    case .sgd(let lr, let mom, let nesterov):
      return ["type": "sgd", "learning_rate": emit(lr), "momentum": emit(mom), "nesterov": nesterov]
    case .bop(let g, let t): return ["type": "bop", "gamma": emit(g), "threshold": emit(t)]
    case .caseOptimizer(let cases, let fallback):
      var m: [String: Any] = [
        "type": "case", "cases": cases.map { ["predicate": $0.0.rawValue, "optimizer": emit($0.1)] as [String: Any] },
      ]
      if let fallback { m["default"] = emit(fallback) }
      return m
    }
  }
}

/// `--augment none|crop|crop-flip` (the run config's `augment` key).
extension AugmentationMode: ExpressibleByArgument {}
