import FlipTensor

// Legend: B batch, C channels (the last axis), R rows = B · (all other axes), so the input is
// viewed as (R, C) and statistics are per channel over R.

/// `BatchNormalization` with Keras 2.15's semantics and defaults (`momentum 0.99`,
/// `epsilon 1e-3`, `center`, `scale`; Flip's presets set momentum 0.9 as Larq advises).
///
/// training: `μ = mean_R(x)`, `σ² = mean_R((x − μ)²)` (biased), `x̂ = (x − μ)/√(σ² + ε)`,
/// `y = γ·x̂ + β`; `moving_mean ← moving_mean·m + μ·(1 − m)` and
/// `moving_variance ← moving_variance·m + v·(1 − m)`, where `v = σ²` for 2-D inputs (Keras's
/// non-fused path) and `v = σ²·R/(R − 1)` for 4-D inputs (Keras's fused path: TensorFlow's
/// fused kernel returns the Bessel-corrected variance for the moving average).
/// inference: `y = γ·(x − moving_mean)/√(moving_variance + ε) + β`.
/// backward: `dx = γ/√(σ²+ε) · (dy − mean_R(dy) − x̂·mean_R(dy·x̂))`, `dγ += Σ dy·x̂`, `dβ += Σ dy`.
public final class BatchNormalization: Layer {
  public var name = "batch_normalization"
  public let typeName = "batch_normalization"
  public let inputShape: [Int]
  public var outputShape: [Int] { inputShape }
  public let momentum: Float
  public let epsilon: Float
  public let center: Bool
  public let scale: Bool
  /// Whether the moving variance takes the Bessel-corrected batch variance (4-D inputs).
  public let besselCorrectedMovingVariance: Bool
  public let channels: Int

  var gamma: UnsafeMutablePointer<Float>?
  var beta: UnsafeMutablePointer<Float>?
  var gammaGradient: UnsafeMutablePointer<Float>?
  var betaGradient: UnsafeMutablePointer<Float>?
  var movingMean: UnsafeMutablePointer<Float>!
  var movingVariance: UnsafeMutablePointer<Float>!

  private var maxBatch = 0
  /// (R, C) normalized input of the last training forward.
  private var normalized = FloatBuffer(count: 0)
  /// (R, C) output; (R, C) input gradient.
  private var y = FloatBuffer(count: 0)
  private var dx = FloatBuffer(count: 0)
  /// (C) batch mean and 1/√(σ²+ε) of the last training forward.
  private let mean: FloatBuffer
  private let inverseStd: FloatBuffer
  /// (C) per-channel sums in double precision.
  private var sum: [Double]
  private var sum2: [Double]
  private var lastForwardTrained = false

  public init(
    inputShape: [Int], momentum: Float = 0.99, epsilon: Float = 1e-3, center: Bool = true, scale: Bool = true
  ) throws {
    guard let c = inputShape.last, c > 0 else {
      throw BNNError.shapeMismatch(layer: "batch_normalization", reason: "needs an input with a channel axis")
    }
    guard momentum >= 0, momentum <= 1 else {
      throw BNNError.invalidParameter(
        owner: "BatchNormalization", parameter: "momentum", reason: "must be in [0, 1], got \(momentum)")
    }
    guard epsilon > 0 else {
      throw BNNError.invalidParameter(
        owner: "BatchNormalization", parameter: "epsilon", reason: "must be positive, got \(epsilon)")
    }
    self.inputShape = inputShape
    self.channels = c
    self.momentum = momentum
    self.epsilon = epsilon
    self.center = center
    self.scale = scale
    besselCorrectedMovingVariance = inputShape.count == 3
    mean = FloatBuffer(count: c)
    inverseStd = FloatBuffer(count: c)
    sum = [Double](repeating: 0, count: c)
    sum2 = [Double](repeating: 0, count: c)
  }

  public var parameterSpecs: [ParameterSpec] {
    var specs: [ParameterSpec] = []
    if scale { specs.append(ParameterSpec(role: .gamma, shape: [channels], initializer: .ones)) }
    if center { specs.append(ParameterSpec(role: .beta, shape: [channels], initializer: .zeros)) }
    specs.append(ParameterSpec(role: .movingMean, shape: [channels], trainable: false, initializer: .zeros))
    specs.append(ParameterSpec(role: .movingVariance, shape: [channels], trainable: false, initializer: .ones))
    return specs
  }

  public func bind(store: ParameterStore, views: [ParameterView]) {
    for v in views {
      switch v.role {
      case .gamma: gamma = store.pointer(v); gammaGradient = store.gradient(v)
      case .beta: beta = store.pointer(v); betaGradient = store.gradient(v)
      case .movingMean: movingMean = store.pointer(v)
      case .movingVariance: movingVariance = store.pointer(v)
      default: break
      }
    }
  }

  public func allocate(maxBatch: Int) {
    guard maxBatch > self.maxBatch else { return }
    self.maxBatch = maxBatch
    let n = maxBatch * inputSize
    normalized = FloatBuffer(count: n)
    y = FloatBuffer(count: n)
    dx = FloatBuffer(count: n)
  }

  public func forward(_ x: UnsafePointer<Float>, batch: Int, training: Bool) throws -> UnsafePointer<Float> {
    let c = channels
    let rows = batch * inputSize / c
    let out = y.pointer
    if !training {
      // Fold the moving statistics into one scale and shift per channel.
      for ch in 0..<c {
        let s = (scale ? gamma![ch] : 1) / (movingVariance[ch] + epsilon).squareRoot()
        inverseStd[ch] = s
        mean[ch] = (center ? beta![ch] : 0) - movingMean[ch] * s
      }
      let s = inverseStd.pointer, t = mean.pointer
      for r in 0..<rows {
        let xr = x + r * c, yr = out + r * c
        for ch in 0..<c { yr[ch] = xr[ch] * s[ch] + t[ch] }
      }
      lastForwardTrained = false
      return UnsafePointer(out)
    }
    // Batch statistics: two passes, accumulated in double precision.
    sum.withUnsafeMutableBufferPointer { s in
      for ch in 0..<c { s[ch] = 0 }
      for r in 0..<rows {
        let xr = x + r * c
        for ch in 0..<c { s[ch] += Double(xr[ch]) }
      }
      for ch in 0..<c { mean[ch] = Float(s[ch] / Double(rows)) }
    }
    sum2.withUnsafeMutableBufferPointer { s in
      let m = mean.pointer
      for ch in 0..<c { s[ch] = 0 }
      for r in 0..<rows {
        let xr = x + r * c
        for ch in 0..<c {
          let d = Double(xr[ch] - m[ch])
          s[ch] += d * d
        }
      }
      let f = 1 - momentum
      for ch in 0..<c {
        let variance = s[ch] / Double(rows)
        inverseStd[ch] = Float(1 / (variance + Double(epsilon)).squareRoot())
        let movingSample = besselCorrectedMovingVariance && rows > 1 ? s[ch] / Double(rows - 1) : variance
        movingMean[ch] = movingMean[ch] * momentum + mean[ch] * f
        movingVariance[ch] = movingVariance[ch] * momentum + Float(movingSample) * f
      }
    }
    let m = mean.pointer, s = inverseStd.pointer, xh = normalized.pointer
    for r in 0..<rows {
      let xr = x + r * c, hr = xh + r * c, yr = out + r * c
      for ch in 0..<c {
        let h = (xr[ch] - m[ch]) * s[ch]
        hr[ch] = h
        yr[ch] = h
      }
    }
    if scale || center {
      for r in 0..<rows {
        let yr = out + r * c
        for ch in 0..<c { yr[ch] = yr[ch] * (scale ? gamma![ch] : 1) + (center ? beta![ch] : 0) }
      }
    }
    lastForwardTrained = true
    return UnsafePointer(out)
  }

  public func backward(_ dy: UnsafePointer<Float>, batch: Int, needInputGradient: Bool) throws -> UnsafePointer<Float>? {
    let c = channels
    let rows = batch * inputSize / c
    let xh = normalized.pointer
    // Σ dy and Σ dy·x̂ per channel.
    sum.withUnsafeMutableBufferPointer { s1 in
      sum2.withUnsafeMutableBufferPointer { s2 in
        for ch in 0..<c { s1[ch] = 0; s2[ch] = 0 }
        for r in 0..<rows {
          let dr = dy + r * c, hr = xh + r * c
          for ch in 0..<c {
            s1[ch] += Double(dr[ch])
            s2[ch] += Double(dr[ch] * hr[ch])
          }
        }
        if let dg = gammaGradient { for ch in 0..<c { dg[ch] += Float(s2[ch]) } }
        if let db = betaGradient { for ch in 0..<c { db[ch] += Float(s1[ch]) } }
        // Reuse mean/sum buffers as per-channel coefficients: dx = k·(dy − a − x̂·b).
        for ch in 0..<c {
          s1[ch] /= Double(rows)
          s2[ch] /= Double(rows)
        }
      }
    }
    guard needInputGradient else { return nil }
    let out = dx.pointer
    sum.withUnsafeBufferPointer { a in
      sum2.withUnsafeBufferPointer { b in
        let s = inverseStd.pointer
        for r in 0..<rows {
          let dr = dy + r * c, hr = xh + r * c, or = out + r * c
          for ch in 0..<c {
            let g = scale ? gamma![ch] : 1
            or[ch] = g * s[ch] * (dr[ch] - Float(a[ch]) - hr[ch] * Float(b[ch]))
          }
        }
      }
    }
    return UnsafePointer(out)
  }

  public var profile: LayerProfile {
    var weights: [LayerProfile.Weights] = []
    if scale { weights.append(.init(role: .gamma, count: channels, precision: 32, trainable: true)) }
    if center { weights.append(.init(role: .beta, count: channels, precision: 32, trainable: true)) }
    weights.append(.init(role: .movingMean, count: channels, precision: 32, trainable: false))
    weights.append(.init(role: .movingVariance, count: channels, precision: 32, trainable: false))
    return LayerProfile(name: name, inputPrecision: nil, outputShape: outputShape, weights: weights, macs: .none)
  }
}
