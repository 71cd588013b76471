import FlipTensor

/// Splits each epoch into global batches and each global batch into per-rank shards.
///
/// The order is a Fisher–Yates permutation from Flip's own generator seeded by
/// `(seed, epoch)`, identical on every rank. Global batch `b` covers positions
/// `[b·B, min((b+1)·B, N))` of the permutation (the last, partial batch is kept, as Keras does);
/// rank `r` of `R` takes a contiguous slice of it, the first `n mod R` ranks one sample more, so
/// the shards are disjoint and their union is the global batch.
public struct EpochSampler: Sendable {
  public let datasetSize: Int
  public let globalBatch: Int
  public let seed: UInt64
  public let rank: Int
  public let worldSize: Int

  public init(datasetSize: Int, globalBatch: Int, seed: UInt64, rank: Int = 0, worldSize: Int = 1) throws {
    guard globalBatch > 0 else {
      throw TrainingError.invalidArgument("batch size must be positive, got \(globalBatch)")
    }
    guard globalBatch % worldSize == 0 else {
      throw TrainingError.invalidArgument(
        "global batch size \(globalBatch) is not divisible by the number of ranks \(worldSize); choose a batch size that is a multiple of \(worldSize)"
      )
    }
    self.datasetSize = datasetSize
    self.globalBatch = globalBatch
    self.seed = seed
    self.rank = rank
    self.worldSize = worldSize
  }

  public var stepsPerEpoch: Int { (datasetSize + globalBatch - 1) / globalBatch }

  /// The permutation of `0..<datasetSize` for `epoch`.
  public func permutation(epoch: Int) -> [Int] {
    var order = Array(0..<datasetSize)
    var g = SplitMix64(seed: seed, stream: UInt64(epoch))
    g.shuffle(&order)
    return order
  }

  /// Size of global batch `step` within the epoch.
  public func globalBatchSize(step: Int) -> Int {
    min(globalBatch, datasetSize - step * globalBatch)
  }

  /// The range of permutation positions that this rank takes from global batch `step`.
  public func shard(step: Int) -> Range<Int> { shard(step: step, rank: rank) }

  /// The range of permutation positions that `rank` takes from global batch `step`.
  public func shard(step: Int, rank: Int) -> Range<Int> {
    let start = step * globalBatch
    let n = globalBatchSize(step: step)
    let base = n / worldSize
    let extra = n % worldSize
    let lo = start + rank * base + min(rank, extra)
    let hi = lo + base + (rank < extra ? 1 : 0)
    return lo..<hi
  }
}
