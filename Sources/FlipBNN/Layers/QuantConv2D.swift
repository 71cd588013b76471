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
/// The three convolutions run on oneDNN's convolution primitives (faster than im2col + GEMM,
/// measured; no columns at all). They pad with zeros; for `pad_values` p ≠ 0 a border output
/// pixel then gets `p · Σ_{padded taps t} Σ_c q_k(W)[t, c, f]` added, and the quantized kernel's
/// gradient `p · Σ_{b, pixels where t is padded} dy[·, f]` at every channel of tap t (the input
/// gradient is the same: padding positions receive nothing).
public final class QuantConv2D: Layer, LentInputGradient, SharedScratchLayer, FlipCounting, ExactBinaryForward {
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
  /// The arithmetic of the two backward convolutions on oneDNN's primitives (`bf16` where the
  /// CPU has it; im2col + GEMM stays fp32). A change drops the primitives made before.
  public var backwardPrecision = BackwardPrecision.fp32 {
    didSet {
      primitives.removeAll()
      if !scratchIsShared && maxBatch > 0 { scratch = FloatBuffer(count: scratchCount(maxBatch: maxBatch)) }
    }
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
  let kernel: QuantizedKernel
  /// The kernel the forward product runs: int8 by default where exact (both quantizers take
  /// integer levels, or the kernel's are scaled: `scalesLevels`), else fp32; XNOR–popcount
  /// where the levels are ±1 (`xnorConvolution`). `Model.chooseBinaryForward` picks the
  /// fastest, and tests set each to compare the paths.
  public var forwardKernel: BinaryForwardKernel {
    didSet {
      precondition(forwardKernels.contains(forwardKernel), "\(name) has no \(forwardKernel.rawValue) forward")
      kernel.fillsInt8 = forwardKernel == .int8 || forwardKernel == .xnor
      kernel.fillsLevels = scalesLevels && (forwardKernel == .fp32 || (forwardKernel == .int8 && !paddedTaps.isEmpty))
      // The other path's primitives are no longer needed (the cache holds four shapes).
      primitives = primitives.filter { $0.key % 2 == (forwardKernel == .int8 ? 1 : 0) }
    }
  }
  private let int8Forward: Int8Forward?
  /// Whether the forward product runs on the kernel quantizer's integer levels and scales each
  /// output channel after it (a `ChannelScaledQuantizer` such as `magnitude_aware_sign` with an
  /// integer-level input): `y = s ⊙ (q_in(x) ⊛ level(W)) + b`, the exact sum rounded once by
  /// the scale, the same bits in int8 and fp32. Backward uses `q_k(W) = s ⊙ level(W)`.
  public let scalesLevels: Bool
  public var forwardKernels: [BinaryForwardKernel] {
    (int8Forward == nil ? [.fp32] : [.fp32, .int8]) + (xnorConvolution == nil ? [] : [.xnor])
  }
  /// The XNOR–popcount forward, where both quantizers take ±1 levels, the pad value is 0 or ±1
  /// and the CPU has AVX2 (`XNORConvolution`).
  private let xnorConvolution: XNORConvolution?
  /// Whether the convolutions run on oneDNN's primitives. On by default; tests turn it off to
  /// compare with im2col + GEMM.
  public var usePrimitives = true
  /// Each output pixel (index in OH·OW) with taps in the padding, and those taps (index in
  /// KH·KW); empty unless `same` padding with a nonzero pad value.
  private let paddedTaps: [(pixel: Int, taps: [Int])]
  /// (KH·KW, F) per-tap sums over channels: of the quantized kernel (forward), of dy (backward).
  private var tapSums: FloatBuffer
  /// oneDNN's primitives by batch size (a training batch, the epoch's last, an evaluation batch).
  private var primitives: [Int: ConvolutionPrimitives] = [:]
  /// (P, F) a kernel-gradient scratch.
  private var kernelGradientScratch: FloatBuffer?
  var bias: UnsafeMutablePointer<Float>?
  var biasGradient: UnsafeMutablePointer<Float>?

  private var maxBatch = 0
  private var input: UnsafePointer<Float>!
  /// Whether `columns` holds the im2col of the (quantized) input yet (the int8 forward
  /// unfolds int8 data and leaves the float columns to backward).
  private var columnsReady = false
  /// Memory needed only within one forward or backward call (`SharedScratchLayer`), laid out
  /// in floats as: (B, H, W, C) the quantized input q_in(x), when there is an input quantizer
  /// (backward makes it again from x); then in forward, for the int8 kernel, (R, F) the int32
  /// products and (B, H, W, C) q_in(x) as int8; in backward, (R, F) `dy ⊙ f'` when there is an
  /// activation.
  public var scratch = FloatBuffer(count: 0)
  public var scratchIsShared = false
  /// (R, P) im2col of the (quantized) input.
  private var columns = FloatBuffer(count: 0)
  /// (R, F) = (B, OH, OW, F) output.
  private var y = FloatBuffer(count: 0)
  /// (B, H, W, C) input gradient.
  public var inputGradient = FloatBuffer(count: 0)
  public var inputGradientIsLent = false

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
    let integerInput =
      padFits && BinaryForwardKernel.sumsAreExact(terms: geometry.patchSize, largestTerm: largestTerm)
      && inputQuantizer?.hasIntegerLevels == true
    scalesLevels = integerInput && kernelQuantizer is ChannelScaledQuantizer
    let exact = integerInput && (kernelQuantizer?.hasIntegerLevels == true || scalesLevels)
    forwardKernel = exact ? .int8 : .fp32
    int8Forward = exact ? Int8Forward(reduction: geometry.patchSize, outputs: filters) : nil
    let scaledSigns = (kernelQuantizer as? ChannelScaledQuantizer)?.levelsAreSigns == true
    let signKernel = kernelQuantizer?.hasSignLevels == true || (scalesLevels && scaledSigns)
    let xnor =
      exact && inputQuantizer?.hasSignLevels == true && signKernel && [-1, 0, 1].contains(padValue)
      && XNORConvolution.isAvailable && XNORConvolution.fits(geometry)
    xnorConvolution = xnor ? XNORConvolution(geometry: geometry, filters: filters, padValue: Int(padValue)) : nil
    if exact { kernel.makeInt8Copy() }
    paddedTaps = padValue == 0 ? [] : Self.paddedTaps(geometry)
    tapSums = FloatBuffer(count: paddedTaps.isEmpty ? 0 : geometry.kernelHeight * geometry.kernelWidth * filters)
    kernel.fillsLevels = scalesLevels && !paddedTaps.isEmpty
  }

  /// The output pixels whose windows reach into the padding, with the taps that do.
  static func paddedTaps(_ g: ConvGeometry) -> [(pixel: Int, taps: [Int])] {
    var out: [(pixel: Int, taps: [Int])] = []
    for oy in 0..<g.outputHeight {
      for ox in 0..<g.outputWidth {
        var taps: [Int] = []
        for ky in 0..<g.kernelHeight {
          for kx in 0..<g.kernelWidth {
            let (y, x) = (oy * g.strideHeight - g.padTop + ky, ox * g.strideWidth - g.padLeft + kx)
            if y < 0 || y >= g.inputHeight || x < 0 || x >= g.inputWidth { taps.append(ky * g.kernelWidth + kx) }
          }
        }
        if !taps.isEmpty { out.append((oy * g.outputWidth + ox, taps)) }
      }
    }
    return out
  }

  /// Adds the padded taps' terms to the zero-padded primitive's output `y` (B, OH·OW, F).
  private func addPaddedTerms(kernel w: UnsafePointer<Float>, batch: Int) {
    let (taps, c, f) = (geometry.kernelHeight * geometry.kernelWidth, geometry.channels, filters)
    let sums = tapSums.pointer
    sums.update(repeating: 0, count: taps * f)
    for t in 0..<taps {
      for ch in 0..<c {
        let row = w + (t * c + ch) * f
        for j in 0..<f { sums[t * f + j] += row[j] }
      }
    }
    var correction = [Float](repeating: 0, count: f)
    for (pixel, padded) in paddedTaps {
      for j in 0..<f { correction[j] = 0 }
      for t in padded { for j in 0..<f { correction[j] += sums[t * f + j] } }
      for b in 0..<batch {
        let out = y.pointer + (b * geometry.outputPixels + pixel) * f
        for j in 0..<f { out[j] += padValue * correction[j] }
      }
    }
  }

  /// Adds the padded taps' terms to the zero-padded primitive's quantized-kernel gradient
  /// `dq` (KH·KW·C, F).
  private func addPaddedTerms(gradient dq: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>, batch: Int) {
    let (taps, c, f) = (geometry.kernelHeight * geometry.kernelWidth, geometry.channels, filters)
    let sums = tapSums.pointer
    sums.update(repeating: 0, count: taps * f)
    var column = [Float](repeating: 0, count: f)
    for (pixel, padded) in paddedTaps {
      for j in 0..<f { column[j] = 0 }
      for b in 0..<batch {
        let g = dy + (b * geometry.outputPixels + pixel) * f
        for j in 0..<f { column[j] += g[j] }
      }
      for t in padded { for j in 0..<f { sums[t * f + j] += column[j] } }
    }
    for t in 0..<taps {
      for ch in 0..<c {
        let row = dq + (t * c + ch) * f
        for j in 0..<f { row[j] += padValue * sums[t * f + j] }
      }
    }
  }

  /// Offsets in `scratch` (floats, 64-byte aligned) for batches of up to `maxBatch`: the
  /// quantized input, the region after it, the int8 input after the int32 products, and the
  /// backward-weights operands (bf16 or blocked copies of x and dy) after the activation's
  /// gradient, or at the start when the blocked copy of x is quantized in place
  /// (`quantizesCopy`: no float q(x) then).
  private func scratchLayout(maxBatch: Int) -> (
    afterQuantized: Int, int8Input: Int, operands: Int, quantizesCopy: Bool, forward: Int, backward: Int
  ) {
    func aligned(_ n: Int) -> Int { (n + 15) & ~15 }
    let (input, output) = (maxBatch * inputSize, maxBatch * outputSize)
    let afterQuantized = inputQuantizer == nil ? 0 : aligned(input)
    let int8Input = afterQuantized + aligned(output)
    let forward = int8Forward == nil ? afterQuantized : int8Input + aligned((input + 3) / 4)
    let quantizesCopy =
      outputActivation == nil && inputQuantizer?.isElementwise == true
      && ConvolutionPrimitives.copiesOperands(geometry: geometry, filters: filters, precision: backwardPrecision)
    let operands = quantizesCopy ? 0 : afterQuantized + (outputActivation == nil ? 0 : aligned(output))
    let operandBytes = backwardScratchBytes(maxBatch: maxBatch)
    let backward = max(afterQuantized, operands + aligned((operandBytes + 3) / 4))
    return (afterQuantized, int8Input, operands, quantizesCopy, forward, backward)
  }

  /// `ConvolutionPrimitives.backwardScratchBytes` for `maxBatch` in `backwardPrecision` on the
  /// layer's oneDNN threads, kept (with Winograd it asks oneDNN for its scratchpad's size, which
  /// depends on the threads). A shape oneDNN rejects here fails again, with its error, when the
  /// primitives are made; until then it counts 0 bytes.
  private func backwardScratchBytes(maxBatch: Int) -> Int {
    let key = (batch: maxBatch, precision: backwardPrecision, threads: compute.oneDNNThreads)
    if let kept = keptBackwardScratchBytes, kept.key == key { return kept.bytes }
    let bytes =
      (try? ConvolutionPrimitives.backwardScratchBytes(
        batch: maxBatch, geometry: geometry, filters: filters, precision: backwardPrecision, compute: compute)) ?? 0
    keptBackwardScratchBytes = (key, bytes)
    return bytes
  }
  private var keptBackwardScratchBytes: (key: (batch: Int, precision: BackwardPrecision, threads: Int), bytes: Int)?

  public func scratchCount(maxBatch: Int) -> Int {
    let layout = scratchLayout(maxBatch: maxBatch)
    return max(layout.forward, layout.backward)
  }

  /// The (quantized) input of the last forward: `q_in(x)` made again in scratch, or x itself.
  private func quantizedSource(batch: Int) -> UnsafePointer<Float> {
    guard let q = inputQuantizer else { return input }
    q.parallelForward(input, scratch.pointer, count: batch * inputSize, channels: geometry.channels, compute: compute)
    return UnsafePointer(scratch.pointer)
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
      backwardPrecision: backwardPrecision, compute: compute)
    // oneDNN's Winograd scratchpad grows with the batch: the one sized for maxBatch holds it.
    precondition(
      !p.runsWinograd || batch > maxBatch || p.scratchBytes <= backwardScratchBytes(maxBatch: maxBatch),
      "Winograd's scratchpad for batch \(batch) outgrows the one for \(maxBatch)")
    primitives[key] = p
    return p
  }

  public func forwardImplementation(batch: Int) throws -> String {
    let int8 = forwardKernel == .int8
    if forwardKernel == .xnor, let xnor = xnorConvolution { return xnor.implementation }
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
    if !inputGradientIsLent { inputGradient = FloatBuffer(count: maxBatch * inputSize) }
    if !scratchIsShared { scratch = FloatBuffer(count: scratchCount(maxBatch: maxBatch)) }
    int8Forward?.allocate(rows: rows)
    xnorConvolution?.allocate(batch: maxBatch)
    if kernelGradientScratch == nil && kernel.quantizedGradient == nil {
      kernelGradientScratch = FloatBuffer(count: geometry.patchSize * filters)
    }
  }

  public func forward(_ x: UnsafePointer<Float>, batch: Int, training: Bool) throws -> UnsafePointer<Float> {
    let g = geometry
    input = x
    let quantizedKernel = kernel.forward(training: training, compute: compute)
    // q_in(x) as float: the fp32 product's operand (the int8 product quantizes x itself).
    var source: UnsafePointer<Float> { quantizedSource(batch: batch) }
    // The fp32 product's (and padded terms') kernel: the levels when they are scaled after it
    // (written by the kernel's forward for the fp32 kernel or padded taps: see `fillsLevels`).
    var w: UnsafePointer<Float> { scalesLevels ? UnsafePointer(kernel.levels!.pointer) : quantizedKernel }
    let rows = batch * g.outputPixels
    columnsReady = false
    // The bias goes in with the products, or (scaled levels) after the scale.
    let productBias = scalesLevels ? nil : bias.map { UnsafePointer($0) }
    // The int8 kernel's operands in scratch, bound to their types while it runs.
    let layout = scratchLayout(maxBatch: maxBatch)
    let raw = UnsafeMutableRawPointer(scratch.pointer)
    func withInt8Input(_ body: (UnsafeMutablePointer<Int8>) throws -> Void) rethrows {
      try (raw + layout.int8Input * 4).withMemoryRebound(to: Int8.self, capacity: batch * inputSize) { x8 in
        if let q = inputQuantizer, q.isElementwise {
          q.parallelForwardToInt8(input, x8, count: batch * inputSize, compute: compute)
        } else {
          convertToInt8(source, x8, count: batch * inputSize, compute: compute)
        }
        try body(x8)
      }
    }
    // The per-filter scale, applied once the products are complete.
    var scaled = !scalesLevels
    if forwardKernel == .xnor, let xnor = xnorConvolution, let levels = kernel.int8 {
      // Padded taps, scale and bias all go in with the popcounts.
      xnor.setKernel(levels: levels)
      let scales = scalesLevels ? kernel.channelScales : nil
      try withInt8Input { x8 in
        try withOptionalPointer(to: scales) { scale in
          xnor.run(
            levels: x8, batch: batch, scale: scale, bias: bias.map { UnsafePointer($0) }, into: y.pointer,
            compute: compute)
        }
      }
      scaled = true
    } else if usePrimitives {
      let p = try primitives(batch: batch)
      if p.int8Forward, let w8 = kernel.int8 {
        try withInt8Input { x8 in
          try (raw + layout.afterQuantized * 4).withMemoryRebound(to: Int32.self, capacity: rows * filters) { c in
            try p.forward(src: x8, kernel: w8, dst: c)
            // Without padded taps to add, the scale and bias go in with the conversion.
            let fuse = scalesLevels && paddedTaps.isEmpty
            convertToFloat(
              c, y.pointer, rows: rows, columns: filters, scale: fuse ? kernel.channelScales : nil,
              bias: fuse ? bias.map { UnsafePointer($0) } : productBias, compute: compute)
            if fuse { scaled = true }
          }
        }
      } else {
        try p.forward(src: source, kernel: w, dst: y.pointer)
        if let b = productBias { addBias(y.pointer, rows: rows, columns: filters, bias: b) }
      }
      if !paddedTaps.isEmpty { addPaddedTerms(kernel: w, batch: batch) }
    } else if forwardKernel == .int8, let int8 = int8Forward {
      try withInt8Input { x8 in
        im2col(
          UnsafePointer(x8), batch: batch, geometry: g, padValue: Int8(padValue), into: int8.inputBuffer,
          compute: compute)
        try int8.runOnInputBuffer(
          rows: rows, kernel: kernel.int8!, bias: productBias, into: y.pointer, compute: compute)
      }
    } else {
      im2col(source, batch: batch, geometry: g, padValue: padValue, into: columns(batch: batch), compute: compute)
      columnsReady = true
      try gemm(
        .none, .none, m: rows, n: filters, k: g.patchSize, a: columns.pointer, lda: g.patchSize, b: w,
        ldb: filters, c: y.pointer, ldc: filters, compute: compute)
      if let b = productBias { addBias(y.pointer, rows: rows, columns: filters, bias: b) }
    }
    if !scaled, let scale = kernel.channelScales {
      scaleColumns(
        y.pointer, rows: rows, columns: filters, scale: scale, bias: bias.map { UnsafePointer($0) }, compute: compute)
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
      let activationGradient = scratch.pointer + scratchLayout(maxBatch: maxBatch).afterQuantized
      f.gradient(
        outputGradient, output: UnsafePointer(y.pointer), into: activationGradient, count: rows * filters,
        compute: compute)
      dy = UnsafePointer(activationGradient)
    }
    if usePrimitives {
      let p = try primitives(batch: batch)
      // The primitive overwrites its output: it writes to scratch, then accumulates.
      let kernelGradient = (kernel.quantizedGradient ?? kernelGradientScratch)!.pointer
      let w = UnsafePointer(kernel.quantized?.pointer ?? kernel.latent!)
      let layout = scratchLayout(maxBatch: maxBatch)
      // The blocked copy of x is quantized in place (no float q(x)), or made from q(x).
      var quantizeCopy: ((UnsafeMutablePointer<Float>, Int) -> Void)?
      if layout.quantizesCopy && p.copiesInput, let q = inputQuantizer {
        let compute = compute
        quantizeCopy = { x, n in q.parallelForward(x, x, count: n, channels: 1, compute: compute) }
      }
      try p.backward(
        src: quantizeCopy == nil ? quantizedSource(batch: batch) : input, quantizeCopy: quantizeCopy, diffDst: dy,
        kernel: w, diffKernel: kernelGradient, diffSrc: needInputGradient ? inputGradient.pointer : nil,
        scratch: UnsafeMutableRawPointer(scratch.pointer + layout.operands))
      if !paddedTaps.isEmpty { addPaddedTerms(gradient: kernelGradient, dy: dy, batch: batch) }
      kernel.finishBackward(from: kernelGradient, compute: compute)
      if let db = biasGradient { accumulateColumnSums(dy, rows: rows, columns: filters, into: db) }
      guard needInputGradient else { return nil }
      quantizerGradient(
        inputQuantizer, input, inputGradient.pointer, count: batch * inputSize, channels: g.channels, compute: compute)
      return UnsafePointer(inputGradient.pointer)
    }
    if !columnsReady {
      im2col(
        quantizedSource(batch: batch), batch: batch, geometry: g, padValue: padValue, into: columns(batch: batch),
        compute: compute)
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
    col2im(columns.pointer, batch: batch, geometry: g, into: inputGradient.pointer, compute: compute)
    quantizerGradient(
      inputQuantizer, input, inputGradient.pointer, count: batch * inputSize, channels: g.channels, compute: compute)
    return UnsafePointer(inputGradient.pointer)
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

/// `body` with a pointer to `values`' elements, or nil.
func withOptionalPointer<R>(to values: [Float]?, _ body: (UnsafePointer<Float>?) throws -> R) rethrows -> R {
  guard let values else { return try body(nil) }
  return try values.withUnsafeBufferPointer { try body($0.baseAddress) }
}
