import Dispatch
import FlipTensor

/// A stack of layers with one parameter store: the model Flip trains.
///
/// Layers are named as Keras names them (`quant_dense`, `quant_dense_1`, ...), and their
/// variables are laid out in layer order in one `ParameterStore`.
public final class Sequential {
  public let layers: [Layer]
  public let store: ParameterStore
  public let inputShape: [Int]
  public let specs: [LayerSpec]
  public private(set) var maxBatch = 0
  /// Called after each layer's forward (`backward` false) or backward in training with the
  /// layer's index and its start and end times (`DispatchTime` nanoseconds): the timeline's
  /// per-layer spans. One branch per layer when nil.
  public var layerTrace: ((_ layer: Int, _ backward: Bool, _ start: UInt64, _ end: UInt64) -> Void)?

  /// Builds the layers for samples of `inputShape` and initializes the variables from `seed`.
  public init(specs: [LayerSpec], inputShape: [Int], seed: UInt64) throws {
    guard !specs.isEmpty else {
      throw BNNError.invalidParameter(owner: "model", parameter: "layers", reason: "a model needs at least one layer")
    }
    guard !inputShape.isEmpty, inputShape.allSatisfy({ $0 > 0 }) else {
      throw BNNError.shapeMismatch(layer: "input", reason: "input shape must be positive, got \(inputShape)")
    }
    var layers: [Layer] = []
    var shape = inputShape
    var typeCounts: [String: Int] = [:]
    for (index, spec) in specs.enumerated() {
      let layer: Layer
      do {
        layer = try spec.make(inputShape: shape, seed: seed &+ 0x9E37 &* UInt64(index + 1))
      } catch let BNNError.shapeMismatch(_, reason) {
        throw BNNError.shapeMismatch(layer: "\(index) (\(spec.kind.rawValue))", reason: reason)
      }
      let n = typeCounts[layer.typeName, default: 0]
      layer.name = n == 0 ? layer.typeName : "\(layer.typeName)_\(n)"
      typeCounts[layer.typeName] = n + 1
      layers.append(layer)
      shape = layer.outputShape
    }
    var random = SplitMix64(seed: seed)
    store = ParameterStore(layerNames: layers.map(\.name), specs: layers.map(\.parameterSpecs), random: &random)
    for (index, layer) in layers.enumerated() {
      layer.bind(store: store, views: store.views(ofLayer: index))
    }
    self.layers = layers
    self.inputShape = inputShape
    self.specs = specs
  }

  public var outputShape: [Int] { layers.last!.outputShape }
  public var inputSize: Int { inputShape.reduce(1, *) }

  /// Whether the model ends in a softmax, so the loss can take the logits before it.
  public var endsInSoftmax: Bool { (layers.last as? Activation)?.kind == .softmax }

  /// Sizes every layer's buffers for batches of up to `maxBatch`.
  public func allocate(maxBatch: Int) {
    guard maxBatch > self.maxBatch else { return }
    self.maxBatch = maxBatch
    for layer in layers { layer.allocate(maxBatch: maxBatch) }
  }

  /// Runs the first `through` layers (all by default) on `batch` samples.
  public func forward(_ x: UnsafePointer<Float>, batch: Int, training: Bool, through: Int? = nil) throws
    -> UnsafePointer<Float>
  {
    precondition(batch <= maxBatch, "batch \(batch) exceeds the allocated \(maxBatch)")
    var h = x
    for (index, layer) in layers.prefix(through ?? layers.count).enumerated() {
      guard let trace = layerTrace, training else {
        h = try layer.forward(h, batch: batch, training: training)
        continue
      }
      let start = DispatchTime.now().uptimeNanoseconds
      h = try layer.forward(h, batch: batch, training: training)
      trace(index, false, start, DispatchTime.now().uptimeNanoseconds)
    }
    return h
  }

  /// Backward from the gradient `dy` of the output of layer `from − 1` down to the first layer;
  /// parameter gradients accumulate in the store. The input's gradient is not computed.
  /// `afterLayer(i)` runs as soon as layer `i`'s parameter gradients are final (so a
  /// data-parallel trainer can start reducing them while the layers below are still working).
  public func backward(
    _ dy: UnsafePointer<Float>, batch: Int, from: Int? = nil, afterLayer: ((Int) throws -> Void)? = nil
  ) throws {
    var d = dy
    let top = from ?? layers.count
    for index in stride(from: top - 1, through: 0, by: -1) {
      let need = index > 0
      let start = layerTrace == nil ? 0 : DispatchTime.now().uptimeNanoseconds
      let next = try layers[index].backward(d, batch: batch, needInputGradient: need)
      layerTrace?(index, true, start, DispatchTime.now().uptimeNanoseconds)
      try afterLayer?(index)
      guard let next else { break }
      d = next
    }
  }

  /// Flip ratios of the quantized kernels' last training forward, by layer name.
  public var flipRatios: [(String, Double)] {
    layers.compactMap { layer in
      guard let f = layer as? FlipCounting, let r = f.lastFlipRatio else { return nil }
      return (layer.name, r)
    }
  }

  /// Names of the layers whose kernels report a flip ratio.
  public var flipCountingLayers: [String] {
    layers.filter { ($0 as? FlipCounting)?.hasQuantizedKernel == true }.map(\.name)
  }

  /// Resets every stochastic layer's generator to `stream` (the trainer passes a number made
  /// of the step, micro-step and rank).
  public func reseedStochasticLayers(stream: UInt64) {
    for case let layer as StochasticLayer in layers { layer.reseed(stream: stream) }
  }
}
