import FlipTensor

// Legend: N elements of the quantized tensor, viewed as [N / C, C] with C channels last
// (a kernel's output channels, or an activation's channels).

/// A quantizer: a forward map to a few levels, and the pseudo-gradient that backward uses
/// in place of its (zero almost everywhere) true derivative.
///
/// `forward` writes `y = q(x)`; `backward` writes `dx = dy · q̃'(x)` (activation gradients are
/// written, never accumulated). Quantizers that need statistics of the whole tensor (a scale
/// per channel, a threshold) compute them in `forward` and keep them for `backward`.
public protocol Quantizer: AnyObject {
  /// Larq's string name, e.g. `ste_sign`.
  var name: String { get }
  /// Bits of the output levels (1 for sign quantizers; 32 for identity); nil for a real-valued
  /// map such as `hard_tanh` (Larq's summary prints `-` for such an input, counts 32 bits).
  var precision: Int? { get }
  func forward(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int, channels: Int)
  func backward(
    _ x: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>,
    count: Int, channels: Int)
  /// Whether each output depends on its own input only (no statistics of the tensor), so the
  /// work can be split into chunks.
  var isElementwise: Bool { get }
  /// Whether every output is a small integer (±1, {0, 1}, {−1, 0, 1}), so a GEMM between two
  /// such tensors is exact in int8.
  var hasIntegerLevels: Bool { get }
  /// Whether every output is exactly −1 or +1 (the sign quantizers), so a product of two such
  /// tensors can run as XNOR and popcount over their sign bits.
  var hasSignLevels: Bool { get }
  /// The bound when the pseudo-gradient is the clipped straight-through estimator
  /// `dx = dy · 1[|x| ≤ bound]` (`.infinity` when it passes everything); nil for any other
  /// pseudo-gradient. Where every `|x|` is within it, backward is the identity and can be skipped.
  var straightThroughBound: Float? { get }
  /// `forward` on a chunk of an elementwise quantizer's kernel, fused with what the kernel
  /// needs each step: how many outputs differ from `previous` (0 when nil), and whether every
  /// `|x|` lies within `straightThroughBound` (false without one).
  func forwardKernelChunk(
    _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, previous: UnsafePointer<Float>?, count: Int
  ) -> (changed: Int, withinBound: Bool)
}

extension Quantizer {
  public var isElementwise: Bool { true }
  public var hasIntegerLevels: Bool { false }
  public var hasSignLevels: Bool { false }
  public var straightThroughBound: Float? { nil }

  public func forwardKernelChunk(
    _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, previous: UnsafePointer<Float>?, count: Int
  ) -> (changed: Int, withinBound: Bool) {
    forward(x, y, count: count, channels: 1)
    let changed = previous.map { countDifferences($0, y, count: count) } ?? 0
    return (changed, straightThroughBound.map { allMagnitudes(x, count: count, atMost: $0) } ?? false)
  }

  /// `forward`, split over `compute`'s threads when the quantizer is elementwise.
  public func parallelForward(
    _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int, channels: Int, compute: Compute
  ) {
    guard isElementwise else { return forward(x, y, count: count, channels: channels) }
    compute.forEach(count: count) { r in
      forward(x + r.lowerBound, y + r.lowerBound, count: r.count, channels: 1)
    }
  }

  /// `y = int8(q(x))` for an elementwise quantizer with integer levels, split over `compute`'s
  /// threads: each chunk is quantized into a small buffer and converted while in cache (one
  /// pass over memory, no float copy of the whole tensor).
  public func parallelForwardToInt8(
    _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Int8>, count: Int, compute: Compute
  ) {
    precondition(isElementwise, "parallelForwardToInt8: \(name) is not elementwise")
    let chunk = 4096
    compute.forEach(count: count) { r in
      withUnsafeTemporaryAllocation(of: Float.self, capacity: chunk) { buffer in
        let levels = buffer.baseAddress!
        var lo = r.lowerBound
        while lo < r.upperBound {
          let n = min(chunk, r.upperBound - lo)
          forward(x + lo, levels, count: n, channels: 1)
          convertToInt8Serially(levels, y + lo, count: n)
          lo += n
        }
      }
    }
  }

  /// `backward`, split over `compute`'s threads when the quantizer is elementwise.
  public func parallelBackward(
    _ x: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>, count: Int,
    channels: Int, compute: Compute
  ) {
    guard isElementwise else { return backward(x, dy, dx, count: count, channels: channels) }
    compute.forEach(count: count) { r in
      backward(x + r.lowerBound, dy + r.lowerBound, dx + r.lowerBound, count: r.count, channels: 1)
    }
  }
}

/// A kernel quantizer whose outputs are integer levels times a scale per output channel (the
/// last axis): `q(w)[r, c] = scale[c] · level(w[r, c])`, e.g. `magnitude_aware_sign`
/// (`sign(w) · mean |w|`). A product with an integer-level input is then an exact integer sum
/// per output, scaled once: `QuantConv2D` runs it in int8 or fp32 with the same bits.
public protocol ChannelScaledQuantizer: Quantizer {
  /// (C) the scales of the last `forward`.
  var scale: [Float] { get }
  /// Whether every level is ±1 (the kernel can run an XNOR–popcount product).
  var levelsAreSigns: Bool { get }
  /// `forward` split over `compute`'s threads: each channel's scale summed in the same order
  /// as `forward` does (the same bits).
  func forward(
    _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int, channels: Int, compute: Compute)
  /// Writes `level(x)` of `count` values, as floats and, when `int8` is given, as int8 too.
  func writeLevels(
    _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>?, int8: UnsafeMutablePointer<Int8>?, count: Int)
}

/// Larq's `sign` with `sign(0) = +1`.
@inlinable @inline(__always)
public func binarySign(_ x: Float) -> Float { x >= 0 ? 1 : -1 }

/// The clipped straight-through estimator shared by most quantizers:
/// `dx = dy · 1[|x| ≤ clip]` (inclusive; Larq's `_clipped_gradient`); `clip = nil` passes all.
@inlinable
func clippedGradient(
  _ x: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>,
  count: Int, clip: Float?
) {
  guard let clip else {
    if UnsafePointer(dx) != dy { dx.update(from: dy, count: count) }
    return
  }
  // 16 lanes at a time (explicit SIMD: dx may alias dy, which blocks auto-vectorization).
  let vectorEnd = count & ~15
  let limit = SIMD16<Float>(repeating: clip)
  let zero = SIMD16<Float>(repeating: 0)
  var i = 0
  while i < vectorEnd {
    let xv = UnsafeRawPointer(x + i).loadUnaligned(as: SIMD16<Float>.self)
    let gv = UnsafeRawPointer(dy + i).loadUnaligned(as: SIMD16<Float>.self)
    let magnitude = xv.replacing(with: -xv, where: xv .< zero)
    UnsafeMutableRawPointer(dx + i).storeBytes(
      of: zero.replacing(with: gv, where: magnitude .<= limit), as: SIMD16<Float>.self)
    i += 16
  }
  while i < count {
    dx[i] = abs(x[i]) <= clip ? dy[i] : 0
    i += 1
  }
}

/// `y = sign(x)` with `sign(0) = +1`, 16 lanes at a time.
@inlinable
func signForward(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int) {
  let vectorEnd = count & ~15
  let one = SIMD16<Float>(repeating: 1)
  let zero = SIMD16<Float>(repeating: 0)
  var i = 0
  while i < vectorEnd {
    let xv = UnsafeRawPointer(x + i).loadUnaligned(as: SIMD16<Float>.self)
    UnsafeMutableRawPointer(y + i).storeBytes(
      of: (-one).replacing(with: one, where: xv .>= zero), as: SIMD16<Float>.self)
    i += 16
  }
  while i < count {
    y[i] = binarySign(x[i])
    i += 1
  }
}

/// The quantizers Flip knows, by Larq's names.
public enum QuantizerKind: String, CaseIterable, Sendable {
  case steSign = "ste_sign"
  case approxSign = "approx_sign"
  case swishSign = "swish_sign"
  case magnitudeAwareSign = "magnitude_aware_sign"
  case steHeaviside = "ste_heaviside"
  case steTern = "ste_tern"
  case dorefa = "dorefa_quantizer"
  case noop = "noop"
  case hardTanh = "hard_tanh"
}

/// A quantizer as written in a config: a Larq name and its keyword arguments.
public struct QuantizerSpec: Equatable, Sendable, Codable {
  public var name: String
  public var parameters: [String: Double]
  public var mode: String?

  public init(_ name: String, parameters: [String: Double] = [:], mode: String? = nil) {
    self.name = name
    self.parameters = parameters
    self.mode = mode
  }

  /// Builds the quantizer, checking the name and every parameter (`nil` for none/identity).
  public func make() throws -> Quantizer? {
    if name == "none" || name == "identity" || name == "linear" { return nil }
    guard let kind = QuantizerKind(rawValue: name) else { throw BNNError.unknownQuantizer(name) }
    let owner = "quantizer \(name)"
    func take(_ allowed: [String: Double]) throws -> [String: Double] {
      for key in parameters.keys where allowed[key] == nil {
        throw BNNError.invalidParameter(
          owner: owner, parameter: key,
          reason: "not a parameter of \(name) (accepted: \(allowed.keys.sorted().joined(separator: ", ")))")
      }
      if mode != nil && kind != .dorefa {
        throw BNNError.invalidParameter(owner: owner, parameter: "mode", reason: "only dorefa_quantizer takes a mode")
      }
      return allowed.merging(parameters) { _, new in new }
    }
    func clip(_ p: [String: Double]) throws -> Float? {
      let c = p["clip_value"]!
      if c.isNaN { return nil }
      guard c > 0 else {
        throw BNNError.invalidParameter(owner: owner, parameter: "clip_value", reason: "must be positive, got \(c)")
      }
      return Float(c)
    }
    switch kind {
    case .steSign:
      return SteSign(clipValue: try clip(try take(["clip_value": 1])))
    case .approxSign:
      _ = try take([:])
      return ApproxSign()
    case .swishSign:
      let p = try take(["beta": 5])
      return SwishSign(beta: Float(p["beta"]!))
    case .magnitudeAwareSign:
      return MagnitudeAwareSign(clipValue: try clip(try take(["clip_value": 1])))
    case .steHeaviside:
      return SteHeaviside(clipValue: try clip(try take(["clip_value": 1])))
    case .steTern:
      let p = try take(["threshold_value": 0.05, "ternary_weight_networks": 0, "clip_value": 1])
      let t = p["threshold_value"]!
      guard t >= 0 else {
        throw BNNError.invalidParameter(owner: owner, parameter: "threshold_value", reason: "must be ≥ 0, got \(t)")
      }
      return SteTern(
        thresholdValue: Float(t), ternaryWeightNetworks: p["ternary_weight_networks"]! != 0,
        clipValue: try clip(p))
    case .dorefa:
      let p = try take(["k_bit": 2])
      let k = p["k_bit"]!
      guard k >= 1, k <= 24, k == k.rounded() else {
        throw BNNError.invalidParameter(
          owner: owner, parameter: "k_bit", reason: "must be a whole number in 1...24, got \(k)")
      }
      let m = mode ?? "activations"
      guard let dm = DoReFaQuantizer.Mode(rawValue: m) else {
        throw BNNError.invalidParameter(
          owner: owner, parameter: "mode", reason: "must be activations or weights, got \(m)")
      }
      return DoReFaQuantizer(kBit: Int(k), mode: dm)
    case .noop:
      let p = try take(["precision": 32])
      let bits = p["precision"]!
      guard bits >= 1, bits <= 32, bits == bits.rounded() else {
        throw BNNError.invalidParameter(
          owner: owner, parameter: "precision", reason: "must be a whole number in 1...32, got \(bits)")
      }
      return NoOpQuantizer(precision: Int(bits))
    case .hardTanh:
      _ = try take([:])
      return HardTanh()
    }
  }
}
