import FlipBNN

// Legend: P a part (a contiguous range of the flat variables, one rank's share of a bucket),
// W 32-bit words.

/// The compact wire's encoding of the variables a rank sends after its update.
///
/// A part is cut where the binary kernels that may travel as signs begin and end
/// (`Model.signKernels`). Such a segment travels as its signs, 32 per word (bit `j` of
/// word `k` is element `32k + j` of the segment; set where `x ≥ 0` fails, so `sign(0) = +1` as
/// the quantizer has it) and is decoded as `±c`, the kernel's sign magnitude, which trains exactly
/// as the latent weights do on a rank that does not update them. Every other element travels as
/// its fp32 bit pattern. Each segment starts a new word.
struct CompactCodec {
  struct Segment: Equatable {
    var range: Range<Int>
    /// The magnitude the signs stand for; nil for an fp32 segment.
    var magnitude: Float?
    /// Words of this segment on the wire.
    var words: Int { magnitude == nil ? range.count : (range.count + 31) / 32 }
  }

  /// The sign kernels' ranges of the flat buffer, by offset, with their magnitudes.
  let signRanges: [(range: Range<Int>, magnitude: Float)]

  init(views: [ParameterView], signKernels: [(view: Int, magnitude: Float)]) {
    signRanges = signKernels.map { k in
      let v = views[k.view]
      return (v.offset..<(v.offset + v.count), k.magnitude)
    }.sorted { $0.range.lowerBound < $1.range.lowerBound }
  }

  /// `part` cut into sign and fp32 segments, in order.
  func segments(of part: Range<Int>) -> [Segment] {
    var out: [Segment] = []
    var at = part.lowerBound
    for s in signRanges where s.range.overlaps(part) {
      let lo = max(s.range.lowerBound, part.lowerBound)
      let hi = min(s.range.upperBound, part.upperBound)
      if at < lo { out.append(Segment(range: at..<lo, magnitude: nil)) }
      out.append(Segment(range: lo..<hi, magnitude: s.magnitude))
      at = hi
    }
    if at < part.upperBound { out.append(Segment(range: at..<part.upperBound, magnitude: nil)) }
    return out
  }

  /// Words of `segments` on the wire.
  static func words(_ segments: [Segment]) -> Int { segments.reduce(0) { $0 + $1.words } }

  /// Writes the segments of `values` into `words` (`Self.words(segments)` of them).
  static func encode(_ values: UnsafePointer<Float>, _ segments: [Segment], into words: UnsafeMutablePointer<UInt32>) {
    var w = words
    for s in segments {
      let x = values + s.range.lowerBound
      let n = s.range.count
      if s.magnitude == nil {
        UnsafeMutableRawPointer(w).copyMemory(from: x, byteCount: n * 4)
        w += n
        continue
      }
      let zero = SIMD16<Float>(repeating: 0)
      let none = SIMD16<UInt32>(repeating: 0)
      let low = SIMD16<UInt32>((0..<16).map { UInt32(1) << UInt32($0) })
      let high = low &<< 16
      var k = 0
      while (k + 1) * 32 <= n {
        let a = UnsafeRawPointer(x + 32 * k).loadUnaligned(as: SIMD16<Float>.self)
        let b = UnsafeRawPointer(x + 32 * k + 16).loadUnaligned(as: SIMD16<Float>.self)
        // Distinct powers of two: their sum is their OR.
        w[k] = none.replacing(with: low, where: .!(a .>= zero)).wrappedSum()
          | none.replacing(with: high, where: .!(b .>= zero)).wrappedSum()
        k += 1
      }
      if k * 32 < n {
        var word: UInt32 = 0
        for j in 0..<(n - 32 * k) where !(x[32 * k + j] >= 0) { word |= 1 << UInt32(j) }
        w[k] = word
        k += 1
      }
      w += k
    }
  }

  /// Writes the values that `encode` wrote for `segments` from `words` (signs as `±magnitude`).
  static func decode(_ words: UnsafePointer<UInt32>, _ segments: [Segment], into values: UnsafeMutablePointer<Float>) {
    var w = words
    for s in segments {
      let y = values + s.range.lowerBound
      let n = s.range.count
      guard let c = s.magnitude else {
        UnsafeMutableRawPointer(y).copyMemory(from: w, byteCount: n * 4)
        w += n
        continue
      }
      let positive = SIMD16<Float>(repeating: c)
      let lanes = SIMD16<UInt32>((0..<16).map { UInt32(1) << UInt32($0) })
      let none = SIMD16<UInt32>(repeating: 0)
      var k = 0
      while (k + 1) * 32 <= n {
        let word = w[k]
        let a = SIMD16<UInt32>(repeating: word) & lanes
        let b = SIMD16<UInt32>(repeating: word >> 16) & lanes
        UnsafeMutableRawPointer(y + 32 * k).storeBytes(
          of: positive.replacing(with: -positive, where: a .!= none), as: SIMD16<Float>.self)
        UnsafeMutableRawPointer(y + 32 * k + 16).storeBytes(
          of: positive.replacing(with: -positive, where: b .!= none), as: SIMD16<Float>.self)
        k += 1
      }
      if k * 32 < n {
        for j in 0..<(n - 32 * k) { y[32 * k + j] = w[k] & (1 << UInt32(j)) != 0 ? -c : c }
        k += 1
      }
      w += k
    }
  }
}
