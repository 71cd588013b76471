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
    try gemmInt8(.none, .none, m: m, n: n, k: k, a: a, lda: k, b: b, ldb: n, c: &c, ldc: n)
    let af = a.map(Float.init)
    let bf = b.map(Float.init)
    var r = [Float](repeating: 0, count: m * n)
    referenceGEMM(.none, .none, m: m, n: n, k: k, a: af, lda: k, b: bf, ldb: n, c: &r, ldc: n)
    #expect(c.map(Float.init) == r)
  }

  func denseOutputs(int8: Bool) throws -> [Float] {
    let layer = try QuantDense(
      units: 48, inputShape: [300], inputQuantizer: SteSign(), kernelQuantizer: SteSign(), useBias: true)
    #expect(layer.exactInt8Forward)
    layer.exactInt8Forward = int8
    let store = bindStandalone(layer, seed: 9)
    store.values.pointer[store.views[1].offset + 2] = 0.25  // a bias
    layer.allocate(maxBatch: 16)
    let x = randomValues(16 * 300, seed: 4)
    let y = try layer.forward(x, batch: 16, training: true)
    return Array(UnsafeBufferPointer(start: y, count: 16 * 48))
  }

  @Test func binaryDenseInt8ForwardEqualsFloat() throws {
    let a = try denseOutputs(int8: true)
    let b = try denseOutputs(int8: false)
    #expect(a == b)
    #expect(a.contains(0.25 + 2) || a.contains { $0 != $0.rounded() })
  }

  @Test(arguments: [(Padding.valid, Float(0)), (.same, 0), (.same, 1)])
  func binaryConvInt8ForwardEqualsFloat(padding: Padding, padValue: Float) throws {
    func outputs(int8: Bool) throws -> [Float] {
      let layer = try QuantConv2D(
        filters: 6, kernelSize: (3, 3), strides: (2, 1), padding: padding, padValue: padValue, inputShape: [9, 8, 5],
        inputQuantizer: SteSign(), kernelQuantizer: SteSign(), useBias: false)
      #expect(layer.exactInt8Forward)
      layer.exactInt8Forward = int8
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
    #expect(try outputs(int8: true) == outputs(int8: false))
  }

  /// oneDNN's convolution primitives against im2col + GEMM: forward, input gradient and
  /// kernel gradient (accumulated over two passes), for float, binary and unquantized layers.
  @Test(arguments: [
    ("binary, exact int8", Padding.valid, (1, 1), true, true),
    ("binary, same, stride 2", .same, (2, 2), true, true),
    ("float input, binary kernel", .valid, (1, 1), false, true),
    ("no quantizers, same", .same, (1, 2), false, false),
  ])
  func convolutionPrimitivesEqualIm2col(
    label: String, padding: Padding, strides: (Int, Int), binaryInput: Bool, binaryKernel: Bool
  ) throws {
    func run(primitives: Bool) throws -> (y: [Float], dx: [Float], gradients: [Float]) {
      let layer = try QuantConv2D(
        filters: 7, kernelSize: (3, 3), strides: strides, padding: padding, inputShape: [9, 8, 5],
        inputQuantizer: binaryInput ? SteSign() : nil, kernelQuantizer: binaryKernel ? SteSign() : nil, useBias: true)
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
    layer.exactInt8Forward = false
    let float = copyOut(try layer.forward(x, batch: 2, training: true), 500)
    layer.exactInt8Forward = true
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
      try gemm(.none, .transposed, m: m, n: n, k: k, a: a, lda: k, b: b, ldb: k, c: &c, ldc: n)
      return c
    }
    let results = onThreads(8, repeating: 5, run)
    var want = [Float](repeating: 0, count: m * n)
    referenceGEMM(.none, .transposed, m: m, n: n, k: k, a: a, lda: k, b: b, ldb: k, c: &want, ldc: n)
    let alone = try run()
    #expect(allClose(alone, want, tol: 1e-5))
    for (i, r) in results.enumerated() { #expect(try r.get() == alone, "thread \(i)") }
  }

  @Test func nonzeroPadValuesKeepIm2col() throws {
    let layer = try QuantConv2D(
      filters: 2, kernelSize: (3, 3), padding: .same, padValue: 1, inputShape: [5, 5, 1], inputQuantizer: SteSign(),
      kernelQuantizer: SteSign())
    #expect(!layer.usePrimitives)
  }

  @Test func quantizersWithoutIntegerLevelsKeepFloat() throws {
    let magnitude = try QuantDense(
      units: 4, inputShape: [8], inputQuantizer: SteSign(), kernelQuantizer: MagnitudeAwareSign())
    #expect(!magnitude.exactInt8Forward)
    let real = try QuantDense(units: 4, inputShape: [8], kernelQuantizer: SteSign())
    #expect(!real.exactInt8Forward)
  }

  /// A training step of a conv model (BatchNorm, pooling, quantizers, Adam) gives the same bits
  /// whether Flip's elementwise loops run on 1 or 2 threads.
  @Test func elementwiseWorkDoesNotDependOnThreadCount() throws {
    func step(threads: Int) throws -> [Float] {
      let saved = Parallel.threads
      Parallel.threads = threads
      defer { Parallel.threads = saved }
      let model = try Sequential(specs: ModelPreset.larqCNN.layers, inputShape: [28, 28, 1], seed: 3)
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
      return model.store.values.array + model.store.state.array + model.store.gradients.array
    }
    let one = try step(threads: 1)
    let two = try step(threads: 2)
    #expect(one == two)
  }
}

/// `body` run `repeating` times on each of `threads` threads at once; each thread's last result.
func onThreads(_ threads: Int, repeating: Int, _ body: () throws -> [Float]) -> [Result<[Float], any Error>] {
  let results = UnsafeMutableBufferPointer<Result<[Float], any Error>?>.allocate(capacity: threads)
  defer { results.deallocate() }
  results.initialize(repeating: nil)
  withoutActuallyEscaping(body) { body in
    DispatchQueue.concurrentPerform(iterations: threads) { i in
      results[i] = Result { try (0..<repeating).map { _ in try body() }.last! }
    }
  }
  return results.map { $0! }
}
