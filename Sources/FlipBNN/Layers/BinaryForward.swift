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
