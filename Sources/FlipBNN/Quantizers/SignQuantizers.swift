import Foundation

/// `ste_sign(clip_value=1)` — Courbariaux et al. 2016 (BinaryNet).
///
/// forward `q(x) = sign(x)` with `sign(0) = +1`;
/// pseudo-gradient `dx = dy · 1[|x| ≤ clip_value]` (inclusive; `clip_value = nil` passes all).
public final class SteSign: Quantizer {
  public var hasIntegerLevels: Bool { true }
  public let name = "ste_sign"
  public let precision: Int? = 1
  public let clipValue: Float?
  public init(clipValue: Float? = 1) { self.clipValue = clipValue }
  public var straightThroughBound: Float? { clipValue ?? .infinity }

  public func forward(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int, channels: Int) {
    signForward(x, y, count: count)
  }
  public func backward(
    _ x: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>,
    count: Int, channels: Int
  ) {
    clippedGradient(x, dy, dx, count: count, clip: clipValue)
  }
}

/// `approx_sign` — Liu et al. 2018 (Bi-Real Net).
///
/// forward `q(x) = sign(x)`; pseudo-gradient `dx = dy · max(0, 2 − 2|x|)`.
public final class ApproxSign: Quantizer {
  public var hasIntegerLevels: Bool { true }
  public let name = "approx_sign"
  public let precision: Int? = 1
  public init() {}

  public func forward(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int, channels: Int) {
    signForward(x, y, count: count)
  }
  public func backward(
    _ x: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>,
    count: Int, channels: Int
  ) {
    for i in 0..<count { dx[i] = dy[i] * max(0, 2 - 2 * abs(x[i])) }
  }
}

/// `swish_sign(beta=5)` — Darabi et al. 2018 (BNN+).
///
/// forward `q(x) = sign(x)`;
/// pseudo-gradient `dx = dy · β(2 − βx·tanh(βx/2)) / (1 + cosh(βx))`.
public final class SwishSign: Quantizer {
  public var hasIntegerLevels: Bool { true }
  public let name = "swish_sign"
  public let precision: Int? = 1
  public let beta: Float
  public init(beta: Float = 5) { self.beta = beta }

  public func forward(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int, channels: Int) {
    signForward(x, y, count: count)
  }
  public func backward(
    _ x: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>,
    count: Int, channels: Int
  ) {
    for i in 0..<count {
      let bx = beta * x[i]
      let numerator = beta * (2 - bx * tanh(bx / 2))
      let denominator = 1 + cosh(bx)
      dx[i] = dy[i] * numerator / denominator
    }
  }
}

/// `magnitude_aware_sign(clip_value=1)` — Liu et al. 2018 (Bi-Real Net).
///
/// forward `q(x) = s_c · sign(x)` with `s_c = mean(|x|)` per channel `c` (all axes but the last);
/// pseudo-gradient `dx = dy · s_c · 1[|x| ≤ clip_value]` (the scale is held constant, as Larq's
/// `stop_gradient` does).
public final class MagnitudeAwareSign: Quantizer {
  public let name = "magnitude_aware_sign"
  public let precision: Int? = 1
  public let clipValue: Float?
  /// (C) the per-channel scale of the last forward.
  public private(set) var scale: [Float] = []
  public var isElementwise: Bool { false }
  public init(clipValue: Float? = 1) { self.clipValue = clipValue }

  public func forward(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int, channels: Int) {
    if scale.count != channels { scale = [Float](repeating: 0, count: channels) }
    let rows = count / channels
    scale.withUnsafeMutableBufferPointer { s in
      var sums = [Double](repeating: 0, count: channels)
      for r in 0..<rows {
        for c in 0..<channels { sums[c] += Double(abs(x[r * channels + c])) }
      }
      for c in 0..<channels { s[c] = Float(sums[c] / Double(max(rows, 1))) }
      for r in 0..<rows {
        for c in 0..<channels { y[r * channels + c] = s[c] * binarySign(x[r * channels + c]) }
      }
    }
  }
  public func backward(
    _ x: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>,
    count: Int, channels: Int
  ) {
    clippedGradient(x, dy, dx, count: count, clip: clipValue)
    let rows = count / channels
    for r in 0..<rows {
      for c in 0..<channels { dx[r * channels + c] *= scale[c] }
    }
  }
}

/// `ste_heaviside(clip_value=1)` — binarization to {0, 1}.
///
/// forward `q(x) = 1[x > 0]` (so `q(0) = 0`); pseudo-gradient `dx = dy · 1[|x| ≤ clip_value]`.
public final class SteHeaviside: Quantizer {
  public var hasIntegerLevels: Bool { true }
  public let name = "ste_heaviside"
  public let precision: Int? = 1
  public let clipValue: Float?
  public init(clipValue: Float? = 1) { self.clipValue = clipValue }
  public var straightThroughBound: Float? { clipValue ?? .infinity }

  public func forward(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int, channels: Int) {
    for i in 0..<count { y[i] = x[i] > 0 ? 1 : 0 }
  }
  public func backward(
    _ x: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>,
    count: Int, channels: Int
  ) {
    clippedGradient(x, dy, dx, count: count, clip: clipValue)
  }
}
