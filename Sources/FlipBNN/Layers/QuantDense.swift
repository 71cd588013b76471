import FlipTensor

// Legend: B batch, I input units, O output units.

/// `QuantDense` (and Keras's `Dense` when it has no quantizers):
/// `y = q_in(x) · q_k(W) + b`, kernel `W` (I, O) in Keras's layout.
///
/// backward: `dq_k(W) = q_in(x)ᵀ·dy`, `dW += q̃_k'(W) ⊙ dq_k(W)`, `db += Σ_B dy`,
/// `dx = q̃_in'(x) ⊙ (dy · q_k(W)ᵀ)`.
public final class QuantDense: Layer, LentInputGradient, FlipCounting, ExactBinaryForward {
  public var name: String
  public var compute = Compute.serial
  public let typeName: String
  public let inputShape: [Int]
  public let outputShape: [Int]
  public let units: Int
  public let useBias: Bool
  public let inputQuantizer: Quantizer?
  public let constraint: KernelConstraint?
  public let kernelInitializer: Initializer
  let kernel: QuantizedKernel
  /// The kernel the forward product runs: int8 by default where exact (both quantizers take
  /// integer levels), else fp32. `Model.chooseBinaryForward` picks the fastest of
  /// `forwardKernels`, and tests set each to compare the paths.
  public var forwardKernel: BinaryForwardKernel {
    didSet {
      precondition(forwardKernels.contains(forwardKernel), "\(name) has no \(forwardKernel.rawValue) forward")
      kernel.fillsInt8 = forwardKernel == .int8
    }
  }
  public let forwardKernels: [BinaryForwardKernel]
  private let int8Forward: Int8Forward?
  private let xnorForward: XNORProduct?

  public func forwardImplementation(batch: Int) throws -> String {
    switch forwardKernel {
    case .int8: "dnnl_gemm_s8s8s32"
    case .fp32: "dnnl_sgemm"
    case .xnor: XNORProduct.implementation
    }
  }

  /// The implementations of the input-gradient and kernel-gradient GEMMs for `batch`.
  public func backwardImplementations(batch: Int) throws -> (data: String, weights: String) {
    let matmul = try transposedProductImplementation(m: batch, n: inputSize, k: units, compute: compute)
    return ("matmul (\(matmul))", "dnnl_sgemm")
  }
  var bias: UnsafeMutablePointer<Float>?
  var biasGradient: UnsafeMutablePointer<Float>?

  /// Blocks of kernel rows (input units) in which backward computes the kernel gradient when
  /// the layer needs no input gradient (the bottom layer), so that the blocks can travel while
  /// the next ones are computed: each block is one GEMM, and while the quantizer's
  /// pseudo-gradient is the identity, `kernelRowsFinished` hears the rows final after each
  /// block but the last. 1 (the default): one GEMM over the whole kernel.
  public internal(set) var kernelGradientRowBlocks = 1 {
    didSet { precondition(kernelGradientRowBlocks >= 1, "kernelGradientRowBlocks must be at least 1") }
  }
  /// Set by `Model.backward` for the pass of an observer that follows row blocks.
  var kernelRowsFinished: ((Int) throws -> Void)?

  /// Rows of row block `block` of `blocks` (at most `rows` of them) of a kernel with `rows`
  /// rows, as backward computes them (and a bucket plan must split them).
  public static func kernelGradientRows(block: Int, of blocks: Int, rows: Int) -> Range<Int> {
    let n = min(blocks, rows)
    return (rows * block / n)..<(rows * (block + 1) / n)
  }

  private var maxBatch = 0
  /// (B, I) the input as the GEMM used it: q_in(x), or x itself.
  private var gemmInput: UnsafePointer<Float>!
  /// (B, I) the raw input (for the input quantizer's pseudo-gradient).
  private var input: UnsafePointer<Float>!
  /// (B, I) quantized input; only with an input quantizer.
  private var quantizedInput: FloatBuffer?
  /// (B, O) output.
  private var y = FloatBuffer(count: 0)
  /// (B, I) input gradient.
  public var inputGradient = FloatBuffer(count: 0)
  public var inputGradientIsLent = false

  public init(
    units: Int, inputShape: [Int], inputQuantizer: Quantizer? = nil, kernelQuantizer: Quantizer? = nil,
    constraint: KernelConstraint? = nil, useBias: Bool = true, typeName: String? = nil,
    kernelInitializer: Initializer = .glorotUniform
  ) throws {
    guard units > 0 else {
      throw BNNError.invalidParameter(owner: "QuantDense", parameter: "units", reason: "must be positive, got \(units)")
    }
    guard inputShape.count == 1 else {
      throw BNNError.shapeMismatch(
        layer: typeName ?? "quant_dense",
        reason: "expects a flat input (units), got shape \(inputShape); add a Flatten layer before it")
    }
    self.units = units
    self.inputShape = inputShape
    self.outputShape = [units]
    self.inputQuantizer = inputQuantizer
    self.constraint = constraint
    self.kernelInitializer = kernelInitializer
    self.useBias = useBias
    self.typeName = typeName ?? ((inputQuantizer == nil && kernelQuantizer == nil) ? "dense" : "quant_dense")
    self.name = self.typeName
    kernel = QuantizedKernel(quantizer: kernelQuantizer, rows: inputShape[0], channels: units)
    let short = BinaryForwardKernel.sumsAreExact(terms: inputShape[0])
    let exact = short && inputQuantizer?.hasIntegerLevels == true && kernelQuantizer?.hasIntegerLevels == true
    let signs = exact && inputQuantizer?.hasSignLevels == true && kernelQuantizer?.hasSignLevels == true
    let xnor = signs && XNORProduct.isAvailable
    forwardKernels = [.fp32] + (exact ? [.int8] : []) + (xnor ? [.xnor] : [])
    forwardKernel = exact ? .int8 : .fp32
    int8Forward = exact ? Int8Forward(reduction: inputShape[0], outputs: units) : nil
    xnorForward = xnor ? XNORProduct(length: inputShape[0], outputs: units) : nil
    if exact { kernel.makeInt8Copy() }
  }

  public var kernelQuantizer: Quantizer? { kernel.quantizer }
  public var hasQuantizedKernel: Bool { kernel.quantizer != nil }
  public var lastFlipRatio: Double? { hasQuantizedKernel ? kernel.lastFlipRatio : nil }

  public var parameterSpecs: [ParameterSpec] {
    var specs = [
      ParameterSpec(
        role: .kernel, shape: [inputShape[0], units], precision: kernel.quantizer?.precision ?? 32,
        constraint: constraint, initializer: kernelInitializer)
    ]
    if useBias { specs.append(ParameterSpec(role: .bias, shape: [units], initializer: .zeros)) }
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
    y = FloatBuffer(count: maxBatch * units)
    if !inputGradientIsLent { inputGradient = FloatBuffer(count: maxBatch * inputSize) }
    if inputQuantizer != nil { quantizedInput = FloatBuffer(count: maxBatch * inputSize) }
    int8Forward?.allocate(rows: maxBatch)
    xnorForward?.allocate(rows: maxBatch)
  }

  public func forward(_ x: UnsafePointer<Float>, batch: Int, training: Bool) throws -> UnsafePointer<Float> {
    let i = inputSize
    input = x
    if let q = inputQuantizer, let xq = quantizedInput {
      q.parallelForward(x, xq.pointer, count: batch * i, channels: i, compute: compute)
      gemmInput = UnsafePointer(xq.pointer)
    } else {
      gemmInput = x
    }
    let w = kernel.forward(training: training, compute: compute)
    if forwardKernel == .int8, let int8 = int8Forward, let w8 = kernel.int8 {
      try int8.run(
        gemmInput, rows: batch, kernel: w8, bias: bias.map { UnsafePointer($0) }, into: y.pointer, compute: compute)
    } else if forwardKernel == .xnor, let xnor = xnorForward {
      xnor.setKernel(w, compute: compute)
      xnor.run(gemmInput, rows: batch, bias: bias.map { UnsafePointer($0) }, into: y.pointer, compute: compute)
    } else {
      try gemm(
        .none, .none, m: batch, n: units, k: i, a: gemmInput, lda: i, b: w, ldb: units, c: y.pointer, ldc: units,
        compute: compute)
      if let b = bias { addBias(y.pointer, rows: batch, columns: units, bias: b) }
    }
    return UnsafePointer(y.pointer)
  }

  public func backward(_ dy: UnsafePointer<Float>, batch: Int, needInputGradient: Bool) throws -> UnsafePointer<Float>?
  {
    let i = inputSize
    let (target, beta) = kernel.gemmGradientTarget
    if let db = biasGradient { accumulateColumnSums(dy, rows: batch, columns: units, into: db) }
    let blocks = needInputGradient ? 1 : min(kernelGradientRowBlocks, i)
    for b in 0..<blocks {
      let rows = Self.kernelGradientRows(block: b, of: blocks, rows: i)
      try gemm(
        .transposed, .none, m: rows.count, n: units, k: batch, a: gemmInput + rows.lowerBound, lda: i, b: dy,
        ldb: units, beta: beta, c: target + rows.lowerBound * units, ldc: units, compute: compute)
      // Final now unless the pseudo-gradient pass below still has to run.
      if b < blocks - 1, target == kernel.gradient { try kernelRowsFinished?(rows.upperBound) }
    }
    kernel.finishBackward(from: target, compute: compute)
    guard needInputGradient else { return nil }
    let w = UnsafePointer(kernel.quantized?.pointer ?? kernel.latent!)
    try gemm(
      .none, .transposed, m: batch, n: i, k: units, a: dy, lda: units, b: w, ldb: units, c: inputGradient.pointer, ldc: i,
      compute: compute)
    quantizerGradient(inputQuantizer, input, inputGradient.pointer, count: batch * i, channels: i, compute: compute)
    return UnsafePointer(inputGradient.pointer)
  }

  public var profile: LayerProfile {
    let kernelBits = kernel.quantizer?.precision ?? 32
    let inputBits = inputQuantizer?.precision ?? 32
    var weights = [
      LayerProfile.Weights(role: .kernel, count: inputSize * units, precision: kernelBits, trainable: true)
    ]
    if useBias { weights.append(.init(role: .bias, count: units, precision: 32, trainable: true)) }
    return LayerProfile(
      name: name, inputPrecision: inputQuantizer?.precision, outputShape: outputShape, weights: weights,
      macs: .count(inputSize * units, precision: max(kernelBits, inputBits)))
  }
}
