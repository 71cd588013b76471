// Legend: N elements, n contributions.

/// The order in which Flip adds the contributions of n ranks (or of a rank's n micro-steps):
/// a binary tree whose left subtree holds the first `leftCount(n)` contributions, the largest
/// power of two below n, each subtree built the same way. For n = 4: (c₀ + c₁) + (c₂ + c₃).
///
/// Float addition is commutative but not associative, so the tree's shape fixes the bits. This
/// one splits at powers of two, so when every one of R ranks first adds its K (a power of two)
/// micro-steps, and the ranks' sums are then added, the result is the tree over all R·K
/// micro-steps: R ranks of K micro-steps give the same bits as one rank of R·K.
public enum ContributionTree {
  /// The number of contributions in the left subtree of a tree over `n` > 1: the largest power
  /// of two below `n`.
  @inlinable public static func leftCount(_ n: Int) -> Int {
    precondition(n > 1, "a tree over \(n) contributions has no split")
    return 1 << (Int.bitWidth - 1 - (n - 1).leadingZeroBitCount)
  }

  /// Elements summed per block (on the stack, so the output may be one of the contributions).
  static let blockLength = 1024

  /// `into[i] = tree sum over r of sources[r][i]` for N elements; `into` may be one of the
  /// sources.
  public static func sum(_ sources: [UnsafePointer<Float>], into: UnsafeMutablePointer<Float>, count: Int) {
    sum(contributions: sources.count, into: into, count: count) { r, start, length, out, accumulate in
      let p = sources[r] + start
      if accumulate { add(UnsafePointer(p), into: out, count: length) } else { out.update(from: p, count: length) }
    }
  }

  /// The same with bfloat16 contributions, each widened to fp32 (exact) before it is added.
  static func sum(bfloat16 sources: [UnsafePointer<UInt16>], into: UnsafeMutablePointer<Float>, count: Int) {
    sum(contributions: sources.count, into: into, count: count) { r, start, length, out, accumulate in
      let p = sources[r] + start
      var i = 0
      while i + 16 <= length {
        let h = SIMD16<UInt32>(truncatingIfNeeded: UnsafeRawPointer(p + i).loadUnaligned(as: SIMD16<UInt16>.self))
        let v = unsafeBitCast(h &<< 16, to: SIMD16<Float>.self)
        let o = UnsafeMutableRawPointer(out + i)
        o.storeBytes(of: accumulate ? o.loadUnaligned(as: SIMD16<Float>.self) + v : v, as: SIMD16<Float>.self)
        i += 16
      }
      while i < length {
        let v = float(fromBFloat16: p[i])
        out[i] = accumulate ? out[i] + v : v
        i += 1
      }
    }
  }

  /// The tree sum of scalar contributions `value(0) ..< value(n)` (the in-process
  /// communicator's reductions, of floats or doubles).
  public static func sum<T: FloatingPoint>(contributions n: Int, _ value: (Int) -> T) -> T {
    func tree(_ first: Int, _ n: Int) -> T {
      if n == 1 { return value(first) }
      let left = leftCount(n)
      return tree(first, left) + tree(first + left, n - left)
    }
    return tree(0, n)
  }

  /// Block by block: `leaf(r, start, length, out, accumulate)` writes (or, accumulating, adds)
  /// contribution r's elements `start ..< start + length` to `out`.
  static func sum(
    contributions n: Int, into: UnsafeMutablePointer<Float>, count: Int,
    leaf: (Int, Int, Int, UnsafeMutablePointer<Float>, Bool) -> Void
  ) {
    guard n > 0, count > 0 else { return }
    // Sums contributions first ..< first + n of the block into `out`.
    func tree(_ first: Int, _ n: Int, _ start: Int, _ length: Int, _ out: UnsafeMutablePointer<Float>) {
      if n == 1 { return leaf(first, start, length, out, false) }
      let left = leftCount(n)
      tree(first, left, start, length, out)
      if n - left == 1 { return leaf(first + left, start, length, out, true) }
      withUnsafeTemporaryAllocation(of: Float.self, capacity: length) { right in
        tree(first + left, n - left, start, length, right.baseAddress!)
        add(UnsafePointer(right.baseAddress!), into: out, count: length)
      }
    }
    withUnsafeTemporaryAllocation(of: Float.self, capacity: min(blockLength, count)) { block in
      var start = 0
      while start < count {
        let length = min(blockLength, count - start)
        tree(0, n, start, length, block.baseAddress!)
        (into + start).update(from: block.baseAddress!, count: length)
        start += length
      }
    }
  }

  /// `out[i] += x[i]` for `count` elements, 16 lanes at a time: the addition of one subtree's
  /// sum to another's.
  @inline(__always)
  public static func add(_ x: UnsafePointer<Float>, into out: UnsafeMutablePointer<Float>, count: Int) {
    var i = 0
    while i + 16 <= count {
      let o = UnsafeMutableRawPointer(out + i)
      o.storeBytes(
        of: o.loadUnaligned(as: SIMD16<Float>.self) + UnsafeRawPointer(x + i).loadUnaligned(as: SIMD16<Float>.self),
        as: SIMD16<Float>.self)
      i += 16
    }
    while i < count {
      out[i] += x[i]
      i += 1
    }
  }
}
