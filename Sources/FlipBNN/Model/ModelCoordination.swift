/// The calls through which training across ranks asks layers to behave differently. Nothing
/// else changes a built model's behaviour: an exchange or a trainer that needs it says so here.
extension Model {
  /// Sync BatchNorm: every BatchNormalization layer adds its batch statistics (channel sums
  /// and counts) over the replicas with `sum` before normalizing, so N ranks of B/N samples
  /// normalize as one process of B does. Returns how many layers now do.
  @discardableResult
  public func sumBatchStatistics(with sum: @escaping (UnsafeMutablePointer<Double>, Int) throws -> Void) -> Int {
    var count = 0
    for case let bn as BatchNormalization in layers {
      bn.crossReplicaSum = sum
      count += 1
    }
    return count
  }

  /// Makes layer `index`, a `QuantDense` whose input needs no gradient (the bottom layer),
  /// compute its kernel gradient in `blocks` row blocks, each reported to the backward
  /// observer as soon as it is done (`kernelRowsFinished`), so an exchange can send one block
  /// while the next is computed. The gradient is the same up to float summation order.
  public func computeKernelGradient(ofLayer index: Int, inRowBlocks blocks: Int) throws {
    guard layers.indices.contains(index), let dense = layers[index] as? QuantDense else {
      throw BNNError.invalidParameter(
        owner: "model", parameter: "kernel gradient row blocks",
        reason: "layer \(index) is not a dense layer; only QuantDense and Dense compute their kernel gradient in blocks")
    }
    guard blocks >= 1 else {
      throw BNNError.invalidParameter(
        owner: dense.name, parameter: "kernel gradient row blocks", reason: "must be at least 1, got \(blocks)")
    }
    dense.kernelGradientRowBlocks = blocks
  }
}
