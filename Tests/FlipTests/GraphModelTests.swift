import FlipTensor
import Foundation
import FlipTraining
import Testing

@testable import FlipBNN
@testable import FlipCLI

/// Graph models (Keras's functional API): merge layers, backward through tensors used by
/// several layers, the gradient buffer pool, and the residual presets.
@Suite("Graph models")
struct GraphModelTests {
  /// input (4, 4, 2) → conv a → tanh t; conv b(t); add = t + b; cat = [add, t]; flatten; dense.
  /// t is read by three layers; add by one; every path reaches the loss.
  static let specs: [LayerSpec] = {
    func conv(_ filters: Int, _ k: Int, name: String, inputs: [String]?) -> LayerSpec {
      var s = LayerSpec(.conv2D)
      s.filters = filters
      s.kernelSize = [k, k]
      s.padding = .same
      s.name = name
      s.inputs = inputs
      return s
    }
    var tanh = LayerSpec(.activation)
    tanh.activation = .tanh
    tanh.name = "t"
    var add = LayerSpec(.add)
    add.name = "sum"
    add.inputs = ["t", "b"]
    var cat = LayerSpec(.concatenate)
    cat.inputs = ["sum", "t"]
    var dense = LayerSpec(.dense)
    dense.units = 3
    return [conv(3, 3, name: "a", inputs: ["input"]), tanh, conv(3, 1, name: "b", inputs: ["t"]), add, cat,
      LayerSpec(.flatten), dense]
  }()

  /// L = Σ y ⊙ r: the model's parameter gradients against central differences.
  @Test func parameterGradientsMatchFiniteDifferences() throws {
    let model = try Model(specs: Self.specs, inputShape: [4, 4, 2], seed: 5)
    #expect(model.isGraph)
    #expect(model.layers.map(\.name) == ["a", "t", "b", "sum", "concatenate", "flatten", "dense"])
    #expect(model.inputsOf == [[-1], [0], [1], [1, 2], [3, 1], [4], [5]])
    var worst: Float = 0
    for g in try Self.finiteDifferences(model, batch: 3, every: 3) {
      worst = max(worst, abs(g.numeric - g.analytic) / max(1, abs(g.numeric)))
    }
    #expect(worst < 2e-3, "worst relative difference \(worst)")
    #expect(model.gradientBufferCount >= 1, "t's three gradients are summed in a pooled buffer")
  }

  /// No input gradient flows into layers without trainable variables upstream: binarynet-mlp's
  /// first QuantDense (after Flatten) skips its input-gradient GEMM, and a Flatten read by two
  /// Dense layers gets no summing buffer; the parameter gradients stay right.
  @Test func layersWithoutVariablesUpstreamGetNoGradient() throws {
    let mlp = try Model(specs: ModelPreset.binarynetMLP.layers, inputShape: [28, 28, 1], seed: 1)
    #expect(mlp.layers[0] is Flatten)
    #expect(mlp.outputGradientNeeded == [false] + Array(repeating: true, count: mlp.layers.count - 1))

    var tanh = LayerSpec(.activation)
    tanh.activation = .tanh
    var flatten = LayerSpec(.flatten)
    flatten.name = "f"
    flatten.inputs = ["input"]
    var dense = LayerSpec(.dense)
    dense.units = 3
    var (d1, d2) = (dense, dense)
    (d1.name, d1.inputs, d2.name, d2.inputs) = ("d1", ["f"], "d2", ["f"])
    var add = LayerSpec(.add)
    add.inputs = ["d1", "d2"]
    tanh.inputs = ["input"]
    tanh.name = "t"
    flatten.inputs = ["t"]
    let model = try Model(specs: [tanh, flatten, d1, d2, add], inputShape: [2, 2, 2], seed: 5)
    #expect(model.outputGradientNeeded == [false, false, true, true, true])
    let gradients = try Self.finiteDifferences(model, batch: 2)
    #expect(model.gradientBufferCount == 0, "nothing flows into the shared Flatten")
    for (i, g) in gradients.enumerated() {
      #expect(abs(g.numeric - g.analytic) < 1e-3, "variable \(i)")
    }
  }

  /// L = Σ y ⊙ r for random inputs and r: one backward, then every `stride`-th variable's
  /// analytic gradient beside its central difference (step 1e-2).
  static func finiteDifferences(_ model: Model, batch: Int, every stride: Int = 1) throws
    -> [(analytic: Float, numeric: Float)]
  {
    model.allocate(maxBatch: batch)
    let x = FloatBuffer(randomValues(batch * model.inputSize, seed: 1))
    let r = randomValues(batch * model.outputShape.reduce(1, *), seed: 2)
    func loss() throws -> Double {
      let y = try model.forward(x.pointer, batch: batch, training: true)
      return (0..<r.count).reduce(0) { $0 + Double(y[$1]) * Double(r[$1]) }
    }
    _ = try loss()
    model.store.zeroGradients()
    try r.withUnsafeBufferPointer { try model.backward($0.baseAddress!, batch: batch) }
    let analytic = model.store.gradients.array
    let values = model.store.values.pointer
    let h: Float = 1e-2
    return try Swift.stride(from: 0, to: model.store.values.count, by: stride).map { i in
      let saved = values[i]
      values[i] = saved + h
      let up = try loss()
      values[i] = saved - h
      let down = try loss()
      values[i] = saved
      return (analytic[i], Float((up - down) / Double(2 * h)))
    }
  }

  /// The same chain written with and without names and inputs trains the same bits; a
  /// chain's input gradients take two pooled buffers (each is alive until the layer below has
  /// used it) and it sums nothing.
  @Test func namedInputsOfAChainChangeNothing() throws {
    let chain = ModelPreset.larqCNN.layers
    var named = chain
    for i in named.indices {
      named[i].name = "l\(i)"
      named[i].inputs = [i == 0 ? "input" : "l\(i - 1)"]
    }
    func train(_ specs: [LayerSpec]) throws -> [Float] {
      let model = try Model(specs: specs, inputShape: [28, 28, 1], seed: 2)
      model.allocate(maxBatch: 8)
      let optimizer = try OptimizerSpec.adam(learningRate: 0.01).make()
      try optimizer.prepare(store: model.store)
      let x = randomValues(8 * 784, seed: 3)
      let labels = (0..<8).map { Int32($0 % 10) }
      for _ in 0..<2 {
        model.store.zeroGradients()
        _ = try model.accumulateGradients(x, labels: labels, batch: 8, loss: SparseCategoricalCrossentropy(classes: 10))
        optimizer.apply(store: model.store, clock: TrainingClock(), gradientScale: 1 / 8)
      }
      #expect(model.gradientBufferCount == 2)
      return model.store.values.array
    }
    #expect(try train(chain) == train(named))
  }

  @Test func mergeLayersForwardAndBackward() throws {
    let add = try Add(inputShapes: [[2], [2], [2]])
    add.allocate(maxBatch: 1)
    let a: [Float] = [1, 2]
    let b: [Float] = [10, 20]
    let c: [Float] = [100, 200]
    let y = try a.withUnsafeBufferPointer { pa in
      try b.withUnsafeBufferPointer { pb in
        try c.withUnsafeBufferPointer { pc in
          copyOut(try add.forward([pa.baseAddress!, pb.baseAddress!, pc.baseAddress!], batch: 1, training: true), 2)
        }
      }
    }
    #expect(y == [111, 222])
    let cat = try Concatenate(inputShapes: [[2, 1], [2, 2]])
    #expect(cat.outputShape == [2, 3])
    cat.allocate(maxBatch: 2)
    let p: [Float] = [1, 2, 3, 4]  // (2 samples, 2 positions, 1 channel)
    let q: [Float] = [10, 11, 20, 21, 30, 31, 40, 41]  // (2, 2, 2)
    let out = try p.withUnsafeBufferPointer { pp in
      try q.withUnsafeBufferPointer { pq in
        copyOut(try cat.forward([pp.baseAddress!, pq.baseAddress!], batch: 2, training: true), 12)
      }
    }
    #expect(out == [1, 10, 11, 2, 20, 21, 3, 30, 31, 4, 40, 41])
    let grads = try out.withUnsafeBufferPointer { try cat.backward(merged: $0.baseAddress!, batch: 2) }
    #expect(copyOut(grads[0], 4) == p && copyOut(grads[1], 8) == q)
    #expect(throws: BNNError.self) { try Add(inputShapes: [[2], [3]]) }
    #expect(throws: BNNError.self) { try Concatenate(inputShapes: [[2, 1], [3, 1]]) }
  }

  @Test func badGraphsAreErrors() throws {
    var specs = Self.specs
    specs[2].inputs = ["nowhere"]
    #expect(throws: BNNError.self) { try Model(specs: specs, inputShape: [4, 4, 2], seed: 1) }
    specs = Self.specs
    specs[2].name = "t"
    #expect(throws: BNNError.self) { try Model(specs: specs, inputShape: [4, 4, 2], seed: 1) }
    specs = Self.specs
    specs[3].inputs = ["t", "dense"]  // a later layer
    #expect(throws: BNNError.self) { try Model(specs: specs, inputShape: [4, 4, 2], seed: 1) }
    specs = Self.specs
    specs[1].inputs = ["a", "input"]  // two inputs into a one-input layer
    #expect(throws: BNNError.self) { try Model(specs: specs, inputShape: [4, 4, 2], seed: 1) }
  }

  /// `flip summary --model birealnet` equals Larq's own summary of the same Keras model.
  @Test func birealnetSummaryIsLarqs() throws {
    // Larq's own output, kept in the repository's docs/reference.
    let reference = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
      .deletingLastPathComponent().appendingPathComponent("docs/reference/larq-summary-birealnet.txt")
    let model = try Model(specs: ModelPreset.birealnet.layers, inputShape: [28, 28, 1], seed: 0)
    let ours = ModelSummary(modelName: "birealnet", model: model).render()
    let larq = try String(contentsOf: reference, encoding: .utf8)
    #expect(ours == larq)
  }

  /// Bi-Real Net's activation gradients live in pooled buffers reused block after block: at
  /// most four are alive at once (in a downsampling block: the block's output gradient, passed
  /// on to both BatchNorms, the main path's BatchNorm's and convolution's input gradients, and
  /// the block input's sum), each as wide as the widest pooled tensor, instead of an input
  /// gradient per layer and a sum per tensor that two layers read.
  @Test func birealnetKeepsItsActivationGradientsInFourPooledBuffers() throws {
    let model = try Model(specs: ModelPreset.birealnet.layers, inputShape: [28, 28, 1], seed: 0)
    let batch = 4
    model.allocate(maxBatch: batch)
    let x = randomValues(batch * 784, seed: 1)
    let labels = (0..<batch).map { Int32($0) }
    for _ in 0..<2 {
      model.store.zeroGradients()
      _ = try model.accumulateGradients(x, labels: labels, batch: batch, loss: SparseCategoricalCrossentropy(classes: 10))
    }
    #expect(model.gradientBufferCount == 4)
    // The widest pooled tensor is a 28×28×16 stage-1 tensor.
    #expect(model.gradientBufferBytes == 4 * batch * 28 * 28 * 16 * 4)
    // Kept apart: 8 sums of tensors read twice, and 30 layers' input gradients (all but the stem convolution and the Adds).
    let sums = 3 * 28 * 28 * 16 + 2 * 14 * 14 * 32 + 2 * 7 * 7 * 64 + 4 * 4 * 128
    let lent = model.layers.filter { ($0 as? LentInputGradient)?.inputGradientIsLent == true }
    #expect(lent.count == 30)
    #expect(model.gradientBytesIfKept == batch * 4 * (sums + lent.map(\.inputSize).reduce(0, +)))
    #expect(model.gradientBytesIfKept > 4 * model.gradientBufferBytes)
    // A larger batch resizes the pool.
    model.allocate(maxBatch: 2 * batch)
    let x2 = randomValues(2 * batch * 784, seed: 2)
    _ = try model.accumulateGradients(x2, labels: labels + labels, batch: 2 * batch, loss: SparseCategoricalCrossentropy(classes: 10))
    #expect(model.gradientBufferBytes == 4 * 2 * batch * 28 * 28 * 16 * 4)
  }

  /// Lending each layer its input gradient from the pool and sharing one scratch between the
  /// convolutions change no bit of the gradients or the loss: Larq Zoo's residual (Bi-Real
  /// Net), ReLU-inside-convolution (QuickNet) and concatenating (BinaryDenseNet) networks, and
  /// the graph of `specs` (a tensor read by three layers, Concatenate), each against the same
  /// model whose layers own every buffer. The pool holds a few buffers, not one per layer.
  @Test(arguments: ["graph", "birealnet18", "quicknet", "binary-densenet28"])
  func pooledGradientsAndSharedScratchChangeNoBit(_ name: String) throws {
    let (specs, shape): ([LayerSpec], [Int]) =
      name == "graph"
      ? (Self.specs, [4, 4, 2])
      : (ModelPreset(rawValue: name)!.layers(inputShape: [32, 32, 3], classes: 5), [32, 32, 3])
    let classes = name == "graph" ? 3 : 5
    let batch = 3
    let x = randomValues(batch * shape.reduce(1, *), seed: 4)
    let labels = (0..<batch).map { Int32($0 % classes) }
    func run(owning: Bool) throws -> (model: Model, loss: Double, gradients: [Float]) {
      let model = try Model(specs: specs, inputShape: shape, seed: 9)
      model.allocate(maxBatch: batch)
      if owning {
        for case let layer as LentInputGradient in model.layers { layer.ownInputGradient(maxBatch: batch) }
        for case let layer as SharedScratchLayer in model.layers {
          layer.scratch = FloatBuffer(count: layer.scratchCount(maxBatch: batch))
        }
      }
      var loss = 0.0
      for _ in 0..<2 {
        model.store.zeroGradients()
        loss = try model.accumulateGradients(
          x, labels: labels, batch: batch, loss: SparseCategoricalCrossentropy(classes: classes)
        ).lossSum
      }
      return (model, loss, model.store.gradients.array)
    }
    let pooled = try run(owning: false)
    let owned = try run(owning: true)
    #expect(pooled.loss == owned.loss)
    #expect(pooled.gradients == owned.gradients, "\(name): the pooled model's gradients differ")
    #expect(pooled.gradients.contains { $0 != 0 })
    let lent = pooled.model.layers.filter { ($0 as? LentInputGradient)?.inputGradientIsLent == true }.count
    #expect(pooled.model.gradientBufferCount <= 4, "\(name): \(lent) lent layers")
    #expect(pooled.model.gradientBufferCount < lent)
    #expect(owned.model.gradientBufferCount < pooled.model.gradientBufferCount)
  }

  /// A graph config survives YAML: names, inputs, merge layers, initializers.
  @Test func graphConfigRoundTrip() throws {
    var c = RunSettings(preset: .birealnet)
    c.inputShape = [28, 28, 1]
    let text = try c.yaml()
    #expect(text.contains("inputs:") && text.contains("kernel_initializer: glorot_normal") && text.contains("type: Add"))
    let back = try RunSettings.parse(yaml: text, file: "birealnet.yaml")
    #expect(back.layers == c.layers)
    let bad = "layers:\n  - {type: Dense, units: 2}\n  - {type: Add, inputs: [dense]}\n"
    #expect(throws: ConfigError.self) { try RunSettings.parse(yaml: bad, file: "bad.yaml") }
  }
}

/// Sizes a config can make absurd are errors, not crashes.
@Suite("Absurd sizes")
struct AbsurdSizeTests {
  @Test func hugeLayersAndBatchesAreErrors() throws {
    var dense = LayerSpec(.dense)
    dense.units = 99_999_999_999
    #expect(throws: BNNError.self) { try Model(specs: [LayerSpec(.flatten), dense], inputShape: [28, 28, 1], seed: 0) }
    var conv = LayerSpec(.conv2D)
    conv.filters = 1_000_000
    conv.kernelSize = [3, 3]
    dense.units = 1_000_000
    #expect(throws: BNNError.self) {
      try Model(specs: [conv, LayerSpec(.flatten), dense], inputShape: [28, 28, 1], seed: 0)
    }
    conv.kernelSize = [100_000, 3]
    #expect(throws: BNNError.self) { try Model(specs: [conv], inputShape: [28, 28, 1], seed: 0) }
    dense.units = 10
    let model = try Model(specs: [LayerSpec(.flatten), dense], inputShape: [28, 28, 1], seed: 0)
    #expect(throws: BNNError.self) { try model.checkBatchFits(1 << 30) }
    try model.checkBatchFits(512)
  }
}
