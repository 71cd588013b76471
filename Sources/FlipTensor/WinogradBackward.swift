import CDNNL
import FlipWinograd

// Legend: B batch, H/W the input map, OH/OW the output map, C channels, F filters, T tiles per
// chunk, ξ one of the 36 points of the 6×6 products.

/// Flip's own Winograd F(4×4, 3×3) for both backward convolutions of a 3×3, stride-1 layer
/// ('same' or 'valid'), for CPUs where oneDNN has none (oneDNN 2.x has it only for AVX-512) and
/// layers where oneDNN's needs too large a scratchpad: the linear transforms in C
/// (`FlipWinograd`, AVX2 and FMA), the products as 36 matrix products per chunk of tiles on
/// oneDNN's batched matmul.
///
/// - Kernel gradient: for each chunk of T tiles, V[ξ] (T × C, x's tiles through Bᵀ·B) and Z[ξ]
///   (T × F, dy's tiles through A·Aᵀ), then `acc[ξ] += V[ξ]ᵀ Z[ξ]` (C × F); finally
///   `dw = Gᵀ acc G`.
/// - Input gradient: the kernel flipped and transposed through G·Gᵀ (C × F per ξ, in the same
///   scratch as `acc`, done by then); for each chunk, U[ξ] (T × F, dy's tiles through Bᵀ·B),
///   `O[ξ] = U[ξ] Wt[ξ]ᵀ` (T × C), and dx's tiles through Aᵀ·A.
///
/// x and dy are read in place (NHWC); with a `quantizeCopy` x is first copied into the scratch
/// and quantized there. A 4×4 tile costs 36 products per channel pair where the direct
/// convolution costs 144: on AVX2 (2 threads, batch 32) the backward data and weights of a
/// 56×56×64 layer took 18 and 20 ms against oneDNN's direct 42 and 55 (38 on blocked copies)
/// (a C program on the same transforms and matmuls under `ONEDNN_MAX_CPU_ISA=AVX2`, 2026-12-08).
final class WinogradBackward {
  let batch: Int
  let geometry: ConvGeometry
  let filters: Int
  let compute: Compute
  /// Tiles per chunk: the rows of each of a chunk's 36 matrices.
  let tilesPerChunk: Int
  /// The tiles of the batch's output map (the kernel gradient's) and input map (the input
  /// gradient's): B × ⌈OH/4⌉ × ⌈OW/4⌉ and B × ⌈H/4⌉ × ⌈W/4⌉.
  let outputTiles: Int, inputTiles: Int
  /// `O = U Wtᵀ` (input gradient), `acc = Vᵀ Z` (first chunk) and `acc += Vᵀ Z` (the others).
  private let data: BatchedProduct, weights: BatchedProduct, accumulatedWeights: BatchedProduct
  private let stream: dnnl_stream_t
  /// What runs, e.g. `flip_winograd_4x3:avx2 + gemm:jit`.
  let implementation: String

  /// Tiles per chunk: measured on AVX2 (2 threads, batch 32) 128 was as fast as 256 and faster
  /// than 512 on the 56×56×64 to 7×7×512 layers (a chunk's matrices are 1.2–9.4 MB at 128).
  static let defaultTilesPerChunk = 128

  /// Whether the CPU may run FlipWinograd's AVX2 and FMA code (`OneDNN.runsHaswellCode`:
  /// `ONEDNN_MAX_CPU_ISA` below AVX2 turns this off too).
  static var isAvailable: Bool { OneDNN.runsHaswellCode }

  /// Whether this runs a layer: 3×3, stride 1, padding of at most 2 ('same' or 'valid'),
  /// channels and filters multiples of 16, on a CPU that `isAvailable`.
  static func isCandidate(geometry g: ConvGeometry, filters: Int) -> Bool {
    isAvailable && g.kernelHeight == 3 && g.kernelWidth == 3 && g.strideHeight == 1 && g.strideWidth == 1
      && (0...2).contains(g.padTop) && (0...2).contains(g.padLeft) && g.channels % 16 == 0 && filters % 16 == 0
  }

  /// The bytes of scratch `backward` uses: x's copy, the 36 C × F sums (then the transformed
  /// kernel), and one chunk's matrices (V and Z, then U and O), each 64-byte aligned.
  static func scratchBytes(batch: Int, geometry g: ConvGeometry, filters: Int, tilesPerChunk: Int? = nil) -> Int {
    let layout = scratchLayout(batch: batch, geometry: g, filters: filters, tilesPerChunk: tilesPerChunk)
    return layout.end
  }

  private static func scratchLayout(batch: Int, geometry g: ConvGeometry, filters: Int, tilesPerChunk: Int?) -> (
    sums: Int, chunk: Int, end: Int
  ) {
    let t = chunkTiles(batch: batch, geometry: g, requested: tilesPerChunk)
    let sums = ConvolutionPrimitives.aligned(4 * batch * g.inputSize)
    let chunk = sums + ConvolutionPrimitives.aligned(4 * 36 * g.channels * filters)
    return (sums, chunk, chunk + ConvolutionPrimitives.aligned(4 * 36 * t * (g.channels + filters)))
  }

  private static func tileCount(batch: Int, height: Int, width: Int) -> Int {
    batch * ((height + 3) / 4) * ((width + 3) / 4)
  }

  private static func chunkTiles(batch: Int, geometry g: ConvGeometry, requested: Int?) -> Int {
    let most = max(
      tileCount(batch: batch, height: g.inputHeight, width: g.inputWidth),
      tileCount(batch: batch, height: g.outputHeight, width: g.outputWidth))
    return max(1, min(requested ?? defaultTilesPerChunk, most))
  }

  /// - Parameter tilesPerChunk: nil for `defaultTilesPerChunk` (tests pass small counts to
  ///   cut a batch into several chunks and a short last one).
  init(batch: Int, geometry g: ConvGeometry, filters: Int, compute: Compute, tilesPerChunk: Int? = nil) throws {
    precondition(Self.isCandidate(geometry: g, filters: filters), "WinogradBackward on a layer it cannot run")
    self.batch = batch
    self.geometry = g
    self.filters = filters
    self.compute = compute
    let t = Self.chunkTiles(batch: batch, geometry: g, requested: tilesPerChunk)
    self.tilesPerChunk = t
    outputTiles = Self.tileCount(batch: batch, height: g.outputHeight, width: g.outputWidth)
    inputTiles = Self.tileCount(batch: batch, height: g.inputHeight, width: g.inputWidth)
    compute.applyToOneDNN()
    let engine = try ConvolutionPrimitives.engine()
    let (c, f, tt) = (Int64(g.channels), Int64(filters), Int64(t))
    // U (T × F) · Wt[ξ] read as F × C (stored C × F) → O (T × C).
    data = try BatchedProduct(
      engine: engine, m: tt, k: f, n: c, aStrides: [tt * f, f, 1], bStrides: [c * f, 1, f], accumulate: false)
    // Vᵀ (C × T, V stored T × C) · Z (T × F) → acc (C × F).
    weights = try BatchedProduct(
      engine: engine, m: c, k: tt, n: f, aStrides: [tt * c, 1, c], bStrides: [tt * f, f, 1], accumulate: false)
    accumulatedWeights = try BatchedProduct(
      engine: engine, m: c, k: tt, n: f, aStrides: [tt * c, 1, c], bStrides: [tt * f, f, 1], accumulate: true)
    let isa = Self.isAvailable ? "avx2" : "c"
    implementation = "flip_winograd_4x3:\(isa) + \(data.implementation)"
    var s: dnnl_stream_t?
    try OneDNN.check(dnnl_stream_create(&s, engine, dnnl_stream_default_flags.rawValue), "dnnl_stream_create")
    stream = s!
  }

  deinit { dnnl_stream_destroy(stream) }

  /// `diffKernel (3, 3, C, F)` = the kernel's gradient (overwritten), then, when `diffSrc` is
  /// given, `diffSrc (B, H, W, C)` = the input's gradient through `kernel`. `scratch` holds
  /// `scratchBytes` bytes. With `quantizeCopy`, `src` is the raw input: it is copied into the
  /// scratch and quantized there.
  func backward(
    src: UnsafePointer<Float>, quantizeCopy: ((UnsafeMutablePointer<Float>, Int) -> Void)?,
    diffDst: UnsafePointer<Float>, kernel: UnsafePointer<Float>, diffKernel: UnsafeMutablePointer<Float>,
    diffSrc: UnsafeMutablePointer<Float>?, scratch: UnsafeMutableRawPointer
  ) throws {
    let g = geometry
    let (channels, filters, t) = (Int32(g.channels), Int32(self.filters), tilesPerChunk)
    let layout = Self.scratchLayout(batch: batch, geometry: g, filters: self.filters, tilesPerChunk: t)
    var x = src
    if let quantizeCopy {
      let copy = scratch.assumingMemoryBound(to: Float.self)
      let count = batch * g.inputSize
      compute.forEach(count: count) { r in (copy + r.lowerBound).update(from: src + r.lowerBound, count: r.count) }
      quantizeCopy(copy, count)
      x = UnsafePointer(copy)
    }
    let sums = (scratch + layout.sums).assumingMemoryBound(to: Float.self)
    let first = (scratch + layout.chunk).assumingMemoryBound(to: Float.self)
    let grain = 8
    // The kernel gradient, over dy's tiles: V (T × C) in `first`, Z (T × F) after it.
    var chunk = flip_winograd_chunk(
      height: Int32(g.outputHeight), width: Int32(g.outputWidth), tiles: outputTiles, first: 0, capacity: t)
    let source = flip_winograd_source(
      data: x, height: Int32(g.inputHeight), width: Int32(g.inputWidth), channels: channels, top: Int32(g.padTop),
      left: Int32(g.padLeft))
    let (v, z) = (first, first + 36 * t * Int(channels))
    for start in stride(from: 0, to: outputTiles, by: t) {
      chunk.first = start
      let c = chunk
      compute.forRanges(count: t, grain: grain) { r in
        flip_winograd_input_tiles(c, source, r.lowerBound, r.upperBound, v)
        flip_winograd_gradient_tiles(c, diffDst, filters, r.lowerBound, r.upperBound, z)
      }
      compute.applyToOneDNN()
      try (start == 0 ? weights : accumulatedWeights).run(a: v, b: z, c: sums, on: stream)
    }
    let channelGrain = max(1, g.channels / 16)
    compute.forRanges(count: g.channels, grain: channelGrain) { r in
      flip_winograd_kernel_gradient(sums, channels, filters, Int32(r.lowerBound), Int32(r.upperBound), diffKernel)
    }
    guard let diffSrc else { return }
    // The input gradient, over dx's tiles (dy padded by 2 − the forward's padding): the
    // transformed kernel in the sums' place, U (T × F) and O (T × C).
    compute.forRanges(count: g.channels, grain: channelGrain) { r in
      flip_winograd_kernel_for_data(kernel, channels, filters, Int32(r.lowerBound), Int32(r.upperBound), sums)
    }
    chunk = flip_winograd_chunk(
      height: Int32(g.inputHeight), width: Int32(g.inputWidth), tiles: inputTiles, first: 0, capacity: t)
    let gradientSource = flip_winograd_source(
      data: diffDst, height: Int32(g.outputHeight), width: Int32(g.outputWidth), channels: filters,
      top: Int32(2 - g.padTop), left: Int32(2 - g.padLeft))
    let (u, o) = (first, first + 36 * t * Int(filters))
    for start in stride(from: 0, to: inputTiles, by: t) {
      chunk.first = start
      let c = chunk
      compute.forRanges(count: t, grain: grain) { r in
        flip_winograd_input_tiles(c, gradientSource, r.lowerBound, r.upperBound, u)
      }
      compute.applyToOneDNN()
      try data.run(a: u, b: sums, c: o, on: stream)
      compute.forRanges(count: t, grain: grain) { r in
        flip_winograd_output_tiles(c, o, channels, r.lowerBound, r.upperBound, diffSrc)
      }
    }
  }

  /// oneDNN's matmul over 36 matrices at once: `c[ξ] (m × n) = a[ξ] (m × k) · b[ξ] (k × n)`, or
  /// `+=` (`accumulate`), with `a` and `b` read through strides (one of them transposed).
  final class BatchedProduct {
    let primitive: dnnl_primitive_t
    let a: dnnl_memory_t, b: dnnl_memory_t, c: dnnl_memory_t
    /// The primitive's scratchpad (user mode: no buffer shared with other primitives), if any.
    let scratchpad: dnnl_memory_t?
    let scratchpadBuffer: UnsafeMutableRawPointer?
    let implementation: String

    init(
      engine: dnnl_engine_t, m: Int64, k: Int64, n: Int64, aStrides: [Int64], bStrides: [Int64], accumulate: Bool
    ) throws {
      var (aDesc, bDesc, cDesc) = (dnnl_memory_desc_t(), dnnl_memory_desc_t(), dnnl_memory_desc_t())
      try OneDNN.check(
        dnnl_memory_desc_init_by_strides(&aDesc, 3, [36, m, k], dnnl_f32, aStrides), "dnnl_memory_desc_init_by_strides")
      try OneDNN.check(
        dnnl_memory_desc_init_by_strides(&bDesc, 3, [36, k, n], dnnl_f32, bStrides), "dnnl_memory_desc_init_by_strides")
      try OneDNN.check(
        dnnl_memory_desc_init_by_tag(&cDesc, 3, [36, m, n], dnnl_f32, dnnl_abc), "dnnl_memory_desc_init_by_tag")
      var desc = dnnl_matmul_desc_t()
      try OneDNN.check(dnnl_matmul_desc_init(&desc, &aDesc, &bDesc, nil, &cDesc), "dnnl_matmul_desc_init")
      let attributes = try OneDNN.Attributes(userScratchpad: ())
      if accumulate {
        var ops: dnnl_post_ops_t?
        try OneDNN.check(dnnl_post_ops_create(&ops), "dnnl_post_ops_create")
        defer { dnnl_post_ops_destroy(ops) }
        try OneDNN.check(dnnl_post_ops_append_sum(ops, 1), "dnnl_post_ops_append_sum")
        try OneDNN.check(dnnl_primitive_attr_set_post_ops(attributes.handle, ops), "dnnl_primitive_attr_set_post_ops")
      }
      var pd: dnnl_primitive_desc_t?
      try OneDNN.check(
        dnnl_primitive_desc_create(&pd, &desc, attributes.handle, engine, nil), "dnnl_primitive_desc_create (matmul)")
      defer { dnnl_primitive_desc_destroy(pd) }
      implementation = OneDNN.implementation(of: pd!)
      var p: dnnl_primitive_t?
      try OneDNN.check(dnnl_primitive_create(&p, pd), "dnnl_primitive_create (matmul)")
      primitive = p!
      func memory(_ d: UnsafePointer<dnnl_memory_desc_t>, _ handle: UnsafeMutableRawPointer?) throws -> dnnl_memory_t {
        var mem: dnnl_memory_t?
        try OneDNN.check(dnnl_memory_create(&mem, d, engine, handle), "dnnl_memory_create")
        return mem!
      }
      (a, b, c) = (
        try memory(&aDesc, flip_dnnl_memory_none()), try memory(&bDesc, flip_dnnl_memory_none()),
        try memory(&cDesc, flip_dnnl_memory_none())
      )
      let scratchpadDesc = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0)!
      let bytes = dnnl_memory_desc_get_size(scratchpadDesc)
      if bytes > 0 {
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
        scratchpadBuffer = buffer
        scratchpad = try memory(scratchpadDesc, buffer)
      } else {
        (scratchpadBuffer, scratchpad) = (nil, nil)
      }
    }

    deinit {
      dnnl_primitive_destroy(primitive)
      for m in [a, b, c] { dnnl_memory_destroy(m) }
      if let scratchpad { dnnl_memory_destroy(scratchpad) }
      scratchpadBuffer?.deallocate()
    }

    func run(
      a x: UnsafePointer<Float>, b y: UnsafePointer<Float>, c z: UnsafeMutablePointer<Float>, on stream: dnnl_stream_t
    )
      throws
    {
      for (m, p) in [
        (a, UnsafeMutableRawPointer(mutating: x)), (b, UnsafeMutableRawPointer(mutating: y)),
        (c, UnsafeMutableRawPointer(z)),
      ] {
        try OneDNN.check(dnnl_memory_set_data_handle(m, p), "dnnl_memory_set_data_handle")
      }
      var args = [
        dnnl_exec_arg_t(arg: flip_dnnl_arg_src(), memory: a), dnnl_exec_arg_t(arg: flip_dnnl_arg_weights(), memory: b),
        dnnl_exec_arg_t(arg: flip_dnnl_arg_dst(), memory: c),
      ]
      if let scratchpad { args.append(dnnl_exec_arg_t(arg: flip_dnnl_arg_scratchpad(), memory: scratchpad)) }
      try OneDNN.check(
        dnnl_primitive_execute(primitive, stream, Int32(args.count), &args), "dnnl_primitive_execute (matmul)")
      try OneDNN.check(dnnl_stream_wait(stream), "dnnl_stream_wait")
    }
  }
}
