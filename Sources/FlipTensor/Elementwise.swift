// Small vectorized passes over float arrays that the training step runs on whole kernels
// every step (so they cost the same on every rank, whatever the number of ranks).
// Explicit SIMD16: each is one AVX-512 register per iteration, with no bounds checks.

/// The number of positions where `a` and `b` differ (`a[i] != b[i]`, so a NaN counts).
public func countDifferences(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, count: Int) -> Int {
  let vectorEnd = count & ~15
  var lanes = SIMD16<Int32>(repeating: 0)
  let one = SIMD16<Int32>(repeating: 1)
  let zero = SIMD16<Int32>(repeating: 0)
  var i = 0
  while i < vectorEnd {
    let av = UnsafeRawPointer(a + i).loadUnaligned(as: SIMD16<Float>.self)
    let bv = UnsafeRawPointer(b + i).loadUnaligned(as: SIMD16<Float>.self)
    lanes &+= zero.replacing(with: one, where: av .!= bv)
    i += 16
  }
  var n = Int(lanes.wrappedSum())
  while i < count {
    if a[i] != b[i] { n += 1 }
    i += 1
  }
  return n
}

/// Whether `|x[i]| ≤ bound` for every i (false when any x[i] is NaN).
public func allMagnitudes(_ x: UnsafePointer<Float>, count: Int, atMost bound: Float) -> Bool {
  let vectorEnd = count & ~15
  let limit = SIMD16<Float>(repeating: bound)
  var i = 0
  while i < vectorEnd {
    let xv = UnsafeRawPointer(x + i).loadUnaligned(as: SIMD16<Float>.self)
    // -bound ≤ x ≤ bound; NaN fails both comparisons.
    if !all((xv .<= limit) .& (xv .>= -limit)) { return false }
    i += 16
  }
  while i < count {
    if !(abs(x[i]) <= bound) { return false }
    i += 1
  }
  return true
}

/// `d[i] = lower < x[i] ≤ upper ? dy[i] : 0` (branch-free, 16 lanes at a time): the gradient of
/// ReLU (`lower` 0, `upper` ∞, from its input or output) and of a clip's pass-through.
/// `lowerInclusive` makes the lower bound `lower ≤ x[i]` (hard tanh's [−1, 1]).
public func maskedGradient(
  _ x: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, _ d: UnsafeMutablePointer<Float>, count: Int,
  lower: Float, upper: Float = .infinity, lowerInclusive: Bool = false
) {
  let vectorEnd = count & ~15
  let (lo, hi, zero) = (SIMD16<Float>(repeating: lower), SIMD16<Float>(repeating: upper), SIMD16<Float>())
  var i = 0
  while i < vectorEnd {
    let xv = UnsafeRawPointer(x + i).loadUnaligned(as: SIMD16<Float>.self)
    let g = UnsafeRawPointer(dy + i).loadUnaligned(as: SIMD16<Float>.self)
    let inside = (lowerInclusive ? xv .>= lo : xv .> lo) .& (xv .<= hi)
    UnsafeMutableRawPointer(d + i).storeBytes(of: zero.replacing(with: g, where: inside), as: SIMD16<Float>.self)
    i += 16
  }
  while i < count {
    let inside = (lowerInclusive ? x[i] >= lower : x[i] > lower) && x[i] <= upper
    d[i] = inside ? dy[i] : 0
    i += 1
  }
}

/// `out[i] = a[i] + b[i]` (or `a[i]` without `b`) for `count` elements, 16 lanes at a time.
@inlinable
public func addVectors(
  _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>?, into out: UnsafeMutablePointer<Float>, count: Int
) {
  guard let b else { return out.update(from: a, count: count) }
  var i = 0
  while i + 16 <= count {
    let sum =
      UnsafeRawPointer(a + i).loadUnaligned(as: SIMD16<Float>.self)
      + UnsafeRawPointer(b + i).loadUnaligned(as: SIMD16<Float>.self)
    UnsafeMutableRawPointer(out + i).storeBytes(of: sum, as: SIMD16<Float>.self)
    i += 16
  }
  while i < count {
    out[i] = a[i] + b[i]
    i += 1
  }
}
