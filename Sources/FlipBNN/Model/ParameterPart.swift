import FlipTensor

/// The part of a parameter store an update covers: all of it, or the ranges of the flat buffer
/// that one rank owns in the sharded (ZeRO-1) step, one bucket at a time. The exchange hands
/// each optimizer the part it owns; an optimizer only walks the part's elements of each view.
public struct ParameterPart: Sendable, Equatable {
  /// Ranges of the flat buffer (nil: every element).
  public let ranges: [Range<Int>]?

  /// Every element of the store.
  public static let whole = ParameterPart(ranges: nil)

  public init(_ ranges: [Range<Int>]) { self.ranges = ranges }
  init(ranges: [Range<Int>]?) { self.ranges = ranges }

  /// Calls `body` with chunks (split over `compute`'s threads) of the view's own element
  /// indices that lie in the part.
  @inlinable
  public func forEachChunk(of view: ParameterView, compute: Compute, _ body: (Range<Int>) -> Void) {
    guard let ranges else {
      if view.count > 0 { compute.forEach(count: view.count) { r in body(r) } }
      return
    }
    for range in ranges {
      let lo = max(0, range.lowerBound - view.offset)
      let hi = min(view.count, range.upperBound - view.offset)
      guard lo < hi else { continue }
      compute.forEach(count: hi - lo) { r in body((r.lowerBound + lo)..<(r.upperBound + lo)) }
    }
  }
}
