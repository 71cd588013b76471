/// Flip's own seeded random generator: SplitMix64 (Steele, Lea, Flood 2014).
///
/// Results must not depend on the standard library's unspecified algorithms, so shuffles,
/// initializers and dropout masks all draw from this generator with Flip's own mapping from
/// bits to numbers. Its whole state is one `UInt64`, so it can be saved and restored exactly.
public struct SplitMix64: RandomNumberGenerator, Sendable, Equatable {
  public var state: UInt64

  public init(seed: UInt64) { state = seed }

  /// A generator for a sub-stream (e.g. `(seed, epoch)`): mixes the parts into one seed.
  public init(seed: UInt64, stream: UInt64) {
    var g = SplitMix64(seed: seed ^ 0x5851_F42D_4C95_7F2D)
    let a = g.next()
    state = a ^ (stream &* 0x9E37_79B9_7F4A_7C15)
    _ = next()
  }

  @inlinable
  public mutating func next() -> UInt64 {
    state &+= 0x9E37_79B9_7F4A_7C15
    var z = state
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
  }

  /// A uniform `Float` in [0, 1) from the top 24 bits.
  @inlinable
  public mutating func nextUnitFloat() -> Float {
    Float(next() >> 40) * (1.0 / 16_777_216.0)
  }

  /// A uniform integer in `0..<bound` without modulo bias (Lemire's method).
  @inlinable
  public mutating func nextInt(below bound: Int) -> Int {
    precondition(bound > 0)
    let b = UInt64(bound)
    var product = next().multipliedFullWidth(by: b)
    if product.low < b {
      let threshold = (0 &- b) % b
      while product.low < threshold { product = next().multipliedFullWidth(by: b) }
    }
    return Int(product.high)
  }

  /// Fisher–Yates shuffle of `values` in place, with this generator's own index draws.
  public mutating func shuffle<T>(_ values: inout [T]) {
    if values.count < 2 { return }
    for i in stride(from: values.count - 1, to: 0, by: -1) {
      let j = nextInt(below: i + 1)
      if i != j { values.swapAt(i, j) }
    }
  }
}
