import FlipBNN
import FlipComm
import FlipTensor

/// The sharded (ZeRO-1) step's split of the flat buffers: every bucket's range cut into one
/// nearly equal contiguous part per rank, rank r owning part r of each. Reduce-scatters and
/// all-gathers then work bucket by bucket, so the reductions can start during backward.
public struct ShardLayout: Sendable, Equatable {
  public let buckets: [GradientBucket]
  /// Per bucket, the elements of each rank's part.
  public let counts: [[Int]]
  /// This rank's parts, as ranges of the flat buffer.
  public let mine: [Range<Int>]

  public init(buckets: [GradientBucket], ranks: Int, rank: Int) {
    self.buckets = buckets
    var counts: [[Int]] = []
    var mine: [Range<Int>] = []
    for b in buckets {
      let n = b.range.count
      let c = (0..<ranks).map { r in n / ranks + (r < n % ranks ? 1 : 0) }
      let start = b.range.lowerBound + c[..<rank].reduce(0, +)
      counts.append(c)
      mine.append(start..<(start + c[rank]))
    }
    self.counts = counts
    self.mine = mine
  }

  /// Every rank's part of bucket `b`, in rank order.
  public func parts(of b: Int) -> [Range<Int>] {
    var start = buckets[b].range.lowerBound
    return counts[b].map { c in
      defer { start += c }
      return start..<(start + c)
    }
  }

  /// Copies every rank's parts of `buffer` to every rank (bucket by bucket, in place).
  public func allgather(_ buffer: FloatBuffer, communicator: Communicator) throws {
    for (b, c) in zip(buckets, counts) {
      try communicator.allgather(buffer.pointer + b.range.lowerBound, counts: c)
    }
  }
}

/// A contiguous range of the gradient buffer that is all-reduced as one message.
public struct GradientBucket: Equatable, Sendable {
  /// Elements of the gradient buffer.
  public var range: Range<Int>
  /// The lowest layer whose gradients it holds: it is ready once backward has passed it.
  public var firstLayer: Int
  /// A block of rows of `firstLayer`'s kernel (`KernelSplit`): ready as soon as backward has
  /// reported this many of the kernel's rows final, or has passed the layer.
  public var readyAfterRows: Int?

  public init(range: Range<Int>, firstLayer: Int, readyAfterRows: Int? = nil) {
    self.range = range
    self.firstLayer = firstLayer
    self.readyAfterRows = readyAfterRows
  }

  /// A kernel whose gradient backward computes in row blocks (`QuantDense.kernelGradientRowBlocks`):
  /// its view's index in the store, and the blocks' rows (of `rowLength` elements).
  struct KernelSplit {
    var view: Int
    var blocks: Int
    var rowLength: Int

    /// The blocks as ranges of rows, as `QuantDense` computes them.
    func rowRanges(rows: Int) -> [Range<Int>] {
      (0..<min(blocks, rows)).map { QuantDense.kernelGradientRows(block: $0, of: blocks, rows: rows) }
    }
  }

  /// Groups the views from the last layer down (the order backward finishes them) into
  /// buckets of at least `capBytes` where possible; a view is never split, except `split`,
  /// which becomes a bucket per row block (the buckets being filled when backward reaches it
  /// follow its blocks if they hold some of its layer's gradients, else precede them).
  static func plan(views: [ParameterView], capBytes: Int, split: KernelSplit? = nil) -> [GradientBucket] {
    var buckets: [GradientBucket] = []
    var current: GradientBucket?
    for (index, v) in views.enumerated().reversed() {
      let r = v.offset..<(v.offset + v.count)
      if let split, index == split.view {
        let blocks = split.rowRanges(rows: v.count / split.rowLength).map { rows in
          GradientBucket(
            range: (v.offset + rows.lowerBound * split.rowLength)..<(v.offset + rows.upperBound * split.rowLength),
            firstLayer: v.layerIndex, readyAfterRows: rows.upperBound)
        }
        if let c = current, c.firstLayer > v.layerIndex {
          buckets.append(c)
          buckets += blocks
        } else {
          buckets += blocks
          if let c = current { buckets.append(c) }
        }
        current = nil
        continue
      }
      if var c = current {
        c.range = r.lowerBound..<c.range.upperBound
        c.firstLayer = min(c.firstLayer, v.layerIndex)
        current = c
      } else {
        current = GradientBucket(range: r, firstLayer: v.layerIndex)
      }
      if let c = current, c.range.count * MemoryLayout<Float>.stride >= max(capBytes, 1) {
        buckets.append(c)
        current = nil
      }
    }
    if let c = current { buckets.append(c) }
    return buckets
  }

  /// Whether backward has made it final: it has passed `layer` (every bucket of layers at or
  /// above it), or reported `rows` rows of `layer`'s split kernel final.
  func isReady(afterLayer layer: Int, rows: Int? = nil) -> Bool {
    if firstLayer > layer { return true }
    guard firstLayer == layer else { return false }
    guard let rows else { return true }
    return readyAfterRows.map { $0 <= rows } ?? false
  }
}
