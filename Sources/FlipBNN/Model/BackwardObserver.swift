/// Follows backward through a model's parameter gradients, to act on each as soon as it is
/// final (a data-parallel exchange starts reducing it while the layers below still work).
public protocol BackwardObserver: AnyObject {
  /// Layer `index`'s parameter gradients are final, and so are those of every layer after it.
  func layerFinished(_ index: Int) throws
  /// Rows `0 ..< rows` of layer `index`'s kernel gradient are final: a kernel gradient computed
  /// in row blocks (`QuantDense.kernelGradientRowBlocks`). Its last block, and the rest of the
  /// layer's gradients, are final at `layerFinished(index)`.
  func kernelRowsFinished(layer index: Int, rows: Int) throws
}

extension BackwardObserver {
  public func kernelRowsFinished(layer index: Int, rows: Int) throws {}
}
