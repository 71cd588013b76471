import CDNNL

// Legend: B batch, H/W input height/width, C input channels, KH/KW kernel, F filters,
// OH/OW output height/width. Activations NHWC, kernels HWIO (Keras's [KH, KW, C, F]).

/// oneDNN's convolution primitives for one layer shape and batch size: forward (fp32, or exact
/// int8 with int32 results), backward data and backward weights, all fp32 NHWC activations and
/// HWIO kernels. Kernels are reordered every call into the layout the primitive picked
/// (`format_tag_any`: with a plain HWIO layout oneDNN falls back to slow reference kernels),
/// and kernel gradients back to HWIO. Zero padding only (oneDNN pads with zeros).
///
/// Measured on binary layers of larq-cnn (1 thread): forward 1.3–1.7× faster than im2col +
/// GEMM, backward data 1.2× (no col2im), backward weights as fast without needing the columns.
///
/// The primitives are created for, and run on, `compute.oneDNNThreads` threads (oneDNN fixes a
/// primitive's thread count when it creates it).
///
/// With `backwardPrecision` `.bf16` the two backward convolutions take x, dy and the kernel
/// rounded to bfloat16 (accumulating in fp32, writing fp32 gradients): about twice as fast on
/// CPUs with AVX512_BF16 or AMX, and unavailable elsewhere (`TensorError.unsupportedPrecision`).
/// With `.winograd`, 3×3 stride-1 layers whose channels and filters are multiples of 16 run
/// both in fp32 through Winograd's F(4×4, 3×3): oneDNN's where it has one (AVX-512), on blocked
/// copies of x and dy (dx comes back through the same scratch), with their scratchpads
/// (transformed tiles, at most `oneDNNWinogradScratchpadLimit`) in the caller's scratch after
/// the copies, not in a global buffer of oneDNN's own; elsewhere (CPUs with AVX2 and FMA, and
/// layers whose oneDNN scratchpad would be larger) Flip's own (`WinogradBackward`), in the same
/// scratch. Other layers, and CPUs without AVX2, run `.fp32`.
public final class ConvolutionPrimitives {
  public let batch: Int
  public let geometry: ConvGeometry
  public let filters: Int
  public let int8Forward: Bool
  /// The factor of the int8 kernel's levels (see `exactInt8KernelScale`).
  public let int8KernelScale: Float
  /// The threads the primitives were created for and run on.
  public let compute: Compute
  /// The arithmetic of the two backward convolutions.
  public let backwardPrecision: BackwardPrecision
  /// Reorders of x and dy into the backward-weights primitive's operands (bf16, or fp32 in a
  /// blocked layout), and whether backward data takes the converted dy too (bf16, Winograd).
  private var weightsOperands: (src: Conversion, dst: Conversion, forData: Bool)?
  /// Winograd's backward data writes dx in the blocked layout (into the scratch of x's copy,
  /// read by then); this reorders it to NHWC.
  private var blockedDiffSrc: Conversion?
  /// Flip's own Winograd backward, where `.winograd` runs it (a layer oneDNN has none for).
  private var flipWinograd: WinogradBackward?
  /// Whether `backward` works on a copy of x in its scratch, which a `quantizeCopy` may quantize
  /// in place: fp32 copies in oneDNN's blocked layout (as large as x: no padding) for its
  /// backward weights, or Flip's Winograd's plain copy.
  public var copiesInput: Bool { weightsOperands != nil && backwardPrecision != .bf16 || flipWinograd != nil }
  /// Whether both backward convolutions run a Winograd F(4×4, 3×3) (`.winograd` on a layer that
  /// has one: oneDNN's or Flip's own).
  public var runsWinograd: Bool { blockedDiffSrc != nil || flipWinograd != nil }
  /// The larger of the Winograd primitives' scratchpads (0 without Winograd).
  private var winogradScratchpadBytes = 0
  /// The bytes of scratch `backward` uses (`backwardScratchBytes` for this batch).
  public var scratchBytes: Int {
    if let w = flipWinograd {
      return WinogradBackward.scratchBytes(
        batch: batch, geometry: geometry, filters: filters, tilesPerChunk: w.tilesPerChunk)
    }
    guard weightsOperands != nil else { return 0 }
    let size = backwardPrecision == .bf16 ? 2 : 4
    return Self.operandOffsets(size: size, batch: batch, geometry: geometry, filters: filters).end
      + winogradScratchpadBytes
  }

  private var forwardStep: Step
  private var backwardDataStep: Step
  private var backwardWeightsStep: Step

  /// The int8 forward multiplies the kernel's levels by 2 in its reorder and the products by
  /// 1/2 (an output scale), so the result is exact on every ISA. Without VNNI (AVX2, SSE4.1,
  /// AVX-512 before Cascade Lake) oneDNN's s8 × s8 convolution halves the weights in its
  /// reorder to avoid `vpmaddubsw` saturation (`scale_adjust` 0.5) and scales the products
  /// back: a ±1 level would become ±0.5 and round to 0, while a ±2 level becomes an exact ±1.
  /// With VNNI there is no halving and the ±2 products are halved exactly (even integers).
  ///
  /// Tests (and `flip train`'s fault injection) pass 1 instead, the scale before this fix, to
  /// reproduce wrong int8 convolutions on ISAs without VNNI, as `flip train`'s start-up check
  /// must catch.
  public static let exactInt8KernelScale: Float = 2

  /// - Parameters:
  ///   - int8KernelScale: the factor of the int8 kernel's levels (tests pass 1 to reproduce
  ///     the halved weights of ISAs without VNNI).
  ///   - compute: the threads the primitives are created for and run on.
  ///   - winogradTilesPerChunk: Flip's Winograd's tiles per chunk (nil: its default; tests cut
  ///     small batches into several chunks).
  public init(
    batch: Int, geometry g: ConvGeometry, filters: Int, int8Forward: Bool,
    int8KernelScale: Float = ConvolutionPrimitives.exactInt8KernelScale, backwardPrecision: BackwardPrecision = .fp32,
    compute: Compute, winogradTilesPerChunk: Int? = nil
  ) throws {
    self.batch = batch
    self.geometry = g
    self.filters = filters
    self.int8Forward = int8Forward
    self.int8KernelScale = int8KernelScale
    self.backwardPrecision = backwardPrecision
    self.compute = compute
    let bf16 = backwardPrecision == .bf16
    let tryWinograd = backwardPrecision == .winograd && Self.oneDNNWinogradCandidate(geometry: g, filters: filters)
    compute.applyToOneDNN()
    let engine = try Self.engine()
    let (src, wei, dst, strides, padL, padR) = Self.dimensions(batch: batch, geometry: g, filters: filters)
    func md(_ dims: [Int64], _ type: dnnl_data_type_t, _ tag: dnnl_format_tag_t) throws -> dnnl_memory_desc_t {
      var m = dnnl_memory_desc_t()
      try OneDNN.check(dnnl_memory_desc_init_by_tag(&m, 4, dims, type, tag), "dnnl_memory_desc_init_by_tag")
      return m
    }
    var srcF = try md(src, dnnl_f32, dnnl_nhwc)
    var dstF = try md(dst, dnnl_f32, dnnl_nhwc)
    var weiAnyF = try md(wei, dnnl_f32, dnnl_format_tag_any)
    let weiUserF = try md(wei, dnnl_f32, dnnl_hwio)
    // The fp32 forward: the primitive itself, or only the hint backward needs.
    var desc = dnnl_convolution_desc_t()
    try OneDNN.check(
      dnnl_convolution_forward_desc_init(
        &desc, dnnl_forward_training, dnnl_convolution_direct, &srcF, &weiAnyF, nil, &dstF, strides, padL, padR),
      "dnnl_convolution_forward_desc_init")
    var hint: dnnl_primitive_desc_t?
    try OneDNN.check(dnnl_primitive_desc_create(&hint, &desc, nil, engine, nil), "dnnl_primitive_desc_create")
    defer { dnnl_primitive_desc_destroy(hint) }
    if int8Forward {
      var src8 = try md(src, dnnl_s8, dnnl_nhwc)
      var dst32 = try md(dst, dnnl_s32, dnnl_nhwc)
      var weiAny8 = try md(wei, dnnl_s8, dnnl_format_tag_any)
      var desc8 = dnnl_convolution_desc_t()
      try OneDNN.check(
        dnnl_convolution_forward_desc_init(
          &desc8, dnnl_forward_inference, dnnl_convolution_direct, &src8, &weiAny8, nil, &dst32, strides, padL, padR),
        "dnnl_convolution_forward_desc_init (int8)")
      // The kernel levels are doubled in the reorder and the products halved: see `exactInt8KernelScale`.
      let attributes = try OneDNN.Attributes(outputScale: 1 / int8KernelScale)
      var pd: dnnl_primitive_desc_t?
      try OneDNN.check(
        dnnl_primitive_desc_create(&pd, &desc8, attributes.handle, engine, nil), "dnnl_primitive_desc_create (int8)")
      defer { dnnl_primitive_desc_destroy(pd) }
      forwardStep = try Step(
        pd: pd!, engine: engine, kernel: (try md(wei, dnnl_s8, dnnl_hwio), dnnl_query_weights_md, toUser: false),
        plain: [(flip_dnnl_arg_src(), src8), (flip_dnnl_arg_dst(), dst32)], kernelArg: flip_dnnl_arg_weights(),
        kernelScale: int8KernelScale)
    } else {
      forwardStep = try Step(
        pd: hint!, engine: engine, kernel: (weiUserF, dnnl_query_weights_md, toUser: false),
        plain: [(flip_dnnl_arg_src(), srcF), (flip_dnnl_arg_dst(), dstF)], kernelArg: flip_dnnl_arg_weights())
    }
    // bf16 backward: x, dy and the kernel in bf16, the gradients in fp32; its hint is a bf16
    // forward (oneDNN pairs backward primitives with a forward of the same types).
    var srcB = try md(src, dnnl_bf16, dnnl_nhwc)
    var dstB = try md(dst, dnnl_bf16, dnnl_nhwc)
    var weiAnyB = try md(wei, dnnl_bf16, dnnl_format_tag_any)
    var backwardHint = hint
    if bf16 {
      var descB = dnnl_convolution_desc_t()
      try OneDNN.check(
        dnnl_convolution_forward_desc_init(
          &descB, dnnl_forward_training, dnnl_convolution_direct, &srcB, &weiAnyB, nil, &dstB, strides, padL, padR),
        "dnnl_convolution_forward_desc_init (bf16)")
      backwardHint = nil
      let status = dnnl_primitive_desc_create(&backwardHint, &descB, nil, engine, nil)
      if status == dnnl_unimplemented { throw Self.bf16Unavailable }
      try OneDNN.check(status, "dnnl_primitive_desc_create (bf16)")
    }
    defer { if bf16 { dnnl_primitive_desc_destroy(backwardHint) } }
    var (weiAnyBackward, dstBackward, srcBackward) = bf16 ? (weiAnyB, dstB, srcB) : (weiAnyF, dstF, srcF)
    if tryWinograd, let w = try Self.winogradBackward(engine: engine, batch: batch, geometry: g, filters: filters) {
      defer { _ = (dnnl_primitive_desc_destroy(w.data), dnnl_primitive_desc_destroy(w.weights)) }
      let scratchpad = { (pd: dnnl_primitive_desc_t) in
        (flip_dnnl_arg_scratchpad(), dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0)!.pointee)
      }
      backwardDataStep = try Step(
        pd: w.data, engine: engine, kernel: (weiUserF, dnnl_query_weights_md, toUser: false),
        plain: [(flip_dnnl_arg_diff_dst(), w.dst), (flip_dnnl_arg_diff_src(), w.src), scratchpad(w.data)],
        kernelArg: flip_dnnl_arg_weights())
      backwardWeightsStep = try Step(
        pd: w.weights, engine: engine, kernel: (weiUserF, dnnl_query_diff_weights_md, toUser: true),
        plain: [(flip_dnnl_arg_src(), w.src), (flip_dnnl_arg_diff_dst(), w.dst), scratchpad(w.weights)],
        kernelArg: flip_dnnl_arg_diff_weights())
      weightsOperands = (
        try Conversion(from: srcF, to: w.src, engine: engine), try Conversion(from: dstF, to: w.dst, engine: engine),
        true
      )
      blockedDiffSrc = try Conversion(from: w.src, to: srcF, engine: engine)
      winogradScratchpadBytes = w.scratchpadBytes
      stream = try Self.makeStream(engine)
      return
    }
    // Where oneDNN's Winograd does not run, Flip's own may. The direct primitives below are made
    // all the same (the steps are not optional); with Flip's Winograd they never run, and hold
    // no more than their kernels' reordered copies.
    let ownWinograd = backwardPrecision == .winograd && WinogradBackward.isCandidate(geometry: g, filters: filters)
    let blocked = !bf16 && !ownWinograd && Self.blocksWeightsBackward(geometry: g, filters: filters)
    var dataDesc = dnnl_convolution_desc_t()
    try OneDNN.check(
      dnnl_convolution_backward_data_desc_init(
        &dataDesc, dnnl_convolution_direct, &srcF, &weiAnyBackward, &dstBackward, strides, padL, padR),
      "dnnl_convolution_backward_data_desc_init")
    var dataPD: dnnl_primitive_desc_t?
    let dataStatus = dnnl_primitive_desc_create(&dataPD, &dataDesc, nil, engine, backwardHint)
    if bf16 && dataStatus == dnnl_unimplemented { throw Self.bf16Unavailable }
    try OneDNN.check(dataStatus, "dnnl_primitive_desc_create")
    defer { dnnl_primitive_desc_destroy(dataPD) }
    backwardDataStep = try Step(
      pd: dataPD!, engine: engine, kernel: (weiUserF, dnnl_query_weights_md, toUser: false),
      plain: [(flip_dnnl_arg_diff_dst(), dstBackward), (flip_dnnl_arg_diff_src(), srcF)],
      kernelArg: flip_dnnl_arg_weights())
    // Without AVX-512, oneDNN's fp32 backward weights on plain NHWC runs far below its speed on
    // its own blocked layout (a 56×56×64 3×3 layer, batch 32, AVX2: 66 ms against 38 ms).
    var (srcWeights, dstWeights) = (srcBackward, dstBackward)
    if blocked {
      (srcWeights, dstWeights) = (
        try md(src, dnnl_f32, dnnl_format_tag_any), try md(dst, dnnl_f32, dnnl_format_tag_any)
      )
    }
    var weightsDesc = dnnl_convolution_desc_t()
    try OneDNN.check(
      dnnl_convolution_backward_weights_desc_init(
        &weightsDesc, dnnl_convolution_direct, &srcWeights, &weiAnyF, nil, &dstWeights, strides, padL, padR),
      "dnnl_convolution_backward_weights_desc_init")
    var weightsPD: dnnl_primitive_desc_t?
    let weightsStatus = dnnl_primitive_desc_create(&weightsPD, &weightsDesc, nil, engine, backwardHint)
    if bf16 && weightsStatus == dnnl_unimplemented { throw Self.bf16Unavailable }
    try OneDNN.check(weightsStatus, "dnnl_primitive_desc_create")
    defer { dnnl_primitive_desc_destroy(weightsPD) }
    if blocked {
      srcWeights = dnnl_primitive_desc_query_md(weightsPD, dnnl_query_src_md, 0)!.pointee
      dstWeights = dnnl_primitive_desc_query_md(weightsPD, dnnl_query_diff_dst_md, 0)!.pointee
    }
    backwardWeightsStep = try Step(
      pd: weightsPD!, engine: engine, kernel: (weiUserF, dnnl_query_diff_weights_md, toUser: true),
      plain: [(flip_dnnl_arg_src(), srcWeights), (flip_dnnl_arg_diff_dst(), dstWeights)],
      kernelArg: flip_dnnl_arg_diff_weights())
    let padded =
      dnnl_memory_desc_get_size(&srcWeights) != dnnl_memory_desc_get_size(&srcF)
      || dnnl_memory_desc_get_size(&dstWeights) != dnnl_memory_desc_get_size(&dstF)
    precondition(!blocked || !padded, "oneDNN padded a blocked layout of \(g.channels) channels, \(filters) filters")
    let plain = dnnl_memory_desc_equal(&srcWeights, &srcF) != 0 && dnnl_memory_desc_equal(&dstWeights, &dstF) != 0
    if bf16 || (blocked && !plain) {
      weightsOperands = (
        try Conversion(from: srcF, to: srcWeights, engine: engine),
        try Conversion(from: dstF, to: dstWeights, engine: engine), bf16
      )
    }
    if ownWinograd {
      flipWinograd = try WinogradBackward(
        batch: batch, geometry: g, filters: filters, compute: compute, tilesPerChunk: winogradTilesPerChunk)
    }
    // Last, so that nothing else can throw once the stream exists (deinit destroys it).
    stream = try Self.makeStream(engine)
  }

  /// A new stream on `engine` (each instance runs on its own).
  private static func makeStream(_ engine: dnnl_engine_t) throws -> dnnl_stream_t {
    var s: dnnl_stream_t?
    try OneDNN.check(dnnl_stream_create(&s, engine, dnnl_stream_default_flags.rawValue), "dnnl_stream_create")
    return s!
  }

  /// `dst (B, OH, OW, F) = conv(src (B, H, W, C), kernel (KH, KW, C, F))`: fp32 in and out, or
  /// (int8 forward) int8 src and kernel with int32 dst.
  public func forward(src: UnsafeRawPointer, kernel: UnsafeRawPointer, dst: UnsafeMutableRawPointer) throws {
    compute.applyToOneDNN()
    try forwardStep.run(
      plain: [UnsafeMutableRawPointer(mutating: src), dst], kernel: UnsafeMutableRawPointer(mutating: kernel),
      on: stream)
  }

  /// Both backward convolutions: `diffKernel (KH, KW, C, F)` = the kernel's gradient
  /// (overwritten, not accumulated), then, when `diffSrc` is given, `diffSrc (B, H, W, C)` = the
  /// input's gradient through `kernel`. `scratch` holds
  /// `backwardScratchBytes(batch:geometry:filters:precision:compute:)` bytes (x and dy rounded to bf16,
  /// or blocked fp32 copies, or Flip's Winograd's matrices). With `quantizeCopy` (only where
  /// `copiesInput`: the copy holds exactly x's values, perhaps in another order) `src` is the raw
  /// input and the elementwise quantizer runs on the copy in place.
  public func backward(
    src: UnsafePointer<Float>, quantizeCopy: ((UnsafeMutablePointer<Float>, Int) -> Void)? = nil,
    diffDst: UnsafePointer<Float>, kernel: UnsafePointer<Float>, diffKernel: UnsafeMutablePointer<Float>,
    diffSrc: UnsafeMutablePointer<Float>?, scratch: UnsafeMutableRawPointer?
  ) throws {
    precondition(quantizeCopy == nil || copiesInput, "quantizeCopy without a copy of x")
    if let w = flipWinograd {
      guard let scratch else { preconditionFailure("backward without its scratch") }
      try w.backward(
        src: src, quantizeCopy: quantizeCopy, diffDst: diffDst, kernel: kernel, diffKernel: diffKernel,
        diffSrc: diffSrc, scratch: scratch)
      return
    }
    compute.applyToOneDNN()
    let (x, dy) = (UnsafeMutableRawPointer(mutating: src), UnsafeMutableRawPointer(mutating: diffDst))
    var (xW, dyW, scratchpad) = (x, dy, [UnsafeMutableRawPointer]())
    if let operands = weightsOperands {
      guard let scratch else { preconditionFailure("backward without its scratch") }
      let offsets = Self.operandOffsets(
        size: backwardPrecision == .bf16 ? 2 : 4, batch: batch, geometry: geometry, filters: filters)
      (xW, dyW) = (scratch, scratch + offsets.dy)
      if runsWinograd { scratchpad = [scratch + offsets.end] }
      try operands.src.run(from: x, to: xW, on: stream)
      try operands.dst.run(from: dy, to: dyW, on: stream)
      quantizeCopy?(xW.assumingMemoryBound(to: Float.self), batch * geometry.inputSize)
    }
    try backwardWeightsStep.run(plain: [xW, dyW] + scratchpad, kernel: UnsafeMutableRawPointer(diffKernel), on: stream)
    guard let diffSrc else { return }
    // Winograd's dx goes to the blocked copy of x (read by now), then to NHWC.
    let dx = blockedDiffSrc == nil ? UnsafeMutableRawPointer(diffSrc) : xW
    try backwardDataStep.run(
      plain: [weightsOperands?.forData == true ? dyW : dy, dx] + scratchpad,
      kernel: UnsafeMutableRawPointer(mutating: kernel), on: stream)
    if let blockedDiffSrc {
      try blockedDiffSrc.run(from: dx, to: UnsafeMutableRawPointer(diffSrc), on: stream)
      try OneDNN.check(dnnl_stream_wait(stream), "dnnl_stream_wait")
    }
  }

  /// The bytes of scratch `backward` needs for `batch` samples in `precision`: x and dy as
  /// bf16, or as fp32 in the blocked layout (for the fp32 backward weights without AVX-512, and
  /// oneDNN's Winograd, followed by its scratchpad: the larger of its two primitives', which
  /// oneDNN is asked for, so this costs the creation of two primitive descriptions; callers keep
  /// the result), or Flip's Winograd's (`WinogradBackward.scratchBytes`). oneDNN's scratchpads
  /// depend on the thread count: `compute` must be the primitives'.
  public static func backwardScratchBytes(
    batch: Int, geometry g: ConvGeometry, filters: Int, precision: BackwardPrecision, compute: Compute
  ) throws -> Int {
    compute.applyToOneDNN()
    if precision == .winograd && oneDNNWinogradCandidate(geometry: g, filters: filters),
      let w = try winogradBackward(engine: engine(), batch: batch, geometry: g, filters: filters)
    {
      defer { _ = (dnnl_primitive_desc_destroy(w.data), dnnl_primitive_desc_destroy(w.weights)) }
      return operandOffsets(size: 4, batch: batch, geometry: g, filters: filters).end + w.scratchpadBytes
    }
    if precision == .winograd && WinogradBackward.isCandidate(geometry: g, filters: filters) {
      return WinogradBackward.scratchBytes(batch: batch, geometry: g, filters: filters)
    }
    let size = precision == .bf16 ? 2 : blocksWeightsBackward(geometry: g, filters: filters) ? 4 : 0
    return operandOffsets(size: size, batch: batch, geometry: g, filters: filters).end
  }

  /// Where, in `backward`'s scratch, the copy of dy starts (after x's) and where the two copies
  /// of `size`-byte elements end (Winograd's scratchpad starts there), each 64-byte aligned.
  private static func operandOffsets(size: Int, batch: Int, geometry g: ConvGeometry, filters: Int) -> (
    dy: Int, end: Int
  ) {
    let dy = aligned(size * batch * g.inputSize)
    return (dy, dy + aligned(size * batch * g.outputPixels * filters))
  }

  /// Whether an fp32 or Winograd backward may run on a copy of x (blocked with dy's for
  /// `blocksWeightsBackward`, or for a `winogradCandidate`); whether it does is the primitives'
  /// `copiesInput`.
  public static func copiesOperands(geometry g: ConvGeometry, filters: Int, precision: BackwardPrecision) -> Bool {
    precision != .bf16
      && (blocksWeightsBackward(geometry: g, filters: filters)
        || precision == .winograd && winogradCandidate(geometry: g, filters: filters))
  }

  /// Whether `.winograd` runs a Winograd backward on this layer: oneDNN's
  /// (`oneDNNWinogradCandidate`) or Flip's own (`WinogradBackward.isCandidate`: padding of at
  /// most 2, a CPU with AVX2 and FMA). Where oneDNN declines a shape (or its scratchpad exceeds
  /// `oneDNNWinogradScratchpadLimit`) Flip's runs if it can, else the direct fp32 convolutions.
  public static func winogradCandidate(geometry g: ConvGeometry, filters: Int) -> Bool {
    oneDNNWinogradCandidate(geometry: g, filters: filters)
      || WinogradBackward.isCandidate(geometry: g, filters: filters)
  }

  /// Whether `.winograd` asks oneDNN for Winograd on this layer: 3×3, stride 1, channels and
  /// filters filling its 16-wide blocks (so the blocked copies are as large as x and dy), on
  /// an AVX-512 ISA (oneDNN 2.x has no Winograd below it).
  static func oneDNNWinogradCandidate(geometry g: ConvGeometry, filters: Int) -> Bool {
    OneDNN.effectiveISA.hasPrefix("avx512") && g.kernelHeight == 3 && g.kernelWidth == 3 && g.strideHeight == 1
      && g.strideWidth == 1 && g.channels % 16 == 0 && filters % 16 == 0
  }

  /// oneDNN's Winograd backward-data and backward-weights primitive descriptions for this
  /// shape, with the blocked layouts they chose for x (and dx) and dy; nil when oneDNN has no
  /// Winograd for it, when its layouts are padded or differ between the two, or when its
  /// scratchpad exceeds `oneDNNWinogradScratchpadLimit` and Flip's Winograd can run the layer.
  private static func winogradBackward(engine: dnnl_engine_t, batch: Int, geometry g: ConvGeometry, filters: Int)
    throws -> (
      data: dnnl_primitive_desc_t, weights: dnnl_primitive_desc_t, src: dnnl_memory_desc_t, dst: dnnl_memory_desc_t,
      scratchpadBytes: Int
    )?
  {
    let (src, weightDims, dst, strides, padL, padR) = dimensions(batch: batch, geometry: g, filters: filters)
    var (srcAny, dstAny, wei) = (dnnl_memory_desc_t(), dnnl_memory_desc_t(), dnnl_memory_desc_t())
    try OneDNN.check(
      dnnl_memory_desc_init_by_tag(&srcAny, 4, src, dnnl_f32, dnnl_format_tag_any), "dnnl_memory_desc_init_by_tag")
    try OneDNN.check(
      dnnl_memory_desc_init_by_tag(&dstAny, 4, dst, dnnl_f32, dnnl_format_tag_any), "dnnl_memory_desc_init_by_tag")
    try OneDNN.check(
      dnnl_memory_desc_init_by_tag(&wei, 4, weightDims, dnnl_f32, dnnl_format_tag_any), "dnnl_memory_desc_init_by_tag")
    let plainSize = (src: 4 * batch * g.inputSize, dst: 4 * batch * g.outputPixels * filters)
    let attributes = try OneDNN.Attributes(userScratchpad: ())
    var forward = dnnl_convolution_desc_t()
    try OneDNN.check(
      dnnl_convolution_forward_desc_init(
        &forward, dnnl_forward_training, dnnl_convolution_winograd, &srcAny, &wei, nil, &dstAny, strides, padL, padR),
      "dnnl_convolution_forward_desc_init (Winograd)")
    var hint: dnnl_primitive_desc_t?
    guard dnnl_primitive_desc_create(&hint, &forward, nil, engine, nil) == dnnl_success else { return nil }
    defer { dnnl_primitive_desc_destroy(hint) }
    var (dataDesc, weightsDesc) = (dnnl_convolution_desc_t(), dnnl_convolution_desc_t())
    try OneDNN.check(
      dnnl_convolution_backward_data_desc_init(
        &dataDesc, dnnl_convolution_winograd, &srcAny, &wei, &dstAny, strides, padL, padR),
      "dnnl_convolution_backward_data_desc_init (Winograd)")
    try OneDNN.check(
      dnnl_convolution_backward_weights_desc_init(
        &weightsDesc, dnnl_convolution_winograd, &srcAny, &wei, nil, &dstAny, strides, padL, padR),
      "dnnl_convolution_backward_weights_desc_init (Winograd)")
    var (data, weightsPD): (dnnl_primitive_desc_t?, dnnl_primitive_desc_t?)
    guard dnnl_primitive_desc_create(&data, &dataDesc, attributes.handle, engine, hint) == dnnl_success, let data
    else { return nil }
    guard dnnl_primitive_desc_create(&weightsPD, &weightsDesc, attributes.handle, engine, hint) == dnnl_success,
      let weightsPD
    else {
      dnnl_primitive_desc_destroy(data)
      return nil
    }
    let query = { (pd: dnnl_primitive_desc_t, what: dnnl_query_t) in dnnl_primitive_desc_query_md(pd, what, 0)!.pointee
    }
    var (x, dy) = (query(weightsPD, dnnl_query_src_md), query(weightsPD, dnnl_query_diff_dst_md))
    var (dx, dyData) = (query(data, dnnl_query_diff_src_md), query(data, dnnl_query_diff_dst_md))
    guard dnnl_memory_desc_equal(&x, &dx) != 0, dnnl_memory_desc_equal(&dy, &dyData) != 0,
      dnnl_memory_desc_get_size(&x) == plainSize.src, dnnl_memory_desc_get_size(&dy) == plainSize.dst
    else {
      dnnl_primitive_desc_destroy(data)
      dnnl_primitive_desc_destroy(weightsPD)
      return nil
    }
    let scratchpad = { (pd: dnnl_primitive_desc_t) in
      dnnl_memory_desc_get_size(dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0))
    }
    let bytes = max(scratchpad(data), scratchpad(weightsPD))
    if bytes > oneDNNWinogradScratchpadLimit && WinogradBackward.isCandidate(geometry: g, filters: filters) {
      dnnl_primitive_desc_destroy(data)
      dnnl_primitive_desc_destroy(weightsPD)
      return nil
    }
    return (data, weightsPD, x, dy, bytes)
  }

  /// The largest scratchpad of oneDNN's Winograd that `.winograd` takes; above it Flip's own
  /// runs the layer where it can. Its scratch is the copy of x, 36·C·F sums and one chunk's
  /// matrices: birealnet18's 7×7×512 layers at batch 32 took 140 MB of scratchpad in oneDNN's
  /// backward weights against 60 MB of scratch in Flip's (which, on AVX-512, is slower by about
  /// 3 ms in each direction on those layers), and that one shape set the shared scratch of the
  /// whole network (147 MB against 58 for the direct backward).
  static let oneDNNWinogradScratchpadLimit = 64 << 20

  /// oneDNN's dimensions of a layer (NCHW order for x and dy, OIHW for the kernel), its strides,
  /// and its padding before and after (Keras's `same` puts an odd extra row and column at the
  /// bottom and right).
  private static func dimensions(batch: Int, geometry g: ConvGeometry, filters: Int) -> (
    src: [Int64], weights: [Int64], dst: [Int64], strides: [Int64], padL: [Int64], padR: [Int64]
  ) {
    let padBottom = max((g.outputHeight - 1) * g.strideHeight + g.kernelHeight - g.inputHeight - g.padTop, 0)
    let padRight = max((g.outputWidth - 1) * g.strideWidth + g.kernelWidth - g.inputWidth - g.padLeft, 0)
    return (
      [Int64(batch), Int64(g.channels), Int64(g.inputHeight), Int64(g.inputWidth)],
      [Int64(filters), Int64(g.channels), Int64(g.kernelHeight), Int64(g.kernelWidth)],
      [Int64(batch), Int64(filters), Int64(g.outputHeight), Int64(g.outputWidth)],
      [Int64(g.strideHeight), Int64(g.strideWidth)], [Int64(g.padTop), Int64(g.padLeft)],
      [Int64(padBottom), Int64(padRight)]
    )
  }

  /// Whether the fp32 backward weights runs on blocked copies of x and dy: on CPUs without
  /// AVX-512 (where oneDNN's plain-layout kernels are slow), for channel and filter counts that
  /// fill its 8- or 16-wide blocks (so the copies are as large as x and dy).
  public static func blocksWeightsBackward(geometry g: ConvGeometry, filters: Int) -> Bool {
    !OneDNN.effectiveISA.hasPrefix("avx512") && g.channels % 16 == 0 && filters % 16 == 0
  }

  /// `bytes` rounded up to a multiple of 64.
  static func aligned(_ bytes: Int) -> Int { (bytes + 63) & ~63 }

  /// Throws `TensorError.unsupportedPrecision` unless oneDNN has bf16 backward convolutions
  /// on this CPU (checked on a small convolution, before a run starts) in hardware: on AVX-512
  /// without BF16 (Skylake-SP to Ice Lake) oneDNN emulates them, and a birealnet18 step at 224
  /// took 2.2× as long as in fp32 (measured under `ONEDNN_MAX_CPU_ISA=AVX512_CORE`).
  public static func checkBF16Backward() throws {
    let isa = OneDNN.effectiveISA
    if isa.hasPrefix("avx512_core") && !["avx512_core_bf16", "avx512_core_amx"].contains(isa) {
      throw TensorError.unsupportedPrecision(
        "bf16 backward convolutions: oneDNN only emulates bf16 on this CPU (ISA \(isa), no AVX512_BF16 or AMX), 2.2× slower than fp32. Use backward_precision fp32"
      )
    }
    let g = try ConvGeometry(
      inputHeight: 4, inputWidth: 4, channels: 16, kernelHeight: 3, kernelWidth: 3, strideHeight: 1, strideWidth: 1,
      padding: .same)
    _ = try ConvolutionPrimitives(
      batch: 1, geometry: g, filters: 16, int8Forward: false, backwardPrecision: .bf16, compute: .serial)
  }

  /// Whether oneDNN has bf16 backward convolutions on this CPU (`checkBF16Backward`).
  public static let bf16BackwardIsAvailable = (try? checkBF16Backward()) != nil

  static let bf16Unavailable = TensorError.unsupportedPrecision(
    "bf16 backward convolutions: oneDNN has no bf16 convolution for this CPU (ISA \(OneDNN.effectiveISA); it needs AVX512_BF16 or AMX). Use backward_precision fp32"
  )

  /// oneDNN's implementation of the forward primitive, e.g. `jit_uni_int8:avx2` or `brgconv:avx512_core`.
  public var forwardImplementation: String { forwardStep.implementation }
  /// oneDNN's implementations of the backward-data and backward-weights primitives.
  public var backwardImplementations: (data: String, weights: String) {
    if let w = flipWinograd { return (w.implementation, w.implementation) }
    return (backwardDataStep.implementation, backwardWeightsStep.implementation)
  }

  /// The stream this instance's primitives run on (its own: layers of different threads,
  /// such as concurrent tests, never share one).
  private let stream: dnnl_stream_t

  deinit { dnnl_stream_destroy(stream) }

  /// The process's one CPU engine, created on first use. A `static let` is initialized
  /// exactly once even when threads race to it (an earlier lazily set `static var` let two
  /// threads each create an engine and run primitives of one on the stream of the other,
  /// which oneDNN rejects as invalid arguments).
  private static let sharedEngine: Result<Engine, TensorError> = {
    var e: dnnl_engine_t?
    let status = dnnl_engine_create(&e, dnnl_cpu, 0)
    guard status == dnnl_success, let e else {
      return .failure(.onednn(function: "dnnl_engine_create", status: Int(status.rawValue)))
    }
    return .success(Engine(handle: e))
  }()

  /// The engine's handle. `@unchecked Sendable`: it is created once and never destroyed, and a
  /// oneDNN engine may be used by several threads at once.
  struct Engine: @unchecked Sendable {
    let handle: dnnl_engine_t
  }

  static func engine() throws -> dnnl_engine_t { try sharedEngine.get().handle }

  /// One primitive with its plain (NHWC) arguments, and its kernel argument in the layout
  /// the primitive chose, reordered from or (`toUser`) to the HWIO user layout.
  final class Step {
    let primitive: dnnl_primitive_t
    let plainArgs: [Int32]
    let plainMemory: [dnnl_memory_t]
    let kernelArg: Int32
    /// The user-layout kernel, and (when the primitive's layout differs) its own copy and the reorder.
    let userKernel: dnnl_memory_t
    let primitiveKernel: dnnl_memory_t?
    let reorder: dnnl_primitive_t?
    let toUser: Bool
    var kernelBuffer: UnsafeMutableRawPointer?
    /// oneDNN's name of the implementation it picked, e.g. `jit_uni_int8:avx2`.
    let implementation: String

    init(
      pd: dnnl_primitive_desc_t, engine: dnnl_engine_t,
      kernel: (user: dnnl_memory_desc_t, query: dnnl_query_t, toUser: Bool),
      plain: [(Int32, dnnl_memory_desc_t)], kernelArg: Int32, kernelScale: Float = 1
    ) throws {
      var p: dnnl_primitive_t?
      try OneDNN.check(dnnl_primitive_create(&p, pd), "dnnl_primitive_create")
      primitive = p!
      implementation = OneDNN.implementation(of: pd)
      plainArgs = plain.map(\.0)
      plainMemory = try plain.map { arg in
        var m: dnnl_memory_t?
        var d = arg.1
        try OneDNN.check(dnnl_memory_create(&m, &d, engine, flip_dnnl_memory_none()), "dnnl_memory_create")
        return m!
      }
      self.kernelArg = kernelArg
      toUser = kernel.toUser
      var user = kernel.user
      var um: dnnl_memory_t?
      try OneDNN.check(dnnl_memory_create(&um, &user, engine, flip_dnnl_memory_none()), "dnnl_memory_create")
      userKernel = um!
      let chosen = dnnl_primitive_desc_query_md(pd, kernel.query, 0)!
      if dnnl_memory_desc_equal(chosen, &user) != 0 && kernelScale == 1 {
        primitiveKernel = nil
        reorder = nil
      } else {
        let size = dnnl_memory_desc_get_size(chosen)
        kernelBuffer = .allocate(byteCount: max(size, 64), alignment: 64)
        var km: dnnl_memory_t?
        try OneDNN.check(dnnl_memory_create(&km, chosen, engine, kernelBuffer), "dnnl_memory_create")
        primitiveKernel = km
        var rpd: dnnl_primitive_desc_t?
        let attributes = try OneDNN.Attributes(outputScale: kernelScale)
        if kernel.toUser {
          try OneDNN.check(
            dnnl_reorder_primitive_desc_create(&rpd, chosen, engine, &user, engine, attributes.handle),
            "dnnl_reorder_primitive_desc_create")
        } else {
          try OneDNN.check(
            dnnl_reorder_primitive_desc_create(&rpd, &user, engine, chosen, engine, attributes.handle),
            "dnnl_reorder_primitive_desc_create")
        }
        defer { dnnl_primitive_desc_destroy(rpd) }
        var r: dnnl_primitive_t?
        try OneDNN.check(dnnl_primitive_create(&r, rpd), "dnnl_primitive_create (reorder)")
        reorder = r
      }
    }

    deinit {
      dnnl_primitive_destroy(primitive)
      if let reorder { dnnl_primitive_destroy(reorder) }
      for m in plainMemory { dnnl_memory_destroy(m) }
      dnnl_memory_destroy(userKernel)
      if let primitiveKernel { dnnl_memory_destroy(primitiveKernel) }
      kernelBuffer?.deallocate()
    }

    func run(plain: [UnsafeMutableRawPointer], kernel: UnsafeMutableRawPointer, on stream: dnnl_stream_t) throws {
      for (m, p) in zip(plainMemory, plain) {
        try OneDNN.check(dnnl_memory_set_data_handle(m, p), "dnnl_memory_set_data_handle")
      }
      try OneDNN.check(dnnl_memory_set_data_handle(userKernel, kernel), "dnnl_memory_set_data_handle")
      let kernelMemory = primitiveKernel ?? userKernel
      func reorderKernel() throws {
        guard let reorder, let primitiveKernel else { return }
        var args = [
          dnnl_exec_arg_t(arg: flip_dnnl_arg_from(), memory: toUser ? primitiveKernel : userKernel),
          dnnl_exec_arg_t(arg: flip_dnnl_arg_to(), memory: toUser ? userKernel : primitiveKernel),
        ]
        try OneDNN.check(dnnl_primitive_execute(reorder, stream, 2, &args), "dnnl_primitive_execute (reorder)")
      }
      if !toUser { try reorderKernel() }
      var args = zip(plainArgs, plainMemory).map { dnnl_exec_arg_t(arg: $0.0, memory: $0.1) }
      args.append(dnnl_exec_arg_t(arg: kernelArg, memory: kernelMemory))
      try OneDNN.check(dnnl_primitive_execute(primitive, stream, Int32(args.count), &args), "dnnl_primitive_execute")
      if toUser { try reorderKernel() }
      try OneDNN.check(dnnl_stream_wait(stream), "dnnl_stream_wait")
    }
  }

  /// A reorder of one tensor between two memory descriptions: a type conversion (fp32 → bf16,
  /// rounded to nearest even) or a layout change (NHWC → oneDNN's blocked layout).
  final class Conversion {
    let primitive: dnnl_primitive_t
    let from: dnnl_memory_t, to: dnnl_memory_t

    init(from a: dnnl_memory_desc_t, to b: dnnl_memory_desc_t, engine: dnnl_engine_t) throws {
      var (a, b) = (a, b)
      var rpd: dnnl_primitive_desc_t?
      try OneDNN.check(
        dnnl_reorder_primitive_desc_create(&rpd, &a, engine, &b, engine, nil), "dnnl_reorder_primitive_desc_create")
      defer { dnnl_primitive_desc_destroy(rpd) }
      var p: dnnl_primitive_t?
      try OneDNN.check(dnnl_primitive_create(&p, rpd), "dnnl_primitive_create (reorder)")
      var (fm, tm): (dnnl_memory_t?, dnnl_memory_t?)
      try OneDNN.check(dnnl_memory_create(&fm, &a, engine, flip_dnnl_memory_none()), "dnnl_memory_create")
      try OneDNN.check(dnnl_memory_create(&tm, &b, engine, flip_dnnl_memory_none()), "dnnl_memory_create")
      (primitive, from, to) = (p!, fm!, tm!)
    }

    deinit {
      dnnl_primitive_destroy(primitive)
      dnnl_memory_destroy(from)
      dnnl_memory_destroy(to)
    }

    func run(from source: UnsafeMutableRawPointer, to target: UnsafeMutableRawPointer, on stream: dnnl_stream_t) throws
    {
      try OneDNN.check(dnnl_memory_set_data_handle(from, source), "dnnl_memory_set_data_handle")
      try OneDNN.check(dnnl_memory_set_data_handle(to, target), "dnnl_memory_set_data_handle")
      var args = [
        dnnl_exec_arg_t(arg: flip_dnnl_arg_from(), memory: from), dnnl_exec_arg_t(arg: flip_dnnl_arg_to(), memory: to),
      ]
      try OneDNN.check(dnnl_primitive_execute(primitive, stream, 2, &args), "dnnl_primitive_execute (reorder)")
    }
  }
}

/// The arithmetic of the backward convolutions: `fp32` (direct: exact products, fp32 sums; the
/// default), `winograd` (fp32 through Winograd's F(4×4, 3×3) transforms on the 3×3 stride-1
/// layers where oneDNN has it, AVX-512 only; measured within 7e-7 of the sum of the terms'
/// magnitudes, as direct fp32 is within 3e-7; elsewhere `fp32`), or `bf16` (x, dy and the
/// kernel rounded to bfloat16, fp32 accumulation and gradients).
public enum BackwardPrecision: String, Sendable, CaseIterable, Codable {
  case fp32, winograd, bf16
}
