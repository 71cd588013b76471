import FlipTensor
import Foundation

/// Activation functions by Keras's and Larq's names.
public enum ActivationKind: String, CaseIterable, Sendable {
  case linear, relu, softmax
  case hardTanh = "hard_tanh"
  case tanh, sigmoid
}

/// `Activation(kind)`: elementwise (or, for softmax, per-row over the last axis).
///
/// - `relu`: `y = max(x, 0)`, `dx = dy·1[x > 0]`
/// - `hard_tanh` (Larq): `y = clip(x, −1, 1)`, `dx = dy·1[−1 ≤ x ≤ 1]` (TensorFlow's clip gradient)
/// - `tanh`: `dx = dy·(1 − y²)`; `sigmoid`: `dx = dy·y(1 − y)`
/// - `softmax` over the last axis: `y = exp(x − max)/Σ exp(x − max)`, `dx = y ⊙ (dy − Σ dy⊙y)`.
///   In training the loss takes the logits before a final softmax directly (as Keras does).
public final class Activation: Layer, LentInputGradient {
  public var name = "activation"
  public var compute = Compute.serial
  public let typeName = "activation"
  public let kind: ActivationKind
  public let inputShape: [Int]
  public var outputShape: [Int] { inputShape }
  private var maxBatch = 0
  private var input: UnsafePointer<Float>!
  private var y = FloatBuffer(count: 0)
  public var inputGradient = FloatBuffer(count: 0)
  public var inputGradientIsLent = false

  public init(_ kind: ActivationKind, inputShape: [Int]) {
    self.kind = kind
    self.inputShape = inputShape
  }
  public convenience init(named name: String, inputShape: [Int]) throws {
    guard let kind = ActivationKind(rawValue: name) else { throw BNNError.unknownActivation(name) }
    self.init(kind, inputShape: inputShape)
  }

  public var parameterSpecs: [ParameterSpec] { [] }
  public func bind(store: ParameterStore, views: [ParameterView]) {}
  public func allocate(maxBatch: Int) {
    guard maxBatch > self.maxBatch else { return }
    self.maxBatch = maxBatch
    y = FloatBuffer(count: maxBatch * inputSize)
    if !inputGradientIsLent { inputGradient = FloatBuffer(count: maxBatch * inputSize) }
  }

  public func forward(_ x: UnsafePointer<Float>, batch: Int, training: Bool) throws -> UnsafePointer<Float> {
    input = x
    let n = batch * inputSize
    let out = y.pointer
    switch kind {
    case .linear: out.update(from: x, count: n)
    case .relu: for i in 0..<n { out[i] = max(x[i], 0) }
    case .hardTanh: for i in 0..<n { out[i] = min(max(x[i], -1), 1) }
    case .tanh: for i in 0..<n { out[i] = Foundation.tanh(x[i]) }
    case .sigmoid: for i in 0..<n { out[i] = 1 / (1 + exp(-x[i])) }
    case .softmax:
      let c = inputShape.last!
      softmaxRows(x, out, rows: n / c, columns: c)
    }
    return UnsafePointer(out)
  }

  public func backward(_ dy: UnsafePointer<Float>, batch: Int, needInputGradient: Bool) throws -> UnsafePointer<Float>?
  {
    guard needInputGradient else { return nil }
    let n = batch * inputSize
    let d = inputGradient.pointer
    let out = y.pointer
    let x = input!
    let kind = kind
    switch kind {
    case .linear: d.update(from: dy, count: n)
    case .relu, .hardTanh, .tanh, .sigmoid:
      compute.forEach(count: n) { r in
        let (lo, count) = (r.lowerBound, r.count)
        switch kind {
        case .relu: maskedGradient(x + lo, dy + lo, d + lo, count: count, lower: 0)
        case .hardTanh: maskedGradient(x + lo, dy + lo, d + lo, count: count, lower: -1, upper: 1, lowerInclusive: true)
        case .tanh: for i in r { d[i] = dy[i] * (1 - out[i] * out[i]) }
        default: for i in r { d[i] = dy[i] * out[i] * (1 - out[i]) }
        }
      }
    case .softmax:
      let c = inputShape.last!
      for r in 0..<(n / c) {
        var dot: Float = 0
        for j in 0..<c { dot += dy[r * c + j] * out[r * c + j] }
        for j in 0..<c { d[r * c + j] = out[r * c + j] * (dy[r * c + j] - dot) }
      }
    }
    return UnsafePointer(d)
  }

  public var profile: LayerProfile {
    LayerProfile(name: name, inputPrecision: nil, outputShape: outputShape, weights: [], macs: .unknown)
  }
}

/// Row-wise softmax of a (rows, columns) matrix, stabilized by the row maximum.
public func softmaxRows(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, rows: Int, columns c: Int) {
  for r in 0..<rows {
    let xr = x + r * c
    let yr = y + r * c
    var m = -Float.infinity
    for j in 0..<c { m = max(m, xr[j]) }
    var s: Float = 0
    for j in 0..<c {
      let e = exp(xr[j] - m)
      yr[j] = e
      s += e
    }
    let inv = 1 / s
    for j in 0..<c { yr[j] *= inv }
  }
}

/// `Dropout(rate)`: in training, keeps each value with probability `1 − rate` and scales kept
/// values by `1/(1 − rate)` (inverted dropout, as Keras); the identity in inference. Masks come
/// from Flip's seeded generator, so runs repeat exactly. The trainer reseeds it for every
/// micro-step of every rank (`reseed(stream:)`), so masks depend on (seed, step, rank) only and
/// a resumed run draws the same masks as an uninterrupted one.
public final class Dropout: Layer, StochasticLayer, LentInputGradient {
  public var name = "dropout"
  public var compute = Compute.serial
  public let typeName = "dropout"
  public let rate: Float
  public let inputShape: [Int]
  public var outputShape: [Int] { inputShape }
  public var random: SplitMix64
  public let seed: UInt64
  private var maxBatch = 0
  private var trainedLast = false
  /// (B, ...) mask of 0 or 1/(1 − rate); output; input gradient.
  private var mask = FloatBuffer(count: 0)
  private var y = FloatBuffer(count: 0)
  public var inputGradient = FloatBuffer(count: 0)
  public var inputGradientIsLent = false

  public init(rate: Float, inputShape: [Int], seed: UInt64) throws {
    guard rate >= 0, rate < 1 else {
      throw BNNError.invalidParameter(owner: "Dropout", parameter: "rate", reason: "must be in [0, 1), got \(rate)")
    }
    self.rate = rate
    self.inputShape = inputShape
    self.seed = seed
    random = SplitMix64(seed: seed)
  }

  public func reseed(stream: UInt64) { random = SplitMix64(seed: seed, stream: stream) }

  public var parameterSpecs: [ParameterSpec] { [] }
  public func bind(store: ParameterStore, views: [ParameterView]) {}
  public func allocate(maxBatch: Int) {
    guard maxBatch > self.maxBatch else { return }
    self.maxBatch = maxBatch
    mask = FloatBuffer(count: maxBatch * inputSize)
    y = FloatBuffer(count: maxBatch * inputSize)
    if !inputGradientIsLent { inputGradient = FloatBuffer(count: maxBatch * inputSize) }
  }

  public func forward(_ x: UnsafePointer<Float>, batch: Int, training: Bool) throws -> UnsafePointer<Float> {
    trainedLast = training && rate > 0
    guard trainedLast else { return x }
    let n = batch * inputSize
    let keep = 1 / (1 - rate)
    let m = mask.pointer
    let out = y.pointer
    for i in 0..<n {
      m[i] = random.nextUnitFloat() >= rate ? keep : 0
      out[i] = x[i] * m[i]
    }
    return UnsafePointer(out)
  }

  public func backward(_ dy: UnsafePointer<Float>, batch: Int, needInputGradient: Bool) throws -> UnsafePointer<Float>?
  {
    guard needInputGradient else { return nil }
    guard trainedLast else { return dy }
    let n = batch * inputSize
    let m = mask.pointer
    let d = inputGradient.pointer
    for i in 0..<n { d[i] = dy[i] * m[i] }
    return UnsafePointer(d)
  }

  public var profile: LayerProfile {
    LayerProfile(name: name, inputPrecision: nil, outputShape: outputShape, weights: [], macs: .unknown)
  }
}

/// The activation a convolution applies to its own output (Keras's `activation` argument of
/// `Conv2D` and `QuantConv2D`, e.g. QuickNet's ReLU before BatchNormalization): an elementwise
/// function whose derivative its output gives, so the layer keeps only its output.
///
/// - `relu`: `dx = dy·1[y > 0]`; `tanh`: `dx = dy·(1 − y²)`; `sigmoid`: `dx = dy·y(1 − y)`.
struct OutputActivation {
  let kind: ActivationKind

  /// Nil for no activation (or `linear`); throws for those the output cannot differentiate
  /// (`softmax` is not elementwise; `hard_tanh`'s gradient at the clip needs the input).
  init?(_ kind: ActivationKind?, owner: String) throws {
    guard let kind, kind != .linear else { return nil }
    guard [.relu, .tanh, .sigmoid].contains(kind) else {
      throw BNNError.invalidParameter(
        owner: owner, parameter: "activation",
        reason:
          "a convolution applies relu, tanh, sigmoid or linear, got \(kind.rawValue); add an Activation layer after it")
    }
    self.kind = kind
  }

  func apply(_ y: UnsafeMutablePointer<Float>, count: Int, compute: Compute) {
    let kind = kind
    compute.forEach(count: count) { r in
      switch kind {
      case .relu: for i in r { y[i] = max(y[i], 0) }
      case .tanh: for i in r { y[i] = Foundation.tanh(y[i]) }
      default: for i in r { y[i] = 1 / (1 + exp(-y[i])) }
      }
    }
  }

  /// `d = dy · f'(x)` from the output `y = f(x)`.
  func gradient(
    _ dy: UnsafePointer<Float>, output y: UnsafePointer<Float>, into d: UnsafeMutablePointer<Float>, count: Int,
    compute: Compute
  ) {
    let kind = kind
    compute.forEach(count: count) { r in
      switch kind {
      case .relu: maskedGradient(y + r.lowerBound, dy + r.lowerBound, d + r.lowerBound, count: r.count, lower: 0)
      case .tanh: for i in r { d[i] = dy[i] * (1 - y[i] * y[i]) }
      default: for i in r { d[i] = dy[i] * y[i] * (1 - y[i]) }
      }
    }
  }
}
