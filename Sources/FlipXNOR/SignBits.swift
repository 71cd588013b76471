// Legend: R rows of the product (batch), L reduction length (input units), N outputs (units),
// W words per packed row: L rounded up to 256 bits, in 64-bit words.

// This module is compiled for Haswell (AVX2, POPCNT) on x86_64 (see Package.swift): LLVM turns
// the popcounts below into AVX2 nibble lookups (vpshufb, vpsadbw). Nothing here may run before
// `XNORProduct.isAvailable` (FlipTensor) has checked the CPU; FlipTensor is its only caller.

/// The sign bits of ±1 matrices, 64 per word, and their XNOR–popcount product.
///
/// For a, b ∈ {−1, +1}ᴸ with bit 1 for −1: a·b = L − 2·popcount(bits(a) ⊕ bits(b)), an integer,
/// so the product equals an fp32 or int8 GEMM of the same ±1 values bit for bit. Rows are
/// padded with zero bits to a multiple of 256 (zero in both operands: no contribution).
public enum SignBits {
  /// Writes the packed sign bits of rows `rows` of `x` (R, L) into `into` (R, W): bit j of word
  /// k of row r is the sign bit of `x[r, 64k + j]`; padding bits are 0.
  @inline(never)
  public static func packRows(
    _ x: UnsafePointer<Float>, length: Int, words: Int, rows: Range<Int>, into: UnsafeMutablePointer<UInt64>
  ) {
    let full = length / 64
    for r in rows {
      let source = x + r * length
      let row = into + r * words
      for k in 0..<full { row[k] = pack(source + 64 * k, count: 64) }
      var k = full
      if length % 64 != 0 {
        row[k] = pack(source + 64 * full, count: length - 64 * full)
        k += 1
      }
      while k < words {
        row[k] = 0
        k += 1
      }
    }
  }

  /// The sign bits of `count` (at most 64) values, bit j for `x[j]`.
  @inline(__always)
  static func pack(_ x: UnsafePointer<Float>, count: Int) -> UInt64 {
    var word: UInt64 = 0
    for j in 0..<count { word |= UInt64(x[j].bitPattern >> 31) << UInt64(j) }
    return word
  }

  /// Writes the packed sign bits of the columns of `w` (L, N) (Keras's kernel layout) into
  /// `into` (N, W), for the 64-row blocks `blocks` of `w`: word k of column n holds rows
  /// 64k ..< 64k + 64. `scratch` holds N words. Padding words are left as they are (zero them
  /// once).
  @inline(never)
  public static func packColumns(
    _ w: UnsafePointer<Float>, length: Int, columns: Int, words: Int, blocks: Range<Int>,
    into: UnsafeMutablePointer<UInt64>, scratch: UnsafeMutablePointer<UInt64>
  ) {
    for block in blocks {
      scratch.update(repeating: 0, count: columns)
      let first = 64 * block
      for j in 0..<min(64, length - first) {
        let row = w + (first + j) * columns
        let shift = UInt64(j)
        for n in 0..<columns { scratch[n] |= UInt64(row[n].bitPattern >> 31) << shift }
      }
      for n in 0..<columns { into[n * words + block] = scratch[n] }
    }
  }

  /// `y[r, n] = L − 2·popcount(a[r] ⊕ b[n]) (+ bias[n])` for `r` in `rows`: a (R, W), b (N, W)
  /// packed as above, y (R, N).
  @inline(never)
  public static func product(
    _ a: UnsafePointer<UInt64>, _ b: UnsafePointer<UInt64>, length: Int, words: Int, rows: Range<Int>,
    outputs: Int, bias: UnsafePointer<Float>?, into y: UnsafeMutablePointer<Float>
  ) {
    precondition(words % 4 == 0, "SignBits.product: rows must be padded to 4 words")
    let vectors = words / 4
    let stride = words * 8
    let l = Int32(length)
    @inline(__always) func value(_ count: SIMD4<UInt64>, _ n: Int) -> Float {
      let dot = Float(l - 2 * Int32(truncatingIfNeeded: count.wrappedSum()))
      return bias.map { dot + $0[n] } ?? dot
    }
    // Tiles of 2 rows × 2 outputs: each loaded vector serves two products.
    var r = rows.lowerBound
    while r < rows.upperBound {
      let pair = r + 1 < rows.upperBound
      let a0 = UnsafeRawPointer(a + r * words)
      let a1 = pair ? UnsafeRawPointer(a + (r + 1) * words) : a0
      let y0 = y + r * outputs
      let y1 = y + (pair ? r + 1 : r) * outputs
      var n = 0
      while n < outputs {
        let both = n + 1 < outputs
        let b0 = UnsafeRawPointer(b) + n * stride
        let b1 = both ? b0 + stride : b0
        var c00 = SIMD4<UInt64>()
        var c01 = SIMD4<UInt64>()
        var c10 = SIMD4<UInt64>()
        var c11 = SIMD4<UInt64>()
        for v in 0..<vectors {
          let offset = 32 * v
          let x0 = a0.loadUnaligned(fromByteOffset: offset, as: SIMD4<UInt64>.self)
          let x1 = a1.loadUnaligned(fromByteOffset: offset, as: SIMD4<UInt64>.self)
          let w0 = b0.loadUnaligned(fromByteOffset: offset, as: SIMD4<UInt64>.self)
          let w1 = b1.loadUnaligned(fromByteOffset: offset, as: SIMD4<UInt64>.self)
          c00 &+= (x0 ^ w0).nonzeroBitCount
          c01 &+= (x0 ^ w1).nonzeroBitCount
          c10 &+= (x1 ^ w0).nonzeroBitCount
          c11 &+= (x1 ^ w1).nonzeroBitCount
        }
        y0[n] = value(c00, n)
        if both { y0[n + 1] = value(c01, n + 1) }
        if pair {
          y1[n] = value(c10, n)
          if both { y1[n + 1] = value(c11, n + 1) }
        }
        n += 2
      }
      r += 2
    }
  }
}
