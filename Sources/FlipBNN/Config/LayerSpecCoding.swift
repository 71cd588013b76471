import FlipTensor
import Foundation

/// `LayerSpec` in config files: Keras's and Larq's key names, read strictly (an unknown key
/// is an error naming it and the keys the layer kind accepts) and written back whole.
extension LayerSpec: Codable {
  /// The keys each layer kind accepts besides `type`, `name` and `inputs` (and
  /// `kernel_initializer` for layers with a kernel).
  static let kindKeys: [LayerKind: [String]] = [
    .quantDense: ["units", "input_quantizer", "kernel_quantizer", "kernel_constraint", "use_bias"],
    .dense: ["units", "kernel_constraint", "use_bias"],
    .quantConv2D: [
      "filters", "kernel_size", "strides", "padding", "pad_values", "input_quantizer", "kernel_quantizer",
      "kernel_constraint", "use_bias", "activation",
    ],
    .conv2D: ["filters", "kernel_size", "strides", "padding", "kernel_constraint", "use_bias", "activation"],
    .batchNormalization: ["momentum", "epsilon", "center", "scale"],
    .maxPool2D: ["pool_size", "strides", "padding"],
    .averagePooling2D: ["pool_size", "strides", "padding"],
    .globalAveragePooling2D: ["keepdims"],
    .depthwiseConv2D: [
      "kernel_size", "strides", "padding", "depth_multiplier", "depthwise_constraint", "depthwise_initializer",
      "use_bias", "trainable",
    ],
    .quantDepthwiseConv2D: [
      "kernel_size", "strides", "padding", "pad_values", "depth_multiplier", "input_quantizer",
      "depthwise_quantizer", "depthwise_constraint", "depthwise_initializer", "use_bias", "trainable",
    ],
    .flatten: [],
    .activation: ["activation"],
    .dropout: ["rate"],
    .add: [],
    .concatenate: ["axis"],
  ]

  /// Every key a layer of `kind` accepts.
  public static func acceptedKeys(_ kind: LayerKind) -> [String] {
    let own = kindKeys[kind] ?? []
    let hasKernel = own.contains("kernel_quantizer") || own.contains("kernel_constraint")
    return ["type", "name", "inputs"] + own + (hasKernel ? ["kernel_initializer"] : [])
  }

  /// Keras's other names for layer types.
  static let typeAliases = [
    "MaxPooling2D": "MaxPool2D", "BatchNorm": "BatchNormalization", "AvgPool2D": "AveragePooling2D",
    "GlobalAvgPool2D": "GlobalAveragePooling2D",
  ]

  public init(from decoder: Decoder) throws {
    self = try LayerSpec(config: try ConfigValue(from: decoder), path: ConfigPath.text(decoder.codingPath))
  }

  public func encode(to encoder: Encoder) throws { try config.encode(to: encoder) }

  /// Parses one layer's mapping; `path` names it in errors (`layers[2]`).
  public init(config value: ConfigValue, path: String) throws {
    let m = try ConfigMap(value, path: path)
    guard let typeName = try m.string("type") else {
      throw m.error("type", "every layer needs a type (\(LayerKind.allCases.map(\.rawValue).joined(separator: ", ")))")
    }
    guard let kind = LayerKind(rawValue: Self.typeAliases[typeName] ?? typeName) else {
      throw m.error("type", BNNError.unknownLayer(typeName).description)
    }
    self.init(kind)
    let accepted = Self.acceptedKeys(kind)
    for key in m.values.keys.sorted() where !accepted.contains(key) {
      throw m.error(
        key, "unknown key '\(key)' for \(kind.rawValue) (accepted: \(accepted.dropFirst().joined(separator: ", ")))")
    }
    try readConnections(m)
    try readShape(m)
    try readQuantization(m)
    try readNormalization(m)
    try m.finish()
  }

  private mutating func readConnections(_ m: ConfigMap) throws {
    name = try m.string("name")
    if case .string(let single)? = m.raw("inputs") {
      inputs = [single]
    } else if let list = try m.list("inputs") {
      inputs = try list.enumerated().map { i, v in
        guard case .string(let name) = v else { throw m.error("inputs", "item \(i) must be a layer name, got \(v)") }
        return name
      }
    }
    if isMerge && (inputs?.count ?? 0) < 2 {
      throw m.error("inputs", "\(kind.rawValue) needs the names of at least 2 layers under inputs")
    }
    if let a = try m.int("axis"), a != -1 && a != 3 {
      throw m.error("axis", "Concatenate joins the channels (axis -1) only, got \(a)")
    }
  }

  private mutating func readShape(_ m: ConfigMap) throws {
    units = try m.int("units")
    filters = try m.int("filters")
    // Keras takes one integer for a square window: kernel_size 3 means (3, 3).
    func pair(_ v: [Int]?) -> [Int]? { v.map { $0.count == 1 ? [$0[0], $0[0]] : $0 } }
    kernelSize = pair(try m.ints("kernel_size"))
    strides = pair(try m.ints("strides"))
    poolSize = pair(try m.ints("pool_size"))
    if let p = try m.string("padding") {
      guard let value = Padding(rawValue: p) else { throw m.error("padding", "must be valid or same, got '\(p)'") }
      padding = value
    }
    if let d = try m.int("depth_multiplier") { depthMultiplier = d }
    keepdims = try m.bool("keepdims") ?? keepdims
    useBias = try m.bool("use_bias") ?? useBias
  }

  private mutating func readQuantization(_ m: ConfigMap) throws {
    let initializerKey = isDepthwise ? "depthwise_initializer" : "kernel_initializer"
    if let i = try m.string(initializerKey) {
      guard let initializer = Initializer(name: i) else {
        throw m.error(
          initializerKey, "unknown initializer '\(i)' (accepted: \(Initializer.names.joined(separator: ", ")))")
      }
      kernelInitializer = initializer
    }
    trainable = try m.bool("trainable") ?? trainable
    if let v = try m.double("pad_values") { padValues = Float(v) }
    inputQuantizer = try Self.readQuantizer(m, "input_quantizer")
    // The depthwise layers' kernel is `depthwise_kernel`: its quantizer and constraint keys say so.
    kernelQuantizer = try Self.readQuantizer(m, isDepthwise ? "depthwise_quantizer" : "kernel_quantizer")
    kernelConstraint = try Self.readConstraint(m, isDepthwise ? "depthwise_constraint" : "kernel_constraint")
  }

  private mutating func readNormalization(_ m: ConfigMap) throws {
    if let v = try m.double("momentum") {
      guard (0...1).contains(v) else { throw m.error("momentum", "must be in [0, 1], got \(v)") }
      momentum = Float(v)
    }
    if let v = try m.double("epsilon") {
      guard v > 0 else { throw m.error("epsilon", "must be positive, got \(v)") }
      epsilon = Float(v)
    }
    center = try m.bool("center") ?? center
    scale = try m.bool("scale") ?? scale
    if let a = try m.string("activation") {
      guard let kind = ActivationKind(rawValue: a) else {
        throw m.error("activation", BNNError.unknownActivation(a).description)
      }
      activation = kind
    }
    if let r = try m.double("rate") {
      guard (0..<1).contains(r) else { throw m.error("rate", "must be in [0, 1), got \(r)") }
      rate = Float(r)
    }
  }

  /// A quantizer is a name (`ste_sign`) or a mapping (`{type: ste_sign, clip_value: 1.0}`);
  /// `clip_value: null` means no clipping, as in Larq.
  static func readQuantizer(_ m: ConfigMap, _ key: String) throws -> QuantizerSpec? {
    guard let v = m.raw(key) else { return nil }
    let spec: QuantizerSpec
    if case .string(let name) = v {
      spec = QuantizerSpec(name)
    } else {
      let q = try ConfigMap(v, path: m.path(of: key))
      guard let name = try q.string("type") else {
        throw q.error("type", "a quantizer mapping needs a type, e.g. ste_sign")
      }
      var parameters: [String: Double] = [:]
      var mode: String?
      for k in q.values.keys.sorted() where k != "type" {
        switch q.values[k] {
        case _ where k == "mode": mode = try q.string("mode")
        case .null?:
          _ = q.raw(k)
          parameters[k] = .nan
        case .bool(let b)?:
          _ = q.raw(k)
          parameters[k] = b ? 1 : 0
        default: parameters[k] = try q.double(k)
        }
      }
      spec = QuantizerSpec(name, parameters: parameters, mode: mode)
    }
    do { _ = try spec.make() } catch let e as BNNError { throw m.error(key, e.description) }
    return spec.name == "none" ? nil : spec
  }

  static func readConstraint(_ m: ConfigMap, _ key: String) throws -> KernelConstraint? {
    guard let v = m.raw(key) else { return nil }
    var name: String
    var clip = 1.0
    if case .string(let s) = v {
      name = s
    } else {
      let c = try ConfigMap(v, path: m.path(of: key))
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

  /// The layer as a config mapping: every key its kind accepts that has a value.
  public var config: ConfigValue {
    var m: [String: ConfigValue] = ["type": .string(kind.rawValue)]
    let keys = Self.acceptedKeys(kind)
    // Writes only the keys this kind accepts (so e.g. `padding` goes to convolutions and pools only).
    func put(_ k: String, _ v: ConfigValue?) { if let v, keys.contains(k) { m[k] = v } }
    put("name", name.map { .string($0) })
    put("inputs", inputs.map { .list($0.map { .string($0) }) })
    if kernelInitializer != .glorotUniform {
      put(isDepthwise ? "depthwise_initializer" : "kernel_initializer", .string(kernelInitializer.name))
    }
    if !trainable { put("trainable", .bool(false)) }
    put("units", units.map { .int($0) })
    put("filters", filters.map { .int($0) })
    put("kernel_size", kernelSize.map(ConfigValue.ints))
    put("strides", strides.map(ConfigValue.ints))
    put("pool_size", poolSize.map(ConfigValue.ints))
    put("padding", .string(padding.rawValue))
    put("pad_values", .float(padValues))
    put("depth_multiplier", .int(depthMultiplier))
    put("keepdims", .bool(keepdims))
    put("input_quantizer", inputQuantizer.map(\.config))
    put(isDepthwise ? "depthwise_quantizer" : "kernel_quantizer", kernelQuantizer.map(\.config))
    if case .weightClip(let v)? = kernelConstraint {
      put(
        isDepthwise ? "depthwise_constraint" : "kernel_constraint",
        .map(["type": .string("weight_clip"), "clip_value": .float(v)]))
    }
    put("use_bias", .bool(useBias))
    put("momentum", .float(momentum))
    put("epsilon", .float(epsilon))
    put("center", .bool(center))
    put("scale", .bool(scale))
    put("activation", activation.map { .string($0.rawValue) })
    put("rate", rate.map(ConfigValue.float))
    return .map(m)
  }
}

extension QuantizerSpec {
  /// The quantizer as a config value: its name, or a mapping with its parameters.
  public var config: ConfigValue {
    if parameters.isEmpty && mode == nil { return .string(name) }
    var m: [String: ConfigValue] = ["type": .string(name)]
    for (k, v) in parameters { m[k] = v.isNaN ? .null : .double(v) }
    if let mode { m["mode"] = .string(mode) }
    return .map(m)
  }
}

/// Coding paths as config errors name them: `layers[2].units`.
public enum ConfigPath {
  public static func text(_ path: [CodingKey]) -> String {
    var out = ""
    for key in path {
      if let i = key.intValue {
        out += "[\(i)]"
      } else {
        out += out.isEmpty ? key.stringValue : "." + key.stringValue
      }
    }
    return out
  }
}
