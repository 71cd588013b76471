import Foundation

/// `ste_tern(threshold_value=0.05, ternary_weight_networks=false, clip_value=1)` — ternarization
/// (Li et al. 2016, Ternary Weight Networks).
///
/// forward `q(x) = sign(x) · 1[|x| ≥ t]` (Larq computes `sign(sign(x+t) + sign(x−t))`, so
/// `|x| = t` gives ±1) with `t = threshold_value`, or `t = 0.7 · mean(|x|)` over the whole tensor
/// when `ternary_weight_networks`; pseudo-gradient `dx = dy · 1[|x| ≤ clip_value]`.
public final class SteTern: Quantizer {
  public var hasIntegerLevels: Bool { true }
  public let name = "ste_tern"
  public let precision: Int? = 2
  public let thresholdValue: Float
  public let ternaryWeightNetworks: Bool
  public let clipValue: Float?
  /// The threshold used by the last forward.
  public private(set) var threshold: Float
  public var isElementwise: Bool { !ternaryWeightNetworks }

  public init(thresholdValue: Float = 0.05, ternaryWeightNetworks: Bool = false, clipValue: Float? = 1) {
    self.thresholdValue = thresholdValue
    self.ternaryWeightNetworks = ternaryWeightNetworks
    self.clipValue = clipValue
    self.threshold = thresholdValue
  }
  public var straightThroughBound: Float? { clipValue ?? .infinity }

  public func forward(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int, channels: Int) {
    if ternaryWeightNetworks {
      var sum: Double = 0
      for i in 0..<count { sum += Double(abs(x[i])) }
      threshold = Float(0.7 * sum / Double(max(count, 1)))
    } else {
      threshold = thresholdValue
    }
    let t = threshold
    for i in 0..<count {
      let v = x[i]
      y[i] = v >= t ? 1 : (v <= -t ? -1 : 0)
    }
    if t == 0 {
      // sign(sign(x) + sign(x)) = sign(x) with TensorFlow's sign(0) = 0.
      for i in 0..<count where x[i] == 0 { y[i] = 0 }
    }
  }
  public func backward(
    _ x: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>,
    count: Int, channels: Int
  ) {
    clippedGradient(x, dy, dx, count: count, clip: clipValue)
  }
}

/// `dorefa_quantizer(k_bit=2, mode=activations|weights)` — Zhou et al. 2016 (DoReFa-Net),
/// with `n = 2^k − 1` and `round` half-to-even (TensorFlow's `round`).
///
/// activations: `q(x) = round(n·clip(x, 0, 1))/n`; `dx = dy · 1[0 ≤ x ≤ 1]` (straight through the
/// rounding; TensorFlow's gradient of `clip_by_value` passes the boundaries).
///
/// weights: `t = tanh(x)`, `M = max|t|` (under `stop_gradient` in Larq), `u = t/(2M) + 0.5`
/// (0.5 when `M = 0`: `divide_no_nan`), `q(x) = 2·round(n·u)/n − 1`. Straight through the
/// rounding and exact through the rest: `dx = dy · 2 · (1/(2M)) · (1 − t²) = dy·(1 − t²)/M`
/// (0 when `M = 0`).
public final class DoReFaQuantizer: Quantizer {
  public enum Mode: String, Sendable { case activations, weights }
  public let name = "dorefa_quantizer"
  public let kBit: Int
  public let mode: Mode
  public var precision: Int? { kBit }
  public var isElementwise: Bool { mode == .activations }

  public init(kBit: Int = 2, mode: Mode = .activations) {
    self.kBit = kBit
    self.mode = mode
  }

  @inline(__always) private func levels(_ u: Float) -> Float {
    let n = Float((1 << kBit) - 1)
    return (u * n).rounded(.toNearestOrEven) / n
  }

  private func maxAbsTanh(_ x: UnsafePointer<Float>, count: Int) -> Float {
    var m: Float = 0
    for i in 0..<count { m = max(m, abs(tanh(x[i]))) }
    return m
  }

  public func forward(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int, channels: Int) {
    switch mode {
    case .activations:
      for i in 0..<count { y[i] = levels(min(max(x[i], 0), 1)) }
    case .weights:
      let m = maxAbsTanh(x, count: count)
      for i in 0..<count {
        let u = m == 0 ? 0.5 : tanh(x[i]) / (2 * m) + 0.5
        y[i] = 2 * levels(u) - 1
      }
    }
  }

  public func backward(
    _ x: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>,
    count: Int, channels: Int
  ) {
    switch mode {
    case .activations:
      for i in 0..<count { dx[i] = (x[i] >= 0 && x[i] <= 1) ? dy[i] : 0 }
    case .weights:
      let m = maxAbsTanh(x, count: count)
      if m == 0 {
        dx.update(repeating: 0, count: count)
        return
      }
      for i in 0..<count {
        let t = tanh(x[i])
        dx[i] = dy[i] * (1 - t * t) / m
      }
    }
  }
}

/// `noop(precision=p)` — Larq's `NoOp`: the identity, tagging a kernel as `p`-bit.
/// `NoOp(precision=1)` kernels are the binary weights that Bop trains directly.
public final class NoOpQuantizer: Quantizer {
  public let name = "noop"
  public let precision: Int?
  public init(precision: Int) { self.precision = precision }
  public var straightThroughBound: Float? { .infinity }

  public func forward(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int, channels: Int) {
    y.update(from: x, count: count)
  }
  public func backward(
    _ x: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>,
    count: Int, channels: Int
  ) {
    dx.update(from: dy, count: count)
  }
}
