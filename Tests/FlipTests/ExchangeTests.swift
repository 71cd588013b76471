import FlipBNN
@testable import FlipComm
import FlipTensor
import Foundation
import Logging
import Testing

@testable import FlipTraining

/// The gradient exchanges on N ranks as threads of this process (`ThreadGroup`): each strategy
/// against the others and against one process, the compact wire's encodings, and the
/// in-process communicator itself.
@Suite("Gradient exchanges in process")
struct ExchangeTests {
  // MARK: - The in-process communicator

  /// The tree's shape: split at the largest power of two below n, so 4 contributions add as
  /// (c₀ + c₁) + (c₂ + c₃). With 1, 2⁻²⁴, 2⁻²⁴, −1 that is 2⁻²⁴ (left to right it would be 0),
  /// in fp32 and bf16 contributions, and in both communicators' reductions.
  @Test func contributionTreeAddsInPairs() throws {
    #expect([2, 3, 4, 5, 8, 9].map(ContributionTree.leftCount) == [1, 2, 2, 4, 4, 8])
    let tiny = Float(1) / Float(1 << 24)
    let values: [Float] = [1, tiny, tiny, -1]
    #expect(((values[0] + values[1]) + values[2]) + values[3] == 0)
    #expect(ContributionTree.sum(contributions: 4) { values[$0] } == tiny)
    let count = 37
    let columns = values.map { [Float](repeating: $0, count: count) }
    var out = [Float](repeating: .nan, count: count)
    columns[0].withUnsafeBufferPointer { a in
      columns[1].withUnsafeBufferPointer { b in
        columns[2].withUnsafeBufferPointer { c in
          columns[3].withUnsafeBufferPointer { d in
            let sources = [a, b, c, d].map { $0.baseAddress! }
            ContributionTree.sum(sources, into: &out, count: count)
          }
        }
      }
    }
    #expect(out.allSatisfy { $0 == tiny })
    let halves = columns.map { column in column.map { UInt16(truncatingIfNeeded: $0.bitPattern >> 16) } }
    out = [Float](repeating: .nan, count: count)
    let pointers = halves.map { h -> UnsafeMutablePointer<UInt16> in
      let p = UnsafeMutablePointer<UInt16>.allocate(capacity: count)
      p.initialize(from: h, count: count)
      return p
    }
    defer { for p in pointers { p.deallocate() } }
    ContributionTree.sum(bfloat16: pointers.map { UnsafePointer($0) }, into: &out, count: count)
    #expect(out.allSatisfy { $0 == tiny })
    let reduced = ThreadGroup(size: 4).run { c -> [Float] in
      var x = [Float](repeating: values[c.rank], count: 3)
      try c.allreduceSum(&x, count: 3)
      var y = [Float](repeating: values[c.rank], count: 8)
      try c.reduceScatterSum(&y, counts: [2, 2, 2, 2])
      return x + y[(2 * c.rank)..<(2 * c.rank + 2)]
    }
    for r in reduced { #expect(try r.get() == [Float](repeating: tiny, count: 5)) }
  }

  @Test(arguments: [1, 2, 3])
  func threadCommunicatorCollectives(ranks: Int) throws {
    let results = ThreadGroup(size: ranks).run { c -> [Float] in
      let r = Float(c.rank + 1)
      var out: [Float] = []
      var a: [Float] = [r, 2 * r, 3 * r]
      try c.allreduceSum(&a, count: 3)
      out += a
      var d: [Double] = [Double(r)]
      try c.allreduceSum(&d)
      out.append(Float(d[0]))
      var b: [Float] = c.rank == ranks - 1 ? [7, 8] : [0, 0]
      try c.broadcast(&b, count: 2, root: ranks - 1)
      out += b
      let checks = try c.allgather(UInt64(c.rank * 10))
      out += checks.map(Float.init)
      try c.barrier()
      return out
    }
    let total = Float(ranks * (ranks + 1) / 2)
    for (rank, result) in results.enumerated() {
      let sums: [Float] = [total, 2 * total, 3 * total, total, 7, 8]
      let gathered: [Float] = (0..<ranks).map { Float($0 * 10) }
      let want = sums + gathered
      #expect(try result.get() == want, "rank \(rank)")
    }
  }

  /// Started reduce-scatters and all-gathers complete whatever order each rank polls them in:
  /// rank 0 waits for its gather before the reduction, the others the other way round.
  @Test func startedOperationsCompleteInAnyOrder() throws {
    let counts = [3, 2, 2]
    let results = ThreadGroup(size: 3).run { c -> [Float] in
      var grads: [Float] = (0..<7).map { Float($0 + 1) * Float(c.rank + 1) }
      var values: [Float] = (0..<7).map { _ in Float(c.rank) }
      let reduction = try grads.withUnsafeMutableBufferPointer {
        try c.startReduceScatterSum($0.baseAddress!, counts: counts, wire: .fp32)
      }
      let gather = try values.withUnsafeMutableBufferPointer { try c.startAllgather($0.baseAddress!, counts: counts) }
      if c.rank == 0 {
        try c.wait(gather)
        try c.wait(reduction)
      } else {
        while try !c.isComplete(reduction) {}
        try c.wait(gather)
      }
      try c.waitOutstanding()
      let mine = counts[..<c.rank].reduce(0, +)..<counts[...c.rank].reduce(0, +)
      return Array(grads[mine]) + values
    }
    let sums: [Float] = (0..<7).map { Float($0 + 1) * 6 }
    let owners: [Float] = [0, 0, 0, 1, 1, 2, 2]
    for (rank, r) in results.enumerated() {
      let mine = counts[..<rank].reduce(0, +)..<counts[...rank].reduce(0, +)
      #expect(try r.get() == Array(sums[mine]) + owners, "rank \(rank)")
    }
  }

  // MARK: - The compact wire's encodings

  @Test func bfloat16RoundsToNearestEven() {
    var x: [Float] = [1, 1 + 1.0 / 256, 1 + 3.0 / 256, -2.5, 0, -0.0, .infinity, 65504, Float(bitPattern: 0x0001_16C2), .nan]
    var bits = [UInt16](repeating: 0, count: x.count)
    encodeBFloat16(x, &bits, count: x.count)
    let want: [UInt16] = [0x3F80, 0x3F80, 0x3F82, 0xC020, 0x0000, 0x8000, 0x7F80, 0x4780, 0x0001]
    #expect(Array(bits.prefix(9)) == want)
    #expect(float(fromBFloat16: bits[9]).isNaN)
    // The vector loop (16 lanes) and the scalar tail agree.
    let many = randomValues(37, seed: 4, in: -1000...1000)
    var vector = [UInt16](repeating: 0, count: 37)
    encodeBFloat16(many, &vector, count: 37)
    #expect(vector == many.map(bfloat16Bits))
    roundToBFloat16(&x, count: 4)
    let rounded: [Float] = [1, 1, 1 + 4.0 / 256, -2.5]
    #expect(Array(x.prefix(4)) == rounded)
  }

  /// Sign segments travel as bits (`sign(0) = +1`, also for −0) and come back as ±magnitude;
  /// float segments exactly; segments cut where the kernels begin and end.
  @Test func compactCodecRoundTrip() throws {
    let store = makeStore([
      ParameterSpec(role: .kernel, shape: [5, 13], precision: 1, constraint: .weightClip(clipValue: 0.5), initializer: .zeros),
      ParameterSpec(role: .bias, shape: [13], initializer: .zeros),
    ])
    let codec = CompactCodec(views: store.views, signKernels: [SignKernel(view: 0, encoding: .magnitude(0.5))])
    let part = 40..<75  // the kernel's tail (25 elements) and 10 of the bias
    let segments = codec.segments(of: part)
    #expect(segments == [.init(range: 40..<65, encoding: .sign(magnitude: 0.5)), .init(range: 65..<75, encoding: .fp32)])
    #expect(CompactCodec.words(segments) == 1 + 10)
    var values = randomValues(78, seed: 9)
    values[41] = 0
    values[42] = -0.0
    var words = [UInt32](repeating: 0, count: 11)
    CompactCodec.encode(values, segments, into: &words)
    var decoded = [Float](repeating: .nan, count: 78)
    CompactCodec.decode(words, segments, into: &decoded)
    for i in part {
      let want = i < 65 ? (values[i] >= 0 ? Float(0.5) : -0.5) : values[i]
      #expect(decoded[i] == want, "element \(i)")
    }
    #expect(decoded[41] == 0.5 && decoded[42] == 0.5)
    #expect(decoded[..<40].allSatisfy(\.isNaN) && decoded[75...].allSatisfy(\.isNaN), "outside the part")
    // Whole words (the vector path) and a tail, across a longer kernel.
    let long = makeStore([
      ParameterSpec(role: .kernel, shape: [100], precision: 1, constraint: .weightClip(clipValue: 1), initializer: .zeros)
    ])
    let all = CompactCodec(views: long.views, signKernels: [SignKernel(view: 0, encoding: .magnitude(1))])
      .segments(of: 3..<100)
    let x = randomValues(100, seed: 2)
    var w = [UInt32](repeating: 0, count: CompactCodec.words(all))
    CompactCodec.encode(x, all, into: &w)
    var y = [Float](repeating: 0, count: 100)
    CompactCodec.decode(w, all, into: &y)
    #expect((3..<100).allSatisfy { y[$0] == binarySign(x[$0]) })
  }

  /// A `magnitude_aware_sign` kernel's segments carry their signs and per-channel sums of
  /// |w|; the sums of all parts add up to the whole kernel's, and signs decode as ±mean.
  @Test func compactCodecChannelMeans() throws {
    // A (7, 5) kernel: 5 channels of 7 rows, cut into 3 parts that split rows.
    let store = makeStore([
      ParameterSpec(role: .kernel, shape: [7, 5], precision: 1, constraint: .weightClip(clipValue: 1), initializer: .zeros),
      ParameterSpec(role: .bias, shape: [5], initializer: .zeros),
    ])
    let quantizer = MagnitudeAwareSign()
    let codec = CompactCodec(
      views: store.views, signKernels: [SignKernel(view: 0, encoding: .channelMean(channels: 5, quantizer: quantizer))])
    #expect(codec.channelKernels.count == 1)
    let parts = [0..<12, 12..<33, 33..<40]
    let segments = parts.map { codec.segments(of: $0) }
    #expect(segments[1] == [.init(range: 12..<33, encoding: .channelSign(kernel: 0, offset: 0, channels: 5))])
    #expect(segments[2].map(\.encoding) == [.channelSign(kernel: 0, offset: 0, channels: 5), .fp32])
    // Signs (one word) and 5 float64 sums (10 words); the bias's 5 floats.
    #expect(CompactCodec.words(segments[2]) == 1 + 10 + 5)
    let values = randomValues(40, seed: 4)
    let counts = segments.map(CompactCodec.words)
    var words = [UInt32](repeating: 0, count: counts.reduce(0, +))
    let offsets = [0, counts[0], counts[0] + counts[1]]
    words.withUnsafeMutableBufferPointer { w in
      for r in 0..<3 { CompactCodec.encode(values, segments[r], into: w.baseAddress! + offsets[r]) }
    }
    var totals = [Double](repeating: 0, count: 5)
    codec.addChannelTotals(kernel: 0, parts: segments, words: words, offsets: offsets, into: &totals)
    for c in 0..<5 {
      let whole = (0..<7).reduce(0.0) { $0 + Double(abs(values[$1 * 5 + c])) }
      #expect(abs(totals[c] - whole) < 1e-12, "channel \(c)")
    }
    let scales = [(0..<5).map { Float(totals[$0] / 7) }]
    var decoded = [Float](repeating: .nan, count: 40)
    words.withUnsafeBufferPointer { w in
      CompactCodec.decode(w.baseAddress! + offsets[1], segments[1], into: &decoded, scales: scales)
    }
    for i in 12..<33 { #expect(decoded[i] == (values[i] >= 0 ? scales[0][i % 5] : -scales[0][i % 5]), "element \(i)") }
    // A whole-kernel quantizer given these means computes what it computes from the weights.
    var fromWeights = [Float](repeating: 0, count: 35)
    quantizer.forward(values, &fromWeights, count: 35, channels: 5)
    let own = quantizer.scale
    quantizer.scaleOverride = scales[0]
    var fromSums = [Float](repeating: 0, count: 35)
    quantizer.forward(values, &fromSums, count: 35, channels: 5)
    #expect(own == scales[0] && fromSums == fromWeights)
  }

  // MARK: - Strategies

  /// A small binary MLP for 6×6 images: binary kernels that travel as signs (ste_sign under
  /// weight_clip), BatchNorm, an fp32 last layer with a bias.
  static let specs: [LayerSpec] = {
    var specs = ModelPreset.binarynetMLP.layers
    for i in specs.indices where specs[i].kind == .quantDense { specs[i].units = specs[i].units == 10 ? 2 : 40 }
    return specs
  }()

  /// `specs` with `magnitude_aware_sign` kernels (Bi-Real Net's) in the hidden layers.
  static let channelMeanSpecs: [LayerSpec] = specs.map { spec in
    var spec = spec
    if spec.kind == .quantDense && spec.units == 40 { spec.kernelQuantizer = QuantizerSpec("magnitude_aware_sign") }
    return spec
  }

  /// Trains `steps` steps of global batch 24 on `ranks` threads with `options`; returns each
  /// rank's variables after `gatherState`, its forward weights' checksum and the losses.
  func train(
    ranks: Int, steps: Int = 6, specs: [LayerSpec] = Self.specs, trainSize: Int = 120,
    configure: @escaping @Sendable (inout TrainingOptions) -> Void
  ) throws -> [(values: [Float], checksum: UInt64, description: String)] {
    let dir = temporaryDirectory("flip-exchange")
    writeToyDataset(to: dir, train: trainSize, test: 16)
    let data = try DataSplits.load(directory: dir)
    let results = ThreadGroup(size: ranks).run { c -> ([Float], UInt64, String) in
      let model = try Model(specs: specs, inputShape: [6, 6, 1], seed: 3)
      var options = TrainingOptions(epochs: 1, batchSize: 24, seed: 1, logEverySteps: 0)
      configure(&options)
      let trainer = try Trainer(
        model: model, optimizer: try OptimizerSpec.adam(learningRate: 0.01).make(), communicator: c, data: data,
        options: options, logger: Logger(label: "test"))
      let order = trainer.sampler.permutation(epoch: 0)
      for s in 0..<steps { _ = try trainer.step(order: order, stepInEpoch: s % trainer.sampler.stepsPerEpoch) }
      let checksum = trainer.replicaChecksum()
      try trainer.exchange.gatherState()
      return (model.store.values.array, checksum, trainer.exchange.description)
    }
    return try results.map { try $0.get() }
  }

  @Test func everyFp32StrategyGivesTheSameBits() throws {
    let single = try train(ranks: 1) { $0.syncBatchNorm = true }
    #expect(single[0].description == "one process")
    for ranks in [2, 3] {
      var runs: [[(values: [Float], checksum: UInt64, description: String)]] = []
      for (shard, bucketBytes) in [(true, 4 << 20), (true, 0), (true, 64), (false, 4 << 20), (false, 0)] {
        runs.append(
          try train(ranks: ranks) {
            $0.shardOptimizer = shard
            $0.bucketBytes = bucketBytes
            $0.wire = .fp32
          })
      }
      for run in runs {
        // Every rank holds the same model, and every strategy the same bits.
        #expect(run.allSatisfy { $0.values == run[0].values && $0.checksum == run[0].checksum }, "\(run[0].description)")
        #expect(run[0].values == runs[0][0].values, "\(ranks) ranks, \(run[0].description)")
      }
      // With sync BatchNorm, N ranks train one process's model up to float summation order.
      let synced = try train(ranks: ranks) { $0.syncBatchNorm = true }
      let difference = maxDifference(synced[0].values, single[0].values)
      #expect(difference < 1e-4, "\(ranks) ranks vs one process: \(difference)")
    }
  }

  /// R ranks of K micro-steps train the same bits as one rank of R·K micro-steps (local
  /// BatchNorm: the same micro-batches normalize alike), on the sharded step and on
  /// all-reduces: micro-steps and ranks add their gradients in the same `ContributionTree`.
  /// 8 steps of global batch 24 over 118 images reach the last, partial batch (22: parts of
  /// 6, 6, 5, 5).
  @Test func ranksTimesMicroStepsGiveTheSameBits() throws {
    for (total, splits) in [(4, [(1, 4), (2, 2), (4, 1)]), (3, [(1, 3), (3, 1)])] {
      for shard in [true, false] {
        let runs = try splits.map { ranks, micro in
          try train(ranks: ranks, steps: 5 + total, trainSize: 118) {
            $0.accumulate = micro
            $0.shardOptimizer = shard
            $0.wire = .fp32
          }
        }
        for (run, split) in zip(runs, splits) {
          #expect(run.allSatisfy { $0.values == runs[0][0].values }, "\(split) of \(total), sharded: \(shard)")
        }
      }
    }
  }

  /// The compact wire: every rank holds the same forward weights; after `gatherState`, the
  /// same latent weights; and the model stays close to the fp32 wire's.
  @Test(arguments: [2, 3])
  func compactWireTrainsLikeFp32(ranks: Int) throws {
    let fp32 = try train(ranks: ranks) { $0.wire = .fp32 }
    let compact = try train(ranks: ranks) {
      $0.wire = .compact
      $0.bucketBytes = 2048  // several buckets, parts cutting across kernels
    }
    #expect(compact[0].description.contains("compact wire"))
    #expect(compact.allSatisfy { $0.checksum == compact[0].checksum })
    #expect(compact.allSatisfy { $0.values == compact[0].values })
    let difference = maxDifference(compact[0].values, fp32[0].values)
    #expect(difference < 0.02, "bf16 gradients moved the latent weights by \(difference)")
    #expect(compact[0].values != fp32[0].values, "bf16 rounding changes something")
  }

  /// The compact wire splits the bottom dense kernel's gradient into row-block buckets; the
  /// fp32 wire, which matches one process bit for bit, and channel-mean kernels do not.
  @Test func compactWireSplitsTheBottomKernel() throws {
    let results = ThreadGroup(size: 2).run { c -> [(Int, Int)] in
      try [(Self.specs, WireFormat.compact), (Self.specs, .fp32), (Self.channelMeanSpecs, .compact)].map { specs, wire in
        let model = try Model(specs: specs, inputShape: [6, 6, 1], seed: 3)
        let exchange = try ShardedExchange(
          model: model, optimizer: try OptimizerSpec.adam().make(), communicator: c, bucketBytes: 4 << 20, wire: wire)
        let bottom = model.layers.first { $0 is QuantDense } as! QuantDense
        return (bottom.kernelGradientRowBlocks, exchange.layout.buckets.filter { $0.readyAfterRows != nil }.count)
      }
    }
    for r in results {
      let splits = try r.get()
      #expect(splits.map(\.0) == [2, 1, 1] && splits.map(\.1) == [2, 0, 0], "\(splits)")
    }
  }

  /// `magnitude_aware_sign` kernels travel as signs and per-channel sums: every rank holds the
  /// same forward weights and means, and the model stays close to the fp32 wire's.
  @Test(arguments: [2, 3])
  func compactWireSendsChannelMeans(ranks: Int) throws {
    let specs = Self.channelMeanSpecs
    let fp32 = try train(ranks: ranks, specs: specs) { $0.wire = .fp32 }
    let compact = try train(ranks: ranks, specs: specs) {
      $0.wire = .compact
      $0.bucketBytes = 2048
    }
    let model = try Model(specs: specs, inputShape: [6, 6, 1], seed: 3)
    let channelKernels = model.signKernels.filter {
      if case .channelMean = $0.encoding { return true } else { return false }
    }
    #expect(channelKernels.count == specs.filter { $0.kernelQuantizer?.name == "magnitude_aware_sign" }.count)
    #expect(channelKernels.count >= 2)
    let signVariables = model.signKernels.reduce(0) { $0 + model.store.views[$1.view].count }
    #expect(compact[0].description.contains("\(signVariables) of \(model.store.values.count) variables as sign bits"))
    #expect(compact.allSatisfy { $0.checksum == compact[0].checksum })
    #expect(compact.allSatisfy { $0.values == compact[0].values })
    let difference = maxDifference(compact[0].values, fp32[0].values)
    #expect(difference < 0.02, "bf16 gradients and summed means moved the latent weights by \(difference)")
  }

  /// The bottom kernel's gradient in row blocks (the compact wire's split): the observer hears
  /// the rows final after each block but the last, then the layer, and the gradients are one
  /// GEMM's up to rounding.
  @Test func kernelRowBlocksReportTheirRowsBeforeTheLayer() throws {
    final class Recorder: BackwardObserver {
      var events: [String] = []
      func layerFinished(_ index: Int) throws { events.append("layer \(index)") }
      func kernelRowsFinished(layer index: Int, rows: Int) throws { events.append("rows \(index) \(rows)") }
    }
    let x = randomValues(8 * 36, seed: 5)
    let labels = (0..<8).map { Int32($0 % 2) }
    func gradients(blocks: Int, observer: Recorder?) throws -> (gradients: [Float], bottom: Int) {
      let model = try Model(specs: Self.specs, inputShape: [6, 6, 1], seed: 3)
      model.allocate(maxBatch: 8)
      let bottom = try #require(model.layers.firstIndex { $0 is QuantDense })
      try model.computeKernelGradient(ofLayer: bottom, inRowBlocks: blocks)
      model.store.zeroGradients()
      _ = try model.accumulateGradients(
        x, labels: labels, batch: 8, loss: SparseCategoricalCrossentropy(classes: 2), observer: observer)
      return (model.store.gradients.array, bottom)
    }
    let whole = try gradients(blocks: 1, observer: nil)
    let recorder = Recorder()
    let blocked = try gradients(blocks: 3, observer: recorder)
    let b = whole.bottom
    // 36 rows in blocks of 12, after every layer above, then the layer and those below it.
    let first = try #require(recorder.events.firstIndex(of: "rows \(b) 12"))
    #expect(recorder.events[..<first].allSatisfy { $0.hasPrefix("layer") && Int($0.dropFirst(6))! > b })
    #expect(
      Array(recorder.events[first...])
        == ["rows \(b) 12", "rows \(b) 24", "layer \(b)"] + (0..<b).reversed().map { "layer \($0)" })
    #expect(maxDifference(whole.gradients, blocked.gradients) < 1e-5)
    #expect(whole.gradients.contains { $0 != 0 })
    // Without an observer, blocks are still computed (the same bits either way).
    #expect(try gradients(blocks: 3, observer: nil).gradients == blocked.gradients)
  }

  /// `finishTiming` without a barrier: with rank 1 held 30 ms in every step's forward, rank 0
  /// waits for it in its communication waits, and that waiting moves to `imbalance`; rank 1,
  /// the last to end backward, waited for no one.
  @Test func finishTimingSeparatesWaitingForASlowerRank() throws {
    let dir = temporaryDirectory("flip-exchange")
    writeToyDataset(to: dir, train: 120, test: 16)
    let data = try DataSplits.load(directory: dir)
    let steps = 4
    let delay = 0.03
    let results = ThreadGroup(size: 2).run { c -> (StepTiming, UInt64) in
      let model = try Model(specs: Self.specs, inputShape: [6, 6, 1], seed: 3)
      var options = TrainingOptions(epochs: 1, batchSize: 24, seed: 1, logEverySteps: 0)
      options.measureImbalance = true
      let trainer = try Trainer(
        model: model, optimizer: try OptimizerSpec.adam(learningRate: 0.01).make(), communicator: c, data: data,
        options: options, logger: Logger(label: "test"))
      if c.rank == 1 {
        model.layerTrace = { layer, backward, _, _ in if layer == 0 && !backward { Thread.sleep(forTimeInterval: delay) } }
      }
      let order = trainer.sampler.permutation(epoch: 0)
      _ = try trainer.step(order: order, stepInEpoch: 0)
      trainer.startTiming()
      for s in 1...steps { _ = try trainer.step(order: order, stepInEpoch: s) }
      let before = trainer.timing.communication
      return (try trainer.finishTiming(), before)
    }
    let timings = try results.map { try $0.get() }
    let held = UInt64(delay * Double(steps) * 1e9)
    let (fast, slow) = (timings[0], timings[1])
    #expect(fast.0.imbalance >= held * 8 / 10, "rank 0 waited \(fast.0.imbalance) ns for the held rank")
    #expect(fast.0.imbalance + fast.0.communication == fast.1, "the waiting is taken out of the communication waits")
    #expect(slow.0.imbalance < held / 10, "rank 1 waited \(slow.0.imbalance) ns")
    #expect(slow.0.communication == slow.1 - slow.0.imbalance)
    #expect(slow.0.compute >= held, "rank 1's compute holds its delay")
  }

  /// A rank whose weights differ is caught by the compact wire's checksum too (it hashes the
  /// signs every rank holds).
  @Test func compactChecksumSeesADifferentSign() throws {
    let store = makeStore([
      ParameterSpec(role: .kernel, shape: [64], precision: 1, constraint: .weightClip(clipValue: 1), initializer: .zeros)
    ])
    let codec = CompactCodec(views: store.views, signKernels: [SignKernel(view: 0, encoding: .magnitude(1))])
    let parts = codec.segments(of: 0..<64)
    var x = randomValues(64, seed: 3)
    var a = [UInt32](repeating: 0, count: 2)
    CompactCodec.encode(x, parts, into: &a)
    x[5] = x[5] * 0.5  // the same sign: the same words
    var b = a
    CompactCodec.encode(x, parts, into: &b)
    #expect(a == b)
    x[5] = -x[5]
    CompactCodec.encode(x, parts, into: &b)
    #expect(a != b)
  }
}
