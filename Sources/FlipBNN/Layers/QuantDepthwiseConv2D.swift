import FlipTensor

// Legend: B batch, H/W input height/width, C input channels, KH/KW kernel, M depth multiplier,
// F = C·M output channels, OH/OW output height/width, T = KH·KW taps (NHWC throughout).
// Output channel f = c·M + m belongs to input channel c and multiplier m (TensorFlow's order).

/// `QuantDepthwiseConv2D` (Larq) and Keras's `DepthwiseConv2D` (no quantizers): each input
/// channel is convolved with its own M filters. With `x̃ = q_in(x)` padded by `pad_values`
/// (after the input quantizer, as Larq pads) and the kernel `K` (KH, KW, C, M) in Keras's layout
/// (the variable `depthwise_kernel`),
///
///     y[b, oy, ox, c·M + m] = b[c·M + m] + Σ_{ky, kx} x̃[b, oy·SH − pt + ky, ox·SW − pl + kx, c] · q_k(K)[ky, kx, c, m]
///
/// (`tf.nn.depthwise_conv2d`; `pt`, `pl` Keras's `same` padding before, 0 for `valid`).
///
/// backward: `dq_k(K)[ky, kx, c, m] = Σ_{b, oy, ox} x̃[b, iy, ix, c] · dy[b, oy, ox, c·M + m]`,
/// `dK += q̃_k'(K) ⊙ dq_k(K)`, `db += Σ_{b, oy, ox} dy`,
/// `dx[b, iy, ix, c] = q̃_in'(x) · Σ_{oy, ox, ky, kx → (iy, ix)} Σ_m dy[b, oy, ox, c·M + m] · q_k(K)[ky, kx, c, m]`
/// (padding positions receive no gradient).
///
/// The kernel initializer is Keras's `glorot_uniform` by default, on the shape (KH, KW, C, M),
/// whose fans Keras computes as for any convolution kernel: `fan_in = KH·KW·C`,
/// `fan_out = KH·KW·M`. A frozen layer (`trainable: false`, QuickNet's blur pool) keeps its
/// variables in the store's non-trainable state and skips their gradients.
/// The kernel quantizer sees the kernel as (KH·KW·C, M): per-channel statistics
/// (`magnitude_aware_sign`) are per multiplier m, over all axes but the last, as Larq reduces.
///
/// Plain Swift loops (`DepthwiseLoops`): the kernel's slice at tap (ky, kx) is a row of F values
/// in the output's channel order, and with M > 1 the input is expanded to F lanes per pixel, so
/// every loop runs over contiguous lanes, 16 at a time, with its accumulator in registers. (They
/// are compiled for baseline x86-64, SSE; oneDNN's JIT depthwise convolution would use AVX2 or
/// AVX-512 FMA.) Unequal strides are allowed (TensorFlow's CPU kernel refuses them).
public final class QuantDepthwiseConv2D: Layer, LentInputGradient, FlipCounting {
  public var name: String
  public var compute = Compute.serial
  public let typeName: String
  public let inputShape: [Int]
  public let outputShape: [Int]
  public let depthMultiplier: Int
  public let geometry: ConvGeometry
  public let padding: Padding
  public let padValue: Float
  public let useBias: Bool
  public let inputQuantizer: Quantizer?
  public let constraint: KernelConstraint?
  public let kernelInitializer: Initializer
  /// Whether the variables train (Keras's `trainable`).
  public let trainable: Bool
  let kernel: QuantizedKernel
  var bias: UnsafeMutablePointer<Float>?
  var biasGradient: UnsafeMutablePointer<Float>?

  private var maxBatch = 0
  /// Most pieces of the batch whose kernel gradients are summed apart (in parallel), then added
  /// in piece order. Fixed, not the thread count, so the sums do not depend on the threads.
  static let pieceLimit = 32
  private var pieces = 1
  /// (B, H, W, C) the raw input (for the input quantizer's pseudo-gradient).
  private var input: UnsafePointer<Float>!
  /// (B, H, W, L) the input the products use: q_in(x) or x (L = C), or its expansion
  /// `expandedInput` (L = F) when M > 1.
  private var productInput: UnsafePointer<Float>!
  /// (B, H, W, C) quantized input; only with an input quantizer.
  private var quantizedInput: FloatBuffer?
  /// (B, OH, OW, F) output.
  private var y = FloatBuffer(count: 0)
  /// (B, H, W, C) input gradient.
  public var inputGradient = FloatBuffer(count: 0)
  public var inputGradientIsLent = false
  /// (pieces, T, F) per-piece sums of the quantized kernel's gradient.
  private var kernelGradientPieces = FloatBuffer(count: 0)
  /// (B, H, W, F) the product input with each channel repeated M times; only when M > 1.
  private var expandedInput: FloatBuffer?
  /// (pieces, F) one pixel's input-gradient lanes before the sum over m; only when M > 1.
  private var pixelSums: FloatBuffer?

  public init(
    kernelSize: (Int, Int), strides: (Int, Int) = (1, 1), padding: Padding = .valid, padValue: Float = 0,
    depthMultiplier: Int = 1, inputShape: [Int], inputQuantizer: Quantizer? = nil,
    depthwiseQuantizer: Quantizer? = nil, depthwiseConstraint: KernelConstraint? = nil, useBias: Bool = true,
    typeName: String? = nil, depthwiseInitializer: Initializer = .glorotUniform, trainable: Bool = true
  ) throws {
    let type =
      typeName ?? ((inputQuantizer == nil && depthwiseQuantizer == nil) ? "depthwise_conv2d" : "quant_depthwise_conv2d")
    let owner = type == "depthwise_conv2d" ? "DepthwiseConv2D" : "QuantDepthwiseConv2D"
    guard depthMultiplier > 0 else {
      throw BNNError.invalidParameter(
        owner: owner, parameter: "depth_multiplier", reason: "must be a positive integer, got \(depthMultiplier)")
    }
    try checkPositivePair(kernelSize, owner: owner, parameter: "kernel_size")
    try checkPositivePair(strides, owner: owner, parameter: "strides")
    guard padValue.isFinite else {
      throw BNNError.invalidParameter(owner: owner, parameter: "pad_values", reason: "must be finite, got \(padValue)")
    }
    geometry = try windowGeometry(
      layer: type, inputShape: inputShape, window: kernelSize, strides: strides, padding: padding)
    try depthwiseInitializer.checkShape(
      [kernelSize.0, kernelSize.1, inputShape[2], depthMultiplier], owner: owner)
    kernelInitializer = depthwiseInitializer
    self.trainable = trainable
    self.depthMultiplier = depthMultiplier
    self.padding = padding
    self.padValue = padValue
    self.inputShape = inputShape
    outputShape = [geometry.outputHeight, geometry.outputWidth, inputShape[2] * depthMultiplier]
    self.inputQuantizer = inputQuantizer
    self.constraint = depthwiseConstraint
    self.useBias = useBias
    self.typeName = type
    name = type
    let taps = geometry.kernelHeight * geometry.kernelWidth
    kernel = QuantizedKernel(
      quantizer: depthwiseQuantizer, rows: taps * geometry.channels, channels: depthMultiplier)
  }

  /// Output channels `F = C·M`.
  public var filters: Int { geometry.channels * depthMultiplier }
  public var depthwiseQuantizer: Quantizer? { kernel.quantizer }
  public var hasQuantizedKernel: Bool { kernel.quantizer != nil }
  public var lastFlipRatio: Double? { hasQuantizedKernel ? kernel.lastFlipRatio : nil }

  public var parameterSpecs: [ParameterSpec] {
    let g = geometry
    var specs = [
      ParameterSpec(
        role: .depthwiseKernel, shape: [g.kernelHeight, g.kernelWidth, g.channels, depthMultiplier],
        precision: kernel.quantizer?.precision ?? 32, trainable: trainable, constraint: constraint,
        initializer: kernelInitializer)
    ]
    if useBias {
      specs.append(ParameterSpec(role: .bias, shape: [filters], trainable: trainable, initializer: .zeros))
    }
    return specs
  }

  public func bind(store: ParameterStore, views: [ParameterView]) {
    kernel.latent = store.pointer(views[0])
    kernel.gradient = trainable ? store.gradient(views[0]) : nil
    if useBias {
      bias = store.pointer(views[1])
      biasGradient = trainable ? store.gradient(views[1]) : nil
    }
  }

  public func allocate(maxBatch: Int) {
    guard maxBatch > self.maxBatch else { return }
    self.maxBatch = maxBatch
    y = FloatBuffer(count: maxBatch * outputSize)
    if !inputGradientIsLent { inputGradient = FloatBuffer(count: maxBatch * inputSize) }
    if inputQuantizer != nil { quantizedInput = FloatBuffer(count: maxBatch * inputSize) }
    pieces = min(Self.pieceLimit, maxBatch)
    kernelGradientPieces = FloatBuffer(count: pieces * kernel.count)
    if depthMultiplier > 1 {
      expandedInput = FloatBuffer(count: maxBatch * inputSize * depthMultiplier)
      pixelSums = FloatBuffer(count: pieces * filters)
    }
  }

  public func forward(_ x: UnsafePointer<Float>, batch: Int, training: Bool) throws -> UnsafePointer<Float> {
    let g = geometry
    let c = g.channels
    let multiplier = depthMultiplier
    input = x
    var source = x
    if let q = inputQuantizer, let xq = quantizedInput {
      q.parallelForward(x, xq.pointer, count: batch * inputSize, channels: c, compute: compute)
      source = UnsafePointer(xq.pointer)
    }
    // With M > 1, each input value is repeated M times, so every loop runs over F contiguous lanes.
    if let e = expandedInput {
      let pixels = batch * g.inputHeight * g.inputWidth
      compute.forEach(count: pixels) { r in
        for p in r {
          let from = source + p * c
          let to = e.pointer + p * c * multiplier
          for ch in 0..<c { (to + ch * multiplier).update(repeating: from[ch], count: multiplier) }
        }
      }
      source = UnsafePointer(e.pointer)
    }
    productInput = source
    let loops = DepthwiseLoops(
      geometry: g, lanes: filters, padValue: padValue, input: source,
      kernel: kernel.forward(training: training, compute: compute))
    let b = bias.map { UnsafePointer($0) }
    let out = y.pointer
    compute.forRanges(count: batch, grain: 1) { images in
      for n in images { loops.forward(image: n, bias: b, into: out) }
    }
    return UnsafePointer(out)
  }

  public func backward(_ dy: UnsafePointer<Float>, batch: Int, needInputGradient: Bool) throws -> UnsafePointer<Float>?
  {
    let g = geometry
    let c = g.channels
    let multiplier = depthMultiplier
    let loops = DepthwiseLoops(
      geometry: g, lanes: filters, padValue: padValue, input: productInput,
      kernel: UnsafePointer(kernel.quantized?.pointer ?? kernel.latent!))
    let kernelCount = kernel.count
    let partial = kernelGradientPieces.pointer
    let sums = pixelSums?.pointer
    let d = inputGradient.pointer
    // Each piece of the batch sums its kernel gradient apart and writes its images' dx.
    let grain = max(1, (batch + pieces - 1) / pieces)
    let pieceCount = (batch + grain - 1) / grain
    compute.forRanges(count: batch, grain: grain) { images in
      let piece = images.lowerBound / grain
      let dk = partial + piece * kernelCount
      if trainable { dk.update(repeating: 0, count: kernelCount) }
      for n in images {
        if trainable { loops.accumulateKernelGradient(image: n, dy: dy, into: dk) }
        guard needInputGradient else { continue }
        let dxImage = d + n * g.inputSize
        if let sums {
          // Per pixel: the F lanes' sums, then Σ over each channel's M lanes.
          let row = sums + piece * filters
          loops.inputGradient(image: n, dy: dy) { pixel in
            row
          } finish: { pixel in
            let to = dxImage + pixel * c
            for ch in 0..<c {
              var s: Float = 0
              for m in 0..<multiplier { s += row[ch * multiplier + m] }
              to[ch] = s
            }
          }
        } else {
          loops.inputGradient(image: n, dy: dy) { pixel in
            dxImage + pixel * c
          } finish: { _ in
          }
        }
      }
    }
    // The pieces' sums, in piece order, into the quantized kernel's gradient (straight into
    // the latent's, accumulating, when the pseudo-gradient is the identity); then through the
    // quantizer's pseudo-gradient into the latent's.
    if trainable {
      let (target, beta) = kernel.gemmGradientTarget
      compute.forEach(count: kernelCount) { r in
        for i in r {
          var s: Float = beta == 0 ? 0 : target[i]
          for p in 0..<pieceCount { s += partial[p * kernelCount + i] }
          target[i] = s
        }
      }
      kernel.finishBackward(from: target, compute: compute)
    }
    if let db = biasGradient {
      accumulateColumnSums(dy, rows: batch * g.outputPixels, columns: filters, into: db)
    }
    guard needInputGradient else { return nil }
    quantizerGradient(inputQuantizer, input, d, count: batch * inputSize, channels: c, compute: compute)
    return UnsafePointer(d)
  }

  /// Larq: the kernel's weights at the quantizer's precision, the bias at 32 bits, and
  /// `KH·KW·C·M · OH·OW` MACs at `max(input precision or 32, kernel bits)`.
  public var profile: LayerProfile {
    let g = geometry
    let kernelBits = kernel.quantizer?.precision ?? 32
    let inputBits = inputQuantizer?.precision ?? 32
    var weights = [
      LayerProfile.Weights(role: .depthwiseKernel, count: kernel.count, precision: kernelBits, trainable: trainable)
    ]
    if useBias { weights.append(.init(role: .bias, count: filters, precision: 32, trainable: trainable)) }
    return LayerProfile(
      name: name, inputPrecision: inputQuantizer?.precision, outputShape: outputShape, weights: weights,
      macs: .count(g.outputPixels * kernel.count, precision: max(kernelBits, inputBits)))
  }
}

// MARK: The loops

/// 16, 4 or 1 floats processed together: the depthwise loops are written once over lanes.
protocol FloatLanes: BitwiseCopyable {
  init(broadcast: Float)
  static func + (a: Self, b: Self) -> Self
  static func * (a: Self, b: Self) -> Self
}

extension FloatLanes {
  @inline(__always) static func load(_ p: UnsafePointer<Float>) -> Self {
    UnsafeRawPointer(p).loadUnaligned(as: Self.self)
  }
  @inline(__always) func store(_ p: UnsafeMutablePointer<Float>) {
    UnsafeMutableRawPointer(p).storeBytes(of: self, as: Self.self)
  }
}

extension SIMD16: FloatLanes where Scalar == Float {
  @inline(__always) init(broadcast v: Float) { self.init(repeating: v) }
}
extension SIMD4: FloatLanes where Scalar == Float {
  @inline(__always) init(broadcast v: Float) { self.init(repeating: v) }
}
extension Float: FloatLanes {
  @inline(__always) init(broadcast v: Float) { self = v }
}

/// Calls `body16`, `body4`, `body1` with the first lane of each block covering `0..<count`:
/// blocks of 16 while they fit, then of 4, then single lanes.
@inline(__always)
func forLaneBlocks(_ count: Int, _ body16: (Int) -> Void, _ body4: (Int) -> Void, _ body1: (Int) -> Void) {
  var j = 0
  while j + 16 <= count {
    body16(j)
    j += 16
  }
  while j + 4 <= count {
    body4(j)
    j += 4
  }
  while j < count {
    body1(j)
    j += 1
  }
}

/// The depthwise products of one batch over L = F lanes per pixel (legend above): the input
/// (B, H, W, L) is x̃ (M = 1) or x̃ expanded (M > 1), the kernel (T, L), outputs (B, OH, OW, L).
/// Each loop keeps its accumulator in registers while it runs over the taps or pixels.
struct DepthwiseLoops {
  let geometry: ConvGeometry
  let lanes: Int
  let padValue: Float
  /// (B, H, W, L) the product input.
  let input: UnsafePointer<Float>
  /// (T, L) the (quantized) kernel.
  let kernel: UnsafePointer<Float>

  /// `y[n, oy, ox, :] = b + Σ_taps x̃[n, iy, ix, :] ⊙ K[tap, :]` (padding taps read `padValue`).
  @inline(__always)
  func forward(image n: Int, bias: UnsafePointer<Float>?, into out: UnsafeMutablePointer<Float>) {
    let g = geometry
    for oy in 0..<g.outputHeight {
      for ox in 0..<g.outputWidth {
        let o = out + ((n * g.outputHeight + oy) * g.outputWidth + ox) * lanes
        forLaneBlocks(
          lanes, { forwardBlock(SIMD16<Float>.self, n, oy, ox, $0, bias, o) },
          { forwardBlock(SIMD4<Float>.self, n, oy, ox, $0, bias, o) },
          { forwardBlock(Float.self, n, oy, ox, $0, bias, o) })
      }
    }
  }

  @inline(__always)
  private func forwardBlock<V: FloatLanes>(
    _: V.Type, _ n: Int, _ oy: Int, _ ox: Int, _ j: Int, _ bias: UnsafePointer<Float>?,
    _ o: UnsafeMutablePointer<Float>
  ) {
    let g = geometry
    let image = input + n * g.inputHeight * g.inputWidth * lanes
    var acc = bias.map { V.load($0 + j) } ?? V(broadcast: 0)
    let pad = V(broadcast: padValue)
    for ky in 0..<g.kernelHeight {
      let iy = oy * g.strideHeight - g.padTop + ky
      let rowInside = iy >= 0 && iy < g.inputHeight
      for kx in 0..<g.kernelWidth {
        let ix = ox * g.strideWidth - g.padLeft + kx
        let k = V.load(kernel + (ky * g.kernelWidth + kx) * lanes + j)
        if rowInside && ix >= 0 && ix < g.inputWidth {
          acc = acc + V.load(image + (iy * g.inputWidth + ix) * lanes + j) * k
        } else if padValue != 0 {
          acc = acc + pad * k
        }
      }
    }
    acc.store(o + j)
  }

  /// `dK[tap, :] += Σ_{oy, ox} x̃[n, iy, ix, :] ⊙ dy[n, oy, ox, :]` (padding taps read `padValue`).
  @inline(__always)
  func accumulateKernelGradient(image n: Int, dy: UnsafePointer<Float>, into dk: UnsafeMutablePointer<Float>) {
    let g = geometry
    for ky in 0..<g.kernelHeight {
      for kx in 0..<g.kernelWidth {
        let row = dk + (ky * g.kernelWidth + kx) * lanes
        forLaneBlocks(
          lanes, { kernelGradientBlock(SIMD16<Float>.self, n, ky, kx, $0, dy, row) },
          { kernelGradientBlock(SIMD4<Float>.self, n, ky, kx, $0, dy, row) },
          { kernelGradientBlock(Float.self, n, ky, kx, $0, dy, row) })
      }
    }
  }

  @inline(__always)
  private func kernelGradientBlock<V: FloatLanes>(
    _: V.Type, _ n: Int, _ ky: Int, _ kx: Int, _ j: Int, _ dy: UnsafePointer<Float>, _ row: UnsafeMutablePointer<Float>
  ) {
    let g = geometry
    let image = input + n * g.inputHeight * g.inputWidth * lanes
    let gradients = dy + n * g.outputPixels * lanes
    var acc = V.load(row + j)
    let pad = V(broadcast: padValue)
    for oy in 0..<g.outputHeight {
      let iy = oy * g.strideHeight - g.padTop + ky
      let rowInside = iy >= 0 && iy < g.inputHeight
      if !rowInside && padValue == 0 { continue }
      for ox in 0..<g.outputWidth {
        let ix = ox * g.strideWidth - g.padLeft + kx
        let gradient = V.load(gradients + (oy * g.outputWidth + ox) * lanes + j)
        if rowInside && ix >= 0 && ix < g.inputWidth {
          acc = acc + V.load(image + (iy * g.inputWidth + ix) * lanes + j) * gradient
        } else if padValue != 0 {
          acc = acc + pad * gradient
        }
      }
    }
    acc.store(row + j)
  }

  /// For each input pixel p of image n: writes `Σ_{taps, (oy, ox) reading p} dy[n, oy, ox, :] ⊙ K[tap, :]`
  /// to `target(p)` (L lanes), then calls `finish(p)`. Padding positions get nothing.
  ///
  /// Tap ky reads row iy from output row oy where `oy·SH = iy + pad_top − ky`: the taps that
  /// do are `ky ≡ (iy + pad_top) mod SH`, every SH-th from the first, with oy falling by one
  /// at each (no division in the lane loops).
  @inline(__always)
  func inputGradient(
    image n: Int, dy: UnsafePointer<Float>, target: (Int) -> UnsafeMutablePointer<Float>, finish: (Int) -> Void
  ) {
    let g = geometry
    for iy in 0..<g.inputHeight {
      let ky0 = (iy + g.padTop) % g.strideHeight
      let oy0 = (iy + g.padTop - ky0) / g.strideHeight
      for ix in 0..<g.inputWidth {
        let kx0 = (ix + g.padLeft) % g.strideWidth
        let ox0 = (ix + g.padLeft - kx0) / g.strideWidth
        let pixel = iy * g.inputWidth + ix
        let to = target(pixel)
        let first = (ky0, oy0, kx0, ox0)
        forLaneBlocks(
          lanes, { inputGradientBlock(SIMD16<Float>.self, n, first, $0, dy, to) },
          { inputGradientBlock(SIMD4<Float>.self, n, first, $0, dy, to) },
          { inputGradientBlock(Float.self, n, first, $0, dy, to) })
        finish(pixel)
      }
    }
  }

  @inline(__always)
  private func inputGradientBlock<V: FloatLanes>(
    _: V.Type, _ n: Int, _ first: (ky: Int, oy: Int, kx: Int, ox: Int), _ j: Int, _ dy: UnsafePointer<Float>,
    _ to: UnsafeMutablePointer<Float>
  ) {
    let g = geometry
    let gradients = dy + n * g.outputPixels * lanes
    var acc = V(broadcast: 0)
    var ky = first.ky
    var oy = first.oy
    while ky < g.kernelHeight && oy >= 0 {
      if oy < g.outputHeight {
        var kx = first.kx
        var ox = first.ox
        while kx < g.kernelWidth && ox >= 0 {
          if ox < g.outputWidth {
            let k = V.load(kernel + (ky * g.kernelWidth + kx) * lanes + j)
            acc = acc + V.load(gradients + (oy * g.outputWidth + ox) * lanes + j) * k
          }
          kx += g.strideWidth
          ox -= 1
        }
      }
      ky += g.strideHeight
      oy -= 1
    }
    acc.store(to + j)
  }
}
