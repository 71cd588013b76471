import Dispatch
import FlipBNN
import FlipComm
import FlipTensor

/// The sharded optimizer step (ZeRO stage 1): each bucket's gradients are reduce-scattered,
/// each rank updates its 1/N part of the bucket's variables and optimizer state (mean over the
/// global batch, update and `weight_clip` in one pass), and the parts are all-gathered.
///
/// With buckets (`bucketBytes` > 0) a bucket's reduce-scatter starts as soon as backward has
/// finished its layers; once it completes, during backward, the bucket is updated and its
/// all-gather started. Without, everything is one bucket handled after backward.
///
/// On the `compact` wire gradients travel as bfloat16 (summed in fp32 by the owner) and the
/// updated variables as `CompactCodec` encodes them: binary kernels as sign bits (with
/// per-channel sums of `|w|` for `magnitude_aware_sign`, whose mean over the whole kernel then
/// becomes the quantizer's `scaleOverride` on every rank). A rank holds the latent weights of
/// its own parts only (the others as `±c`, which train the same), and `gatherState` brings the
/// latent weights back for checkpoints and model files.
final class ShardedExchange: GradientExchange, ExchangeDiagnostics {
  let store: ParameterStore
  let optimizer: Optimizer
  let communicator: Communicator
  let layout: ShardLayout
  let overlap: Bool
  let wire: WireFormat
  /// Compact wire: each bucket's segments per rank, its words per rank, where each rank's
  /// words start, and a buffer for all ranks' encoded parts.
  private let codec: CompactCodec?
  private let segments: [[[CompactCodec.Segment]]]
  private let wordCounts: [[Int]]
  private let wordOffsets: [[Int]]
  private let wordBuffers: [UnsafeMutablePointer<UInt32>]
  private let signElements: Int
  /// Compact wire: each channel-mean kernel's bucket and its per-channel means, set from the
  /// gathered sums after every step (and from this rank's own copy of the whole kernel before
  /// the first, when every rank holds all latent weights).
  private let channelKernelBuckets: [Int]
  private var channelScales: [[Float]]
  /// Scratch for each channel-mean kernel's gathered sums.
  private var channelTotals: [[Double]]
  private var channelScalesSet = false
  /// The step in flight: each started bucket's reduce-scatter request, and how many buckets
  /// (in order) have been updated and their all-gathers started.
  private var reductions: [Int] = []
  private var started = 0
  private var updated = 0
  /// When each bucket's reduce-scatter and all-gather started (for the timeline).
  private var reductionStarts: [UInt64] = []
  private var gatherStarts: [UInt64] = []
  var trace: ((String, Int, UInt64, UInt64) -> Void)?
  var willWait: ((StallInspector.Phase) throws -> Void)?
  private var scale: Float = 1
  private var clock = TrainingClock()
  private var timer = StepTimer()

  init(model: Model, optimizer: Optimizer, communicator: Communicator, bucketBytes: Int, wire: WireFormat) throws {
    store = model.store
    self.optimizer = optimizer
    self.communicator = communicator
    self.wire = wire
    overlap = bucketBytes > 0
    let split = overlap && wire == .compact ? try Self.splitBottomKernel(of: model) : nil
    let layout = ShardLayout(
      buckets: GradientBucket.plan(
        views: model.store.views, capBytes: bucketBytes > 0 ? bucketBytes : .max, split: split),
      ranks: communicator.size, rank: communicator.rank)
    self.layout = layout
    if wire == .compact {
      let codec = CompactCodec(views: model.store.views, signKernels: model.signKernels)
      self.codec = codec
      channelKernelBuckets = codec.channelKernels.map { k in
        layout.buckets.firstIndex { $0.range.lowerBound <= k.range.lowerBound && k.range.upperBound <= $0.range.upperBound }!
      }
      channelScales = codec.channelKernels.map { [Float](repeating: 0, count: $0.channels) }
      channelTotals = codec.channelKernels.map { [Double](repeating: 0, count: $0.channels) }
      segments = layout.buckets.indices.map { b in
        layout.parts(of: b).map { codec.segments(of: $0) }
      }
      wordCounts = segments.map { $0.map(CompactCodec.words) }
      wordOffsets = wordCounts.map { counts in counts.indices.map { counts[..<$0].reduce(0, +) } }
      wordBuffers = wordCounts.map { .allocate(capacity: max($0.reduce(0, +), 1)) }
      signElements = codec.signRanges.reduce(0) { $0 + $1.range.count }
    } else {
      (codec, segments, wordCounts, wordOffsets, wordBuffers, signElements) = (nil, [], [], [], [], 0)
      (channelKernelBuckets, channelScales, channelTotals) = ([], [], [])
    }
  }

  deinit { for w in wordBuffers { w.deallocate() } }

  /// Row blocks of the bottom layer's kernel gradient on the compact wire. That gradient is
  /// final only when backward ends, and the next forward needs its update first, so its
  /// reduce-scatter would not overlap anything: in blocks, one travels while backward computes
  /// the next (binarynet-mlp's first layer: 0.8 MB of bf16 per rank, 6.4 ms at 1 Gb/s, of
  /// which one block is left). Two, not more: oneDNN's sgemm runs this transposed product
  /// about half as fast per row below about 390 rows (AVX2, 1 thread: 784 × 1024 × 512 in
  /// 9.3–10.3 ms whole or in 2 blocks, 18–23 ms in 4). Blocked GEMMs may round differently
  /// from one GEMM, so the fp32 wire, which matches one process bit for bit, keeps one.
  static let bottomKernelBlocks = 2

  /// The split of the lowest layer with variables, if it is a dense layer with a kernel whose
  /// signs travel as they are (not per-channel means) or in fp32; asks the model to compute
  /// that kernel's gradient in the split's row blocks.
  private static func splitBottomKernel(of model: Model) throws -> GradientBucket.KernelSplit? {
    guard let bottom = model.store.views.map(\.layerIndex).min(),
      let dense = model.layers[bottom] as? QuantDense,
      let view = model.store.views.firstIndex(where: { $0.layerIndex == bottom && $0.role == .kernel }),
      !model.signKernels.contains(where: {
        if case .channelMean = $0.encoding { return $0.view == view } else { return false }
      }),
      model.store.views[view].count / dense.units >= 2
    else { return nil }
    try model.computeKernelGradient(ofLayer: bottom, inRowBlocks: bottomKernelBlocks)
    return GradientBucket.KernelSplit(view: view, blocks: bottomKernelBlocks, rowLength: dense.units)
  }

  var description: String {
    let buckets = "\(layout.buckets.count) bucket\(layout.buckets.count == 1 ? "" : "s")"
    switch wire {
    case .fp32: return "sharded (ZeRO-1), fp32 wire, \(buckets)"
    case .compact:
      return
        "sharded (ZeRO-1), compact wire (bf16 gradients; \(signElements) of \(store.values.count) variables as sign bits), \(buckets)"
    }
  }

  var wireFormat: WireFormat { wire }
  var overlapsBackward: Bool { overlap }

  var bytesSentPerStep: Int {
    let me = communicator.rank
    let ranks = communicator.size
    var bytes = 0
    for (b, counts) in layout.counts.enumerated() {
      // The reduce-scatter sends every other rank its block; the all-gather this rank's part.
      let others = counts.enumerated().filter { $0.offset != me }.reduce(0) { $0 + $1.element }
      bytes += others * (wire == .compact ? 2 : 4)
      bytes += (ranks - 1) * 4 * (wire == .compact ? wordCounts[b][me] : counts[me])
    }
    return bytes
  }

  func beginStep(gradientScale: Float, clock: TrainingClock, timer: StepTimer) throws {
    (scale, self.clock, self.timer) = (gradientScale, clock, timer)
    reductions.removeAll(keepingCapacity: true)
    reductionStarts.removeAll(keepingCapacity: true)
    gatherStarts.removeAll(keepingCapacity: true)
    started = 0
    updated = 0
    if !channelScalesSet, !channelScales.isEmpty {
      // Every rank holds every latent weight now (initialized alike, or restored): each
      // encodes what every owner would send, so the means equal those later steps gather.
      for b in Set(channelKernelBuckets) { encodeEveryPart(of: b, into: wordBuffers[b], channelSums: true) }
      setChannelScales()
    }
  }

  func layerFinished(_ index: Int) throws { try backwardReached(layer: index) }

  func kernelRowsFinished(layer index: Int, rows: Int) throws { try backwardReached(layer: index, rows: rows) }

  /// During backward: starts what is final (see `startReductions`) and updates what is reduced.
  private func backwardReached(layer: Int, rows: Int? = nil) throws {
    try startReductions(after: layer, rows: rows)
    timer.lap(\.compute)
    try updateReducedBuckets(wait: false)
  }

  func finishStep() throws {
    try startReductions(after: 0)
    timer.lap(\.communication)
    try updateReducedBuckets(wait: true)
    try willWait?(.gathers)
    try communicator.waitOutstanding()
    if let trace {
      // The gathers' completion is known when the wait returns (an upper bound).
      let end = DispatchTime.now().uptimeNanoseconds
      for (b, start) in gatherStarts.enumerated() { trace("all-gather bucket \(b)", 200 + b, start, end) }
    }
    if wire == .compact {
      setChannelScales()
      decodeOtherParts()
    }
    timer.lap(\.communication)
    optimizer.iterations += 1
  }

  /// Starts the reduce-scatter of every bucket, in order, that backward has made final: those
  /// whose layers are all at or above `layer`, or with `rows`, up to that many rows of
  /// `layer`'s split kernel.
  private func startReductions(after layer: Int, rows: Int? = nil) throws {
    let g = store.gradients.pointer
    let gradientWire: GradientWire = wire == .compact ? .bf16 : .fp32
    while started < layout.buckets.count && layout.buckets[started].isReady(afterLayer: layer, rows: rows) {
      let b = layout.buckets[started]
      if trace != nil { reductionStarts.append(DispatchTime.now().uptimeNanoseconds) }
      reductions.append(
        try communicator.startReduceScatterSum(
          g + b.range.lowerBound, counts: layout.counts[started], wire: gradientWire))
      started += 1
    }
    try communicator.progressOutstanding()
  }

  /// Bucket by bucket in order: once its reduce-scatter is complete (`wait`: after waiting for
  /// it), this rank updates its part and starts the all-gather of the parts. The bucket's
  /// layers are behind backward already, so neither touches what backward still reads.
  private func updateReducedBuckets(wait: Bool) throws {
    while updated < reductions.count {
      let b = updated
      if wait {
        try willWait?(.bucket(b))
        try communicator.wait(reductions[b])
        timer.lap(\.communication)
      } else if try !communicator.isComplete(reductions[b]) {
        return
      }
      if let trace { trace("reduce-scatter bucket \(b)", 100 + b, reductionStarts[b], DispatchTime.now().uptimeNanoseconds) }
      optimizer.update(store: store, clock: clock, gradientScale: scale, part: ParameterPart([layout.mine[b]]))
      if trace != nil { gatherStarts.append(DispatchTime.now().uptimeNanoseconds) }
      try startGather(b)
      updated += 1
      timer.lap(\.optimizer)
    }
  }

  private func startGather(_ b: Int) throws {
    switch wire {
    case .fp32:
      try communicator.startAllgather(store.values.pointer + layout.buckets[b].range.lowerBound, counts: layout.counts[b])
    case .compact:
      let me = communicator.rank
      CompactCodec.encode(store.values.pointer, segments[b][me], into: wordBuffers[b] + wordOffsets[b][me])
      try communicator.startAllgather(words: wordBuffers[b], counts: wordCounts[b])
    }
  }

  /// Compact wire: the other ranks' parts of every bucket, from the gathered words.
  private func decodeOtherParts() {
    for b in layout.buckets.indices {
      for (r, parts) in segments[b].enumerated() where r != communicator.rank {
        CompactCodec.decode(wordBuffers[b] + wordOffsets[b][r], parts, into: store.values.pointer, scales: channelScales)
      }
    }
  }

  /// Compact wire: every rank's part of bucket `b`, encoded from this rank's values and laid out
  /// as the all-gather lays them out.
  private func encodeEveryPart(of b: Int, into words: UnsafeMutablePointer<UInt32>, channelSums: Bool) {
    for (r, parts) in segments[b].enumerated() {
      CompactCodec.encode(store.values.pointer, parts, into: words + wordOffsets[b][r], channelSums: channelSums)
    }
  }

  /// Compact wire: each channel-mean kernel's per-channel mean `|w|` from the sums in the
  /// gathered words (the same on every rank), set as its quantizer's `scaleOverride`.
  private func setChannelScales() {
    guard let codec else { return }
    for (k, kernel) in codec.channelKernels.enumerated() {
      let b = channelKernelBuckets[k]
      for c in 0..<kernel.channels { channelTotals[k][c] = 0 }
      codec.addChannelTotals(
        kernel: k, parts: segments[b], words: wordBuffers[b], offsets: wordOffsets[b], into: &channelTotals[k])
      let rows = Double(kernel.range.count / kernel.channels)
      for c in 0..<kernel.channels { channelScales[k][c] = Float(channelTotals[k][c] / rows) }
      kernel.quantizer.scaleOverride = channelScales[k]
    }
    channelScalesSet = true
  }

  func gatherState() throws {
    if wire == .compact { try layout.allgather(store.values, communicator: communicator) }
    for s in optimizer.stateBuffers { try layout.allgather(s.buffer, communicator: communicator) }
  }

  /// The forward weights (each rank's own parts as they travel: binary kernels by their signs on
  /// the compact wire, and the channel means) and the step count; the optimizer state is valid
  /// in own parts only.
  func replicaChecksum() -> UInt64 {
    guard wire == .compact else { return fnv1a64(store.values) ^ UInt64(optimizer.iterations) }
    var h = FNV1a.offsetBasis
    for b in layout.buckets.indices {
      let total = wordCounts[b].reduce(0, +)
      let words = UnsafeMutablePointer<UInt32>.allocate(capacity: max(total, 1))
      defer { words.deallocate() }
      words.initialize(repeating: 0, count: total)
      // The sums are of the latent weights, which only their owner holds: left out.
      encodeEveryPart(of: b, into: words, channelSums: false)
      UnsafeRawPointer(words).withMemoryRebound(to: Float.self, capacity: total) {
        h = FNV1a.hash(floats: $0, count: total, seed: h)
      }
    }
    for scales in channelScales {
      h = scales.withUnsafeBufferPointer { FNV1a.hash(floats: $0.baseAddress!, count: $0.count, seed: h) }
    }
    return h ^ UInt64(optimizer.iterations)
  }

  func communicationAlone(repeats: Int) throws -> Double {
    let g = store.gradients.pointer
    let gradientWire: GradientWire = wire == .compact ? .bf16 : .fp32
    try communicator.barrier()
    let start = DispatchTime.now().uptimeNanoseconds
    for _ in 0..<repeats {
      for (b, counts) in zip(layout.buckets, layout.counts) {
        try communicator.startReduceScatterSum(g + b.range.lowerBound, counts: counts, wire: gradientWire)
      }
      try communicator.waitOutstanding()
      for b in layout.buckets.indices {
        switch wire {
        case .fp32: try communicator.startAllgather(g + layout.buckets[b].range.lowerBound, counts: layout.counts[b])
        case .compact: try communicator.startAllgather(words: wordBuffers[b], counts: wordCounts[b])
        }
      }
      try communicator.waitOutstanding()
    }
    return Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6 / Double(repeats)
  }
}
