import FlipBNN
import Testing

/// The explicit calls through which training asks a model's layers to behave differently.
struct ModelCoordinationTests {
  static let specs: [LayerSpec] = {
    var specs = ModelPreset.binarynetMLP.layers
    for i in specs.indices where specs[i].kind == .quantDense { specs[i].units = specs[i].units == 10 ? 2 : 8 }
    return specs
  }()

  @Test func kernelGradientRowBlocksOnlyOnDenseLayers() throws {
    let model = try Model(specs: Self.specs, inputShape: [4, 4, 1], seed: 1)
    // Layer 1 is the bottom QuantDense (after Flatten).
    try model.computeKernelGradient(ofLayer: 1, inRowBlocks: 2)
    #expect((model.layers[1] as? QuantDense)?.kernelGradientRowBlocks == 2)
    #expect(throws: BNNError.self) { try model.computeKernelGradient(ofLayer: 0, inRowBlocks: 2) }  // Flatten
    #expect(throws: BNNError.self) { try model.computeKernelGradient(ofLayer: 1, inRowBlocks: 0) }
    #expect(throws: BNNError.self) { try model.computeKernelGradient(ofLayer: 99, inRowBlocks: 2) }
  }

  @Test func batchStatisticsAreSummedThroughTheGivenCall() throws {
    let model = try Model(specs: Self.specs, inputShape: [4, 4, 1], seed: 1)
    let layers = model.sumBatchStatistics { _, _ in }
    #expect(layers == 4)
    #expect(model.layers.compactMap { $0 as? BatchNormalization }.allSatisfy { $0.crossReplicaSum != nil })
  }
}
