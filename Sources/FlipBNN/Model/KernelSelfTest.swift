import FlipTensor

// Legend: B batch (small: the check runs on a few samples), I/O dense input/output units;
// convolution letters as in ReferenceKernels.swift.

/// One fast kernel checked against its plain-loop reference on this CPU.
public struct KernelCheck: Sendable, Equatable {
  /// What ran, e.g. `forward int8`, `backward data`, `kernel pass`.
  public var kernel: String
  public var layer: String
  /// oneDNN's implementation (or Flip's loop) that ran it.
  public var implementation: String
  /// The largest error, relative to the sum of the magnitudes of each output's terms.
  public var maxError: Double
  /// 0 where the result must be exact (binary × binary products, the kernel pass); one
  /// rounding's worth where exact sums are scaled (`scaledLevelsTolerance`).
  public var tolerance: Double
  public var passed: Bool { maxError <= tolerance }
}

/// `flip selftest`, and the start-up check of `flip train`: every fast path a model's layers
/// would use (the fp32, int8 and XNOR forwards, the backward passes, the fused kernel pass) run on
/// small batches of the layers' own shapes and compared with the plain loops of
/// `ReferenceKernels.swift`. A kernel that oneDNN picks on this CPU and that computes wrongly
/// (as its s8 × s8 convolution did without VNNI, returning zeros) fails here in milliseconds
/// instead of training a model to chance accuracy.
public enum KernelSelfTest {
  /// The fp32 kernels' allowed error relative to `Σ |terms|`: an fp32 sum of K terms is off by
  /// at most about K·2⁻²⁴ of it (6·10⁻⁵ for K = 1024); a wrong kernel is off by O(1).
  public static let float32Tolerance = 1e-4
  /// The exact forwards' allowed error when they scale exact integer sums per channel
  /// (`QuantConv2D.scalesLevels`, `magnitude_aware_sign` kernels): the product by the scale and
  /// the bias's sum are each rounded once, each off by at most 2⁻²⁴ of the terms' magnitudes.
  public static let scaledLevelsTolerance = 0x1p-23
  /// The bf16 backward's allowed error (`BackwardPrecision.bf16`): each term's two factors are
  /// rounded to bfloat16 (2⁻⁹ each), so a term is off by at most about 2⁻⁸ of its magnitude;
  /// twice that.
  public static let bf16Tolerance = 0x1p-7
  /// Convolutions of more multiply-adds than this (on the check's batch) are compared with
  /// their references on a sample of outputs (the references' plain loops would take seconds).
  public static let sampleAbove = 4_000_000

  /// Checks the fast kernels of a model built from `specs` for `inputShape`, on `batch` samples,
  /// as they run on `compute`'s threads, with the convolutions' int8 kernel levels scaled by
  /// `int8KernelScale` (`Model.int8KernelScale`) and their backward in `backwardPrecision`.
  public static func run(
    specs: [LayerSpec], inputShape: [Int], batch: Int = 3, seed: UInt64 = 7, compute: Compute = .serial,
    int8KernelScale: Float = ConvolutionPrimitives.exactInt8KernelScale, backwardPrecision: BackwardPrecision = .fp32
  ) throws -> [KernelCheck] {
    let model = try Model(specs: specs, inputShape: inputShape, seed: seed, compute: compute)
    model.int8KernelScale = int8KernelScale
    model.backwardPrecision = backwardPrecision
    model.allocate(maxBatch: batch)
    var checks: [KernelCheck] = []
    var random = SplitMix64(seed: seed)
    var seen: Set<String> = []
    for layer in model.layers {
      // A layer like one checked already runs the same kernels (Larq Zoo's networks repeat
      // their blocks): checked once.
      guard seen.insert(signature(layer)).inserted else { continue }
      // Run on its own, outside the model's backward that would lend it one.
      (layer as? LentInputGradient)?.ownInputGradient(maxBatch: batch)
      if let dense = layer as? QuantDense {
        checks += try check(dense, store: model.store, batch: batch, random: &random)
      } else if let conv = layer as? QuantConv2D {
        checks += try check(conv, store: model.store, batch: batch, random: &random)
      }
    }
    return checks
  }

  /// What decides the kernels a layer runs and their references: its type, shapes, window,
  /// quantizers, pad value, bias and activation.
  static func signature(_ layer: Layer) -> String {
    func q(_ quantizer: Quantizer?) -> String { quantizer.map { "\($0.name) \($0)" } ?? "-" }
    var parts = [layer.typeName, "\(layer.inputShape)", "\(layer.outputShape)"]
    if let c = layer as? QuantConv2D {
      let g = c.geometry
      parts += [
        "\(g.kernelHeight)x\(g.kernelWidth)/\(g.strideHeight)x\(g.strideWidth) \(c.padding) \(c.padValue)",
        q(c.inputQuantizer), q(c.kernelQuantizer), "\(c.useBias)", "\(c.activation?.rawValue ?? "-")",
      ]
    } else if let d = layer as? QuantDense {
      parts += [q(d.inputQuantizer), q(d.kernelQuantizer), "\(d.useBias)"]
    } else {
      parts.append(layer.name)
    }
    return parts.joined(separator: "|")
  }

  // MARK: - Layers

  static func check(_ layer: QuantDense, store: ParameterStore, batch: Int, random: inout SplitMix64) throws
    -> [KernelCheck]
  {
    let (i, o) = (layer.inputSize, layer.units)
    let x = values(batch * i, &random)
    let xq = quantized(layer.inputQuantizer, x, channels: i)
    let latent = Array(UnsafeBufferPointer(start: layer.kernel.latent, count: i * o))
    let wq = quantized(layer.kernelQuantizer, latent, channels: o)
    var y = referenceProduct(.none, .none, m: batch, n: o, k: i, a: xq, b: wq)
    addBias(layer.bias, to: &y, columns: o)
    let dy = values(batch * o, &random)
    let dx = referenceProduct(.none, .transposed, m: batch, n: i, k: o, a: dy, b: wq)
    let dw = referenceProduct(.transposed, .none, m: i, n: o, k: batch, a: xq, b: dy)
    return try checkLayer(
      layer, store: store, batch: batch, x: x, latent: latent, dy: dy, references: (y, dx, dw),
      channels: (input: i, kernel: o))
  }

  static func check(_ layer: QuantConv2D, store: ParameterStore, batch: Int, random: inout SplitMix64) throws
    -> [KernelCheck]
  {
    let g = layer.geometry
    let f = layer.filters
    let x = values(batch * g.inputSize, &random)
    let xq = quantized(layer.inputQuantizer, x, channels: g.channels)
    let latent = Array(UnsafeBufferPointer(start: layer.kernel.latent, count: g.patchSize * f))
    let wq = quantized(layer.kernelQuantizer, latent, channels: f)
    // A large layer (Larq Zoo's at 224×224) is compared on a sample of its outputs (a few rows,
    // the padded edges among them, filters and channels); every kernel still runs whole.
    let large = batch * g.outputPixels * g.patchSize * f > sampleAbove
    let filterSample = large ? referenceSample(f, middle: 6) : nil
    let channelSample = large ? referenceSample(g.channels, middle: 6) : nil
    let forward = ConvolutionSample(
      rows: large ? referenceSample(g.outputHeight, middle: 2) : nil, filters: filterSample)
    let data = ConvolutionSample(rows: large ? referenceSample(g.inputHeight, middle: 2) : nil, channels: channelSample)
    let weights = ConvolutionSample(filters: filterSample, channels: channelSample)
    var y = referenceConvolution(
      x: xq, kernel: wq, batch: batch, geometry: g, filters: f, padValue: layer.padValue, sample: forward)
    addBias(layer.bias, to: &y, columns: f)
    let upstream = values(batch * g.outputPixels * f, &random)
    var dy = upstream
    if let activation = layer.outputActivation {
      // The activation is not a kernel: the references see it applied to their output, and
      // the gradient masked by the layer's own output, as its backward masks it.
      let n = y.values.count
      var out = y.values.map(Float.init)
      activation.apply(&out, count: n, compute: .serial)
      y.values = out.map(Double.init)
      let fast = copyOut(try layer.forward(x, batch: batch, training: false), count: n)
      var masked = [Float](repeating: 0, count: n)
      activation.gradient(upstream, output: fast, into: &masked, count: n, compute: .serial)
      dy = masked
    }
    let dx = referenceConvolutionBackwardData(dy: dy, kernel: wq, batch: batch, geometry: g, filters: f, sample: data)
    let dw = referenceConvolutionBackwardWeights(
      x: xq, dy: dy, batch: batch, geometry: g, filters: f, padValue: layer.padValue, sample: weights)
    return try checkLayer(
      layer, store: store, batch: batch, x: x, latent: latent, dy: upstream, references: (y, dx, dw),
      channels: (input: g.channels, kernel: f))
  }

  static func copyOut(_ p: UnsafePointer<Float>, count: Int) -> [Float] {
    Array(UnsafeBufferPointer(start: p, count: count))
  }

  /// The forward of every kernel the layer may pick, then backward (input and kernel
  /// gradients through the quantizers' pseudo-gradients), then the kernel pass.
  static func checkLayer<L: ExactBinaryForward & QuantizedKernelLayer>(
    _ layer: L, store: ParameterStore, batch: Int, x: [Float], latent: [Float], dy: [Float],
    references r: (y: ReferenceResult, dx: ReferenceResult, dw: ReferenceResult), channels: (input: Int, kernel: Int)
  ) throws -> [KernelCheck] {
    var checks: [KernelCheck] = []
    let chosen = layer.forwardKernel
    defer { layer.forwardKernel = chosen }
    let exact = layer.int8ForwardAvailable
    let exactTolerance = (layer as? QuantConv2D)?.scalesLevels == true ? scaledLevelsTolerance : 0
    for kernel in layer.forwardKernels {
      layer.forwardKernel = kernel
      let y = try layer.forward(x, batch: batch, training: false)
      checks.append(
        KernelCheck(
          kernel: "forward \(kernel.rawValue)", layer: layer.name,
          implementation: try layer.forwardImplementation(batch: batch),
          maxError: maxError(Array(UnsafeBufferPointer(start: y, count: r.y.values.count)), r.y),
          tolerance: exact ? exactTolerance : float32Tolerance))
    }
    // Backward after an fp32 forward (the other forwards leave the float operands to backward).
    layer.forwardKernel = .fp32
    _ = try layer.forward(x, batch: batch, training: false)
    store.zeroGradients()
    let dx = try layer.backward(dy, batch: batch, needInputGradient: true)!
    let implementations = try layer.backwardImplementations(batch: batch)
    let bf16 = (layer as? QuantConv2D).map { $0.backwardPrecision == .bf16 && $0.usePrimitives } ?? false
    let backwardTolerance = bf16 ? bf16Tolerance : float32Tolerance
    checks.append(
      KernelCheck(
        kernel: "backward data", layer: layer.name, implementation: implementations.data,
        maxError: maxError(
          Array(UnsafeBufferPointer(start: dx, count: x.count)), r.dx, through: layer.inputQuantizer, at: x,
          channels: channels.input),
        tolerance: backwardTolerance))
    let dw = Array(UnsafeBufferPointer(start: layer.kernel.gradient, count: latent.count))
    checks.append(
      KernelCheck(
        kernel: "backward weights", layer: layer.name, implementation: implementations.weights,
        maxError: maxError(dw, r.dw, through: layer.kernelQuantizer, at: latent, channels: channels.kernel),
        tolerance: backwardTolerance))
    store.zeroGradients()
    if let pass = kernelPass(layer.kernel, latent: latent, layer: layer.name) { checks.append(pass) }
    return checks
  }

  /// The fused kernel pass of an elementwise kernel quantizer (quantize, count changes
  /// against the previous kernel, check the straight-through bound, in 16-lane loops) and
  /// the int8 conversion, against the quantizer's `forward` and scalar loops.
  static func kernelPass(_ kernel: QuantizedKernel, latent: [Float], layer: String) -> KernelCheck? {
    guard let q = kernel.quantizer, q.isElementwise else { return nil }
    let n = latent.count
    let expected = quantized(q, latent, channels: 1)
    // A "previous" kernel with every third value changed.
    var previous = expected
    for i in stride(from: 0, to: n, by: 3) { previous[i] = expected[i] == 0 ? 1 : -expected[i] }
    var y = [Float](repeating: .nan, count: n)
    let (changed, within) = q.forwardKernelChunk(latent, &y, previous: previous, count: n)
    var int8 = [Int8](repeating: 0, count: n)
    if q.hasIntegerLevels { convertToInt8Serially(expected, &int8, count: n) }
    var wrong = 0
    var wantChanged = 0
    var wantWithin = q.straightThroughBound != nil
    let bound = q.straightThroughBound ?? 0
    for i in 0..<n {
      if y[i] != expected[i] { wrong += 1 }
      if previous[i] != expected[i] { wantChanged += 1 }
      if !(abs(latent[i]) <= bound) { wantWithin = false }
      if q.hasIntegerLevels && Float(int8[i]) != expected[i] { wrong += 1 }
    }
    if changed != wantChanged { wrong += 1 }
    if within != wantWithin { wrong += 1 }
    return KernelCheck(
      kernel: "kernel pass", layer: layer, implementation: "Flip SIMD16 (\(q.name))", maxError: Double(wrong),
      tolerance: 0)
  }

  // MARK: - Helpers

  /// `n` values uniform in [−1, 1].
  static func values(_ n: Int, _ random: inout SplitMix64) -> [Float] {
    (0..<n).map { _ in 2 * random.nextUnitFloat() - 1 }
  }

  /// `q(x)` through the quantizer's own forward (the identity without one).
  static func quantized(_ q: Quantizer?, _ x: [Float], channels: Int) -> [Float] {
    guard let q else { return x }
    var y = [Float](repeating: .nan, count: x.count)
    q.forward(x, &y, count: x.count, channels: channels)
    return y
  }

  static func addBias(_ bias: UnsafeMutablePointer<Float>?, to r: inout ReferenceResult, columns: Int) {
    guard let bias else { return }
    for i in r.values.indices {
      r.values[i] += Double(bias[i % columns])
      r.magnitudes[i] += abs(Double(bias[i % columns]))
    }
  }

  /// The largest `|fast − reference|` relative to the magnitudes of the terms, after the
  /// quantizer's pseudo-gradient at `x` (for gradients; nil for outputs). NaN counts as ∞.
  static func maxError(
    _ fast: [Float], _ reference: ReferenceResult, through q: Quantizer? = nil, at x: [Float] = [], channels: Int = 1
  ) -> Double {
    let n = fast.count
    precondition(n == reference.values.count)
    // Pseudo-gradients are linear in the incoming gradient: apply them to the reference, and
    // bound the error through their factors (q̃'(x) at dy = 1).
    var want: [Float] = []
    var factors: [Float] = []
    var largestScale = 0.0
    if let q {
      let raw = reference.values.map(Float.init)
      want = raw
      q.backward(x, raw, &want, count: n, channels: channels)
      let ones = [Float](repeating: 1, count: n)
      factors = ones
      q.backward(x, ones, &factors, count: n, channels: channels)
      if !q.isElementwise {
        for i in 0..<n { largestScale = max(largestScale, reference.magnitudes[i] * Double(abs(factors[i]))) }
      }
    }
    var worst = 0.0
    for i in reference.checked ?? Array(0..<n) {
      let target = q == nil ? reference.values[i] : Double(want[i])
      let difference = abs(Double(fast[i]) - target)
      guard difference.isFinite else { return .infinity }
      if difference == 0 { continue }
      var scale = reference.magnitudes[i]
      if q != nil { scale = largestScale > 0 ? largestScale : scale * Double(abs(factors[i])) }
      worst = max(worst, scale > 0 ? difference / scale : .infinity)
    }
    return worst
  }
}
