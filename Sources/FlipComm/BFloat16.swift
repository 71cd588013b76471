// Legend: N elements.

/// fp32 → bfloat16 (the upper 16 bits), rounded to nearest, ties to even; NaN stays NaN.
@inline(__always)
func bfloat16Bits(_ x: Float) -> UInt16 {
  let bits = x.bitPattern
  if x.isNaN { return UInt16(truncatingIfNeeded: bits >> 16) | 0x0040 }
  return UInt16(truncatingIfNeeded: (bits &+ 0x7FFF &+ ((bits >> 16) & 1)) >> 16)
}

/// bfloat16 → fp32 (exact).
@inline(__always)
func float(fromBFloat16 bits: UInt16) -> Float { Float(bitPattern: UInt32(bits) << 16) }

/// `y[i] = bfloat16(x[i])` for N elements, 16 lanes at a time.
public func encodeBFloat16(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<UInt16>, count: Int) {
  let vectorEnd = count & ~15
  let half = SIMD16<UInt32>(repeating: 0x7FFF)
  let one = SIMD16<UInt32>(repeating: 1)
  var i = 0
  while i < vectorEnd {
    let bits = UnsafeRawPointer(x + i).loadUnaligned(as: SIMD16<UInt32>.self)
    let xv = UnsafeRawPointer(x + i).loadUnaligned(as: SIMD16<Float>.self)
    var rounded = (bits &+ half &+ ((bits &>> 16) & one)) &>> 16
    // NaN (x != x) keeps a quiet NaN's payload bit rather than rounding up to infinity.
    rounded.replace(with: (bits &>> 16) | SIMD16<UInt32>(repeating: 0x0040), where: xv .!= xv)
    UnsafeMutableRawPointer(y + i).storeBytes(of: SIMD16<UInt16>(truncatingIfNeeded: rounded), as: SIMD16<UInt16>.self)
    i += 16
  }
  while i < count {
    y[i] = bfloat16Bits(x[i])
    i += 1
  }
}

/// Rounds N floats to the nearest bfloat16 in place (what a value becomes on the bf16 wire).
public func roundToBFloat16(_ x: UnsafeMutablePointer<Float>, count: Int) {
  for i in 0..<count { x[i] = float(fromBFloat16: bfloat16Bits(x[i])) }
}
