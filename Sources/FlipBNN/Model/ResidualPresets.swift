import FlipTensor

/// The residual presets as graphs of named layers (Keras's functional API): `birealnet` and
/// `quicknet`. Layers are listed, and named, as Larq's summary of the same Keras model lists
/// them (topological order, names numbered in creation order).
extension ModelPreset {
  /// Bi-Real Net (Liu et al. 2018) scaled to small images: a real-valued stem, then 4 stages
  /// of 2 blocks (filters 16, 32, 64, 128; the first block of stages 2–4 halves the image).
  /// A block is `BN(QuantConv2D(x)) + shortcut`, the shortcut `x`, or when downsampling
  /// `BN(Conv2D 1×1(AveragePooling2D 2, strides 2(x)))`. QuantConv2D: approx_sign input,
  /// magnitude_aware_sign kernel, weight_clip, glorot_normal, no bias. Head: ReLU, global
  /// average pooling, Dense, softmax. `docs/reference/larq-summary-birealnet.txt` is
  /// Larq's summary of this model on 28×28×1.
  static var birealnetLayers: [LayerSpec] {
    var b = GraphBuilder()
    b.add(conv(16, kernel: 3, binary: false), name: b.next("conv2d"))
    var x = b.add(bn(), name: b.next("batch_normalization"))
    let stages = [16, 32, 64, 128]
    for (stage, filters) in stages.enumerated() {
      for block in 0..<2 {
        let down = stage > 0 && block == 0
        let main = b.next("quant_conv2d")
        if down {
          // Larq lists the shortcut's pooling first, its BatchNorm before the main path's.
          let pool = b.add(
            pooling(.averagePooling2D, size: 2, strides: 2, padding: .same), name: b.next("average_pooling2d"),
            inputs: [x])
          b.add(conv(filters, kernel: 3, binary: true, strides: 2), name: main, inputs: [x])
          let shortcutConv = b.add(conv(filters, kernel: 1, binary: false), name: b.next("conv2d"), inputs: [pool])
          let mainBN = b.next("batch_normalization")
          let shortcutBN = b.next("batch_normalization")
          b.add(bn(), name: shortcutBN, inputs: [shortcutConv])
          b.add(bn(), name: mainBN, inputs: [main])
          x = b.add(LayerSpec(.add), name: b.next("add"), inputs: [mainBN, shortcutBN])
        } else {
          b.add(conv(filters, kernel: 3, binary: true), name: main, inputs: [x])
          let y = b.add(bn(), name: b.next("batch_normalization"))
          x = b.add(LayerSpec(.add), name: b.next("add"), inputs: [y, x])
        }
      }
    }
    addHead(to: &b)
    return b.specs

    func conv(_ filters: Int, kernel: Int, binary: Bool, strides: Int = 1) -> LayerSpec {
      var s = LayerSpec(binary ? .quantConv2D : .conv2D)
      s.filters = filters
      s.kernelSize = [kernel, kernel]
      s.strides = [strides, strides]
      s.padding = .same
      s.useBias = false
      if binary {
        s.inputQuantizer = QuantizerSpec("approx_sign")
        s.kernelQuantizer = QuantizerSpec("magnitude_aware_sign")
        s.kernelConstraint = .weightClip(clipValue: 1)
        s.kernelInitializer = .glorotNormal
      }
      return s
    }
  }

  /// QuickNet-style (Larq Zoo's QuickNet structure, scaled to small images; Bannink et al.
  /// 2021): a real-valued stem (Conv2D 3×3 stride 2, ReLU, BN; DepthwiseConv2D 3×3, BN;
  /// Conv2D 1×1, BN), 3 sections of residual blocks (filters 32, 64, 128; 2, 2, 2 blocks),
  /// transitions between them (ReLU, MaxPool2D 3×3 stride 2, DepthwiseConv2D 3×3, BN,
  /// Conv2D 1×1, BN), and the head (ReLU, global average pooling, Dense, softmax). A block is
  /// `x + BN(ReLU(QuantConv2D(x)))` with ste_sign on input and kernel at clip 1.25 and
  /// weight_clip 1.25, glorot_normal, no bias, as QuickNet's. Not QuickNet's: its stem is
  /// stride 4 for 224×224 images and it has 4 sections (here 3 for 28×28 and 32×32).
  static var quicknetLayers: [LayerSpec] {
    var b = GraphBuilder()
    var relu = LayerSpec(.activation)
    relu.activation = .relu
    func conv(_ filters: Int, kernel: Int, strides: Int = 1) -> LayerSpec {
      var s = LayerSpec(.conv2D)
      s.filters = filters
      s.kernelSize = [kernel, kernel]
      s.strides = [strides, strides]
      s.padding = .same
      s.useBias = false
      return s
    }
    func depthwise() -> LayerSpec {
      var s = LayerSpec(.depthwiseConv2D)
      s.kernelSize = [3, 3]
      s.padding = .same
      s.useBias = false
      return s
    }
    let sections = [(32, 2), (64, 2), (128, 2)]
    b.add(conv(sections[0].0 / 4, kernel: 3, strides: 2), name: b.next("conv2d"))
    b.add(relu, name: b.next("activation"))
    b.add(bn(), name: b.next("batch_normalization"))
    b.add(depthwise(), name: b.next("depthwise_conv2d"))
    b.add(bn(), name: b.next("batch_normalization"))
    b.add(conv(sections[0].0, kernel: 1), name: b.next("conv2d"))
    var x = b.add(bn(), name: b.next("batch_normalization"))
    for (i, (filters, blocks)) in sections.enumerated() {
      if i > 0 {
        b.add(relu, name: b.next("activation"), inputs: [x])
        b.add(pooling(.maxPool2D, size: 3, strides: 2, padding: .same), name: b.next("max_pooling2d"))
        b.add(depthwise(), name: b.next("depthwise_conv2d"))
        b.add(bn(), name: b.next("batch_normalization"))
        b.add(conv(filters, kernel: 1), name: b.next("conv2d"))
        x = b.add(bn(), name: b.next("batch_normalization"))
      }
      for _ in 0..<blocks {
        var q = LayerSpec(.quantConv2D)
        q.filters = filters
        q.kernelSize = [3, 3]
        q.padding = .same
        q.useBias = false
        q.inputQuantizer = QuantizerSpec("ste_sign", parameters: ["clip_value": 1.25])
        q.kernelQuantizer = QuantizerSpec("ste_sign", parameters: ["clip_value": 1.25])
        q.kernelConstraint = .weightClip(clipValue: 1.25)
        q.kernelInitializer = .glorotNormal
        b.add(q, name: b.next("quant_conv2d"), inputs: [x])
        b.add(relu, name: b.next("activation"))
        let y = b.add(bn(), name: b.next("batch_normalization"))
        x = b.add(LayerSpec(.add), name: b.next("add"), inputs: [x, y])
      }
    }
    addHead(to: &b, inputs: [x])
    return b.specs
  }

  /// The residual presets' head: ReLU, global average pooling, Dense (one unit per class;
  /// 10 until the data says otherwise), softmax.
  private static func addHead(to b: inout GraphBuilder, inputs: [String]? = nil) {
    var relu = LayerSpec(.activation)
    relu.activation = .relu
    b.add(relu, name: b.next("activation"), inputs: inputs)
    b.add(LayerSpec(.globalAveragePooling2D), name: b.next("global_average_pooling2d"))
    var dense = LayerSpec(.dense)
    dense.units = 10
    b.add(dense, name: b.next("dense"))
    var softmax = LayerSpec(.activation)
    softmax.activation = .softmax
    b.add(softmax, name: b.next("activation"))
  }

  /// BatchNormalization with momentum 0.9 (Keras's defaults otherwise).
  private static func bn() -> LayerSpec {
    var s = LayerSpec(.batchNormalization)
    s.momentum = 0.9
    return s
  }

  private static func pooling(_ kind: LayerKind, size: Int, strides: Int, padding: Padding) -> LayerSpec {
    var s = LayerSpec(kind)
    s.poolSize = [size, size]
    s.strides = [strides, strides]
    s.padding = padding
    return s
  }
}

/// Collects named layer specs and numbers names as Keras does (`add`, `add_1`, ...).
struct GraphBuilder {
  private(set) var specs: [LayerSpec] = []
  private var counts: [String: Int] = [:]

  /// The next Keras name for `base`, reserved.
  mutating func next(_ base: String) -> String {
    let n = counts[base, default: 0]
    counts[base] = n + 1
    return n == 0 ? base : "\(base)_\(n)"
  }

  /// Appends `spec` named `name`, taking `inputs` (the previous layer when nil); returns the name.
  @discardableResult
  mutating func add(_ spec: LayerSpec, name: String, inputs: [String]? = nil) -> String {
    var s = spec
    s.name = name
    s.inputs = inputs
    specs.append(s)
    return name
  }
}
