/// The real-valued variant of a binary model, for the first phase of Larq's two-step
/// training (pretrain real-valued, then binarize starting from those weights).
extension Array where Element == LayerSpec {
  /// Every input quantizer becomes `hard_tanh` and every kernel quantizer is removed; layer
  /// kinds, names, constraints and BatchNormalization stay as they are, so the variant's
  /// tensor names and shapes are the binary model's and its weights load into it.
  public func realValued() -> [LayerSpec] {
    map { spec in
      var s = spec
      if s.inputQuantizer != nil { s.inputQuantizer = QuantizerSpec(QuantizerKind.hardTanh.rawValue) }
      s.kernelQuantizer = nil
      return s
    }
  }
}
