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

/// The magnitude `c` at which a kernel made of its weights' signs, `±c`, trains exactly as its
/// latent weights do on a rank that does not update them: under `weight_clip(c)` and an
/// `ste_sign` whose clip is at least `c`, the forward needs only `sign(w)` and the
/// straight-through mask `1[|w| ≤ clip]` is 1 for every `|w| ≤ c`. nil for any other quantizer
/// or constraint. The sharded step's compact wire sends such kernels as sign bits.
func kernelSignMagnitude(quantizer: Quantizer?, constraint: KernelConstraint?) -> Float? {
  guard let sign = quantizer as? SteSign, case .weightClip(let c)? = constraint, c > 0 else { return nil }
  return c <= (sign.clipValue ?? .infinity) ? c : nil
}

extension QuantDense {
  /// See `kernelSignMagnitude(quantizer:constraint:)`.
  public var kernelSignMagnitude: Float? { FlipBNN.kernelSignMagnitude(quantizer: kernelQuantizer, constraint: constraint) }
}

extension QuantConv2D {
  /// See `kernelSignMagnitude(quantizer:constraint:)`.
  public var kernelSignMagnitude: Float? { FlipBNN.kernelSignMagnitude(quantizer: kernelQuantizer, constraint: constraint) }
}

extension Model {
  /// Each kernel that may travel as signs: its view's index in `store.views`, and the
  /// magnitude its signs stand for (see `kernelSignMagnitude`).
  public var signKernels: [(view: Int, magnitude: Float)] {
    layers.enumerated().compactMap { (i, layer) in
      let magnitude = (layer as? QuantDense)?.kernelSignMagnitude ?? (layer as? QuantConv2D)?.kernelSignMagnitude
      guard let magnitude,
        let view = store.views.firstIndex(where: { $0.layerIndex == i && $0.role == .kernel })
      else { return nil }
      return (view, magnitude)
    }
  }
}
