import FlipTensor
import Foundation

/// Larq Zoo's ImageNet networks (larq-zoo 2.4.0) layer for layer: the layers its Keras model
/// lists, in its order (Keras's topological order: where a block has two paths, the main path's
/// layers before the shortcut's at equal depth), named as Keras numbers them (in creation order,
/// so a shortcut's BatchNormalization, created first, has the lower number). Built for an input
/// shape: the global pool is Larq Zoo's `AveragePooling2D` over the whole last map, and
/// `binary-resnet-e18` and `binary-densenet28` take a 3×3 stride-1 stem below 50 pixels, as
/// Larq Zoo does. `Tests/FlipTests/Fixtures/zoo/` holds Larq's summaries of these models at 224×224×3.
extension ModelPreset {
  /// The Zoo network for inputs of `inputShape` (H, W, C) and `classes` classes; nil for the
  /// presets that are not Larq Zoo's.
  func zooLayers(inputShape: [Int], classes: Int) -> [LayerSpec]? {
    var z = ZooBuilder(inputShape: inputShape)
    switch self {
    case .birealnet18: z.biRealNet()
    case .binaryResNetE18: z.binaryResNetE18()
    case .binaryDenseNet28: z.binaryDenseNet28()
    case .quicknetSmall: z.quickNet(blocks: [4, 4, 4, 4], filters: [32, 64, 256, 512])
    case .quicknet: z.quickNet(blocks: [4, 4, 4, 4], filters: [64, 128, 256, 512])
    case .quicknetLarge: z.quickNet(blocks: [6, 8, 12, 6], filters: [64, 128, 256, 512])
    case .binarynetMLP, .larqCNN, .birealnet, .quicknetMini: return nil
    }
    z.head(classes: classes, initializer: zooHeadInitializer, quantDense: isQuickNet)
    return z.b.specs
  }

  private var isQuickNet: Bool { self == .quicknetSmall || self == .quicknet || self == .quicknetLarge }

  /// The head Dense's kernel initializer in Larq Zoo.
  private var zooHeadInitializer: Initializer {
    switch self {
    case .binaryDenseNet28: return .heNormal
    case .binaryResNetE18, .quicknetSmall, .quicknet, .quicknetLarge: return .glorotNormal
    default: return .glorotUniform
    }
  }
}

/// Builds a Zoo network, following the current map's height, width and channels as Keras
/// infers them.
private struct ZooBuilder {
  var b = GraphBuilder()
  /// The output shape (H, W, C) of the last layer added.
  var shape: [Int]
  /// The last layer's name (nil: the input).
  var last: String?

  init(inputShape: [Int]) {
    shape = inputShape.count == 3 ? inputShape : [1, 1, 1]
  }

  // MARK: Layers

  /// Appends `spec` under the reserved `name` taking `inputs` (the last layer's output when
  /// nil), and makes it the last layer; `shape` is its output shape.
  @discardableResult
  mutating func add(_ spec: LayerSpec, _ name: String, inputs: [String]? = nil, shape: [Int]) -> String {
    b.add(spec, name: name, inputs: inputs ?? last.map { [$0] })
    last = name
    self.shape = shape
    return name
  }

  static func conv(
    _ kind: LayerKind, _ filters: Int, kernel: Int, strides: Int = 1, padding: Padding = .same,
    initializer: Initializer
  ) -> LayerSpec {
    var s = LayerSpec(kind)
    s.filters = filters
    s.kernelSize = [kernel, kernel]
    s.strides = [strides, strides]
    s.padding = padding
    s.useBias = false
    s.kernelInitializer = initializer
    return s
  }

  /// A binary QuantConv2D 3×3 (same padding, no bias, glorot_normal), sign quantizers and clip
  /// `clip` (nil: Bi-Real Net's approx_sign and magnitude_aware_sign under weight_clip 1).
  static func binaryConv(_ filters: Int, strides: Int = 1, clip: Double?) -> LayerSpec {
    var s = conv(.quantConv2D, filters, kernel: 3, strides: strides, initializer: .glorotNormal)
    if let clip {
      s.inputQuantizer = QuantizerSpec("ste_sign", parameters: ["clip_value": clip])
      s.kernelQuantizer = QuantizerSpec("ste_sign", parameters: ["clip_value": clip])
      s.kernelConstraint = .weightClip(clipValue: Float(clip))
    } else {
      s.inputQuantizer = QuantizerSpec("approx_sign")
      s.kernelQuantizer = QuantizerSpec("magnitude_aware_sign")
      s.kernelConstraint = .weightClip(clipValue: 1)
    }
    return s
  }

  static func bn(momentum: Float = 0.99, epsilon: Float = 1e-3) -> LayerSpec {
    var s = LayerSpec(.batchNormalization)
    s.momentum = momentum
    s.epsilon = epsilon
    return s
  }

  static func pool(_ kind: LayerKind, _ size: Int, strides: Int, padding: Padding = .valid) -> LayerSpec {
    var s = LayerSpec(kind)
    s.poolSize = [size, size]
    s.strides = [strides, strides]
    s.padding = padding
    return s
  }

  static func activation(_ kind: ActivationKind) -> LayerSpec {
    var s = LayerSpec(.activation)
    s.activation = kind
    return s
  }

  /// Keras's output side of a window `k` with `strides` under `padding`.
  static func side(_ n: Int, kernel k: Int, strides s: Int, padding: Padding) -> Int {
    padding == .same ? (n + s - 1) / s : max(0, (n - k) / s + 1)
  }

  func window(_ k: Int, strides s: Int, padding: Padding, channels: Int? = nil) -> [Int] {
    [
      Self.side(shape[0], kernel: k, strides: s, padding: padding),
      Self.side(shape[1], kernel: k, strides: s, padding: padding), channels ?? shape[2],
    ]
  }

  @discardableResult
  mutating func addConv(_ spec: LayerSpec, inputs: [String]? = nil, name base: String) -> String {
    let k = spec.kernelSize![0]
    let out = window(k, strides: spec.strides![0], padding: spec.padding, channels: spec.filters)
    return add(spec, b.next(base), inputs: inputs, shape: out)
  }

  mutating func addSame(_ spec: LayerSpec, _ base: String) {
    add(spec, b.next(base), shape: shape)
  }

  mutating func addPool(_ spec: LayerSpec, _ base: String) {
    add(spec, b.next(base), shape: window(spec.poolSize![0], strides: spec.strides![0], padding: spec.padding))
  }

  // MARK: Networks

  /// `literature.BiRealNet`: a 7×7 stride-2 stem, BN (momentum 0.8), 3×3 max pool; 16 blocks
  /// `BN(QuantConv2D(x)) + shortcut` of 64, 128, 256, 512 filters, the first of each later
  /// stage stride 2 with the shortcut `BN(Conv2D 1×1(AvgPool2D 2, same(x)))`.
  mutating func biRealNet() {
    addConv(Self.conv(.conv2D, 64, kernel: 7, strides: 2, initializer: .glorotNormal), name: "conv2d")
    addSame(Self.bn(momentum: 0.8), "batch_normalization")
    addPool(Self.pool(.maxPool2D, 3, strides: 2, padding: .same), "max_pooling2d")
    for filters in [64, 128, 256, 512] {
      for _ in 0..<4 {
        residualBlock(filters: filters, clip: nil, bn: Self.bn(momentum: 0.8), shortcutPadding: .same)
      }
    }
  }

  /// `literature.BinaryResNetE18`: a 7×7 stride-2 stem (BN, ReLU, 3×3 max pool, BN), or one
  /// 3×3 convolution below 50 pixels; 16 blocks as Bi-Real Net's with SteSign(1.25) and
  /// WeightClip(1.25), BN momentum 0.9 and ε 1e-5, a valid AvgPool2D on the shortcut; ReLU.
  mutating func binaryResNetE18() {
    let bn = Self.bn(momentum: 0.9, epsilon: 1e-5)
    stem(bnAfterPool: true)
    for filters in [64, 128, 256, 512] {
      for _ in 0..<4 { residualBlock(filters: filters, clip: 1.25, bn: bn, shortcutPadding: .valid) }
    }
    addSame(Self.activation(.relu), "activation")
  }

  /// The stem of BinaryResNetE18 and BinaryDenseNet28 (he_normal, 64 filters).
  private mutating func stem(bnAfterPool: Bool) {
    if shape[0] < 50 {
      addConv(Self.conv(.conv2D, 64, kernel: 3, initializer: .heNormal), name: "conv2d")
      return
    }
    let bn = Self.bn(momentum: 0.9, epsilon: 1e-5)
    addConv(Self.conv(.conv2D, 64, kernel: 7, strides: 2, initializer: .heNormal), name: "conv2d")
    addSame(bn, "batch_normalization")
    addSame(Self.activation(.relu), "activation")
    addPool(Self.pool(.maxPool2D, 3, strides: 2, padding: .same), "max_pooling2d")
    if bnAfterPool { addSame(bn, "batch_normalization") }
  }

  /// `BN(QuantConv2D(x)) + shortcut`, downsampling (stride 2, the shortcut through AvgPool2D 2,
  /// Conv2D 1×1 and BN) when the filters change.
  private mutating func residualBlock(filters: Int, clip: Double?, bn: LayerSpec, shortcutPadding: Padding) {
    let x = last!
    guard shape[2] != filters else {
      addConv(Self.binaryConv(filters, clip: clip), name: "quant_conv2d")
      let y = b.next("batch_normalization")
      add(bn, y, shape: shape)
      add(LayerSpec(.add), b.next("add"), inputs: [y, x], shape: shape)
      return
    }
    // Created shortcut first (so named first), listed main path first.
    let poolName = b.next("average_pooling2d")
    let shortcutConvName = b.next("conv2d")
    let shortcutBN = b.next("batch_normalization")
    let input = shape
    let pooled = window(2, strides: 2, padding: shortcutPadding, channels: shape[2])
    add(Self.pool(.averagePooling2D, 2, strides: 2, padding: shortcutPadding), poolName, inputs: [x], shape: pooled)
    shape = input
    let main = addConv(Self.binaryConv(filters, strides: 2, clip: clip), inputs: [x], name: "quant_conv2d")
    let out = shape
    add(
      Self.conv(.conv2D, filters, kernel: 1, initializer: .glorotNormal), shortcutConvName, inputs: [poolName],
      shape: out)
    let mainBN = b.next("batch_normalization")
    add(bn, mainBN, inputs: [main], shape: out)
    add(bn, shortcutBN, inputs: [shortcutConvName], shape: out)
    add(LayerSpec(.add), b.next("add"), inputs: [mainBN, shortcutBN], shape: out)
  }

  /// `literature.BinaryDenseNet28`: the stem, 4 dense blocks of 6, 6, 6, 5 layers
  /// `concat(x, QuantConv2D 64(BN(x)))` with SteSign(1.3) and WeightClip(1.3), transitions
  /// `Conv2D 1×1(ReLU(MaxPool 2(BN(x))))` to `round(C // r / 32) · 32` filters (r 2.7, 2.7, 2.2);
  /// BN, ReLU.
  mutating func binaryDenseNet28() {
    let bn = Self.bn(momentum: 0.9, epsilon: 1e-5)
    let reduction = [2.7, 2.7, 2.2]
    stem(bnAfterPool: false)
    for (block, layers) in [6, 6, 6, 5].enumerated() {
      for _ in 0..<layers {
        let (x, channels) = (last!, shape[2])
        addSame(bn, "batch_normalization")
        let y = addConv(Self.binaryConv(64, clip: 1.3), name: "quant_conv2d")
        add(
          LayerSpec(.concatenate), b.next("concatenate"), inputs: [x, y], shape: [shape[0], shape[1], channels + 64])
      }
      guard block < reduction.count else { continue }
      addSame(bn, "batch_normalization")
      addPool(Self.pool(.maxPool2D, 2, strides: 2), "max_pooling2d")
      addSame(Self.activation(.relu), "activation")
      let filters = Int((floor(Double(shape[2]) / reduction[block]) / 32).rounded(.toNearestOrEven)) * 32
      addConv(Self.conv(.conv2D, filters, kernel: 1, initializer: .heNormal), name: "conv2d")
    }
    addSame(bn, "batch_normalization")
    addSame(Self.activation(.relu), "activation")
  }

  /// `sota.QuickNet` (and Small, Large): a stem `BN(Conv 1×1(BN'(DW 3×3 s2(ReLU(BN(Conv 3×3
  /// s2))))))` (full precision; BN' without scale and center), sections of residual blocks
  /// `x + BN(ReLU(QuantConv2D(x)))` (SteSign(1.25), WeightClip(1.25), pad_values 1), each
  /// later section entered through a transition `BN(Conv 1×1(BlurPool(MaxPool 2, s1(ReLU(x)))))`
  /// whose blur pool is a frozen depthwise 3×3 stride 2; ReLU.
  mutating func quickNet(blocks: [Int], filters: [Int]) {
    let bn = Self.bn(momentum: 0.9, epsilon: 1e-5)
    addConv(
      Self.conv(.quantConv2D, filters[0] / 4, kernel: 3, strides: 2, initializer: .heNormal), name: "quant_conv2d")
    addSame(Self.bn(), "batch_normalization")
    addSame(Self.activation(.relu), "activation")
    var depthwise = LayerSpec(.quantDepthwiseConv2D)
    depthwise.kernelSize = [3, 3]
    depthwise.strides = [2, 2]
    depthwise.padding = .same
    depthwise.useBias = false
    add(depthwise, b.next("quant_depthwise_conv2d"), shape: window(3, strides: 2, padding: .same))
    var plainBN = Self.bn()
    plainBN.center = false
    plainBN.scale = false
    addSame(plainBN, "batch_normalization")
    addConv(Self.conv(.quantConv2D, filters[0], kernel: 1, initializer: .heNormal), name: "quant_conv2d")
    addSame(Self.bn(), "batch_normalization")
    for (count, width) in zip(blocks, filters) {
      for _ in 0..<count {
        if shape[2] != width { quickNetTransition(filters: width, bn: bn) }
        let x = last!
        var q = Self.binaryConv(width, clip: 1.25)
        q.activation = .relu
        q.padValues = 1
        addConv(q, name: "quant_conv2d")
        let y = b.next("batch_normalization")
        add(bn, y, shape: shape)
        add(LayerSpec(.add), b.next("tf.__operators__.add"), inputs: [y, x], shape: shape)
      }
    }
    addSame(Self.activation(.relu), "activation")
  }

  private mutating func quickNetTransition(filters: Int, bn: LayerSpec) {
    addSame(Self.activation(.relu), "activation")
    addPool(Self.pool(.maxPool2D, 2, strides: 1), "max_pooling2d")
    var blur = LayerSpec(.depthwiseConv2D)
    blur.kernelSize = [3, 3]
    blur.strides = [2, 2]
    blur.padding = .same
    blur.useBias = false
    blur.kernelInitializer = .blurpool
    blur.trainable = false
    add(blur, b.next("depthwise_conv2d"), shape: window(3, strides: 2, padding: .same))
    addConv(Self.conv(.quantConv2D, filters, kernel: 1, initializer: .glorotNormal), name: "quant_conv2d")
    addSame(bn, "batch_normalization")
  }

  /// Larq Zoo's head: `AveragePooling2D` over the whole map, Flatten, Dense (QuantDense without
  /// quantizers for QuickNet) with bias, softmax.
  mutating func head(classes: Int, initializer: Initializer, quantDense: Bool) {
    var pool = LayerSpec(.averagePooling2D)
    pool.poolSize = [max(1, shape[0]), max(1, shape[1])]
    add(pool, b.next("average_pooling2d"), shape: [1, 1, shape[2]])
    addSame(LayerSpec(.flatten), "flatten")
    var dense = LayerSpec(quantDense ? .quantDense : .dense)
    dense.units = classes
    dense.kernelInitializer = initializer
    addSame(dense, quantDense ? "quant_dense" : "dense")
    addSame(Self.activation(.softmax), "activation")
  }
}
