import FlipTensor
import Foundation

/// `ste_sign(clip_value=1)` — Courbariaux et al. 2016 (BinaryNet).
///
/// forward `q(x) = sign(x)` with `sign(0) = +1`;
/// pseudo-gradient `dx = dy · 1[|x| ≤ clip_value]` (inclusive; `clip_value = nil` passes all).
public final class SteSign: Quantizer {
  public var hasIntegerLevels: Bool { true }
  public var hasSignLevels: Bool { true }
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

  /// One pass over the chunk: sign, changes against the previous kernel, bound check.
  public func forwardKernelChunk(
    _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, previous: UnsafePointer<Float>?, count: Int
  ) -> (changed: Int, withinBound: Bool) {
    let bound = clipValue ?? .infinity
    let one = SIMD16<Float>(repeating: 1)
    let zero = SIMD16<Float>(repeating: 0)
    let limit = SIMD16<Float>(repeating: bound)
    let onesI = SIMD16<Int32>(repeating: 1)
    var changedLanes = SIMD16<Int32>(repeating: 0)
    var inside = SIMDMask<SIMD16<Int32>>(repeating: true)
    let vectorEnd = count & ~15
    var i = 0
    while i < vectorEnd {
      let xv = UnsafeRawPointer(x + i).loadUnaligned(as: SIMD16<Float>.self)
      let s = (-one).replacing(with: one, where: xv .>= zero)
      if let previous {
        let old = UnsafeRawPointer(previous + i).loadUnaligned(as: SIMD16<Float>.self)
        changedLanes &+= SIMD16<Int32>(repeating: 0).replacing(with: onesI, where: old .!= s)
      }
      inside = inside .& (xv .<= limit) .& (xv .>= -limit)
      UnsafeMutableRawPointer(y + i).storeBytes(of: s, as: SIMD16<Float>.self)
      i += 16
    }
    var changed = Int(changedLanes.wrappedSum())
    var within = all(inside)
    while i < count {
      y[i] = binarySign(x[i])
      if let previous, previous[i] != y[i] { changed += 1 }
      if !(abs(x[i]) <= bound) { within = false }
      i += 1
    }
    return (changed, within)
  }
}

/// `approx_sign` — Liu et al. 2018 (Bi-Real Net).
///
/// forward `q(x) = sign(x)`; pseudo-gradient `dx = dy · max(0, 2 − 2|x|)`.
public final class ApproxSign: Quantizer {
  public var hasIntegerLevels: Bool { true }
  public var hasSignLevels: Bool { true }
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
    // 16 lanes at a time, then the same arithmetic on the tail (max(0, t) keeps 0 for NaN).
    let (two, zero) = (SIMD16<Float>(repeating: 2), SIMD16<Float>(repeating: 0))
    var i = 0
    while i + 16 <= count {
      let xv = UnsafeRawPointer(x + i).loadUnaligned(as: SIMD16<Float>.self)
      let t = two - two * xv.replacing(with: -xv, where: xv .< zero)  // |x| (−0 gives the same t)
      let mask = t.replacing(with: zero, where: .!(t .>= zero))
      let g = UnsafeRawPointer(dy + i).loadUnaligned(as: SIMD16<Float>.self) * mask
      UnsafeMutableRawPointer(dx + i).storeBytes(of: g, as: SIMD16<Float>.self)
      i += 16
    }
    while i < count {
      dx[i] = dy[i] * max(0, 2 - 2 * abs(x[i]))
      i += 1
    }
  }
}

/// `swish_sign(beta=5)` — Darabi et al. 2018 (BNN+).
///
/// forward `q(x) = sign(x)`;
/// pseudo-gradient `dx = dy · β(2 − βx·tanh(βx/2)) / (1 + cosh(βx))`.
public final class SwishSign: Quantizer {
  public var hasIntegerLevels: Bool { true }
  public var hasSignLevels: Bool { true }
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
public final class MagnitudeAwareSign: ChannelScaledQuantizer {
  public var levelsAreSigns: Bool { true }
  public let name = "magnitude_aware_sign"
  public let precision: Int? = 1
  public let clipValue: Float?
  /// (C) the per-channel scale of the last forward.
  public private(set) var scale: [Float] = []
  /// (C) The scale the next forwards use instead of computing it from `x`: set by the sharded
  /// step's compact wire, where a rank holds the latent weights of its own part of the kernel
  /// only and the mean over the whole kernel comes from every rank's sums. nil: from `x`.
  public var scaleOverride: [Float]?
  /// (C) scratch for the sums of |x| per channel.
  private var sums: [Double] = []
  public var isElementwise: Bool { false }
  public init(clipValue: Float? = 1) { self.clipValue = clipValue }

  public func forward(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int, channels: Int) {
    forward(x, y, count: count, channels: channels, compute: .serial)
  }

  /// Channels per chunk of the scale's sums, and rows per chunk of the output.
  static let channelGrain = 16
  static let rowGrain = 256

  public func forward(
    _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int, channels: Int, compute: Compute
  ) {
    if scale.count != channels { scale = [Float](repeating: 0, count: channels) }
    let rows = count / channels
    if let given = scaleOverride, given.count == channels {
      scale = given
    } else {
      if sums.count != channels { sums = [Double](repeating: 0, count: channels) }
      sums.withUnsafeMutableBufferPointer { sum in
        scale.withUnsafeMutableBufferPointer { s in
          let (sum, s) = (sum.baseAddress!, s.baseAddress!)
          // Each chunk of channels runs over every row in order, as `forward` does.
          compute.forRanges(count: channels, grain: Self.channelGrain) { cs in
            for c in cs { sum[c] = 0 }
            for r in 0..<rows {
              let row = x + r * channels
              for c in cs { sum[c] += Double(abs(row[c])) }
            }
            for c in cs { s[c] = Float(sum[c] / Double(max(rows, 1))) }
          }
        }
      }
    }
    scale.withUnsafeBufferPointer { s in
      let s = s.baseAddress!
      compute.forRanges(count: rows, grain: Self.rowGrain) { rs in
        for r in rs {
          for c in 0..<channels { y[r * channels + c] = s[c] * binarySign(x[r * channels + c]) }
        }
      }
    }
  }

  /// The levels `sign(x)` (±1) of `scale · sign(x)`.
  public func writeLevels(
    _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>?, int8: UnsafeMutablePointer<Int8>?, count: Int
  ) {
    if let y { for i in 0..<count { y[i] = binarySign(x[i]) } }
    if let int8 { for i in 0..<count { int8[i] = x[i] >= 0 ? 1 : -1 } }
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
