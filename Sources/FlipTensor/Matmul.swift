import CDNNL
import Foundation

/// `C = A · Bᵀ` (row-major, beta 0) on oneDNN's matmul primitive: the GEMM of every layer's
/// input gradient (`dX = dY · Wᵀ`). oneDNN's brgemm kernels run it faster than `dnnl_sgemm`
/// here: on binarynet-mlp's 512 × 1024 × 1024 shape, 203–214 against 161–171 GFLOP/s on
/// 2 threads, 106 against 98 on 1 (the NN and TN shapes of the forward and dW GEMMs gain
/// nothing, so they stay on `dnnl_sgemm`).
///
/// A primitive per shape and thread count is created on first use and kept (shapes are few:
/// the batch sizes of training, the last batch and evaluation). oneDNN fixes a primitive's
/// thread count when it creates it, so the count is part of the key. Memory objects, a stream
/// and the scratchpad are made per call, so threads may run the same primitive at the same
/// time (with oneDNN's default, library-owned scratchpad they would share one buffer: in-process
/// ranks running GEMMs of one shape at once then corrupted each other's input gradients).
@usableFromInline
enum MatmulNT {
  struct Shape: Hashable {
    var m: Int, n: Int, k: Int, lda: Int, ldb: Int, ldc: Int
    /// The OpenMP thread count the primitive is created with.
    var threads: Int
  }

  /// A primitive and its memory descriptors. `@unchecked Sendable`: it never changes after
  /// `init`, and oneDNN allows one primitive with a user-provided scratchpad to execute on
  /// several threads at once (each call with its own memory objects, stream and scratchpad, as
  /// `run` makes them).
  final class Entry: @unchecked Sendable {
    let primitive: dnnl_primitive_t
    let a: dnnl_memory_desc_t
    let b: dnnl_memory_desc_t
    let c: dnnl_memory_desc_t
    /// The scratchpad each execution needs (`scratchpadBytes` may be 0).
    var scratchpad = dnnl_memory_desc_t()
    var scratchpadBytes = 0
    /// oneDNN's name of the implementation it picked, e.g. `brg:avx512_core`.
    let implementation: String
    init(
      primitive: dnnl_primitive_t, a: dnnl_memory_desc_t, b: dnnl_memory_desc_t, c: dnnl_memory_desc_t,
      implementation: String
    ) {
      self.primitive = primitive
      self.a = a
      self.b = b
      self.c = c
      self.implementation = implementation
    }
  }

  /// The primitives by shape. `@unchecked Sendable`: `entries` is read and written only under
  /// `lock` (a lock rather than `Mutex`, which needs macOS 15 and the package supports macOS 13).
  final class Cache: @unchecked Sendable {
    let lock = NSLock()
    var entries: [Shape: Entry] = [:]
  }

  private static let cache = Cache()

  /// The primitive for `shape`, created on first use (by a thread whose OpenMP thread count is
  /// `shape.threads`).
  static func entry(_ shape: Shape) throws -> Entry {
    cache.lock.lock()
    defer { cache.lock.unlock() }
    if let e = cache.entries[shape] { return e }
    func md(_ dims: [Int64], _ strides: [Int64]) throws -> dnnl_memory_desc_t {
      var m = dnnl_memory_desc_t()
      try OneDNN.check(
        dnnl_memory_desc_init_by_strides(&m, 2, dims, dnnl_f32, strides), "dnnl_memory_desc_init_by_strides")
      return m
    }
    let (m, n, k) = (Int64(shape.m), Int64(shape.n), Int64(shape.k))
    var a = try md([m, k], [Int64(shape.lda), 1])
    // B is stored (n, k) with row stride ldb: as a (k, n) matrix its strides are (1, ldb).
    var b = try md([k, n], [1, Int64(shape.ldb)])
    var c = try md([m, n], [Int64(shape.ldc), 1])
    var desc = dnnl_matmul_desc_t()
    try OneDNN.check(dnnl_matmul_desc_init(&desc, &a, &b, nil, &c), "dnnl_matmul_desc_init")
    var attr: dnnl_primitive_attr_t?
    try OneDNN.check(dnnl_primitive_attr_create(&attr), "dnnl_primitive_attr_create")
    defer { dnnl_primitive_attr_destroy(attr) }
    try OneDNN.check(
      dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user), "dnnl_primitive_attr_set_scratchpad_mode")
    var pd: dnnl_primitive_desc_t?
    try OneDNN.check(
      dnnl_primitive_desc_create(&pd, &desc, attr, try ConvolutionPrimitives.engine(), nil),
      "dnnl_primitive_desc_create (matmul)")
    defer { dnnl_primitive_desc_destroy(pd) }
    var p: dnnl_primitive_t?
    try OneDNN.check(dnnl_primitive_create(&p, pd), "dnnl_primitive_create (matmul)")
    let e = Entry(primitive: p!, a: a, b: b, c: c, implementation: OneDNN.implementation(of: pd!))
    if let scratchpad = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0) {
      e.scratchpad = scratchpad.pointee
      e.scratchpadBytes = dnnl_memory_desc_get_size(scratchpad)
    }
    cache.entries[shape] = e
    return e
  }

  /// `c (m, n) = a (m, k) · bᵀ` where b is stored (n, k), on `threads` threads (the calling
  /// thread's OpenMP thread count must be `threads`: `Compute.applyToOneDNN()`).
  @usableFromInline
  static func run(
    m: Int, n: Int, k: Int, a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
    c: UnsafeMutablePointer<Float>, ldc: Int, threads: Int
  ) throws {
    let e = try entry(Shape(m: m, n: n, k: k, lda: lda, ldb: ldb, ldc: ldc, threads: threads))
    let engine = try ConvolutionPrimitives.engine()
    // Local copies: threads share the entry, and only read it.
    var descriptors = (a: e.a, b: e.b, c: e.c, scratchpad: e.scratchpad)
    var memories: [dnnl_memory_t?] = [nil, nil, nil, nil]
    defer { for mem in memories where mem != nil { dnnl_memory_destroy(mem) } }
    try OneDNN.check(
      dnnl_memory_create(&memories[0], &descriptors.a, engine, UnsafeMutableRawPointer(mutating: a)),
      "dnnl_memory_create")
    try OneDNN.check(
      dnnl_memory_create(&memories[1], &descriptors.b, engine, UnsafeMutableRawPointer(mutating: b)),
      "dnnl_memory_create")
    try OneDNN.check(
      dnnl_memory_create(&memories[2], &descriptors.c, engine, UnsafeMutableRawPointer(c)), "dnnl_memory_create")
    var stream: dnnl_stream_t?
    try OneDNN.check(dnnl_stream_create(&stream, engine, dnnl_stream_default_flags.rawValue), "dnnl_stream_create")
    defer { dnnl_stream_destroy(stream) }
    var args = [
      dnnl_exec_arg_t(arg: flip_dnnl_arg_src(), memory: memories[0]),
      dnnl_exec_arg_t(arg: flip_dnnl_arg_weights(), memory: memories[1]),
      dnnl_exec_arg_t(arg: flip_dnnl_arg_dst(), memory: memories[2]),
    ]
    // This call's own scratchpad (oneDNN's kernels want it 64-byte aligned).
    let scratch = e.scratchpadBytes > 0 ? UnsafeMutableRawPointer.allocate(byteCount: e.scratchpadBytes, alignment: 64) : nil
    defer { scratch?.deallocate() }
    if let scratch {
      try OneDNN.check(
        dnnl_memory_create(&memories[3], &descriptors.scratchpad, engine, scratch), "dnnl_memory_create (scratchpad)")
      args.append(dnnl_exec_arg_t(arg: Int32(DNNL_ARG_SCRATCHPAD), memory: memories[3]))
    }
    try OneDNN.check(
      dnnl_primitive_execute(e.primitive, stream, Int32(args.count), &args), "dnnl_primitive_execute (matmul)")
    try OneDNN.check(dnnl_stream_wait(stream), "dnnl_stream_wait")
  }
}
