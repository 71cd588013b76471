import Dispatch
import FlipTensor
import Testing

@testable import FlipBNN

/// The fast paths must equal the reference paths bit for bit: exact int8 GEMMs for binary
/// layers, and elementwise loops split over threads.
@Suite("Fast paths equal reference paths", .serialized)
struct FastPathTests {
  @Test func int8GEMMEqualsReferenceOnIntegerLevels() throws {
    let (m, n, k) = (7, 5, 33)
    var g = SplitMix64(seed: 3)
    let a = (0..<(m * k)).map { _ in Int8(g.nextInt(below: 3) - 1) }
    let b = (0..<(k * n)).map { _ in Int8(g.nextInt(below: 3) - 1) }
    var c = [Int32](repeating: 0, count: m * n)
    try gemmInt8(.none, .none, m: m, n: n, k: k, a: a, lda: k, b: b, ldb: n, c: &c, ldc: n, compute: .serial)
    let af = a.map(Float.init)
    let bf = b.map(Float.init)
    var r = [Float](repeating: 0, count: m * n)
    referenceGEMM(.none, .none, m: m, n: n, k: k, a: af, lda: k, b: bf, ldb: n, c: &r, ldc: n)
    #expect(c.map(Float.init) == r)
  }

  func denseOutputs(_ kernel: BinaryForwardKernel) throws -> [Float] {
    let layer = try QuantDense(
      units: 48, inputShape: [300], inputQuantizer: SteSign(), kernelQuantizer: SteSign(), useBias: true)
    #expect(layer.forwardKernel == .int8)
    #expect(layer.forwardKernels == [.fp32, .int8] + (XNORProduct.isAvailable ? [.xnor] : []))
    layer.forwardKernel = kernel
    let store = bindStandalone(layer, seed: 9)
    store.values.pointer[store.views[1].offset + 2] = 0.25  // a bias
    layer.allocate(maxBatch: 16)
    let x = randomValues(16 * 300, seed: 4)
    let y = try layer.forward(x, batch: 16, training: true)
    return Array(UnsafeBufferPointer(start: y, count: 16 * 48))
  }

  @Test func binaryDenseExactForwardsAgree() throws {
    let b = try denseOutputs(.fp32)
    #expect(try denseOutputs(.int8) == b)
    if XNORProduct.isAvailable { #expect(try denseOutputs(.xnor) == b) }
    #expect(b.contains(0.25 + 2) || b.contains { $0 != $0.rounded() })
  }

  /// The XNOR forward over a training run's changing kernels: after each update the packed
  /// kernel is the new one, and a ±1 quantizer other than ste_sign (approx_sign) takes it too;
  /// ste_heaviside's {0, 1} levels do not.
  @Test(.enabled(if: XNORProduct.isAvailable, "needs AVX2"))
  func xnorForwardFollowsKernelUpdates() throws {
    let layer = try QuantDense(
      units: 9, inputShape: [130], inputQuantizer: ApproxSign(), kernelQuantizer: SteSign(), useBias: false)
    let store = bindStandalone(layer, seed: 5)
    layer.allocate(maxBatch: 5)
    let x = randomValues(5 * 130, seed: 8)
    let w = store.values.pointer + store.views[0].offset
    for round in 0..<3 {
      for i in stride(from: round, to: 130 * 9, by: 7) { w[i] = -w[i] }
      layer.forwardKernel = .xnor
      let xnor = copyOut(try layer.forward(x, batch: 5, training: true), 45)
      layer.forwardKernel = .fp32
      #expect(copyOut(try layer.forward(x, batch: 5, training: true), 45) == xnor, "round \(round)")
    }
    let heaviside = try QuantDense(
      units: 3, inputShape: [8], inputQuantizer: SteHeaviside(), kernelQuantizer: SteSign())
    #expect(heaviside.forwardKernels == [.fp32, .int8])
  }

  /// The kernels an exact binary convolution may run where the CPU has them.
  static let convolutionKernels: [BinaryForwardKernel] = [.fp32, .int8] + (XNORConvolution.isAvailable ? [.xnor] : [])

  @Test(arguments: [(Padding.valid, Float(0)), (.same, 0), (.same, 1), (.same, -1)])
  func binaryConvForwardKernelsAgree(padding: Padding, padValue: Float) throws {
    func outputs(_ kernel: BinaryForwardKernel) throws -> [Float] {
      let layer = try QuantConv2D(
        filters: 6, kernelSize: (3, 3), strides: (2, 1), padding: padding, padValue: padValue, inputShape: [9, 8, 5],
        inputQuantizer: SteSign(), kernelQuantizer: SteSign(), useBias: false)
      #expect(layer.forwardKernel == .int8 && layer.forwardKernels == Self.convolutionKernels)
      layer.forwardKernel = kernel
      let store = bindStandalone(layer, seed: 1)
      layer.allocate(maxBatch: 3)
      let x = randomValues(3 * 360, seed: 2)
      let y = try layer.forward(x, batch: 3, training: true)
      let out = Array(UnsafeBufferPointer(start: y, count: 3 * layer.outputSize))
      // Backward after the int8 forward (which leaves the float columns to backward) must
      // give the same gradients as after the fp32 forward.
      let dy = randomValues(3 * layer.outputSize, seed: 5)
      let dx = try layer.backward(dy, batch: 3, needInputGradient: true)!
      return out + Array(UnsafeBufferPointer(start: dx, count: 3 * 360)) + store.gradients.array
    }
    let reference = try outputs(.fp32)
    for kernel in Self.convolutionKernels.dropFirst() {
      #expect(try outputs(kernel) == reference, "\(kernel) differs from fp32")
    }
  }

  /// Bi-Real Net's layers (`approx_sign` input, `magnitude_aware_sign` kernel): the forward
  /// sums the integer levels exactly and scales each filter once, so int8 and fp32, on oneDNN's
  /// primitives and on im2col + GEMM, give the same bits: the exact value `s_f · Σ sign · sign`
  /// rounded to float (then the bias added). Backward is the same after either forward.
  @Test(arguments: [(Padding.same, Float(0), false), (.valid, 0, true), (.same, 1, true)])
  func magnitudeAwareConvForwardIsTheRoundedExactValue(padding: Padding, padValue: Float, bias: Bool) throws {
    let (batch, shape) = (3, [9, 8, 5])
    let x = randomValues(batch * 360, seed: 2)
    func run(_ kernel: BinaryForwardKernel, primitives: Bool) throws -> (y: [Float], rest: [Float], want: [Float]) {
      let layer = try QuantConv2D(
        filters: 6, kernelSize: (3, 3), strides: (2, 1), padding: padding, padValue: padValue, inputShape: shape,
        inputQuantizer: ApproxSign(), kernelQuantizer: MagnitudeAwareSign(), useBias: bias)
      #expect(layer.scalesLevels && layer.forwardKernels == Self.convolutionKernels && layer.forwardKernel == .int8)
      layer.forwardKernel = kernel
      layer.usePrimitives = primitives
      let store = bindStandalone(layer, seed: 1)
      if let b = layer.bias { for j in 0..<6 { b[j] = Float(j) * 0.37 - 1 } }
      layer.allocate(maxBatch: batch)
      let y = copyOut(try layer.forward(x, batch: batch, training: true), batch * layer.outputSize)
      let dy = randomValues(batch * layer.outputSize, seed: 5)
      let dx = copyOut(try layer.backward(dy, batch: batch, needInputGradient: true)!, batch * 360)
      // The exact value: integer sums of ±1 levels (and the pad value's terms) in Double.
      let g = layer.geometry
      let latent = Array(UnsafeBufferPointer(start: layer.kernel.latent, count: g.patchSize * 6))
      let q = MagnitudeAwareSign()
      var wq = [Float](repeating: 0, count: latent.count)
      q.forward(latent, &wq, count: latent.count, channels: 6)
      let xq = x.map(binarySign)
      let exact = referenceConvolution(
        x: xq, kernel: latent.map(binarySign), batch: batch, geometry: g, filters: 6, padValue: padValue)
      let want = exact.values.enumerated().map { i, sum in
        let product = Float(Double(q.scale[i % 6]) * sum)
        return bias ? product + layer.bias![i % 6] : product
      }
      return (y, dx + store.gradients.array, want)
    }
    let reference = try run(.fp32, primitives: true)
    #expect(reference.y == reference.want, "fp32 on primitives differs from the rounded exact value")
    let xnor: [(BinaryForwardKernel, Bool)] = XNORConvolution.isAvailable ? [(.xnor, true)] : []
    for (kernel, primitives) in [(BinaryForwardKernel.int8, true), (.int8, false), (.fp32, false)] + xnor {
      let other = try run(kernel, primitives: primitives)
      #expect(other.y == reference.y, "\(kernel) (primitives: \(primitives)): forward bits differ")
      #expect(
        allClose(other.rest, reference.rest, tol: 1e-5),
        "\(kernel) (primitives: \(primitives)): gradients differ by \(maxDifference(other.rest, reference.rest))")
      if primitives { #expect(other.rest == reference.rest, "the \(kernel) forward changed backward's bits") }
    }
  }

  /// oneDNN's convolution primitives against im2col + GEMM: forward, input gradient and
  /// kernel gradient (accumulated over two passes), for float, binary and unquantized layers.
  /// With a nonzero pad value (QuickNet's `pad_values=1`) the primitives pad with zeros and
  /// the padded taps' terms are added after.
  @Test(arguments: [
    ("binary, exact int8", Padding.valid, (1, 1), true, true, Float(0)),
    ("binary, same, stride 2", .same, (2, 2), true, true, 0),
    ("float input, binary kernel", .valid, (1, 1), false, true, 0),
    ("no quantizers, same", .same, (1, 2), false, false, 0),
    ("binary, same, pad 1", .same, (1, 1), true, true, 1),
    ("binary, same, stride 2, pad 1", .same, (2, 2), true, true, 1),
    ("no quantizers, same, pad -0.5", .same, (2, 1), false, false, -0.5),
  ])
  func convolutionPrimitivesEqualIm2col(
    label: String, padding: Padding, strides: (Int, Int), binaryInput: Bool, binaryKernel: Bool, padValue: Float
  ) throws {
    func run(primitives: Bool) throws -> (y: [Float], dx: [Float], gradients: [Float]) {
      let layer = try QuantConv2D(
        filters: 7, kernelSize: (3, 3), strides: strides, padding: padding, padValue: padValue,
        inputShape: [9, 8, 5], inputQuantizer: binaryInput ? SteSign() : nil,
        kernelQuantizer: binaryKernel ? SteSign() : nil, useBias: true)
      #expect(layer.usePrimitives)
      layer.usePrimitives = primitives
      let store = bindStandalone(layer, seed: 3)
      layer.allocate(maxBatch: 4)
      var y: [Float] = []
      var dx: [Float] = []
      for (pass, batch) in [4, 3].enumerated() {
        let x = randomValues(batch * 360, seed: UInt64(10 + pass))
        let out = try layer.forward(x, batch: batch, training: true)
        y += Array(UnsafeBufferPointer(start: out, count: batch * layer.outputSize))
        let dy = randomValues(batch * layer.outputSize, seed: UInt64(20 + pass))
        let d = try layer.backward(dy, batch: batch, needInputGradient: true)!
        dx += Array(UnsafeBufferPointer(start: d, count: batch * 360))
      }
      return (y, dx, store.gradients.array)
    }
    let a = try run(primitives: true)
    let b = try run(primitives: false)
    if binaryInput && binaryKernel {
      #expect(a.y == b.y, "\(label): binary outputs are exact integers")
    } else {
      #expect(allClose(a.y, b.y, tol: 1e-5), "\(label): forward differs by \(maxDifference(a.y, b.y))")
    }
    #expect(allClose(a.dx, b.dx, tol: 1e-5), "\(label): input gradient differs by \(maxDifference(a.dx, b.dx))")
    #expect(
      allClose(a.gradients, b.gradients, tol: 1e-4),
      "\(label): kernel gradient differs by \(maxDifference(a.gradients, b.gradients))")
  }

  /// Without AVX-512 the fp32 backward weights runs on blocked copies of x and dy (16-multiple
  /// channels and filters), the copy of a binary layer's x quantized in place; under the ISA
  /// matrix's AVX2 and SSE4.1 caps this compares that path with im2col + GEMM: a binary layer
  /// (copy quantized in place), a binary layer with ReLU inside (QuickNet's: x quantized, then
  /// copied) and a real-valued one, forward and backward over two batch sizes.
  @Test(arguments: [
    ("binary", true, ActivationKind?.none), ("binary, relu", true, .relu), ("real", false, ActivationKind?.none),
  ])
  func blockedWeightsBackwardEqualsIm2col(label: String, binary: Bool, activation: ActivationKind?) throws {
    let shape = [7, 6, 16]
    func run(primitives: Bool) throws -> (y: [Float], dx: [Float], gradients: [Float], blocked: Bool) {
      let layer = try QuantConv2D(
        filters: 32, kernelSize: (3, 3), strides: (1, 1), padding: .same, padValue: 0, inputShape: shape,
        inputQuantizer: binary ? SteSign() : nil, kernelQuantizer: binary ? SteSign() : nil, useBias: !binary,
        activation: activation)
      layer.usePrimitives = primitives
      let store = bindStandalone(layer, seed: 3)
      layer.allocate(maxBatch: 4)
      var (y, dx): ([Float], [Float]) = ([], [])
      for (pass, batch) in [4, 3].enumerated() {
        let x = randomValues(batch * 672, seed: UInt64(30 + pass))
        y += copyOut(try layer.forward(x, batch: batch, training: true), batch * layer.outputSize)
        let dy = randomValues(batch * layer.outputSize, seed: UInt64(40 + pass))
        dx += copyOut(try layer.backward(dy, batch: batch, needInputGradient: true)!, batch * 672)
      }
      let blocked = primitives ? try layer.primitives(batch: 3).copiesInput : false
      return (y, dx, store.gradients.array, blocked)
    }
    let a = try run(primitives: true)
    let b = try run(primitives: false)
    let avx512 = OneDNN.effectiveISA.hasPrefix("avx512")
    #expect(a.blocked == !avx512, "\(label): blocked copies on ISA \(OneDNN.effectiveISA)")
    #expect(allClose(a.y, b.y, tol: 1e-5), "\(label): forward differs by \(maxDifference(a.y, b.y))")
    #expect(allClose(a.dx, b.dx, tol: 1e-5), "\(label): input gradient differs by \(maxDifference(a.dx, b.dx))")
    #expect(
      allClose(a.gradients, b.gradients, tol: 1e-4),
      "\(label): kernel gradient differs by \(maxDifference(a.gradients, b.gradients))")
  }

  /// Layers on different threads run their convolution primitives at the same time (as
  /// Swift Testing runs tests): each must get the result it gets alone. CI once failed with
  /// "invalid arguments" when two threads raced to create oneDNN's engine and stream.
  @Test func convolutionPrimitivesRunConcurrentlyOnSeveralThreads() throws {
    func run() throws -> [Float] {
      let layer = try QuantConv2D(
        filters: 4, kernelSize: (3, 2), strides: (2, 2), padding: .valid, inputShape: [6, 5, 2], useBias: false)
      #expect(layer.usePrimitives)
      let store = bindStandalone(layer, seed: 3)
      layer.allocate(maxBatch: 2)
      let x = randomValues(2 * 60, seed: 7)
      let y = try layer.forward(x, batch: 2, training: true)
      let out = Array(UnsafeBufferPointer(start: y, count: 2 * layer.outputSize))
      let dy = randomValues(2 * layer.outputSize, seed: 8)
      let dx = try layer.backward(dy, batch: 2, needInputGradient: true)!
      return out + Array(UnsafeBufferPointer(start: dx, count: 2 * 60)) + store.gradients.array
    }
    // Concurrent first: in a process where no convolution has run yet, the threads race to
    // the engine's creation.
    let results = onThreads(8, repeating: 5, run)
    let alone = try run()
    for (i, r) in results.enumerated() { #expect(try r.get() == alone, "thread \(i)") }
  }

  /// The fused kernel pass (sign, change count, bound check, int8 copy) over several 64 Ki
  /// chunks: flip_ratio counts exactly the weights whose sign changed, and one weight past
  /// the clip turns the pass-through gradient off.
  @Test func flipRatioCountsChangedSignsAcrossChunks() throws {
    let layer = try QuantDense(
      units: 250, inputShape: [300], inputQuantizer: SteSign(), kernelQuantizer: SteSign(), useBias: false)
    let store = bindStandalone(layer, seed: 2)
    layer.allocate(maxBatch: 2)
    let x = randomValues(600, seed: 3)
    let w = store.pointer(store.views[0])
    let n = 300 * 250
    _ = try layer.forward(x, batch: 2, training: true)
    #expect(layer.lastFlipRatio == nil, "no previous kernel yet")
    #expect(layer.kernel.gradientPassesThrough)
    let flipped = [0, 15, 16, 65_535, 65_536, n - 1]
    for i in flipped { w[i] = w[i] >= 0 ? -0.5 : 0.5 }
    w[70_000] = w[70_000] >= 0 ? 0.25 : -0.25  // a new value with the same sign
    _ = try layer.forward(x, batch: 2, training: true)
    #expect(layer.lastFlipRatio == Double(flipped.count) / Double(n))
    #expect(layer.kernel.gradientPassesThrough)
    w[40_000] = -1.5
    _ = try layer.forward(x, batch: 2, training: true)
    #expect(!layer.kernel.gradientPassesThrough)
    // The int8 copy made in the same pass gives the float GEMM's outputs.
    w[40_000] = -0.5
    layer.forwardKernel = .fp32
    let float = copyOut(try layer.forward(x, batch: 2, training: true), 500)
    layer.forwardKernel = .int8
    #expect(copyOut(try layer.forward(x, batch: 2, training: true), 500) == float)
  }

  /// Input-gradient GEMMs (`A · Bᵀ`, the matmul primitive) from 8 threads at once, on a shape
  /// no other test uses, so the threads also race to create its primitive.
  @Test func transposedGEMMsRunConcurrentlyOnSeveralThreads() throws {
    let (m, n, k) = (37, 29, 53)
    let a = randomValues(m * k, seed: 41)
    let b = randomValues(n * k, seed: 42)
    func run() throws -> [Float] {
      var c = [Float](repeating: .nan, count: m * n)
      try gemm(.none, .transposed, m: m, n: n, k: k, a: a, lda: k, b: b, ldb: k, c: &c, ldc: n, compute: .serial)
      return c
    }
    let results = onThreads(8, repeating: 5, run)
    var want = [Float](repeating: 0, count: m * n)
    referenceGEMM(.none, .transposed, m: m, n: n, k: k, a: a, lda: k, b: b, ldb: k, c: &want, ldc: n)
    let alone = try run()
    #expect(allClose(alone, want, tol: 1e-5))
    for (i, r) in results.enumerated() { #expect(try r.get() == alone, "thread \(i)") }
  }

  /// oneDNN's int8 convolution on ±1 data equals the plain reference exactly on the ISA this
  /// process runs (the ISA-matrix tests run this suite under every cap): valid and zero
  /// padding, strides, channels that fill no vector register.
  @Test(arguments: [(Padding.valid, (1, 1)), (.same, (2, 2)), (.same, (1, 2))])
  func int8ConvolutionIsExact(padding: Padding, strides: (Int, Int)) throws {
    let g = try ConvGeometry(
      inputHeight: 9, inputWidth: 8, channels: 5, kernelHeight: 3, kernelWidth: 3, strideHeight: strides.0,
      strideWidth: strides.1, padding: padding)
    let (batch, filters) = (3, 7)
    let x = randomValues(batch * g.inputSize, seed: 31).map(binarySign)
    let w = randomValues(g.patchSize * filters, seed: 32).map(binarySign)
    let want = referenceConvolution(x: x, kernel: w, batch: batch, geometry: g, filters: filters).values
    func run(kernelScale: Float) throws -> [Double] {
      let p = try ConvolutionPrimitives(
        batch: batch, geometry: g, filters: filters, int8Forward: true, int8KernelScale: kernelScale,
        compute: .serial)
      let x8 = x.map { Int8($0) }
      let w8 = w.map { Int8($0) }
      var y = [Int32](repeating: -99, count: want.count)
      try p.forward(src: x8, kernel: w8, dst: &y)
      return y.map(Double.init)
    }
    #expect(try run(kernelScale: ConvolutionPrimitives.exactInt8KernelScale) == want, "ISA \(OneDNN.effectiveISA)")
    // The kernel scale that was used before: wrong exactly where oneDNN halves s8 weights
    // (no VNNI), right elsewhere. If this fails, the halving moved and the fix needs a look.
    let halvesWeights = ["sse41", "avx", "avx2", "avx512_core"].contains(OneDNN.effectiveISA)
    #expect((try run(kernelScale: 1) == want) == !halvesWeights, "ISA \(OneDNN.effectiveISA)")
  }

  /// `flip selftest`'s checks pass for every preset on this ISA, and cover every quantized
  /// layer's forward kernels, backward passes and kernel pass. Of Larq Zoo's networks, the two
  /// whose layers the others repeat: Bi-Real Net's (approx_sign, magnitude_aware_sign, stride-2
  /// blocks) and QuickNet's (ReLU inside, pad_values 1).
  @Test(arguments: ModelPreset.allCases.filter { !$0.isZoo } + [.birealnet18, .quicknet])
  func selfTestPassesAndCoversEveryKernel(preset: ModelPreset) throws {
    let (layers, shape) = preset.testLayers
    let checks = try KernelSelfTest.run(specs: layers, inputShape: shape, batch: 2)
    for c in checks where !c.passed { Issue.record("\(c.kernel) of \(c.layer) (\(c.implementation)): \(c.maxError)") }
    let model = try Model(specs: layers, inputShape: shape, seed: 0)
    // Layers like one checked (Larq Zoo's repeated blocks) are checked once.
    let checked = Set(checks.map(\.layer))
    let signatures = Set(model.layers.filter { checked.contains($0.name) }.map(KernelSelfTest.signature))
    for layer in model.layers where layer is QuantConv2D || layer is QuantDense {
      #expect(signatures.contains(KernelSelfTest.signature(layer)), "\(layer.name) is not covered")
    }
    for case let layer as ExactBinaryForward & FlipCounting in model.layers
    where layer.hasQuantizedKernel && checked.contains(layer.name) {
      let kernels = Set(checks.filter { $0.layer == layer.name }.map(\.kernel))
      var want: Set = ["forward fp32", "backward data", "backward weights"]
      for kernel in layer.forwardKernels { want.insert("forward \(kernel.rawValue)") }
      // The fused kernel pass is that of elementwise kernel quantizers (not magnitude_aware_sign).
      let quantizer = (layer as? QuantConv2D)?.kernelQuantizer ?? (layer as? QuantDense)?.kernelQuantizer
      if quantizer?.isElementwise == true { want.insert("kernel pass") }
      #expect(kernels == want, "\(layer.name)")
    }
    // Binary × binary forwards are checked for exact equality.
    // (Exact up to the one rounding of a per-filter scale for magnitude_aware_sign kernels.)
    let exact = checks.filter { $0.kernel == "forward int8" || $0.kernel == "forward xnor" }
    let scaled = Set(model.layers.filter { ($0 as? QuantConv2D)?.scalesLevels == true }.map(\.name))
    for check in exact {
      #expect(check.tolerance == (scaled.contains(check.layer) ? KernelSelfTest.scaledLevelsTolerance : 0))
    }
    #expect(exact.contains { scaled.contains($0.layer) } == [.birealnet, .birealnet18].contains(preset), "\(preset)")
    let signDense = model.layers.contains {
      ($0 as? QuantDense).map { $0.inputQuantizer?.hasSignLevels == true && $0.kernelQuantizer?.hasSignLevels == true }
        ?? false
    }
    let signConvolution = model.layers.contains {
      ($0 as? QuantConv2D).map {
        $0.inputQuantizer?.hasSignLevels == true && ($0.kernelQuantizer?.hasSignLevels == true || $0.scalesLevels)
      } ?? false
    }
    #expect(
      exact.contains { $0.kernel == "forward xnor" } == (XNORProduct.isAvailable && (signDense || signConvolution)))
  }

  /// The self-test's error measure: exact results score 0, a wrong kernel far above the
  /// tolerance, fp32 rounding far below it.
  @Test func selfTestErrorMeasure() {
    let reference = referenceProduct(.none, .none, m: 1, n: 2, k: 3, a: [1, -1, 1], b: [1, 1, 1, 1, 1, 1])
    #expect(reference.values == [1, 1] && reference.magnitudes == [3, 3])
    #expect(KernelSelfTest.maxError([1, 1], reference) == 0)
    #expect(KernelSelfTest.maxError([0, 1], reference) == 1.0 / 3)
    #expect(KernelSelfTest.maxError([1, 1.0000001], reference) < KernelSelfTest.float32Tolerance)
    #expect(KernelSelfTest.maxError([.nan, 1], reference) == .infinity)
    // Through ste_sign's pseudo-gradient: a masked position must be exactly 0.
    #expect(KernelSelfTest.maxError([1, 0], reference, through: SteSign(), at: [0.5, 2]) == 0)
    #expect(KernelSelfTest.maxError([1, 1e-6], reference, through: SteSign(), at: [0.5, 2]) == .infinity)
  }

  /// The reference convolution on a case worked by hand: a 3×3 image, a 2×2 kernel of ones on
  /// one channel, valid padding → window sums; `same` padding with pad value 1 adds the
  /// padded positions.
  @Test func referenceConvolutionByHand() throws {
    let x: [Float] = [1, 2, 3, 4, 5, 6, 7, 8, 9]
    let valid = try ConvGeometry(
      inputHeight: 3, inputWidth: 3, channels: 1, kernelHeight: 2, kernelWidth: 2, strideHeight: 1, strideWidth: 1,
      padding: .valid)
    #expect(
      referenceConvolution(x: x, kernel: [1, 1, 1, 1], batch: 1, geometry: valid, filters: 1).values == [
        12, 16, 24, 28,
      ])
    let same = try ConvGeometry(
      inputHeight: 3, inputWidth: 3, channels: 1, kernelHeight: 2, kernelWidth: 2, strideHeight: 2, strideWidth: 2,
      padding: .same)
    // Output 2×2; Keras pads the bottom/right by 1: windows {1,2,4,5}, {3,p,6,p}, {7,8,p,p}, {9,p,p,p}.
    let y = referenceConvolution(x: x, kernel: [1, 1, 1, 1], batch: 1, geometry: same, filters: 1, padValue: 1).values
    #expect(y == [12, 11, 17, 12])
    let dx = referenceConvolutionBackwardData(
      dy: [1, 0, 0, 0], kernel: [1, 2, 3, 4], batch: 1, geometry: valid, filters: 1)
    #expect(dx.values == [1, 2, 0, 3, 4, 0, 0, 0, 0])
    let dw = referenceConvolutionBackwardWeights(x: x, dy: [1, 0, 0, 1], batch: 1, geometry: valid, filters: 1)
    let wantDW: [Double] = [6, 8, 12, 14]  // x[ky, kx] + x[1 + ky, 1 + kx]
    #expect(dw.values == wantDW)
  }

  /// The forward-kernel choice: forced policies set every exact layer that has the kernel
  /// (fp32 elsewhere), `auto` times every kernel and keeps the results bit for bit; layers
  /// without a binary input stay fp32.
  @Test func binaryForwardChoiceKeepsResults() throws {
    let model = try Model(specs: ModelPreset.larqCNN.layers, inputShape: [28, 28, 1], seed: 4)
    model.allocate(maxBatch: 8)
    let x = randomValues(8 * 784, seed: 6)
    var outputs: [[Float]] = []
    let xnor: [BinaryForwardKernel] = XNORProduct.isAvailable ? [.xnor] : []
    for policy in [BinaryForwardPolicy.int8, .fp32, .xnor, .auto] {
      let choices = try model.chooseBinaryForward(batch: 8, policy: policy, repeats: 1)
      #expect(
        choices.map(\.layer) == ["quant_conv2d", "quant_conv2d_1", "quant_conv2d_2", "quant_dense", "quant_dense_1"])
      #expect(choices[0].kernel == .fp32 && choices[0].available == [.fp32], "the first layer's input is not binary")
      for c in choices.dropFirst() {
        // ste_sign inputs and kernels: dense layers and convolutions have the XNOR kernel.
        #expect(c.available == [.fp32, .int8] + xnor)
        if policy != .auto {
          let forced = BinaryForwardKernel(rawValue: policy.rawValue)!
          #expect(c.kernel == (c.available.contains(forced) ? forced : .fp32))
        }
        #expect(
          c.milliseconds.keys.sorted { $0.rawValue < $1.rawValue }
            == (policy == .auto ? c.available.sorted { $0.rawValue < $1.rawValue } : []))
        if policy == .auto { #expect(c.milliseconds[c.kernel] == c.milliseconds.values.min()) }
      }
      for case let layer as ExactBinaryForward in model.layers where layer.int8ForwardAvailable {
        #expect(layer.forwardKernel == choices.first { $0.layer == layer.name }!.kernel)
      }
      outputs.append(copyOut(try model.forward(x, batch: 8, training: false), 80))
    }
    #expect(outputs.allSatisfy { $0 == outputs[0] })
  }

  /// A forced kernel no layer has is named in a warning with the reason; otherwise no warning.
  @Test func aForcedKernelNoLayerHasIsWarnedAbout() throws {
    let mlp = try Model(specs: ModelPreset.binarynetMLP.layers, inputShape: [28, 28, 1], seed: 1)
    mlp.allocate(maxBatch: 4)
    let xnor = try mlp.chooseBinaryForward(batch: 4, policy: .xnor)
    #expect(BinaryForwardPolicy.xnor.unusedWarning(xnor) == nil || !XNORProduct.isAvailable)
    for policy in [BinaryForwardPolicy.auto, .fp32, .int8] {
      #expect(policy.unusedWarning(try mlp.chooseBinaryForward(batch: 4, policy: policy, repeats: 1)) == nil)
    }
    // Real-valued inputs everywhere: no layer has int8 or XNOR.
    let real = try Model(specs: ModelPreset.binarynetMLP.layers.realValued(), inputShape: [28, 28, 1], seed: 1)
    real.allocate(maxBatch: 4)
    let int8 = BinaryForwardPolicy.int8.unusedWarning(
      try real.chooseBinaryForward(batch: 4, policy: .int8), isa: "avx2")
    #expect(int8?.contains("--binary-forward int8: no layer can run it") == true, "\(int8 ?? "nil")")
    #expect(int8?.contains("integer levels") == true && int8?.contains("every layer runs fp32") == true)
    let none = BinaryForwardPolicy.xnor.unusedWarning(
      try real.chooseBinaryForward(batch: 4, policy: .xnor), isa: "sse41")
    #expect(none?.contains("AVX2; oneDNN ISA here: sse41") == true, "\(none ?? "nil")")
  }


  @Test func quantizersWithoutIntegerLevelsKeepFloat() throws {
    // Scaled levels run exactly in convolutions only (Bi-Real Net's); not in dense layers, and
    // not with a real-valued input.
    let magnitude = try QuantDense(
      units: 4, inputShape: [8], inputQuantizer: SteSign(), kernelQuantizer: MagnitudeAwareSign())
    #expect(magnitude.forwardKernels == [.fp32] && magnitude.forwardKernel == .fp32)
    let realInput = try QuantConv2D(
      filters: 2, kernelSize: (3, 3), inputShape: [5, 5, 2], kernelQuantizer: MagnitudeAwareSign())
    #expect(realInput.forwardKernels == [.fp32] && !realInput.scalesLevels)
    let real = try QuantDense(units: 4, inputShape: [8], kernelQuantizer: SteSign())
    #expect(real.forwardKernels == [.fp32] && real.forwardKernel == .fp32)
    // Past sums of magnitude 2²⁴ − 1 fp32 may round, so only fp32 runs: ±1 terms, and a padded
    // convolution's pad value of up to 127.
    let longest = BinaryForwardKernel.maximumReduction
    #expect(BinaryForwardKernel.sumsAreExact(terms: longest) && !BinaryForwardKernel.sumsAreExact(terms: longest + 1))
    #expect(BinaryForwardKernel.sumsAreExact(terms: longest / 127, largestTerm: 127))
    #expect(!BinaryForwardKernel.sumsAreExact(terms: longest / 127 + 1, largestTerm: 127))
    #expect(!BinaryForwardKernel.sumsAreExact(terms: Int.max, largestTerm: 2))
  }

  /// A training step of a conv model (BatchNorm, pooling, quantizers, Adam) gives the same bits
  /// whether Flip's elementwise loops run on 1 or 2 threads. oneDNN stays on 2 threads in both
  /// runs: its convolutions need not give the same bits on 1 thread as on 2 (they do not here).
  @Test func elementwiseWorkDoesNotDependOnThreadCount() throws {
    func step(threads: Int) throws -> (bits: [Float], log: ThreadLog) {
      let log = ThreadLog()
      let model = try Model(
        specs: ModelPreset.larqCNN.layers, inputShape: [28, 28, 1], seed: 3,
        compute: Compute(threads: threads, oneDNNThreads: 2, threadLog: log))
      model.allocate(maxBatch: 40)
      let optimizer = try OptimizerSpec.adam(learningRate: 0.01).make()
      try optimizer.prepare(store: model.store)
      let x = randomValues(40 * 784, seed: 8)
      let labels = (0..<40).map { Int32($0 % 10) }
      let loss = SparseCategoricalCrossentropy(classes: 10)
      for _ in 0..<2 {
        model.store.zeroGradients()
        _ = try model.accumulateGradients(x, labels: labels, batch: 40, loss: loss)
        optimizer.apply(store: model.store, clock: TrainingClock(), gradientScale: 1 / 40)
      }
      return (model.store.values.array + model.store.state.array + model.store.gradients.array, log)
    }
    let one = try step(threads: 1)
    let two = try step(threads: 2)
    // The loops ran on the threads asked for (those of a single chunk inline), oneDNN on 2.
    #expect(one.log.loopTeams == [1] && two.log.loopTeams == [1, 2])
    #expect(one.log.oneDNNThreads == [2] && two.log.oneDNNThreads == [2])
    #expect(one.bits == two.bits)
  }
}

/// `body` run `repeating` times on each of `threads` threads at once; each thread's last result.
func onThreads(_ threads: Int, repeating: Int, _ body: () throws -> [Float]) -> [Result<[Float], any Error>] {
  let results = UnsafeMutableBufferPointer<Result<[Float], any Error>?>.allocate(capacity: threads)
  defer { results.deallocate() }
  results.initialize(repeating: nil)
  /// What the threads share. `@unchecked Sendable`: running `body` on several threads at once
  /// is what the callers test, and each thread writes only its own slot of `results`.
  struct Shared: @unchecked Sendable {
    let body: () throws -> [Float]
    let results: UnsafeMutableBufferPointer<Result<[Float], any Error>?>
  }
  withoutActuallyEscaping(body) { body in
    let shared = Shared(body: body, results: results)
    DispatchQueue.concurrentPerform(iterations: threads) { i in
      shared.results[i] = Result { try (0..<repeating).map { _ in try shared.body() }.last! }
    }
  }
  return results.map { $0! }
}
