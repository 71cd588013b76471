/// The kernel that runs the forward product of a layer whose input and kernel quantizers both
/// take integer levels (±1, {0, 1}, {−1, 0, 1}): every partial sum is an integer below 2²⁴, so
/// int8 × int8 → int32 and fp32 give the same bits, and either may run.
public enum BinaryForwardKernel: String, Sendable, CaseIterable {
  case int8, fp32
}

/// How `Model.chooseBinaryForward` picks each exact layer's forward kernel: `auto` times
/// both on the layer's own shape on this CPU and keeps the faster; `int8` and `fp32` force one.
public enum BinaryForwardPolicy: String, Sendable, CaseIterable {
  case auto, int8, fp32
}

/// A layer whose forward product can run exactly in int8 or in fp32 (QuantDense, QuantConv2D).
public protocol ExactBinaryForward: Layer {
  /// Whether both quantizers take integer levels, so the int8 path exists and is exact.
  var int8ForwardAvailable: Bool { get }
  /// Whether the forward runs in int8 (only when available).
  var exactInt8Forward: Bool { get set }
  /// The implementation the forward runs for `batch` samples, e.g. oneDNN's
  /// `jit_uni_int8:avx2` or `dnnl_gemm_s8s8s32`.
  func forwardImplementation(batch: Int) throws -> String
  /// The implementations of the input-gradient and kernel-gradient passes for `batch`.
  func backwardImplementations(batch: Int) throws -> (data: String, weights: String)
}

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

/// A layer with a quantized kernel (QuantDense, QuantConv2D, QuantDepthwiseConv2D).
protocol QuantizedKernelLayer: Layer {
  var kernel: QuantizedKernel { get }
  var inputQuantizer: Quantizer? { get }
  var kernelQuantizer: Quantizer? { get }
  var constraint: KernelConstraint? { get }
}

extension QuantDense: QuantizedKernelLayer {}
extension QuantConv2D: QuantizedKernelLayer {}
extension QuantDepthwiseConv2D: QuantizedKernelLayer {
  var kernelQuantizer: Quantizer? { depthwiseQuantizer }
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
