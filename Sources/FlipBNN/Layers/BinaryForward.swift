/// The kernels that can run the forward product of a layer whose input and kernel quantizers
/// both take integer levels (±1, {0, 1}, {−1, 0, 1}), or, in a convolution, whose kernel's
/// levels are scaled per filter after the product (`magnitude_aware_sign`:
/// `QuantConv2D.scalesLevels`). Every partial sum is an integer below 2²⁴, so they all give the
/// same bits, and any of them may run:
/// - `fp32`: oneDNN's fp32 GEMM or convolution (every layer has it);
/// - `int8`: int8 × int8 → int32 in oneDNN;
/// - `xnor`: XNOR and popcount over packed sign bits (`XNORProduct`), for dense layers whose
///   quantizers both take the levels ±1 (on x86_64, CPUs with AVX2 and the other Haswell
///   extensions).
public enum BinaryForwardKernel: String, Sendable, CaseIterable {
  case int8, fp32, xnor

  /// The largest magnitude a sum may reach for the kernels to agree: fp32 holds every integer
  /// up to 2²⁴ exactly, so any order of adding the terms gives the same bits.
  public static let maximumReduction = 1 << 24 - 1

  /// Whether a sum of `terms` integers of magnitude at most `largestTerm` (1 for ±1 products; a
  /// padded convolution's pad value may be larger) stays within `maximumReduction`.
  public static func sumsAreExact(terms: Int, largestTerm: Int = 1) -> Bool {
    let (product, overflow) = terms.multipliedReportingOverflow(by: max(1, largestTerm))
    return !overflow && product <= maximumReduction
  }
}

/// How `Model.chooseBinaryForward` picks each exact layer's forward kernel: `auto` times
/// every kernel the layer has on its own shape on this CPU and keeps the fastest; `int8`,
/// `fp32` and `xnor` force one where the layer has it (fp32 elsewhere).
public enum BinaryForwardPolicy: String, Sendable, CaseIterable {
  case auto, int8, fp32, xnor
}

/// A layer whose forward product can run in more than one exact kernel (QuantDense, QuantConv2D).
public protocol ExactBinaryForward: Layer {
  /// The kernels this layer's forward can run: always `.fp32`, `.int8` where both quantizers
  /// take integer levels (or scaled ones, in convolutions), `.xnor` where they take ±1 (or
  /// scaled ±1, in convolutions) and the CPU runs `XNORProduct` and `XNORConvolution`.
  var forwardKernels: [BinaryForwardKernel] { get }
  /// The kernel the forward runs (one of `forwardKernels`).
  var forwardKernel: BinaryForwardKernel { get set }
  /// The implementation the forward runs for `batch` samples, e.g. oneDNN's
  /// `jit_uni_int8:avx2` or `dnnl_gemm_s8s8s32`.
  func forwardImplementation(batch: Int) throws -> String
  /// The implementations of the input-gradient and kernel-gradient passes for `batch`.
  func backwardImplementations(batch: Int) throws -> (data: String, weights: String)
}

extension ExactBinaryForward {
  /// Whether the forward has an exact kernel besides fp32 (both quantizers take integer levels).
  public var int8ForwardAvailable: Bool { forwardKernels.contains(.int8) }
}
