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
public final class BatchNormalization: Layer, LentInputGradient {
  public var name = "batch_normalization"
  public var compute = Compute.serial
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
  /// (R, C) the input of the last training forward (the previous layer's output, valid until
  /// backward): backward recomputes x̂ from it rather than keeping a copy.
  private var input: UnsafePointer<Float>?
  /// (R, C) output; (R, C) input gradient.
  private var y = FloatBuffer(count: 0)
  public var inputGradient = FloatBuffer(count: 0)
  public var inputGradientIsLent = false
  /// (C) batch mean and 1/√(σ²+ε) of the last training forward (in inference: scale and shift).
  private let mean: FloatBuffer
  private let inverseStd: FloatBuffer
  /// (C) per-channel coefficients of backward.
  private let meanGradient: FloatBuffer
  private let meanGradientNormalized: FloatBuffer
  /// Rows per block of the reductions: per-block sums in Float, combined over blocks in Double,
  /// in block order (so the result does not depend on the thread count).
  private let blockRows: Int
  /// (blocks, C) and (blocks, C) per-block partial sums.
  private var partial = FloatBuffer(count: 0)
  private var partial2 = FloatBuffer(count: 0)
  /// (2C + 1) per-channel totals in double precision, laid out as [Σ (C), row count (1),
  /// second sums (C)] so one collective can sum what sync BatchNorm needs; (C) backward's x̂
  /// coefficient.
  private let totals: UnsafeMutablePointer<Double>
  private var sums: UnsafeMutablePointer<Double> { totals }
  private var rowCount: UnsafeMutablePointer<Double> { totals + channels }
  private var sums2: UnsafeMutablePointer<Double> { totals + channels + 1 }
  /// Sync BatchNorm: sums `count` doubles over all data-parallel replicas (an all-reduce), so
  /// batch statistics are those of the global batch; nil for per-replica statistics. Set by
  /// the trainer, so this library never knows about MPI. Every replica must then run every
  /// forward and backward, even on an empty shard.
  public var crossReplicaSum: ((UnsafeMutablePointer<Double>, Int) throws -> Void)?
  private let normalizedCoefficient: FloatBuffer

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
    meanGradient = FloatBuffer(count: c)
    meanGradientNormalized = FloatBuffer(count: c)
    blockRows = max(1, 16384 / c)
    totals = .allocate(capacity: 2 * c + 1)
    normalizedCoefficient = FloatBuffer(count: c)
  }

  deinit {
    totals.deallocate()
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
      case .gamma:
        gamma = store.pointer(v)
        gammaGradient = store.gradient(v)
      case .beta:
        beta = store.pointer(v)
        betaGradient = store.gradient(v)
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
    y = FloatBuffer(count: n)
    if !inputGradientIsLent { inputGradient = FloatBuffer(count: n) }
    let blocks = Parallel.chunkCount(count: n / channels, grain: blockRows)
    partial = FloatBuffer(count: blocks * channels)
    partial2 = FloatBuffer(count: blocks * channels)
  }

  /// Per-channel sums over rows of `f(row pointer, channel)`-style loops: `body` fills the
  /// block's partial sums; the blocks are then added in order in double precision.
  private func reduce(
    rows: Int, into totals: UnsafeMutablePointer<Double>, _ totals2: UnsafeMutablePointer<Double>?,
    _ body: (Range<Int>, UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>) -> Void
  ) {
    let c = channels
    let p1 = partial.pointer
    let p2 = partial2.pointer
    let grain = blockRows
    compute.forRanges(count: rows, grain: grain) { r in
      let block = r.lowerBound / grain
      let a = p1 + block * c
      let b = p2 + block * c
      a.update(repeating: 0, count: c)
      b.update(repeating: 0, count: c)
      body(r, a, b)
    }
    let blocks = Parallel.chunkCount(count: rows, grain: grain)
    for ch in 0..<c { totals[ch] = 0 }
    if let totals2 { for ch in 0..<c { totals2[ch] = 0 } }
    for block in 0..<blocks {
      let a = p1 + block * c
      let b = p2 + block * c
      for ch in 0..<c { totals[ch] += Double(a[ch]) }
      if let totals2 { for ch in 0..<c { totals2[ch] += Double(b[ch]) } }
    }
  }

  public func forward(_ x: UnsafePointer<Float>, batch: Int, training: Bool) throws -> UnsafePointer<Float> {
    let c = channels
    let rows = batch * inputSize / c
    let out = y.pointer
    let s = inverseStd.pointer
    let m = mean.pointer
    if !training {
      input = nil  // the statistics below replace the batch's: no backward until the next training forward
      // Fold the moving statistics into one scale and shift per channel.
      for ch in 0..<c {
        let k = (scale ? gamma![ch] : 1) / (movingVariance[ch] + epsilon).squareRoot()
        s[ch] = k
        m[ch] = (center ? beta![ch] : 0) - movingMean[ch] * k
      }
      compute.forRanges(count: rows, grain: blockRows) { r in
        for row in r {
          let xr = x + row * c
          let yr = out + row * c
          for ch in 0..<c { yr[ch] = xr[ch] * s[ch] + m[ch] }
        }
      }
      return UnsafePointer(out)
    }
    // Batch statistics: mean, then the mean of squared deviations (two passes).
    reduce(rows: rows, into: sums, nil) { r, a, _ in
      for row in r {
        let xr = x + row * c
        for ch in 0..<c { a[ch] += xr[ch] }
      }
    }
    rowCount.pointee = Double(rows)
    try crossReplicaSum?(totals, c + 1)
    let n = rowCount.pointee
    for ch in 0..<c { m[ch] = Float(sums[ch] / n) }
    reduce(rows: rows, into: sums2, nil) { r, a, _ in
      for row in r {
        let xr = x + row * c
        for ch in 0..<c {
          let d = xr[ch] - m[ch]
          a[ch] += d * d
        }
      }
    }
    try crossReplicaSum?(sums2, c)
    let f = 1 - momentum
    for ch in 0..<c {
      let variance = sums2[ch] / n
      s[ch] = Float(1 / (variance + Double(epsilon)).squareRoot())
      let movingSample = besselCorrectedMovingVariance && n > 1 ? sums2[ch] / (n - 1) : variance
      movingMean[ch] = movingMean[ch] * momentum + m[ch] * f
      movingVariance[ch] = movingVariance[ch] * momentum + Float(movingSample) * f
    }
    input = x
    let g = gamma.map { UnsafePointer($0) }
    let b = beta.map { UnsafePointer($0) }
    compute.forRanges(count: rows, grain: blockRows) { r in
      for row in r {
        let xr = x + row * c
        let yr = out + row * c
        for ch in 0..<c { yr[ch] = (xr[ch] - m[ch]) * s[ch] }
        if let g { for ch in 0..<c { yr[ch] *= g[ch] } }
        if let b { for ch in 0..<c { yr[ch] += b[ch] } }
      }
    }
    return UnsafePointer(out)
  }

  public func backward(_ dy: UnsafePointer<Float>, batch: Int, needInputGradient: Bool) throws -> UnsafePointer<Float>?
  {
    let c = channels
    let rows = batch * inputSize / c
    guard let x = input else { preconditionFailure("\(name): backward needs a training forward first") }
    // x̂ = (x − μ)·(1/σ), recomputed exactly as the forward computed it.
    let m = UnsafePointer(mean.pointer)
    let s = UnsafePointer(inverseStd.pointer)
    // Σ dy and Σ dy·x̂ per channel.
    let s1 = sums
    let s2 = sums2
    reduce(rows: rows, into: s1, s2) { r, a, b in
      for row in r {
        let dr = dy + row * c
        let xr = x + row * c
        for ch in 0..<c {
          a[ch] += dr[ch]
          b[ch] += dr[ch] * ((xr[ch] - m[ch]) * s[ch])
        }
      }
    }
    if let dg = gammaGradient { for ch in 0..<c { dg[ch] += Float(s2[ch]) } }
    if let db = betaGradient { for ch in 0..<c { db[ch] += Float(s1[ch]) } }
    guard needInputGradient else { return nil }
    // The parameter gradients above are this replica's share (the trainer all-reduces them);
    // the input gradient needs the means over the global batch.
    rowCount.pointee = Double(rows)
    try crossReplicaSum?(totals, 2 * c + 1)
    let n = rowCount.pointee
    // dx = k·(dy − a − x̂·b) with k = γ/√(σ²+ε), a = mean(dy), b = mean(dy·x̂).
    let k = meanGradient.pointer
    let a = meanGradientNormalized.pointer
    let bCoefficient = normalizedCoefficient.pointer
    for ch in 0..<c {
      k[ch] = (scale ? gamma![ch] : 1) * inverseStd[ch]
      a[ch] = Float(s1[ch] / n)
      bCoefficient[ch] = Float(s2[ch] / n)
    }
    let out = inputGradient.pointer
    let bc = bCoefficient
    compute.forRanges(count: rows, grain: blockRows) { r in
      for row in r {
        let dr = dy + row * c
        let xr = x + row * c
        let or = out + row * c
        for ch in 0..<c { or[ch] = k[ch] * (dr[ch] - a[ch] - ((xr[ch] - m[ch]) * s[ch]) * bc[ch]) }
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
