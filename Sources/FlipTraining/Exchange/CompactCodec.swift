import FlipBNN

// Legend: P a part (a contiguous range of the flat variables, one rank's share of a bucket),
// W 32-bit words.

/// The compact wire's encoding of the variables a rank sends after its update.
///
/// A part is cut where the binary kernels that may travel as signs begin and end
/// (`Model.signKernels`). Such a segment travels as its signs, 32 per word (bit `j` of
/// word `k` is element `32k + j` of the segment; set where `x ≥ 0` fails, so `sign(0) = +1` as
/// the quantizer has it). An `ste_sign` kernel's signs are decoded as `±c`, the clip of its
/// constraint. A `magnitude_aware_sign` kernel's signs are followed by the sender's sums of `|w|`
/// over its segment per output channel (C float64s, 2 words each); receivers add every rank's
/// sums in rank order to the channel's mean `m` and decode `±m`. Either trains exactly as the
/// latent weights do on a rank that does not update them. Every other element travels as its
/// fp32 bit pattern. Each segment starts a new word.
struct CompactCodec {
  enum Encoding: Equatable {
    case fp32
    /// Signs decoded as `±magnitude`.
    case sign(magnitude: Float)
    /// Signs and per-channel sums of kernel `kernel` (an index of `channelKernels`), which
    /// starts at `offset` of the flat buffer and has `channels` output channels.
    case channelSign(kernel: Int, offset: Int, channels: Int)
  }

  struct Segment: Equatable {
    var range: Range<Int>
    var encoding: Encoding
    /// Words of the signs (or of the fp32 values).
    var valueWords: Int {
      if case .fp32 = encoding { return range.count }
      return (range.count + 31) / 32
    }
    /// Words of this segment on the wire.
    var words: Int {
      if case .channelSign(_, _, let channels) = encoding { return valueWords + 2 * channels }
      return valueWords
    }
  }

  /// The sign kernels' ranges of the flat buffer, by offset, with their encodings.
  let signRanges: [(range: Range<Int>, encoding: Encoding)]
  /// The `magnitude_aware_sign` kernels: range, output channels, and the quantizer whose
  /// `scaleOverride` the decoded means become.
  let channelKernels: [(range: Range<Int>, channels: Int, quantizer: MagnitudeAwareSign)]

  init(views: [ParameterView], signKernels: [SignKernel]) {
    var ranges: [(range: Range<Int>, encoding: Encoding)] = []
    var channelKernels: [(range: Range<Int>, channels: Int, quantizer: MagnitudeAwareSign)] = []
    for k in signKernels.sorted(by: { views[$0.view].offset < views[$1.view].offset }) {
      let v = views[k.view]
      let range = v.offset..<(v.offset + v.count)
      switch k.encoding {
      case .magnitude(let c): ranges.append((range, .sign(magnitude: c)))
      case .channelMean(let channels, let quantizer):
        ranges.append((range, .channelSign(kernel: channelKernels.count, offset: v.offset, channels: channels)))
        channelKernels.append((range, channels, quantizer))
      }
    }
    (signRanges, self.channelKernels) = (ranges, channelKernels)
  }

  /// `part` cut into sign and fp32 segments, in order.
  func segments(of part: Range<Int>) -> [Segment] {
    var out: [Segment] = []
    var at = part.lowerBound
    for s in signRanges where s.range.overlaps(part) {
      let lo = max(s.range.lowerBound, part.lowerBound)
      let hi = min(s.range.upperBound, part.upperBound)
      if at < lo { out.append(Segment(range: at..<lo, encoding: .fp32)) }
      out.append(Segment(range: lo..<hi, encoding: s.encoding))
      at = hi
    }
    if at < part.upperBound { out.append(Segment(range: at..<part.upperBound, encoding: .fp32)) }
    return out
  }

  /// Words of `segments` on the wire.
  static func words(_ segments: [Segment]) -> Int { segments.reduce(0) { $0 + $1.words } }

  /// Writes the sum of `|x|` of the segment's elements per output channel (`channels` of them,
  /// the kernel's last axis; the kernel starts at `offset`) as `channels` Float64s at `sums`,
  /// which need not be 8-byte aligned: one pass in index order, adding into the words.
  private static func writeChannelSums(
    _ values: UnsafePointer<Float>, _ range: Range<Int>, offset: Int, channels: Int, to sums: UnsafeMutableRawPointer
  ) {
    for c in 0..<channels { sums.storeBytes(of: 0.0, toByteOffset: 8 * c, as: Double.self) }
    var c = (range.lowerBound - offset) % channels
    for i in range {
      let sum = sums.loadUnaligned(fromByteOffset: 8 * c, as: Double.self) + Double(abs(values[i]))
      sums.storeBytes(of: sum, toByteOffset: 8 * c, as: Double.self)
      c += 1
      if c == channels { c = 0 }
    }
  }

  /// Writes the segments of `values` into `words` (`Self.words(segments)` of them); with
  /// `channelSums` false, the per-channel sums' words are left as they are.
  static func encode(
    _ values: UnsafePointer<Float>, _ segments: [Segment], into words: UnsafeMutablePointer<UInt32>,
    channelSums: Bool = true
  ) {
    var w = words
    for s in segments {
      let x = values + s.range.lowerBound
      switch s.encoding {
      case .fp32:
        UnsafeMutableRawPointer(w).copyMemory(from: x, byteCount: s.range.count * 4)
      case .sign:
        encodeSigns(x, count: s.range.count, into: w)
      case .channelSign(_, let offset, let channels):
        encodeSigns(x, count: s.range.count, into: w)
        if channelSums {
          writeChannelSums(
            values, s.range, offset: offset, channels: channels, to: UnsafeMutableRawPointer(w + s.valueWords))
        }
      }
      w += s.words
    }
  }

  /// Writes the signs of `count` values, 32 per word (bit set: not `x ≥ 0`).
  private static func encodeSigns(_ x: UnsafePointer<Float>, count n: Int, into w: UnsafeMutablePointer<UInt32>) {
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
    }
  }

  /// Writes the values that `encode` wrote for `segments` from `words`: signs as `±magnitude`,
  /// or as `±scales[kernel][channel]` for a channel-mean kernel.
  static func decode(
    _ words: UnsafePointer<UInt32>, _ segments: [Segment], into values: UnsafeMutablePointer<Float>,
    scales: [[Float]] = []
  ) {
    var w = words
    for s in segments {
      let y = values + s.range.lowerBound
      let n = s.range.count
      switch s.encoding {
      case .fp32:
        UnsafeMutableRawPointer(y).copyMemory(from: w, byteCount: n * 4)
      case .sign(let c):
        decodeSigns(w, count: n, magnitude: c, into: y)
      case .channelSign(let kernel, let offset, let channels):
        scales[kernel].withUnsafeBufferPointer { m in
          var c = (s.range.lowerBound - offset) % channels
          for i in 0..<n {
            y[i] = w[i / 32] & (1 << UInt32(i % 32)) != 0 ? -m[c] : m[c]
            c += 1
            if c == channels { c = 0 }
          }
        }
      }
      w += s.words
    }
  }

  /// `count` values `±c` from sign bits (set: negative).
  private static func decodeSigns(_ w: UnsafePointer<UInt32>, count n: Int, magnitude c: Float, into y: UnsafeMutablePointer<Float>) {
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
    }
  }

  /// Adds channel-mean kernel `kernel`'s per-channel sums of `|w|` from every rank's encoded
  /// parts to `totals`, in rank order (`parts[r]`: the segments rank `r` sent, at
  /// `words + offsets[r]`). `totals[c] / rows` is then channel `c`'s mean over the whole kernel.
  func addChannelTotals(
    kernel: Int, parts: [[Segment]], words: UnsafePointer<UInt32>, offsets: [Int], into totals: inout [Double]
  ) {
    for (r, segments) in parts.enumerated() {
      var w = words + offsets[r]
      for s in segments {
        if case .channelSign(let k, _, let channels) = s.encoding, k == kernel {
          let sums = UnsafeRawPointer(w + s.valueWords)
          for c in 0..<channels { totals[c] += sums.loadUnaligned(fromByteOffset: 8 * c, as: Double.self) }
        }
        w += s.words
      }
    }
  }
}
