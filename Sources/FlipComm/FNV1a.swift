/// FNV-1a (64-bit): the fingerprint ranks compare (settings, replicas, host names) and model
/// files' first checksum. Fast and order-sensitive; not a cryptographic hash.
public enum FNV1a {
  public static let offsetBasis: UInt64 = 0xCBF2_9CE4_8422_2325
  public static let prime: UInt64 = 0x0000_0100_0000_01B3

  /// `h` with one more byte or word mixed in.
  @inline(__always)
  public static func mix(_ h: UInt64, _ value: UInt64) -> UInt64 { (h ^ value) &* prime }

  /// The hash of `bytes`, continuing from `seed`.
  public static func hash<S: Sequence>(_ bytes: S, seed: UInt64 = offsetBasis) -> UInt64 where S.Element == UInt8 {
    var h = seed
    for b in bytes { h = mix(h, UInt64(b)) }
    return h
  }

  /// The hash of `count` floats taken as 64-bit words (an odd last float as its 32 bits),
  /// continuing from `seed`.
  public static func hash(floats p: UnsafePointer<Float>, count: Int, seed: UInt64 = offsetBasis) -> UInt64 {
    var h = seed
    let words = count / 2
    p.withMemoryRebound(to: UInt64.self, capacity: max(words, 1)) { w in
      for i in 0..<words { h = mix(h, w[i]) }
    }
    if count % 2 == 1 { h = mix(h, UInt64(p[count - 1].bitPattern)) }
    return h
  }
}
