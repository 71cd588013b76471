import FlipTensor

// Legend: B batch, H/W input height/width, C input channels, KH/KW kernel, F filters,
// OH/OW output height/width, P = KH·KW·C patch size, R = B·OH·OW rows of the im2col matrix.

/// `QuantConv2D` (and Keras's `Conv2D` when it has no quantizers), NHWC:
/// `y = im2col(q_in(x)) · q_k(W) + b` with kernel `W` (KH, KW, C, F) in Keras's layout, which
/// is already the (P, F) matrix. Padding positions take `pad_values` (Larq), after the input
/// quantizer.
///
/// backward: `dq_k(W) = colsᵀ·dy`, `dW += q̃_k'(W) ⊙ dq_k(W)`, `db += Σ dy`,
/// `dx = q̃_in'(x) ⊙ col2im(dy · q_k(W)ᵀ)`.
///
/// With `activation` (Keras's argument), `y = f(conv)` and backward first takes `dy ⊙ f'`.
///
/// With zero padding (`valid`, or `pad_values` 0) the three convolutions run on oneDNN's
/// convolution primitives instead of im2col + GEMM (faster, measured; no columns at all).
public final class QuantConv2D: Layer, FlipCounting, ExactBinaryForward {
  public var name: String
  /// The threads its loops and kernels run with (see `Layer.compute`); the primitives are made
  /// for them, so a change drops those made before.
  public var compute = Compute.serial {
    didSet { primitives.removeAll() }
  }
  /// The factor of the int8 kernel levels of its oneDNN primitives
  /// (`ConvolutionPrimitives.exactInt8KernelScale`; tests pass 1 to reproduce the wrong int8
  /// convolutions of ISAs without VNNI). A change drops the primitives made before.
  public var int8KernelScale = ConvolutionPrimitives.exactInt8KernelScale {
    didSet { primitives.removeAll() }
  }
  public let typeName: String
  public let inputShape: [Int]
  public let outputShape: [Int]
  public let filters: Int
  public let geometry: ConvGeometry
  public let padding: Padding
  public let padValue: Float
  public let useBias: Bool
  public let inputQuantizer: Quantizer?
  public let constraint: KernelConstraint?
  public let kernelInitializer: Initializer
  /// The activation applied to the output (nil: none).
  public var activation: ActivationKind? { outputActivation?.kind }
  let outputActivation: OutputActivation?
  /// (R, F) `dy ⊙ f'` when there is an activation.
  private var activationGradient = FloatBuffer(count: 0)
  let kernel: QuantizedKernel
  /// The kernel the forward product runs: int8 by default where exact (both quantizers take
  /// integer levels), else fp32. `Model.chooseBinaryForward` picks the faster of the two, and
  /// tests set fp32 to compare the paths.
  public var forwardKernel: BinaryForwardKernel {
    didSet {
      precondition(forwardKernels.contains(forwardKernel), "\(name) has no \(forwardKernel.rawValue) forward")
      kernel.fillsInt8 = forwardKernel == .int8
      // The other path's primitives are no longer needed (the cache holds four shapes).
      primitives = primitives.filter { $0.key % 2 == (forwardKernel == .int8 ? 1 : 0) }
    }
  }
  private let int8Forward: Int8Forward?
  public var forwardKernels: [BinaryForwardKernel] { int8Forward == nil ? [.fp32] : [.fp32, .int8] }
  /// Whether the convolutions run on oneDNN's primitives (zero padding only). On by default
  /// where possible; tests turn it off to compare with im2col + GEMM.
  public var usePrimitives: Bool
  /// oneDNN's primitives by batch size (a training batch, the epoch's last, an evaluation batch).
  private var primitives: [Int: ConvolutionPrimitives] = [:]
  /// (R, F) int32 products, and (P, F) a kernel-gradient scratch.
  private var product32: UnsafeMutablePointer<Int32>?
  private var kernelGradientScratch: FloatBuffer?
  var bias: UnsafeMutablePointer<Float>?
  var biasGradient: UnsafeMutablePointer<Float>?

  private var maxBatch = 0
  private var input: UnsafePointer<Float>!
  /// The (quantized) input the columns unfold, and whether `columns` holds them yet (the int8
  /// forward unfolds int8 data and leaves the float columns to backward).
  private var columnSource: UnsafePointer<Float>!
  private var columnsReady = false
  /// (B, H, W, C) the quantized input as int8 (exact int8 forward only).
  private var quantizedInput8: UnsafeMutablePointer<Int8>?
  /// (B, H, W, C) quantized input; only with an input quantizer.
  private var quantizedInput: FloatBuffer?
  /// (R, P) im2col of the (quantized) input.
  private var columns = FloatBuffer(count: 0)
  /// (R, F) = (B, OH, OW, F) output.
  private var y = FloatBuffer(count: 0)
  /// (B, H, W, C) input gradient.
  private var dx = FloatBuffer(count: 0)

  public init(
    filters: Int, kernelSize: (Int, Int), strides: (Int, Int) = (1, 1), padding: Padding = .valid,
    padValue: Float = 0, inputShape: [Int], inputQuantizer: Quantizer? = nil,
    kernelQuantizer: Quantizer? = nil, constraint: KernelConstraint? = nil, useBias: Bool = true,
    typeName: String? = nil, kernelInitializer: Initializer = .glorotUniform, activation: ActivationKind? = nil
  ) throws {
    let type = typeName ?? ((inputQuantizer == nil && kernelQuantizer == nil) ? "conv2d" : "quant_conv2d")
    guard filters > 0 else {
      throw BNNError.invalidParameter(owner: type, parameter: "filters", reason: "must be positive, got \(filters)")
    }
    guard inputShape.count == 3 else {
      throw BNNError.shapeMismatch(
        layer: type, reason: "expects an image input (height, width, channels), got shape \(inputShape)")
    }
    do {
      geometry = try ConvGeometry(
        inputHeight: inputShape[0], inputWidth: inputShape[1], channels: inputShape[2],
        kernelHeight: kernelSize.0, kernelWidth: kernelSize.1, strideHeight: strides.0,
        strideWidth: strides.1, padding: padding)
    } catch let e as TensorError {
      throw BNNError.shapeMismatch(layer: type, reason: e.description)
    }
    self.filters = filters
    self.padding = padding
    self.padValue = padValue
    self.inputShape = inputShape
    self.outputShape = [geometry.outputHeight, geometry.outputWidth, filters]
    self.inputQuantizer = inputQuantizer
    self.constraint = constraint
    self.kernelInitializer = kernelInitializer
    outputActivation = try OutputActivation(activation, owner: type)
    self.useBias = useBias
    self.typeName = type
    self.name = type
    kernel = QuantizedKernel(quantizer: kernelQuantizer, rows: geometry.patchSize, channels: filters)
    // int8 holds the pad value when it is an integer of magnitude at most 127; a padded position
    // then contributes padValue · w, so sums may grow up to that many times faster.
    let padFits = padding == .valid || (padValue == padValue.rounded() && abs(padValue) <= 127)
    let largestTerm = padding == .valid || !padFits ? 1 : max(1, Int(abs(padValue)))
    let exact =
      padFits && BinaryForwardKernel.sumsAreExact(terms: geometry.patchSize, largestTerm: largestTerm)
      && inputQuantizer?.hasIntegerLevels == true && kernelQuantizer?.hasIntegerLevels == true
    forwardKernel = exact ? .int8 : .fp32
    int8Forward = exact ? Int8Forward(reduction: geometry.patchSize, outputs: filters) : nil
    if exact { kernel.makeInt8Copy() }
    usePrimitives = padding == .valid || padValue == 0
  }

  deinit {
    quantizedInput8?.deallocate()
    product32?.deallocate()
  }

  /// (R, P) im2col columns for `batch`, allocated on first use (the primitives need none).
  func columns(batch: Int) -> UnsafeMutablePointer<Float> {
    let n = max(batch, maxBatch) * geometry.outputPixels * geometry.patchSize
    if columns.count < n { columns = FloatBuffer(count: n) }
    return columns.pointer
  }

  /// The primitives for `batch` (created once per batch size; oneDNN compiles them).
  func primitives(batch: Int) throws -> ConvolutionPrimitives {
    let int8 = forwardKernel == .int8
    let key = 2 * batch + (int8 ? 1 : 0)
    if let p = primitives[key] { return p }
    if primitives.count >= 4 { primitives.removeAll() }
    let p = try ConvolutionPrimitives(
      batch: batch, geometry: geometry, filters: filters, int8Forward: int8, int8KernelScale: int8KernelScale,
      compute: compute)
    primitives[key] = p
    return p
  }

  public func forwardImplementation(batch: Int) throws -> String {
    let int8 = forwardKernel == .int8
    if usePrimitives { return try primitives(batch: batch).forwardImplementation }
    return int8 ? "im2col + dnnl_gemm_s8s8s32" : "im2col + dnnl_sgemm"
  }

  /// The implementations of the input-gradient and kernel-gradient passes for `batch`.
  public func backwardImplementations(batch: Int) throws -> (data: String, weights: String) {
    if usePrimitives { return try primitives(batch: batch).backwardImplementations }
    let matmul = try transposedProductImplementation(
      m: batch * geometry.outputPixels, n: geometry.patchSize, k: filters, compute: compute)
    return ("matmul (\(matmul)) + col2im", "im2col + dnnl_sgemm")
  }

  public var kernelQuantizer: Quantizer? { kernel.quantizer }
  public var hasQuantizedKernel: Bool { kernel.quantizer != nil }
  public var lastFlipRatio: Double? { hasQuantizedKernel ? kernel.lastFlipRatio : nil }

  public var parameterSpecs: [ParameterSpec] {
    let g = geometry
    var specs = [
      ParameterSpec(
        role: .kernel, shape: [g.kernelHeight, g.kernelWidth, g.channels, filters],
        precision: kernel.quantizer?.precision ?? 32, constraint: constraint, initializer: kernelInitializer)
    ]
    if useBias { specs.append(ParameterSpec(role: .bias, shape: [filters], initializer: .zeros)) }
    return specs
  }

  public func bind(store: ParameterStore, views: [ParameterView]) {
    kernel.latent = store.pointer(views[0])
    kernel.gradient = store.gradient(views[0])
    if useBias {
      bias = store.pointer(views[1])
      biasGradient = store.gradient(views[1])
    }
  }

  public func allocate(maxBatch: Int) {
    guard maxBatch > self.maxBatch else { return }
    self.maxBatch = maxBatch
    let rows = maxBatch * geometry.outputPixels
    y = FloatBuffer(count: rows * filters)
    dx = FloatBuffer(count: maxBatch * inputSize)
    if inputQuantizer != nil { quantizedInput = FloatBuffer(count: maxBatch * inputSize) }
    if outputActivation != nil { activationGradient = FloatBuffer(count: rows * filters) }
    int8Forward?.allocate(rows: rows)
    if int8Forward != nil {
      quantizedInput8?.deallocate()
      quantizedInput8 = .allocate(capacity: maxBatch * inputSize)
      product32?.deallocate()
      product32 = .allocate(capacity: rows * filters)
    }
    if kernelGradientScratch == nil && kernel.quantizedGradient == nil {
      kernelGradientScratch = FloatBuffer(count: geometry.patchSize * filters)
    }
  }

  public func forward(_ x: UnsafePointer<Float>, batch: Int, training: Bool) throws -> UnsafePointer<Float> {
    let g = geometry
    input = x
    var source = x
    if let q = inputQuantizer, let xq = quantizedInput {
      q.parallelForward(x, xq.pointer, count: batch * inputSize, channels: g.channels, compute: compute)
      source = UnsafePointer(xq.pointer)
    }
    columnSource = source
    let w = kernel.forward(training: training, compute: compute)
    let rows = batch * g.outputPixels
    columnsReady = false
    if usePrimitives {
      let p = try primitives(batch: batch)
      if p.int8Forward, let x8 = quantizedInput8, let w8 = kernel.int8, let c = product32 {
        convertToInt8(source, x8, count: batch * inputSize, compute: compute)
        try p.forward(src: x8, kernel: w8, dst: c)
        convertToFloat(
          c, y.pointer, rows: rows, columns: filters, bias: bias.map { UnsafePointer($0) }, compute: compute)
      } else {
        try p.forward(src: source, kernel: w, dst: y.pointer)
        if let b = bias { addBias(y.pointer, rows: rows, columns: filters, bias: b) }
      }
    } else if forwardKernel == .int8, let int8 = int8Forward, let x8 = quantizedInput8 {
      convertToInt8(source, x8, count: batch * inputSize, compute: compute)
      im2col(
        UnsafePointer(x8), batch: batch, geometry: g, padValue: Int8(padValue), into: int8.inputBuffer,
        compute: compute)
      try int8.runOnInputBuffer(
        rows: rows, kernel: kernel.int8!, bias: bias.map { UnsafePointer($0) }, into: y.pointer, compute: compute)
    } else {
      im2col(source, batch: batch, geometry: g, padValue: padValue, into: columns(batch: batch), compute: compute)
      columnsReady = true
      try gemm(
        .none, .none, m: rows, n: filters, k: g.patchSize, a: columns.pointer, lda: g.patchSize, b: w,
        ldb: filters, c: y.pointer, ldc: filters, compute: compute)
      if let b = bias { addBias(y.pointer, rows: rows, columns: filters, bias: b) }
    }
    outputActivation?.apply(y.pointer, count: rows * filters, compute: compute)
    return UnsafePointer(y.pointer)
  }

  public func backward(_ outputGradient: UnsafePointer<Float>, batch: Int, needInputGradient: Bool) throws
    -> UnsafePointer<Float>?
  {
    let g = geometry
    let rows = batch * g.outputPixels
    var dy = outputGradient
    if let f = outputActivation {
      f.gradient(
        outputGradient, output: UnsafePointer(y.pointer), into: activationGradient.pointer, count: rows * filters,
        compute: compute)
      dy = UnsafePointer(activationGradient.pointer)
    }
    if usePrimitives {
      let p = try primitives(batch: batch)
      // The primitive overwrites its output: it writes to scratch, then accumulates.
      let scratch = (kernel.quantizedGradient ?? kernelGradientScratch)!.pointer
      try p.backwardWeights(src: columnSource, diffDst: dy, diffKernel: scratch)
      kernel.finishBackward(from: scratch, compute: compute)
      if let db = biasGradient { accumulateColumnSums(dy, rows: rows, columns: filters, into: db) }
      guard needInputGradient else { return nil }
      let w = UnsafePointer(kernel.quantized?.pointer ?? kernel.latent!)
      try p.backwardData(diffDst: dy, kernel: w, diffSrc: dx.pointer)
      quantizerGradient(
        inputQuantizer, input, dx.pointer, count: batch * inputSize, channels: g.channels, compute: compute)
      return UnsafePointer(dx.pointer)
    }
    if !columnsReady {
      im2col(
        columnSource, batch: batch, geometry: g, padValue: padValue, into: columns(batch: batch), compute: compute)
      columnsReady = true
    }
    let (target, beta) = kernel.gemmGradientTarget
    try gemm(
      .transposed, .none, m: g.patchSize, n: filters, k: rows, a: columns.pointer, lda: g.patchSize,
      b: dy, ldb: filters, beta: beta, c: target, ldc: filters, compute: compute)
    kernel.finishBackward(from: target, compute: compute)
    if let db = biasGradient { accumulateColumnSums(dy, rows: rows, columns: filters, into: db) }
    guard needInputGradient else { return nil }
    // The columns are no longer needed: reuse them for the gradient of the columns.
    let w = UnsafePointer(kernel.quantized?.pointer ?? kernel.latent!)
    try gemm(
      .none, .transposed, m: rows, n: g.patchSize, k: filters, a: dy, lda: filters, b: w, ldb: filters,
      c: columns.pointer, ldc: g.patchSize, compute: compute)
    columnsReady = false
    col2im(columns.pointer, batch: batch, geometry: g, into: dx.pointer, compute: compute)
    quantizerGradient(
      inputQuantizer, input, dx.pointer, count: batch * inputSize, channels: g.channels, compute: compute)
    return UnsafePointer(dx.pointer)
  }

  public var profile: LayerProfile {
    let g = geometry
    let kernelBits = kernel.quantizer?.precision ?? 32
    let inputBits = inputQuantizer?.precision ?? 32
    var weights = [
      LayerProfile.Weights(role: .kernel, count: g.patchSize * filters, precision: kernelBits, trainable: true)
    ]
    if useBias { weights.append(.init(role: .bias, count: filters, precision: 32, trainable: true)) }
    return LayerProfile(
      name: name, inputPrecision: inputQuantizer?.precision, outputShape: outputShape, weights: weights,
      macs: .count(g.outputPixels * g.patchSize * filters, precision: max(kernelBits, inputBits)))
  }
}
