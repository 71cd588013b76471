import FlipTensor

// Legend: R rows of the forward GEMM (B for dense, B·OH·OW for convolution), K reduction
// length (input units, or KH·KW·C), N output units or filters.

/// The exact int8 forward GEMM of a quantized layer whose input and kernel quantizers both
/// take integer levels (e.g. `ste_sign` on both): `y = int8(q_in(x)) · int8(q_k(W))` in int32,
/// then to float. The result equals the fp32 GEMM bit for bit (tested); it runs about 4× faster
/// on AVX-512 VNNI. Backward keeps the fp32 operands.
final class Int8Forward {
  let reduction: Int, outputs: Int
  private var capacity = 0
  /// (R, K) input, (R, N) product.
  private var input: UnsafeMutablePointer<Int8>?
  private var product: UnsafeMutablePointer<Int32>?

  init(reduction: Int, outputs: Int) {
    self.reduction = reduction
    self.outputs = outputs
  }

  deinit {
    input?.deallocate()
    product?.deallocate()
  }

  func allocate(rows: Int) {
    guard rows > capacity else { return }
    capacity = rows
    input?.deallocate()
    product?.deallocate()
    input = .allocate(capacity: rows * reduction)
    product = .allocate(capacity: rows * outputs)
  }

  /// (R, K) the int8 input, for callers that fill it themselves (im2col of int8 data).
  var inputBuffer: UnsafeMutablePointer<Int8> { input! }

  /// `y (R, N) = inputBuffer (R, K) · w8 (K, N) (+ bias)`, on `compute`'s threads.
  func runOnInputBuffer(
    rows: Int, kernel w8: UnsafePointer<Int8>, bias: UnsafePointer<Float>?, into y: UnsafeMutablePointer<Float>,
    compute: Compute
  ) throws {
    let c = product!
    try gemmInt8(
      .none, .none, m: rows, n: outputs, k: reduction, a: input!, lda: reduction, b: w8, ldb: outputs, c: c,
      ldc: outputs, compute: compute)
    convertToFloat(c, y, rows: rows, columns: outputs, bias: bias, compute: compute)
  }

  /// `y (R, N) = x (R, K) · w8 (K, N) (+ bias)` where x holds integer levels, on `compute`'s
  /// threads.
  func run(
    _ x: UnsafePointer<Float>, rows: Int, kernel w8: UnsafePointer<Int8>, bias: UnsafePointer<Float>?,
    into y: UnsafeMutablePointer<Float>, compute: Compute
  ) throws {
    convertToInt8(x, inputBuffer, count: rows * reduction, compute: compute)
    try runOnInputBuffer(rows: rows, kernel: w8, bias: bias, into: y, compute: compute)
  }
}
