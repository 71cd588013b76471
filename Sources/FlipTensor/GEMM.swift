import CDNNL
import Dispatch
import Foundation

/// The precision of a GEMM's operands. fp32 is the reference path; the binary layers' faster
/// paths (exact int8, bit-packed XNOR-popcount, bf16 on AMX) plug in here and are tested
/// against it.
public enum GEMMPrecision: String, Sendable, CaseIterable {
  case float32
}

/// Whether an operand is used as stored or transposed.
public enum Transpose: Sendable {
  case none, transposed
  @usableFromInline var flag: CChar { self == .none ? CChar(UInt8(ascii: "N")) : CChar(UInt8(ascii: "T")) }
}

/// Row-major GEMM: `C[m×n] = alpha · op(A)[m×k] · op(B)[k×n] + beta · C`.
///
/// `lda`, `ldb`, `ldc` are the row strides of A, B, C as stored. Every GEMM of a training step
/// (forward, dX, dW of each layer) goes through this one entry point; fp32 runs oneDNN's
/// `dnnl_sgemm`, which picks AVX-512/AMX kernels from the CPU with no environment variable,
/// except `A · Bᵀ` with alpha 1 and beta 0 (the input gradients), which runs on oneDNN's
/// matmul primitive (`MatmulNT`). oneDNN runs it on `compute.oneDNNThreads` threads.
@inlinable
public func gemm(
  _ transA: Transpose, _ transB: Transpose, m: Int, n: Int, k: Int,
  alpha: Float = 1, a: UnsafePointer<Float>, lda: Int,
  b: UnsafePointer<Float>, ldb: Int,
  beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int,
  precision: GEMMPrecision = .float32, compute: Compute
) throws {
  if m == 0 || n == 0 { return }
  switch precision {
  case .float32:
    let start = compute.profiler?.start()
    defer { if let start { compute.profiler?.record(.float32, since: start, m: m, n: n, k: k) } }
    compute.applyToOneDNN()
    if transA == .none && transB == .transposed && alpha == 1 && beta == 0 && k > 0 {
      // Input gradients, dX = dY · Wᵀ: faster on the matmul primitive (see `MatmulNT`).
      return try MatmulNT.run(
        m: m, n: n, k: k, a: a, lda: lda, b: b, ldb: ldb, c: c, ldc: ldc, threads: compute.oneDNNThreads)
    }
    let status = dnnl_sgemm(
      transA.flag, transB.flag, dnnl_dim_t(m), dnnl_dim_t(n), dnnl_dim_t(k),
      alpha, a, dnnl_dim_t(lda), b, dnnl_dim_t(ldb), beta, c, dnnl_dim_t(ldc))
    if status != dnnl_success {
      throw TensorError.onednn(function: "dnnl_sgemm(\(m)x\(n)x\(k))", status: Int(status.rawValue))
    }
  }
}

/// The oneDNN implementation that runs `gemm(.none, .transposed, ...)` (alpha 1, beta 0) for a
/// dense (m, k) · (n, k)ᵀ product on `compute.oneDNNThreads` threads, e.g. `gemm:jit` or
/// `brg:avx512_core` (for logs and `flip selftest`).
public func transposedProductImplementation(m: Int, n: Int, k: Int, compute: Compute) throws -> String {
  compute.applyToOneDNN()
  let shape = MatmulNT.Shape(m: m, n: n, k: k, lda: k, ldb: k, ldc: n, threads: compute.oneDNNThreads)
  return try MatmulNT.entry(shape).implementation
}

/// The plain triple loop that `gemm` must equal (a test oracle and a readable definition).
public func referenceGEMM(
  _ transA: Transpose, _ transB: Transpose, m: Int, n: Int, k: Int,
  alpha: Float = 1, a: UnsafePointer<Float>, lda: Int,
  b: UnsafePointer<Float>, ldb: Int,
  beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int
) {
  for i in 0..<m {
    for j in 0..<n {
      var sum: Double = 0
      for p in 0..<k {
        let av = transA == .none ? a[i * lda + p] : a[p * lda + i]
        let bv = transB == .none ? b[p * ldb + j] : b[j * ldb + p]
        sum += Double(av) * Double(bv)
      }
      let prior = beta == 0 ? 0 : beta * c[i * ldc + j]
      c[i * ldc + j] = alpha * Float(sum) + prior
    }
  }
}

/// Opt-in accounting of the time and arithmetic of every GEMM call, per precision (for
/// `flip bench`: the rate that a training step's GEMMs reach). Counts the GEMMs and XNOR
/// products of the work whose `Compute` holds it, while `enabled`; costs two clock reads and two
/// lock round trips a call.
///
/// `@unchecked Sendable`: every stored property but the lock is read and written only under
/// `lock` (a lock rather than `Mutex`, which needs macOS 15 and the package supports macOS 13).
public final class GEMMProfiler: @unchecked Sendable {
  public struct Totals: Sendable {
    public var nanoseconds: UInt64 = 0
    /// Multiply-adds counted as 2 operations.
    public var operations: Double = 0
    public var calls = 0
    /// Giga-operations per second (GFLOP/s for fp32, GOP/s for int8 and XNOR).
    public var rate: Double { nanoseconds == 0 ? 0 : operations / Double(nanoseconds) }
  }

  /// The kinds of product counted apart.
  public enum Kind: Sendable {
    case float32, int8
    /// XNOR–popcount products (`XNORProduct`), one multiply-add per bit pair.
    case xnor
  }

  private let lock = NSLock()
  private var isEnabled = false
  private var totals = (float32: Totals(), int8: Totals(), xnor: Totals())

  /// Off until enabled.
  public init() {}

  /// Whether calls are counted.
  public var enabled: Bool {
    get { lock.withLock { isEnabled } }
    set { lock.withLock { isEnabled = newValue } }
  }
  public var float32: Totals { lock.withLock { totals.float32 } }
  public var int8: Totals { lock.withLock { totals.int8 } }
  public var xnor: Totals { lock.withLock { totals.xnor } }

  public func reset() {
    lock.withLock { totals = (Totals(), Totals(), Totals()) }
  }

  /// The start time of a call to count, or nil while disabled.
  @usableFromInline
  func start() -> UInt64? {
    enabled ? DispatchTime.now().uptimeNanoseconds : nil
  }

  /// Counts a call of `kind` that started at `start` (from `start()`).
  @usableFromInline
  func record(_ kind: Kind, since start: UInt64, m: Int, n: Int, k: Int) {
    let nanoseconds = DispatchTime.now().uptimeNanoseconds - start
    lock.withLock {
      func add(_ t: inout Totals) {
        t.nanoseconds += nanoseconds
        t.operations += 2 * Double(m) * Double(n) * Double(k)
        t.calls += 1
      }
      switch kind {
      case .float32: add(&totals.float32)
      case .int8: add(&totals.int8)
      case .xnor: add(&totals.xnor)
      }
    }
  }
}

/// Exact integer GEMM for operands that take integer levels (±1 binary, {−1, 0, 1} ternary):
/// `C[m×n] = op(A)[m×k] · op(B)[k×n]` in int8 × int8 → int32 (`dnnl_gemm_s8s8s32`, AVX-512
/// VNNI on this CPU: about 4× the fp32 rate). For ±1 operands the result equals the fp32
/// GEMM bit for bit (every partial sum is an integer below 2^24).
public func gemmInt8(
  _ transA: Transpose, _ transB: Transpose, m: Int, n: Int, k: Int,
  a: UnsafePointer<Int8>, lda: Int, b: UnsafePointer<Int8>, ldb: Int,
  c: UnsafeMutablePointer<Int32>, ldc: Int, compute: Compute
) throws {
  if m == 0 || n == 0 { return }
  let start = compute.profiler?.start()
  defer { if let start { compute.profiler?.record(.int8, since: start, m: m, n: n, k: k) } }
  compute.applyToOneDNN()
  var zero: Int32 = 0
  let status = dnnl_gemm_s8s8s32(
    transA.flag, transB.flag, CChar(UInt8(ascii: "F")), dnnl_dim_t(m), dnnl_dim_t(n), dnnl_dim_t(k), 1,
    a, dnnl_dim_t(lda), 0, b, dnnl_dim_t(ldb), 0, 0, c, dnnl_dim_t(ldc), &zero)
  if status != dnnl_success {
    throw TensorError.onednn(function: "dnnl_gemm_s8s8s32(\(m)x\(n)x\(k))", status: Int(status.rawValue))
  }
}

/// Converts `count` floats that hold small integers (quantizer levels, within ±127) to int8,
/// split over `compute`'s threads.
public func convertToInt8(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Int8>, count: Int, compute: Compute) {
  compute.forEach(count: count) { r in convertToInt8Serially(x + r.lowerBound, y + r.lowerBound, count: r.count) }
}

/// `convertToInt8` on the calling thread (for a chunk of a pass that is already split).
///
/// Vectorized with the float-to-int rounding trick: adding 1.5 · 2²³ puts an integer's value
/// in the low bits of the sum's bit pattern. Exact for integers (−0 gives 0); other values
/// round to nearest.
public func convertToInt8Serially(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Int8>, count: Int) {
  let magic = SIMD16<Float>(repeating: 12_582_912)
  let bias = SIMD16<Int32>(repeating: 0x4B40_0000)
  var i = 0
  let vectorEnd = count & ~15
  while i < vectorEnd {
    let xv = UnsafeRawPointer(x + i).loadUnaligned(as: SIMD16<Float>.self)
    let levels = unsafeBitCast(xv + magic, to: SIMD16<Int32>.self) &- bias
    UnsafeMutableRawPointer(y + i).storeBytes(of: SIMD16<Int8>(truncatingIfNeeded: levels), as: SIMD16<Int8>.self)
    i += 16
  }
  while i < count {
    y[i] = x[i].isFinite ? Int8(truncatingIfNeeded: Int32(x[i].rounded(.toNearestOrEven))) : 0
    i += 1
  }
}

/// `y[r, c] = Float(x[r, c]) (· scale[c]) (+ bias[c])` for a (rows, columns) int32 matrix,
/// each product and sum rounded on its own (as `scaleColumns` does), split over `compute`'s
/// threads.
public func convertToFloat(
  _ x: UnsafePointer<Int32>, _ y: UnsafeMutablePointer<Float>, rows: Int, columns: Int,
  scale: [Float]? = nil, bias: UnsafePointer<Float>? = nil, compute: Compute
) {
  if let scale {
    precondition(scale.count == columns, "convertToFloat: \(scale.count) scales for \(columns) columns")
    return scale.withUnsafeBufferPointer { s in
      convertToFloat(x, y, rows: rows, columns: columns, scalePointer: s.baseAddress!, bias: bias, compute: compute)
    }
  }
  convertToFloat(x, y, rows: rows, columns: columns, scalePointer: nil, bias: bias, compute: compute)
}

private func convertToFloat(
  _ x: UnsafePointer<Int32>, _ y: UnsafeMutablePointer<Float>, rows: Int, columns: Int,
  scalePointer scale: UnsafePointer<Float>?, bias: UnsafePointer<Float>?, compute: Compute
) {
  compute.forRanges(count: rows, grain: max(1, (1 << 15) / max(columns, 1))) { r in
    for row in r {
      let xr = x + row * columns
      let yr = y + row * columns
      switch (scale, bias) {
      case (let s?, let b?): for j in 0..<columns { yr[j] = Float(xr[j]) * s[j] + b[j] }
      case (let s?, nil): for j in 0..<columns { yr[j] = Float(xr[j]) * s[j] }
      case (nil, let b?): for j in 0..<columns { yr[j] = Float(xr[j]) + b[j] }
      case (nil, nil): for j in 0..<columns { yr[j] = Float(xr[j]) }
      }
    }
  }
}

/// `m[r, c] = m[r, c] · scale[c] (+ bias[c])` for a (rows, columns) matrix, each product and
/// sum rounded on its own (no fused multiply-add), split over `compute`'s threads.
public func scaleColumns(
  _ m: UnsafeMutablePointer<Float>, rows: Int, columns: Int, scale: [Float], bias: UnsafePointer<Float>? = nil,
  compute: Compute
) {
  precondition(scale.count == columns, "scaleColumns: \(scale.count) scales for \(columns) columns")
  scale.withUnsafeBufferPointer { s in
    let s = s.baseAddress!
    compute.forRanges(count: rows, grain: max(1, (1 << 15) / max(columns, 1))) { r in
      for row in r {
        let mr = m + row * columns
        if let bias {
          for j in 0..<columns { mr[j] = mr[j] * s[j] + bias[j] }
        } else {
          for j in 0..<columns { mr[j] *= s[j] }
        }
      }
    }
  }
}
