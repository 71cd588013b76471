import FlipTensor

/// Layer types by their Larq/Keras class names, as written in config files.
public enum LayerKind: String, CaseIterable, Sendable, Codable {
  case quantDense = "QuantDense"
  case dense = "Dense"
  case quantConv2D = "QuantConv2D"
  case conv2D = "Conv2D"
  case batchNormalization = "BatchNormalization"
  case maxPool2D = "MaxPool2D"
  case averagePooling2D = "AveragePooling2D"
  case globalAveragePooling2D = "GlobalAveragePooling2D"
  case depthwiseConv2D = "DepthwiseConv2D"
  case quantDepthwiseConv2D = "QuantDepthwiseConv2D"
  case flatten = "Flatten"
  case activation = "Activation"
  case dropout = "Dropout"
  case add = "Add"
  case concatenate = "Concatenate"
}

/// A layer as a config file describes it, with Keras's and Larq's parameter names and defaults.
public struct LayerSpec: Equatable, Sendable {
  public var kind: LayerKind
  /// The layer's name (Keras's `name`); nil for Keras's automatic one (`quant_conv2d_1`).
  public var name: String?
  /// The names of the layers whose outputs it takes (`input` for the model's input), as
  /// Keras's functional API connects layers; nil for the previous layer's output.
  public var inputs: [String]?
  /// Keras's `kernel_initializer` of Dense/Conv2D layers (default glorot_uniform); the
  /// depthwise layers' `depthwise_initializer`.
  public var kernelInitializer: Initializer = .glorotUniform
  /// Keras's `trainable`: false freezes the layer's variables (they get no gradient and no
  /// update; depthwise layers only, as QuickNet's fixed blur pool).
  public var trainable = true
  public var units: Int?
  public var filters: Int?
  public var kernelSize: [Int]?
  public var strides: [Int]?
  public var padding: Padding = .valid
  public var padValues: Float = 0
  public var poolSize: [Int]?
  public var inputQuantizer: QuantizerSpec?
  /// The kernel's quantizer; the depthwise layers' `depthwise_quantizer` (see `depthwiseQuantizer`).
  public var kernelQuantizer: QuantizerSpec?
  /// `weight_clip` (with `clipValue`) or nil; the depthwise layers' `depthwise_constraint`.
  public var kernelConstraint: KernelConstraint?
  public var useBias = true
  /// `DepthwiseConv2D`'s `depth_multiplier` (Keras's default 1).
  public var depthMultiplier = 1
  /// `GlobalAveragePooling2D`'s `keepdims` (Keras's default false).
  public var keepdims = false
  public var momentum: Float = 0.99
  public var epsilon: Float = 1e-3
  public var center = true
  public var scale = true
  /// The `Activation` layer's function, or the one a convolution applies to its output
  /// (Keras's `activation` argument of `Conv2D`/`QuantConv2D`).
  public var activation: ActivationKind?
  public var rate: Float?

  public init(_ kind: LayerKind) { self.kind = kind }

  /// Larq's `depthwise_quantizer`: the depthwise layers' kernel quantizer, kept in the same
  /// slot as every other layer's (so what treats all kernels alike, e.g. `realValued()`,
  /// covers it).
  public var depthwiseQuantizer: QuantizerSpec? {
    get { kernelQuantizer }
    set { kernelQuantizer = newValue }
  }
  /// Keras's `depthwise_constraint`, in the slot of `kernelConstraint`.
  public var depthwiseConstraint: KernelConstraint? {
    get { kernelConstraint }
    set { kernelConstraint = newValue }
  }

  /// Whether the kernel is `depthwise_kernel` (so its quantizer is `depthwise_quantizer`).
  public var isDepthwise: Bool { kind == .depthwiseConv2D || kind == .quantDepthwiseConv2D }

  /// The largest `units`, `filters` and `depth_multiplier` a config may ask for, and the
  /// largest window (kernel, pool, stride) side: beyond them a layer's buffers would not fit
  /// in memory, and the sizes' products could overflow.
  public static let largestWidth = 1 << 20
  public static let largestWindow = 1 << 12

  /// Whether the layer takes several inputs.
  public var isMerge: Bool { kind == .add || kind == .concatenate }

  /// Builds the layer for inputs of `inputShapes` (one sample each): several for a merge
  /// layer, one for any other.
  public func make(inputShapes: [[Int]], seed: UInt64) throws -> Layer {
    switch kind {
    case .add: return try Add(inputShapes: inputShapes)
    case .concatenate: return try Concatenate(inputShapes: inputShapes)
    default:
      guard inputShapes.count == 1 else {
        throw BNNError.shapeMismatch(
          layer: kind.rawValue, reason: "takes one input, got \(inputShapes.count) (only Add and Concatenate take several)")
      }
      return try make(inputShape: inputShapes[0], seed: seed)
    }
  }

  /// Builds the layer for inputs of `inputShape` (one sample), checking every parameter.
  public func make(inputShape: [Int], seed: UInt64) throws -> Layer {
    for (key, value) in [("units", units), ("filters", filters), ("depth_multiplier", depthMultiplier)] {
      if let value, value > Self.largestWidth {
        throw BNNError.invalidParameter(
          owner: kind.rawValue, parameter: key, reason: "must be at most \(Self.largestWidth), got \(value)")
      }
    }
    // A kernel's size, before the layer allocates anything for it.
    let inputElements = inputShape.reduce(1.0) { $0 * Double($1) }
    let windowElements = (kernelSize ?? [1]).reduce(1.0) { $0 * Double($1) } * (kernelSize?.count == 1 ? Double(kernelSize![0]) : 1)
    let kernelElements: Double
    switch kind {
    case .quantDense, .dense: kernelElements = inputElements * Double(units ?? 0)
    case .quantConv2D, .conv2D: kernelElements = windowElements * Double(inputShape.last ?? 0) * Double(filters ?? 0)
    case .depthwiseConv2D, .quantDepthwiseConv2D:
      kernelElements = windowElements * Double(inputShape.last ?? 0) * Double(depthMultiplier)
    default: kernelElements = 0
    }
    guard kernelElements <= Double(Model.largestTensor) else {
      throw BNNError.invalidParameter(
        owner: kind.rawValue, parameter: "kernel",
        reason: "would hold \(Int(kernelElements)) weights for inputs of shape \(inputShape), more than \(Model.largestTensor); make the layer smaller")
    }
    let quantized = kind == .quantDense || kind == .quantConv2D || kind == .quantDepthwiseConv2D
    if !quantized && (inputQuantizer != nil || kernelQuantizer != nil) {
      let kernelKey = isDepthwise ? "depthwise_quantizer" : "kernel_quantizer"
      throw BNNError.invalidParameter(
        owner: kind.rawValue, parameter: inputQuantizer != nil ? "input_quantizer" : kernelKey,
        reason: "only QuantDense, QuantConv2D and QuantDepthwiseConv2D take quantizers")
    }
    func pair(_ v: [Int]?, _ name: String, default d: [Int]?) throws -> (Int, Int) {
      guard let v = v ?? d else {
        throw BNNError.invalidParameter(owner: kind.rawValue, parameter: name, reason: "is required")
      }
      let p = v.count == 1 ? [v[0], v[0]] : v
      guard p.count == 2, p[0] > 0, p[1] > 0 else {
        throw BNNError.invalidParameter(
          owner: kind.rawValue, parameter: name, reason: "must be one or two positive integers, got \(v)")
      }
      guard p[0] <= Self.largestWindow, p[1] <= Self.largestWindow else {
        throw BNNError.invalidParameter(
          owner: kind.rawValue, parameter: name, reason: "must be at most \(Self.largestWindow), got \(v)")
      }
      return (p[0], p[1])
    }
    switch kind {
    case .quantDense, .dense:
      guard let units else {
        throw BNNError.invalidParameter(owner: kind.rawValue, parameter: "units", reason: "is required")
      }
      return try QuantDense(
        units: units, inputShape: inputShape, inputQuantizer: try inputQuantizer?.make(),
        kernelQuantizer: try kernelQuantizer?.make(), constraint: kernelConstraint, useBias: useBias,
        typeName: kind == .dense ? "dense" : "quant_dense", kernelInitializer: kernelInitializer)
    case .quantConv2D, .conv2D:
      guard let filters else {
        throw BNNError.invalidParameter(owner: kind.rawValue, parameter: "filters", reason: "is required")
      }
      return try QuantConv2D(
        filters: filters, kernelSize: try pair(kernelSize, "kernel_size", default: nil),
        strides: try pair(strides, "strides", default: [1, 1]), padding: padding, padValue: padValues,
        inputShape: inputShape, inputQuantizer: try inputQuantizer?.make(),
        kernelQuantizer: try kernelQuantizer?.make(), constraint: kernelConstraint, useBias: useBias,
        typeName: kind == .conv2D ? "conv2d" : "quant_conv2d", kernelInitializer: kernelInitializer,
        activation: activation)
    case .batchNormalization:
      return try BatchNormalization(
        inputShape: inputShape, momentum: momentum, epsilon: epsilon, center: center, scale: scale)
    case .maxPool2D:
      let size = try pair(poolSize, "pool_size", default: [2, 2])
      return try MaxPool2D(
        poolSize: size, strides: strides == nil ? nil : try pair(strides, "strides", default: nil),
        padding: padding, inputShape: inputShape)
    case .averagePooling2D:
      let size = try pair(poolSize, "pool_size", default: [2, 2])
      return try AveragePooling2D(
        poolSize: size, strides: strides == nil ? nil : try pair(strides, "strides", default: nil),
        padding: padding, inputShape: inputShape)
    case .globalAveragePooling2D:
      return try GlobalAveragePooling2D(keepdims: keepdims, inputShape: inputShape)
    case .depthwiseConv2D, .quantDepthwiseConv2D:
      let plain = kind == .depthwiseConv2D
      return try QuantDepthwiseConv2D(
        kernelSize: try pair(kernelSize, "kernel_size", default: nil),
        strides: try pair(strides, "strides", default: [1, 1]), padding: padding, padValue: plain ? 0 : padValues,
        depthMultiplier: depthMultiplier, inputShape: inputShape, inputQuantizer: try inputQuantizer?.make(),
        depthwiseQuantizer: try kernelQuantizer?.make(), depthwiseConstraint: kernelConstraint, useBias: useBias,
        typeName: plain ? "depthwise_conv2d" : "quant_depthwise_conv2d", depthwiseInitializer: kernelInitializer,
        trainable: trainable)
    case .flatten:
      return Flatten(inputShape: inputShape)
    case .activation:
      guard let activation else {
        throw BNNError.invalidParameter(owner: "Activation", parameter: "activation", reason: "is required")
      }
      return Activation(activation, inputShape: inputShape)
    case .dropout:
      guard let rate else {
        throw BNNError.invalidParameter(owner: "Dropout", parameter: "rate", reason: "is required")
      }
      return try Dropout(rate: rate, inputShape: inputShape, seed: seed)
    case .add, .concatenate:
      return try make(inputShapes: [inputShape], seed: seed)
    }
  }
}
