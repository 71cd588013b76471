import FlipTensor

// Legend: B batch, S elements of one input sample, C_k channels of input k (last axis),
// P positions (all axes but the last).

/// A layer with several inputs (Keras's merge layers). `Model` calls the multi-input forward
/// and backward; the single-input ones of `Layer` are not used.
public protocol MergeLayer: Layer {
  /// Shapes of the inputs (one sample each), in order.
  var inputShapes: [[Int]] { get }
  /// The output of `batch` samples from one pointer per input.
  func forward(_ inputs: [UnsafePointer<Float>], batch: Int, training: Bool) throws -> UnsafePointer<Float>
  /// The gradient of each input (written, never accumulated; a pointer may be `dy` itself).
  func backward(merged dy: UnsafePointer<Float>, batch: Int) throws -> [UnsafePointer<Float>]
}

extension MergeLayer {
  public var parameterSpecs: [ParameterSpec] { [] }
  public func bind(store: ParameterStore, views: [ParameterView]) {}
  public func forward(_ x: UnsafePointer<Float>, batch: Int, training: Bool) throws -> UnsafePointer<Float> {
    throw BNNError.shapeMismatch(layer: name, reason: "a merge layer takes \(inputShapes.count) inputs")
  }
  public func backward(_ dy: UnsafePointer<Float>, batch: Int, needInputGradient: Bool) throws -> UnsafePointer<Float>? {
    throw BNNError.shapeMismatch(layer: name, reason: "a merge layer takes \(inputShapes.count) inputs")
  }
  public var profile: LayerProfile {
    LayerProfile(name: name, inputPrecision: nil, outputShape: outputShape, weights: [], macs: .unknown)
  }
}

/// Keras's `Add`: `y = x_1 + x_2 + … + x_n` for inputs of one shape; each input's gradient is `dy`.
public final class Add: MergeLayer {
  public var name = "add"
  public var compute = Compute.serial
  public let typeName = "add"
  public let inputShapes: [[Int]]
  public var inputShape: [Int] { inputShapes[0] }
  public var outputShape: [Int] { inputShapes[0] }
  /// (B, S) the sum.
  private var y = FloatBuffer(count: 0)
  private var maxBatch = 0

  public init(inputShapes: [[Int]]) throws {
    guard inputShapes.count >= 2 else {
      throw BNNError.shapeMismatch(layer: "add", reason: "Add needs at least 2 inputs, got \(inputShapes.count)")
    }
    guard inputShapes.allSatisfy({ $0 == inputShapes[0] }) else {
      throw BNNError.shapeMismatch(layer: "add", reason: "Add's inputs must have one shape, got \(inputShapes)")
    }
    self.inputShapes = inputShapes
  }

  public func allocate(maxBatch: Int) {
    guard maxBatch > self.maxBatch else { return }
    self.maxBatch = maxBatch
    y = FloatBuffer(count: maxBatch * outputSize)
  }

  public func forward(_ inputs: [UnsafePointer<Float>], batch: Int, training: Bool) throws -> UnsafePointer<Float> {
    let out = y.pointer
    let count = batch * outputSize
    // Input by input over each chunk, 16 lanes at a time: ((x₀ + x₁) + x₂) + … per element.
    inputs.withUnsafeBufferPointer { sources in
      compute.forEach(count: count) { r in
        let (lo, n) = (r.lowerBound, r.count)
        let o = out + lo
        addVectors(sources[0] + lo, sources.count > 1 ? sources[1] + lo : nil, into: o, count: n)
        for k in 2..<max(2, sources.count) { addVectors(UnsafePointer(o), sources[k] + lo, into: o, count: n) }
      }
    }
    return UnsafePointer(out)
  }

  public func backward(merged dy: UnsafePointer<Float>, batch: Int) throws -> [UnsafePointer<Float>] {
    Array(repeating: dy, count: inputShapes.count)
  }
}

/// Keras's `Concatenate(axis=-1)`: the inputs' channels side by side, input 1's first; all
/// other axes must agree.
public final class Concatenate: MergeLayer {
  public var name = "concatenate"
  public var compute = Compute.serial
  public let typeName = "concatenate"
  public let inputShapes: [[Int]]
  public var inputShape: [Int] { inputShapes[0] }
  public let outputShape: [Int]
  /// C_k, and P.
  private let channels: [Int]
  private let positions: Int
  /// (B, P, ΣC_k) output; (B, P, C_k) the gradient of each input.
  private var y = FloatBuffer(count: 0)
  private var dx: [FloatBuffer] = []
  private var maxBatch = 0

  public init(inputShapes: [[Int]]) throws {
    guard inputShapes.count >= 2 else {
      throw BNNError.shapeMismatch(
        layer: "concatenate", reason: "Concatenate needs at least 2 inputs, got \(inputShapes.count)")
    }
    let leading = inputShapes[0].dropLast()
    guard inputShapes.allSatisfy({ !$0.isEmpty && $0.dropLast() == leading }) else {
      throw BNNError.shapeMismatch(
        layer: "concatenate", reason: "Concatenate's inputs must agree on every axis but the last, got \(inputShapes)")
    }
    self.inputShapes = inputShapes
    channels = inputShapes.map { $0.last! }
    positions = leading.reduce(1, *)
    outputShape = Array(leading) + [channels.reduce(0, +)]
  }

  public func allocate(maxBatch: Int) {
    guard maxBatch > self.maxBatch else { return }
    self.maxBatch = maxBatch
    y = FloatBuffer(count: maxBatch * outputSize)
    dx = channels.map { FloatBuffer(count: maxBatch * positions * $0) }
  }

  public func forward(_ inputs: [UnsafePointer<Float>], batch: Int, training: Bool) throws -> UnsafePointer<Float> {
    let total = channels.reduce(0, +)
    let out = y.pointer
    let channels = channels
    compute.forRanges(count: batch * positions, grain: 256) { r in
      for p in r {
        var at = out + p * total
        for (k, c) in channels.enumerated() {
          at.update(from: inputs[k] + p * c, count: c)
          at += c
        }
      }
    }
    return UnsafePointer(out)
  }

  public func backward(merged dy: UnsafePointer<Float>, batch: Int) throws -> [UnsafePointer<Float>] {
    let total = channels.reduce(0, +)
    let channels = channels
    let targets = dx.map(\.pointer)
    compute.forRanges(count: batch * positions, grain: 256) { r in
      for p in r {
        var from = dy + p * total
        for (k, c) in channels.enumerated() {
          (targets[k] + p * c).update(from: from, count: c)
          from += c
        }
      }
    }
    return targets.map { UnsafePointer($0) }
  }
}
