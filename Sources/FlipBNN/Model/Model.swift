import Dispatch
import FlipTensor

/// The model Flip trains: layers with one parameter store, in a chain or, as Keras's
/// functional API allows, a graph.
///
/// Each layer takes the previous layer's output unless its spec names its `inputs` (earlier
/// layers by name, or `input` for the model's input); merge layers (`Add`, `Concatenate`) take
/// several. The last layer is the output. Layers run in config order (which must list every
/// layer after its inputs). Layers are named as Keras names them (`quant_dense`,
/// `quant_dense_1`, ...) unless a spec gives a `name`, and their variables are laid out in
/// layer order in one `ParameterStore`.
///
/// Backward's activation gradients live in buffers of one pool: a layer's input gradient in a
/// buffer lent to it just before its backward (`LentInputGradient`), and the sum of the
/// gradients of a tensor that several layers use in a buffer taken when the first arrives.
/// Each goes back to the pool once the layer below has used it, so the pool holds only as many
/// as are alive at once (`gradientBufferCount`: two for a chain, at most four for Larq
/// Zoo's networks, however deep) instead of one input gradient per layer.
public final class Model {
  public let layers: [Layer]
  public let store: ParameterStore
  public let inputShape: [Int]
  public let specs: [LayerSpec]
  /// Each layer's inputs: indices of earlier layers, −1 for the model's input.
  public let inputsOf: [[Int]]
  /// Whether backward needs each layer's output gradient: the layer or one upstream of it has
  /// trainable variables. A layer whose inputs need none (the first layer after a Flatten of the
  /// image) skips its input-gradient product.
  public let outputGradientNeeded: [Bool]
  /// Whether the config named inputs (Keras's functional API; its summary shows the input).
  public let isGraph: Bool
  public private(set) var maxBatch = 0
  /// The threads (and profiler) every layer and the store run with; set when the model is
  /// built, and handed to them whenever it changes.
  public var compute: Compute {
    didSet {
      for layer in layers { layer.compute = compute }
      store.compute = compute
    }
  }
  /// The factor of the int8 kernel levels of the convolutions' oneDNN primitives
  /// (`ConvolutionPrimitives.exactInt8KernelScale`; tests and `flip train`'s fault injection
  /// set 1 to reproduce the wrong int8 convolutions of ISAs without VNNI).
  public var int8KernelScale = ConvolutionPrimitives.exactInt8KernelScale {
    didSet { for case let conv as QuantConv2D in layers { conv.int8KernelScale = int8KernelScale } }
  }
  /// The arithmetic of the convolutions' backward passes (`BackwardPrecision`; `bf16` needs a
  /// CPU where oneDNN has bf16 convolutions, else the first backward throws: runs set it with
  /// `setBackwardPrecision`, which checks first). Set before training; the shared scratch grows
  /// to hold the bf16 copies of x and dy (or Winograd's blocked copies and scratchpads).
  public var backwardPrecision = BackwardPrecision.fp32 {
    didSet {
      for case let conv as QuantConv2D in layers { conv.backwardPrecision = backwardPrecision }
      if maxBatch > 0 { shareScratch() }
    }
  }

  /// Sets `backwardPrecision` once `ConvolutionPrimitives.checkBF16Backward` has found that this
  /// CPU runs bf16 (a `TensorError.unsupportedPrecision` that says to use fp32 otherwise).
  public func setBackwardPrecision(_ precision: BackwardPrecision) throws {
    if precision == .bf16 { try ConvolutionPrimitives.checkBF16Backward() }
    backwardPrecision = precision
  }
  /// Called after each layer's forward (`backward` false) or backward in training with the
  /// layer's index and its start and end times (`DispatchTime` nanoseconds): the timeline's
  /// per-layer spans. One branch per layer when nil.
  public var layerTrace: ((_ layer: Int, _ backward: Bool, _ start: UInt64, _ end: UInt64) -> Void)?
  /// How many layers (within the first n) read each layer's output.
  private var consumers: [Int]
  /// Forward outputs of the current pass, by layer.
  private var outputs: [UnsafePointer<Float>?]
  /// Backward: each layer output's gradient; the pooled buffer that holds it, if any; the pool.
  private var gradients: [UnsafePointer<Float>?]
  private var summing: [Int: FloatBuffer] = [:]
  private var pool: [FloatBuffer] = []
  /// The most pooled buffers alive at once in a backward pass.
  public private(set) var gradientBufferCount = 0
  /// Bytes the pool holds (its peak: a pooled buffer is kept for reuse).
  public private(set) var gradientBufferBytes = 0
  /// Bytes of the scratch the layers share (`SharedScratchLayer`).
  public private(set) var scratchBytes = 0
  /// Bytes the activation gradients would take if every layer kept its own input gradient and
  /// every tensor that several layers read its own sum for the whole backward pass (batches of
  /// `maxBatch`): what the pool saves against.
  public var gradientBytesIfKept: Int {
    (sharedOutputs.map { layers[$0].outputSize } + lentLayers.map { layers[$0].inputSize }).reduce(0) {
      $0 + maxBatch * $1 * MemoryLayout<Float>.stride
    }
  }
  /// The layers whose output several layers read, and those lent their input gradient.
  private let sharedOutputs: [Int]
  private let lentLayers: [Int]
  /// The widest of those tensors (per sample): every pooled buffer is made that wide, so any of
  /// them serves any tensor.
  private let pooledWidth: Int

  /// The most elements one sample's output, or one layer's variables, may have.
  public static let largestTensor = 1 << 31

  /// Builds the layers for samples of `inputShape` and initializes the variables from `seed`;
  /// they run on `compute`'s threads.
  public init(specs: [LayerSpec], inputShape: [Int], seed: UInt64, compute: Compute = .serial) throws {
    guard !specs.isEmpty else {
      throw BNNError.invalidParameter(owner: "model", parameter: "layers", reason: "a model needs at least one layer")
    }
    guard !inputShape.isEmpty, inputShape.allSatisfy({ $0 > 0 && $0 <= Self.largestTensor }),
      inputShape.reduce(1.0, { $0 * Double($1) }) <= Double(Self.largestTensor)
    else {
      throw BNNError.shapeMismatch(
        layer: "input", reason: "input shape must be positive and at most \(Self.largestTensor) elements, got \(inputShape)")
    }
    var layers: [Layer] = []
    var inputsOf: [[Int]] = []
    var index: [String: Int] = ["input": -1]
    let explicit = Set(specs.compactMap(\.name))
    var typeCounts: [String: Int] = [:]
    for (i, spec) in specs.enumerated() {
      let sources: [Int]
      if let names = spec.inputs {
        sources = try names.map { name in
          guard let j = index[name] else {
            throw BNNError.invalidParameter(
              owner: "layer \(i) (\(spec.name ?? spec.kind.rawValue))", parameter: "inputs",
              reason: "no earlier layer is named '\(name)' (inputs name earlier layers, or 'input' for the model's input)")
          }
          return j
        }
      } else {
        sources = [i - 1]
      }
      let shapes = sources.map { $0 < 0 ? inputShape : layers[$0].outputShape }
      let layer: Layer
      do {
        layer = try spec.make(inputShapes: shapes, seed: seed &+ 0x9E37 &* UInt64(i + 1))
      } catch let BNNError.shapeMismatch(_, reason) {
        throw BNNError.shapeMismatch(layer: "\(i) (\(spec.name ?? spec.kind.rawValue))", reason: reason)
      }
      if let name = spec.name {
        layer.name = name
      } else {
        // Keras's names, skipping those the config gives explicitly.
        repeat {
          let n = typeCounts[layer.typeName, default: 0]
          layer.name = n == 0 ? layer.typeName : "\(layer.typeName)_\(n)"
          typeCounts[layer.typeName] = n + 1
        } while explicit.contains(layer.name)
      }
      // Sizes a config can make absurd: one sample's output and the layer's variables.
      let elements = layer.outputShape.reduce((1, false)) { r, d in
        let (p, o) = r.0.multipliedReportingOverflow(by: d)
        return (p, r.1 || o)
      }
      let variables = layer.parameterSpecs.reduce(0.0) { $0 + $1.shape.reduce(1.0) { $0 * Double($1) } }
      guard !elements.1, elements.0 <= Self.largestTensor, variables <= Double(Self.largestTensor) else {
        throw BNNError.shapeMismatch(
          layer: "\(i) (\(spec.name ?? spec.kind.rawValue))",
          reason: "its output \(layer.outputShape) or its \(variables) variables exceed \(Self.largestTensor) elements; make the layer smaller")
      }
      guard index[layer.name] == nil else {
        throw BNNError.invalidParameter(
          owner: "layer \(i)", parameter: "name", reason: "'\(layer.name)' names two layers; names must be unique")
      }
      index[layer.name] = i
      layers.append(layer)
      inputsOf.append(sources)
    }
    var random = SplitMix64(seed: seed)
    store = ParameterStore(layerNames: layers.map(\.name), specs: layers.map(\.parameterSpecs), random: &random)
    for (i, layer) in layers.enumerated() {
      layer.bind(store: store, views: store.views(ofLayer: i))
      layer.compute = compute
    }
    store.compute = compute
    self.compute = compute
    self.layers = layers
    self.inputsOf = inputsOf
    var needed: [Bool] = []
    for (i, sources) in inputsOf.enumerated() {
      needed.append(store.views.contains { $0.layerIndex == i } || sources.contains { $0 >= 0 && needed[$0] })
    }
    outputGradientNeeded = needed
    self.inputShape = inputShape
    self.specs = specs
    isGraph = specs.contains { $0.inputs != nil }
    var readers = Array(repeating: 0, count: layers.count)
    for sources in inputsOf { for j in sources where j >= 0 { readers[j] += 1 } }
    // The last layer is the output: every other layer must feed some layer, or it would be
    // trained for nothing (and, listed last, silently become the output).
    let dead = layers.indices.dropLast().filter { readers[$0] == 0 }
    guard dead.isEmpty else {
      let names = dead.map { "\(layers[$0].name) (layer \($0))" }.joined(separator: ", ")
      throw BNNError.invalidParameter(
        owner: "model", parameter: "inputs",
        reason:
          "\(names) feed\(dead.count == 1 ? "s" : "") no other layer, so \(dead.count == 1 ? "its" : "their") output would be unused; the output is the last layer listed (\(layers[layers.count - 1].name)): connect every branch to it or remove the dead ones")
    }
    sharedOutputs = layers.indices.filter { readers[$0] > 1 }
    // A layer is lent its input gradient when backward asks for it: some input of it needs one.
    lentLayers = layers.indices.filter { i in
      guard let layer = layers[i] as? LentInputGradient else { return false }
      layer.inputGradientIsLent = inputsOf[i].contains { $0 >= 0 && needed[$0] }
      return layer.inputGradientIsLent
    }
    pooledWidth = (sharedOutputs.map { layers[$0].outputSize } + lentLayers.map { layers[$0].inputSize }).max() ?? 0
    consumers = Array(repeating: 0, count: layers.count)
    outputs = Array(repeating: nil, count: layers.count)
    gradients = Array(repeating: nil, count: layers.count)
  }

  public var outputShape: [Int] { layers.last!.outputShape }
  public var inputSize: Int { inputShape.reduce(1, *) }

  /// Whether the model ends in a softmax, so the loss can take the logits before it.
  public var endsInSoftmax: Bool { (layers.last as? Activation)?.kind == .softmax }

  /// Throws when batches of `batch` samples would need a buffer beyond `largestTensor`
  /// elements (call before `allocate`, whose allocation would otherwise fail).
  public func checkBatchFits(_ batch: Int) throws {
    guard let widest = layers.max(by: { $0.outputSize < $1.outputSize }) else { return }
    let need = Double(widest.outputSize) * Double(batch)
    guard need <= Double(Self.largestTensor), Double(inputSize) * Double(batch) <= Double(Self.largestTensor) else {
      throw BNNError.shapeMismatch(
        layer: widest.name,
        reason: "a batch of \(batch) needs \(Int(need)) elements for its output, more than \(Self.largestTensor); lower the batch size")
    }
  }

  /// Sizes every layer's buffers for batches of up to `maxBatch`.
  public func allocate(maxBatch: Int) {
    guard maxBatch > self.maxBatch else { return }
    self.maxBatch = maxBatch
    for case let layer as SharedScratchLayer in layers { layer.scratchIsShared = true }
    for layer in layers { layer.allocate(maxBatch: maxBatch) }
    shareScratch()
    // Pooled buffers are as wide as the widest pooled tensor at the largest batch.
    pool.removeAll()
    gradientBufferBytes = 0
  }

  /// One scratch for every layer that needs memory only within a call: they run one at a time.
  private func shareScratch() {
    let scratchUsers = layers.compactMap { $0 as? SharedScratchLayer }
    let scratch = FloatBuffer(count: scratchUsers.map { $0.scratchCount(maxBatch: maxBatch) }.max() ?? 0)
    for layer in scratchUsers { layer.scratch = scratch }
    scratchBytes = scratch.count * MemoryLayout<Float>.stride
  }

  /// Runs the first `through` layers (all by default) on `batch` samples; returns the output
  /// of the last of them.
  public func forward(_ x: UnsafePointer<Float>, batch: Int, training: Bool, through: Int? = nil) throws
    -> UnsafePointer<Float>
  {
    precondition(batch <= maxBatch, "batch \(batch) exceeds the allocated \(maxBatch)")
    let top = through ?? layers.count
    for i in 0..<top {
      let start = layerTrace != nil && training ? DispatchTime.now().uptimeNanoseconds : 0
      let sources = inputsOf[i]
      if let merge = layers[i] as? MergeLayer {
        outputs[i] = try merge.forward(sources.map { $0 < 0 ? x : outputs[$0]! }, batch: batch, training: training)
      } else {
        let source = sources[0] < 0 ? x : outputs[sources[0]]!
        outputs[i] = try layers[i].forward(source, batch: batch, training: training)
      }
      if training, let trace = layerTrace { trace(i, false, start, DispatchTime.now().uptimeNanoseconds) }
    }
    return outputs[top - 1]!
  }

  /// Backward from the gradient `dy` of the output of layer `from − 1` down to the first layer;
  /// parameter gradients accumulate in the store. The input's gradient is not computed.
  /// `observer` hears as soon as parameter gradients are final (so a data-parallel trainer can
  /// start reducing them while the layers below are still working): `layerFinished(i)` for
  /// layer `i` (those of every layer after it are final too), and `kernelRowsFinished` for each
  /// row block of a kernel gradient computed in blocks (`QuantDense.kernelGradientRowBlocks`).
  public func backward(
    _ dy: UnsafePointer<Float>, batch: Int, from: Int? = nil, observer: BackwardObserver? = nil
  ) throws {
    let top = from ?? layers.count
    for i in 0..<top { consumers[i] = 0 }
    for i in 0..<top { for j in inputsOf[i] where j >= 0 { consumers[j] += 1 } }
    for i in 0..<top { gradients[i] = nil }
    gradients[top - 1] = dy
    for i in stride(from: top - 1, through: 0, by: -1) {
      guard let d = gradients[i] else {
        // Nothing downstream of this layer reaches the loss: no gradient, nothing to learn.
        try observer?.layerFinished(i)
        continue
      }
      let start = layerTrace == nil ? 0 : DispatchTime.now().uptimeNanoseconds
      let sources = inputsOf[i]
      let needed = sources.contains { $0 >= 0 && outputGradientNeeded[$0] }
      var inputGradients: [UnsafePointer<Float>] = []
      // A kernel gradient in row blocks tells the observer of each block.
      let blocked = (layers[i] as? QuantDense).flatMap { $0.kernelGradientRowBlocks > 1 ? $0 : nil }
      if let blocked, let observer {
        blocked.kernelRowsFinished = { try observer.kernelRowsFinished(layer: i, rows: $0) }
      }
      defer { blocked?.kernelRowsFinished = nil }
      // A buffer from the pool for the input gradient, held by this layer until its backward ends.
      var lent: FloatBuffer?
      if needed, let layer = layers[i] as? LentInputGradient, layer.inputGradientIsLent {
        let buffer = takeBuffer()
        layer.inputGradient = buffer
        lent = buffer
      }
      if let merge = layers[i] as? MergeLayer {
        inputGradients = try merge.backward(merged: d, batch: batch)
      } else if let g = try layers[i].backward(d, batch: batch, needInputGradient: needed) {
        inputGradients = [g]
      }
      layerTrace?(i, true, start, DispatchTime.now().uptimeNanoseconds)
      // The pooled buffer of this layer's output gradient, if it had one: a layer may pass
      // it through as its input's gradient (Flatten, Add), which then holds it too; so does
      // the input whose gradient this layer wrote into its lent buffer.
      let owned = summing.removeValue(forKey: i)
      for (k, j) in sources.enumerated() where j >= 0 && k < inputGradients.count && outputGradientNeeded[j] {
        let g = inputGradients[k]
        if consumers[j] == 1 {
          gradients[j] = g
          let holds = { (buffer: FloatBuffer?) in buffer.flatMap { g == UnsafePointer($0.pointer) ? $0 : nil } }
          if let holder = holds(owned) ?? holds(lent) {
            summing[j] = holder
            holders[ObjectIdentifier(holder), default: 0] += 1
          }
        } else {
          contribute(g, to: j, batch: batch)
        }
      }
      if let owned { release(owned) }
      if let lent { release(lent) }
      try observer?.layerFinished(i)
    }
    for (_, buffer) in summing { release(buffer) }
    summing.removeAll(keepingCapacity: true)
  }

  /// How many layers' output gradients each summing buffer holds.
  private var holders: [ObjectIdentifier: Int] = [:]
  private var alive = 0

  /// A layer is done with `buffer`: back to the pool once no layer holds it.
  private func release(_ buffer: FloatBuffer) {
    let id = ObjectIdentifier(buffer)
    holders[id, default: 1] -= 1
    guard holders[id]! <= 0 else { return }
    holders[id] = nil
    pool.append(buffer)
    alive -= 1
  }

  /// Adds `g` to the gradient of layer `j`'s output (which several layers read), in a pooled
  /// buffer taken at the first contribution.
  private func contribute(_ g: UnsafePointer<Float>, to j: Int, batch: Int) {
    let count = batch * layers[j].outputSize
    if let buffer = summing[j] {
      let p = buffer.pointer
      compute.forEach(count: count) { r in
        addVectors(p + r.lowerBound, g + r.lowerBound, into: p + r.lowerBound, count: r.count)
      }
      return
    }
    let buffer = takeBuffer()
    let p = buffer.pointer
    compute.forEach(count: count) { r in (p + r.lowerBound).update(from: g + r.lowerBound, count: r.count) }
    summing[j] = buffer
    gradients[j] = UnsafePointer(buffer.pointer)
  }

  /// A buffer from the pool (a new one when none is free), held once.
  private func takeBuffer() -> FloatBuffer {
    let buffer: FloatBuffer
    if let pooled = pool.popLast() {
      buffer = pooled
    } else {
      let width = maxBatch * pooledWidth
      buffer = FloatBuffer(count: width)
      gradientBufferBytes += width * MemoryLayout<Float>.stride
    }
    holders[ObjectIdentifier(buffer)] = 1
    alive += 1
    gradientBufferCount = max(gradientBufferCount, alive)
    return buffer
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
