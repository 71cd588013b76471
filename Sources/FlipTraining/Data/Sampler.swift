import FlipTensor

/// Splits each epoch into global batches and each global batch into per-rank shards.
///
/// The order is a Fisher–Yates permutation from Flip's own generator seeded by
/// `(seed, epoch)`, identical on every rank. Global batch `b` covers positions
/// `[b·B, min((b+1)·B, N))` of the permutation (the last, partial batch is kept, as Keras does).
/// It is cut into `R·K` contiguous parts for `R` ranks of `K` micro-steps each, the first
/// `n mod R·K` parts one sample more; rank `r`'s shard is parts `r·K ..< (r+1)·K`, its micro-step
/// `k` part `r·K + k`. So the parts depend on `R·K` alone: 2 ranks of 1 micro-step and 1 rank
/// of 2 see the same micro-batches (`Trainer` then computes the same bits).
public struct EpochSampler: Sendable {
  public let datasetSize: Int
  public let globalBatch: Int
  public let seed: UInt64
  public let rank: Int
  public let worldSize: Int
  /// Micro-steps per rank and step (`TrainingOptions.accumulate`).
  public let microSteps: Int

  public init(
    datasetSize: Int, globalBatch: Int, seed: UInt64, rank: Int = 0, worldSize: Int = 1, microSteps: Int = 1
  ) throws {
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
    self.microSteps = max(1, microSteps)
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
    let first = part(step: step, index: rank * microSteps)
    let last = part(step: step, index: (rank + 1) * microSteps - 1)
    return first.lowerBound..<last.upperBound
  }

  /// The positions of micro-step `micro` of `rank` in global batch `step` (a part of its shard).
  public func microShard(step: Int, rank: Int, micro: Int) -> Range<Int> {
    part(step: step, index: rank * microSteps + micro)
  }

  /// Part `index` of the `worldSize · microSteps` parts of global batch `step`.
  func part(step: Int, index: Int) -> Range<Int> {
    let parts = worldSize * microSteps
    let n = globalBatchSize(step: step)
    let base = n / parts
    let extra = n % parts
    let lo = step * globalBatch + index * base + min(index, extra)
    return lo..<(lo + base + (index < extra ? 1 : 0))
  }
}
