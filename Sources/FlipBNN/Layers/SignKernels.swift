/// How a binary kernel may travel between ranks as its weights' signs (the sharded step's
/// compact wire) and still train exactly as its latent weights do on a rank that does not
/// update them. The forward needs only `sign(w)` and, for `magnitude_aware_sign`, each output
/// channel's mean `|w|`; under `weight_clip(c)` with `c` at most the quantizer's clip value, the
/// straight-through mask `1[|w| ≤ clip]` is 1 for every latent weight, and for `±m` with `m ≤ c`.
public enum SignEncoding {
  /// `ste_sign`: the signs, decoded as `±c` (the clip of the constraint).
  case magnitude(Float)
  /// `magnitude_aware_sign`: the signs plus each sender's per-channel sums of `|w|` over its
  /// part; receivers decode `±m` with `m` the channel's mean over the whole kernel and set it as
  /// the quantizer's `scaleOverride`.
  case channelMean(channels: Int, quantizer: MagnitudeAwareSign)
}

/// A kernel that may travel as signs: its view's index in `store.views` and its encoding.
public struct SignKernel {
  public let view: Int
  public let encoding: SignEncoding
  public init(view: Int, encoding: SignEncoding) {
    self.view = view
    self.encoding = encoding
  }
}

/// The encoding of a kernel under `quantizer` and `constraint` with `channels` output
/// channels (the last axis), or nil when it must travel as fp32 (see `SignEncoding`).
func signEncoding(quantizer: Quantizer?, constraint: KernelConstraint?, channels: Int) -> SignEncoding? {
  guard case .weightClip(let c)? = constraint, c > 0 else { return nil }
  switch quantizer {
  case let sign as SteSign where c <= (sign.clipValue ?? .infinity): return .magnitude(c)
  case let scaled as MagnitudeAwareSign where c <= (scaled.clipValue ?? .infinity) && channels > 0:
    return .channelMean(channels: channels, quantizer: scaled)
  default: return nil
  }
}

extension Model {
  /// Each kernel that may travel as signs (see `SignEncoding`), in layer order.
  public var signKernels: [SignKernel] {
    layers.enumerated().compactMap { (i, layer) in
      guard let layer = layer as? QuantizedKernelLayer,
        let encoding = signEncoding(
          quantizer: layer.kernel.quantizer, constraint: layer.constraint, channels: layer.kernel.channels),
        let view = store.views.firstIndex(where: { $0.layerIndex == i && $0.role == .kernel })
      else { return nil }
      return SignKernel(view: view, encoding: encoding)
    }
  }
}
