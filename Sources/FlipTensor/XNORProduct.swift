import CDNNL
import Dispatch
import FlipXNOR

// Legend: R rows (batch), L reduction length (input units), N outputs (units), W words per
// packed row (L rounded up to 256 bits).

/// The forward product of a dense layer whose input and kernel both take the levels ±1, as
/// XNOR and popcount over sign bits packed 64 to a word: `y = L − 2·popcount(x ⊕ w) (+ b)`.
///
/// Every dot product is an integer (the bias is added once, as after a GEMM), so the result
/// equals the fp32 and int8 GEMMs of the same values bit for bit (tested); the product reads
/// 1/32 of fp32's operand bytes, after packing the input and the kernel on every forward. On an
/// AMD EPYC (Zen 3, AVX2), one thread, a 512 × 1024 × 1024 product takes 2.5–3.1 ms; oneDNN's
/// int8 GEMM runs the same shape at about 120 GOP/s, 9 ms.
public final class XNORProduct {
  /// Whether the kernels can run here. On x86_64 `FlipXNOR`'s fast kernels are compiled for
  /// AVX2, BMI2 and POPCNT (per function; the rest of the program stays baseline x86-64): they
  /// run only where `OneDNN.runsHaswellCode`. With `ONEDNN_MAX_CPU_ISA` below AVX2 (an older
  /// CPU, or a test of one) this is false and layers keep their int8 and fp32 forwards.
  /// Elsewhere the portable C kernels run.
  public static var isAvailable: Bool { OneDNN.runsHaswellCode }

  /// The kernels a product runs by default: AVX2 on x86_64 (where `isAvailable` has checked the
  /// CPU), the portable C ones elsewhere.
  public static let defaultKernel: flip_xnor_kernel =
    flip_xnor_has_avx2_kernels() == 1 ? FLIP_XNOR_AVX2 : FLIP_XNOR_BASELINE

  /// The name the forward-kernel choice logs.
  #if arch(x86_64)
    public static let implementation = "Flip XNOR-popcount (AVX2)"
  #else
    public static let implementation = "Flip XNOR-popcount"
  #endif

  /// The kernels this product runs.
  public let kernel: flip_xnor_kernel
  public let length: Int, outputs: Int
  /// 64-bit words per packed row (a multiple of 4).
  public let words: Int
  /// (N, W) the kernel's columns; padding words stay zero.
  private let kernelBits: UnsafeMutablePointer<UInt64>
  /// (T, N) one row of scratch per chunk of the kernel packing.
  private let scratch: UnsafeMutablePointer<UInt64>
  /// (R, W) the packed input.
  private var inputBits: UnsafeMutablePointer<UInt64>?
  private var capacity = 0

  /// Blocks of 64 kernel rows per chunk of the kernel packing, and batch rows per chunk of the
  /// product (fixed sizes: the work splits the same way on any number of threads).
  static let blocksPerChunk = 4
  static let rowsPerChunk = 16

  /// A product of (R, `length`) by (`length`, `outputs`). `kernel` `FLIP_XNOR_BASELINE` runs the
  /// portable C kernels on any CPU (the tests compare both); the AVX2 ones need `isAvailable`.
  public init(length: Int, outputs: Int, kernel: flip_xnor_kernel = XNORProduct.defaultKernel) {
    precondition(
      kernel == FLIP_XNOR_BASELINE || Self.isAvailable,
      "XNORProduct needs AVX2 and Haswell's extensions (check XNORProduct.isAvailable)")
    self.kernel = kernel
    precondition(length > 0 && outputs > 0, "XNORProduct: empty product")
    self.length = length
    self.outputs = outputs
    words = (length + 255) / 256 * 4
    kernelBits = .allocate(capacity: outputs * words)
    kernelBits.initialize(repeating: 0, count: outputs * words)
    let chunks = Parallel.chunkCount(count: (length + 63) / 64, grain: Self.blocksPerChunk)
    scratch = .allocate(capacity: chunks * outputs)
    scratch.initialize(repeating: 0, count: chunks * outputs)
  }

  deinit {
    kernelBits.deallocate()
    scratch.deallocate()
    inputBits?.deallocate()
  }

  /// Makes room for products of up to `rows` rows.
  public func allocate(rows: Int) {
    guard rows > capacity else { return }
    capacity = rows
    inputBits?.deallocate()
    inputBits = .allocate(capacity: rows * words)
  }

  /// Packs the signs of the (L, N) kernel `w` (each value ±1) for the products that follow,
  /// split over `compute`'s threads.
  public func setKernel(_ w: UnsafePointer<Float>, compute: Compute) {
    let (l, n, k) = (length, outputs, words)
    let bits = kernelBits
    let scratch = scratch
    let kernel = kernel
    compute.forRanges(count: (l + 63) / 64, grain: Self.blocksPerChunk) { blocks in
      let row = scratch + blocks.lowerBound / Self.blocksPerChunk * n
      flip_xnor_pack_columns(kernel, w, l, n, k, blocks.lowerBound, blocks.upperBound, bits, row)
    }
  }

  /// `y (R, N) = x (R, L) · w (+ bias)` for the kernel of the last `setKernel`; every value of
  /// `x` must be ±1. Split over `compute`'s threads.
  public func run(
    _ x: UnsafePointer<Float>, rows: Int, bias: UnsafePointer<Float>?, into y: UnsafeMutablePointer<Float>,
    compute: Compute
  ) {
    precondition(rows <= capacity, "XNORProduct.run: \(rows) rows, allocated for \(capacity)")
    let start = compute.profiler?.start()
    defer { if let start { compute.profiler?.record(.xnor, since: start, m: rows, n: outputs, k: length) } }
    let (l, n, k) = (length, outputs, words)
    let a = inputBits!
    let b = UnsafePointer(kernelBits)
    let kernel = kernel
    compute.forRanges(count: rows, grain: Self.rowsPerChunk) { r in
      flip_xnor_pack_rows(kernel, x, l, k, r.lowerBound, r.upperBound, a)
      flip_xnor_product(kernel, a, b, l, k, r.lowerBound, r.upperBound, n, bias, y)
    }
  }
}
