import CSignals
import FlipBNN
import FlipComm
import FlipTensor
import Foundation
import Logging

/// What `Trainer` needs to know beyond the model and data.
public struct TrainingOptions: Sendable {
  public var epochs: Int
  /// The GLOBAL batch: all ranks together.
  public var batchSize: Int
  public var seed: UInt64
  /// A `"step"` row in metrics.jsonl every this many steps (0: none).
  public var logEverySteps: Int
  /// Micro-steps per optimizer step: each rank runs `accumulate` forward/backward passes of
  /// about B/(N·accumulate) samples, adding their gradients, before one all-reduce and one
  /// update. BatchNorm statistics are those of each micro-batch.
  public var accumulate = 1
  /// Sync BatchNorm: normalize with the statistics of the global (micro-)batch, summed across
  /// ranks, so N ranks × B/N match one process × B; off: each rank's local statistics.
  public var syncBatchNorm = false
  /// Gradients are all-reduced in buckets of about this many bytes, each started as soon as
  /// backward has finished its layers (0: one blocking all-reduce after backward).
  public var bucketBytes = 4 << 20
  /// Sharded optimizer step (ZeRO stage 1): reduce-scatter the gradients, update this rank's
  /// 1/N of the variables and optimizer state, all-gather the variables. The same bytes on the
  /// wire as an all-reduce and 1/N of the optimizer work per rank.
  public var shardOptimizer = true
  /// Compare a checksum of the weights and optimizer state across ranks every this many
  /// steps (0: only at the end of training).
  public var checkEverySteps: Int
  /// Test hooks: faults a rank injects into itself at the start of a step (set by the CLI
  /// from FLIP_TEST_FAULT), to test failure, kill and signal handling.
  public var injectedFaults: [InjectedFault] = []
  /// Benchmarks: a barrier after backward, so `timing` tells waiting for a slower rank
  /// (`imbalance`) from communicating (`communication`). Costs one barrier per step.
  public var measureImbalance = false
  /// How each exact binary layer's forward kernel is chosen (`auto`: the faster on this CPU).
  public var binaryForward = BinaryForwardPolicy.auto
  public init(epochs: Int, batchSize: Int, seed: UInt64, logEverySteps: Int = 50, checkEverySteps: Int = 100) {
    self.epochs = epochs
    self.batchSize = batchSize
    self.seed = seed
    self.logEverySteps = logEverySteps
    self.checkEverySteps = checkEverySteps
  }
}

/// A fault a test makes a rank inject into itself at the start of a (global, 1-based) step.
public struct InjectedFault: Sendable, Equatable {
  public enum Action: Sendable, Equatable {
    /// Throw an error (the job must end non-zero at once).
    case fail
    /// SIGKILL itself (nothing can be cleaned up; the last checkpoint must be valid).
    case kill
    /// Raise this signal (a stop request).
    case signal(Int32)
    /// Change one weight on this rank only (the replica checksum must catch it).
    case perturb
    /// Run the int8 convolutions unscaled, as before they were made exact on every ISA: on
    /// an ISA without VNNI their results are wrong (the start-up kernel check must catch it).
    /// Applied before training starts, whatever the step.
    case unscaledInt8
  }
  public var action: Action
  public var rank: Int
  public var step: Int
  public init(action: Action, rank: Int, step: Int) {
    self.action = action
    self.rank = rank
    self.step = step
  }

  /// Parses `action:rank:step` (action: fail, kill, usr1, term, int, perturb, unscaled-int8),
  /// e.g. `kill:0:5`.
  public init?(_ text: String) {
    let parts = text.split(separator: ":").map(String.init)
    guard parts.count == 3, let rank = Int(parts[1]), let step = Int(parts[2]), rank >= 0, step >= 1 else { return nil }
    switch parts[0].lowercased() {
    case "fail": action = .fail
    case "kill": action = .kill
    case "usr1": action = .signal(SIGUSR1)
    case "term": action = .signal(SIGTERM)
    case "int": action = .signal(SIGINT)
    case "perturb": action = .perturb
    case "unscaled-int8": action = .unscaledInt8
    default: return nil
    }
    self.rank = rank
    self.step = step
  }
}

/// A stop that all ranks agreed on at a step boundary.
public struct StopRequest: Sendable, Equatable {
  /// The step after which training stopped.
  public var step: Int
  /// How many ranks had received a stop signal.
  public var ranks: Int
  /// The signal this rank received (0 if the request came from another rank).
  public var localSignal: Int32
}

/// One written checkpoint.
public struct CheckpointWrite: Sendable {
  public var path: String
  public var step: Int
  public var bytes: Int
  /// How long training paused for it: the whole collective save (statistics, gather, rank 0's
  /// copy of the tensors; the file is written in the background).
  public var seconds: Double
  /// Of which rank 0's copy of the tensors.
  public var copySeconds: Double
}

/// Where the time of `Trainer.step` goes, summed over steps (nanoseconds).
public struct StepTiming: Sendable {
  /// Filling the batch: gathering images and labels by the sampler's order.
  public var data: UInt64 = 0
  /// Forward and backward (including the bucketed all-reduces' progress calls in backward).
  public var compute: UInt64 = 0
  /// Waiting in communication that nothing overlaps: the reduce-scatter and all-gather of the
  /// sharded step, the wait for outstanding bucket all-reduces, a blocking all-reduce.
  public var communication: UInt64 = 0
  /// The optimizer update with its constraint (sharded: including the bucket updates made
  /// during backward).
  public var optimizer: UInt64 = 0
  /// With `TrainingOptions.measureImbalance`: waiting in a barrier after backward for the
  /// slowest rank (otherwise this waiting is part of `communication`).
  public var imbalance: UInt64 = 0
  public init() {}
}

/// The figures of one finished epoch.
public struct EpochResult: Sendable {
  public var epoch: Int
  public var step: Int
  public var loss: Double
  public var accuracy: Double
  public var testLoss: Double
  public var testAccuracy: Double
  public var learningRate: Double?
  public var flipRatio: [String: Double]
  public var imagesPerSecond: Double
  public var seconds: Double
}

/// Runs epochs of data-parallel training: the data path of DESIGN.md, step by step.
public final class Trainer {
  public let model: Sequential
  public let optimizer: Optimizer
  public let communicator: Communicator
  public let data: DataSplits
  public let options: TrainingOptions
  public let sampler: EpochSampler
  public let logger: Logger
  public var metrics: MetricsLog?
  public var progress: ProgressReporter
  public internal(set) var clock = TrainingClock()
  /// Where training stands (restored from a checkpoint by `restore`).
  public internal(set) var position = TrainingPosition()
  /// Set when training stopped early on a stop request agreed by all ranks.
  public private(set) var stopRequest: StopRequest?
  /// Checkpoints: when to write them (nil: never).
  public var checkpointPolicy: CheckpointPolicy?
  /// Time split of the steps since the last reset (see `StepTiming`).
  public var timing = StepTiming()
  /// The forward kernel of each quantized layer, chosen for this rank's batch on this CPU.
  public private(set) var binaryForwardChoices: [BinaryForwardChoice] = []
  /// The checkpoints this trainer wrote, oldest first.
  public internal(set) var checkpointWrites: [CheckpointWrite] = []
  /// Rank 0's background writer of checkpoint files.
  var checkpointWriter: CheckpointWriter?

  private let loss: SparseCategoricalCrossentropy
  /// (b, H, W, C) this rank's images of the current batch, and (b) labels; b = local batch.
  private let images: FloatBuffer
  private let labels: UnsafeMutablePointer<Int32>
  private let localCapacity: Int
  /// Contiguous ranges of the gradient buffer, in the order backward completes them.
  public let buckets: [GradientBucket]
  /// The sharded step's split of the flat variables: each bucket cut into one part per rank.
  public let shards: ShardLayout
  /// The sharded step in flight: each started bucket's reduce-scatter request, and how many
  /// buckets (in order) have been updated and their all-gathers started.
  private var reductions: [Int] = []
  private var updatedBuckets = 0

  public init(
    model: Sequential, optimizer: Optimizer, communicator: Communicator, data: DataSplits,
    options: TrainingOptions, logger: Logger, progress: ProgressReporter
  ) throws {
    guard options.epochs > 0 else {
      throw TrainingError.invalidArgument("epochs must be positive, got \(options.epochs)")
    }
    guard model.inputShape == data.train.sampleShape else {
      throw TrainingError.datasetMismatch(
        "the model expects inputs of shape \(model.inputShape) but the images are \(data.train.sampleShape)")
    }
    guard model.outputShape == [data.train.classes] else {
      throw TrainingError.datasetMismatch(
        "the model outputs \(model.outputShape) but the data set has \(data.train.classes) classes; make the last layer's units \(data.train.classes)"
      )
    }
    self.model = model
    self.optimizer = optimizer
    self.communicator = communicator
    self.data = data
    self.options = options
    self.logger = logger
    self.progress = progress
    sampler = try EpochSampler(
      datasetSize: data.train.count, globalBatch: options.batchSize, seed: options.seed,
      rank: communicator.rank, worldSize: communicator.size)
    guard options.accumulate >= 1 else {
      throw TrainingError.invalidArgument("accumulate must be at least 1, got \(options.accumulate)")
    }
    guard options.batchSize % (communicator.size * options.accumulate) == 0 else {
      throw TrainingError.invalidArgument(
        "global batch size \(options.batchSize) is not divisible by ranks × micro-steps = \(communicator.size) × \(options.accumulate); choose a multiple of \(communicator.size * options.accumulate)"
      )
    }
    let perRank = options.batchSize / communicator.size
    let perMicroStep = perRank / options.accumulate
    localCapacity = perMicroStep
    model.allocate(maxBatch: perMicroStep)
    binaryForwardChoices = try model.chooseBinaryForward(batch: perMicroStep, policy: options.binaryForward)
    loss = SparseCategoricalCrossentropy(classes: data.train.classes)
    images = FloatBuffer(count: perMicroStep * data.train.sampleSize)
    labels = .allocate(capacity: perMicroStep)
    buckets = GradientBucket.plan(views: model.store.views, capBytes: options.bucketBytes)
    // Sharded, the buckets are reduce-scattered as backward completes them; without buckets,
    // the whole buffer is one part per rank, reduced after backward.
    shards = ShardLayout(
      buckets: options.bucketBytes > 0 ? buckets : GradientBucket.plan(views: model.store.views, capBytes: .max),
      ranks: communicator.size, rank: communicator.rank)
    try optimizer.prepare(store: model.store)
    if options.syncBatchNorm && communicator.size > 1 {
      for case let bn as BatchNormalization in model.layers {
        bn.crossReplicaSum = { [unowned communicator] p, n in try communicator.allreduceSum(p, count: n) }
      }
    }
    let flipLayers = model.flipCountingLayers.count
    position.flipSums = Array(repeating: 0, count: flipLayers)
    position.flipCounts = Array(repeating: 0, count: flipLayers)
    // Every rank starts from rank 0's parameters and state.
    try communicator.broadcast(model.store.values.pointer, count: model.store.values.count, root: 0)
    try communicator.broadcast(model.store.state.pointer, count: model.store.state.count, root: 0)
  }

  deinit { labels.deallocate() }

  /// Trains for `options.epochs` epochs, evaluating on the test set after each. Continues from `position` (a restored checkpoint) and stops early, with a checkpoint,
  /// when any rank receives a stop signal (`stopRequest` says so).
  @discardableResult
  public func fit() throws -> [EpochResult] {
    var results: [EpochResult] = []
    while clock.epoch < options.epochs {
      guard let r = try trainEpoch(clock.epoch) else { break }
      results.append(r)
    }
    if stopRequest == nil {
      if let policy = checkpointPolicy {
        if checkpointWrites.last?.step != clock.step { try saveCheckpoint(policy, wait: true) }
        try flushCheckpoints(policy)
      }
    }
    try checkReplicas()
    return results
  }

  /// One optimizer step on global batch `stepInEpoch` of `order`; returns this rank's summed
  /// loss, correct count and sample count.
  public func step(order: [Int], stepInEpoch: Int) throws -> (loss: Double, correct: Double, count: Double) {
    for f in options.injectedFaults where f.rank == communicator.rank && f.step == clock.step + 1 {
      switch f.action {
      case .fail: throw TrainingError.invalidArgument("injected failure at step \(f.step) (FLIP_TEST_FAULT)")
      case .kill:
        // The checkpoints submitted so far reach the disk first, so tests know which one a
        // resume starts from; then nothing is cleaned up.
        _ = checkpointWriter?.wait()
        kill(getpid(), SIGKILL)
      case .signal(let s): raise(s)
      case .perturb: model.store.values.pointer[0] = model.store.values.pointer[0].nextUp
      case .unscaledInt8: break
      }
    }
    let shard = sampler.shard(step: stepInEpoch)
    let n = shard.count
    let store = model.store
    store.zeroGradients()
    var r: (lossSum: Double, correct: Int) = (0, 0)
    // Micro-steps: the shard cut into `accumulate` nearly equal contiguous parts.
    let k = options.accumulate
    let sharded = options.shardOptimizer && communicator.size > 1
    let overlap = communicator.size > 1 && options.bucketBytes > 0
    var started = 0
    reductions.removeAll(keepingCapacity: true)
    updatedBuckets = 0
    let scale = 1 / Float(sampler.globalBatchSize(step: stepInEpoch))
    var mark = DispatchTime.now().uptimeNanoseconds
    func lap(_ phase: WritableKeyPath<StepTiming, UInt64>) {
      let now = DispatchTime.now().uptimeNanoseconds
      timing[keyPath: phase] += now - mark
      mark = now
    }
    for micro in 0..<k {
      let lo = shard.lowerBound + micro * n / k
      let hi = shard.lowerBound + (micro + 1) * n / k
      // An empty shard sits out, except under sync BatchNorm, whose collectives need every rank.
      if hi == lo && !(options.syncBatchNorm && communicator.size > 1) { continue }
      data.train.fill(order[lo..<hi], images: images.pointer, labels: labels)
      lap(\.data)
      // Dropout masks depend on (seed, step, micro-step, rank) only: resumed runs repeat them.
      model.reseedStochasticLayers(
        stream: (UInt64(clock.step) &* UInt64(k) &+ UInt64(micro)) &* UInt64(communicator.size)
          &+ UInt64(communicator.rank))
      // On the last micro-step, each bucket's all-reduce (or reduce-scatter) starts as soon
      // as backward has finished its layers, and overlaps the backward of the layers below.
      // Sharded, each bucket whose reduction is complete is updated and its all-gather
      // started, also during backward.
      let last = micro == k - 1 && overlap
      let m = try model.accumulateGradients(
        images.pointer, labels: labels, batch: hi - lo, loss: loss,
        afterLayer: last
          ? { layer in
            try self.startReadyBuckets(after: layer, started: &started, sharded: sharded)
            if sharded {
              lap(\.compute)
              try self.updateReducedBuckets(gradientScale: scale, wait: false, lap: lap)
            }
          } : nil)
      r.lossSum += m.lossSum
      r.correct += m.correct
      lap(\.compute)
    }
    if options.measureImbalance && communicator.size > 1 {
      try communicator.barrier()
      lap(\.imbalance)
    }
    if sharded {
      // ZeRO-1: each rank reduces, updates and then shares its part of every bucket of the
      // flat variables (mean over the global batch, update and weight_clip in one pass), the
      // buckets that backward has not already seen through.
      try startReadyBuckets(after: 0, started: &started, sharded: true)
      lap(\.communication)
      try updateReducedBuckets(gradientScale: scale, wait: true, lap: lap)
      try communicator.waitOutstanding()
      lap(\.communication)
      optimizer.iterations += 1
    } else {
      if overlap {
        try startReadyBuckets(after: 0, started: &started, sharded: false)
        try communicator.waitOutstanding()
      } else {
        try communicator.allreduceSum(store.gradients.pointer, count: store.gradients.count)
      }
      lap(\.communication)
      // Mean over the global batch, optimizer update and weight_clip in one pass.
      optimizer.apply(store: store, clock: clock, gradientScale: scale)
      lap(\.optimizer)
    }
    clock.step += 1
    return (r.lossSum, Double(r.correct), Double(n))
  }

  /// Trains the rest of `epoch` (from `position.stepInEpoch`), evaluates, and writes the
  /// checkpoints the policy asks for. Returns nil when a stop request ended it early.
  func trainEpoch(_ epoch: Int) throws -> EpochResult? {
    let steps = sampler.stepsPerEpoch
    let order = sampler.permutation(epoch: epoch)
    progress.epochStarted(epoch + 1, of: options.epochs)
    let flipLayers = model.flipCountingLayers
    var totals = position.epochTotals.map(Double.init(bitPattern:))  // loss sum, correct, samples (global)
    var flipSums = position.flipSums.map(Double.init(bitPattern:))
    let samplesBefore = totals[2]
    let learningRate = optimizer.hyperparameters(clock)["learning_rate"]
    let start = DispatchTime.now()
    for s in position.stepInEpoch..<steps {
      let local = try step(order: order, stepInEpoch: s)
      // The stop flag rides on the step's metrics all-reduce: every rank sees every request.
      let signal = flip_signals_stop_requested()
      // So does rank 0's news of a checkpoint that failed to write in the background.
      let writeFailure = checkpointWriter?.poll()
      let failedStep: Double = writeFailure.map { Double($0.step + 1) } ?? 0
      var stepTotals: [Double] = [local.loss, local.correct, local.count, signal != 0 ? 1 : 0, failedStep]
      try communicator.allreduceSum(&stepTotals)
      guard stepTotals[0].isFinite else {
        throw TrainingError.nonFinite(
          "the loss became \(stepTotals[0]) at step \(clock.step) (epoch \(epoch + 1)); lower the learning rate")
      }
      if stepTotals[4] > 0, let policy = checkpointPolicy {
        try checkpointFailed(step: Int(stepTotals[4]) - 1, writeFailure, policy: policy)
      }
      for i in 0..<3 { totals[i] += stepTotals[i] }
      for (name, ratio) in model.flipRatios {
        if let i = flipLayers.firstIndex(of: name) {
          flipSums[i] += ratio
          position.flipCounts[i] += 1
        }
      }
      position.stepInEpoch = s + 1
      position.epochTotals = totals.map(\.bitPattern)
      position.flipSums = flipSums.map(\.bitPattern)
      if options.checkEverySteps > 0 && clock.step % options.checkEverySteps == 0 { try checkReplicas() }
      let elapsed = seconds(since: start)
      progress.step(s + 1, of: steps, seconds: elapsed, loss: totals[0] / totals[2], accuracy: totals[1] / totals[2])
      if options.logEverySteps > 0 && clock.step % options.logEverySteps == 0, let metrics {
        try metrics.write([
          "kind": "step", "epoch": epoch + 1, "step": clock.step, "loss": totals[0] / totals[2],
          "accuracy": totals[1] / totals[2], "seconds": elapsed,
        ])
      }
      if stepTotals[3] > 0 {
        stopRequest = StopRequest(step: clock.step, ranks: Int(stepTotals[3]), localSignal: signal)
        progress.epochFinished(steps: s + 1, seconds: elapsed, summary: "stopped at step \(clock.step)")
        if let policy = checkpointPolicy { try saveCheckpoint(policy, wait: true) }
        return nil
      }
      if let policy = checkpointPolicy, policy.everySteps > 0, clock.step % policy.everySteps == 0, s + 1 < steps {
        try saveCheckpoint(policy)
      }
    }
    let trainSeconds = seconds(since: start)
    try synchronizeBatchNormStatistics()
    let (testLoss, testAccuracy) = try evaluate(data.test)
    var flipRatio: [String: Double] = [:]
    for (i, name) in flipLayers.enumerated() where position.flipCounts[i] > 0 {
      flipRatio[name] = flipSums[i] / Double(position.flipCounts[i])
    }
    let result = EpochResult(
      epoch: epoch + 1, step: clock.step, loss: totals[0] / totals[2], accuracy: totals[1] / totals[2],
      testLoss: testLoss, testAccuracy: testAccuracy, learningRate: learningRate, flipRatio: flipRatio,
      imagesPerSecond: (totals[2] - samplesBefore) / trainSeconds, seconds: seconds(since: start))
    progress.epochFinished(
      steps: steps, seconds: trainSeconds,
      summary: String(
        format: "loss: %.4f - accuracy: %.4f - test_loss: %.4f - test_accuracy: %.4f - %.0f images/s",
        result.loss, result.accuracy, testLoss, testAccuracy, result.imagesPerSecond))
    if let metrics {
      var row: [String: Any] = [
        "kind": "epoch", "epoch": result.epoch, "step": result.step, "loss": result.loss,
        "accuracy": result.accuracy, "test_loss": testLoss, "test_accuracy": testAccuracy,
        "flip_ratio": flipRatio, "images_per_second": result.imagesPerSecond, "seconds": result.seconds,
      ]
      row["learning_rate"] = learningRate ?? NSNull()
      try metrics.write(row)
    }
    // The next epoch starts: a checkpoint from here continues with its first batch.
    position.stepInEpoch = 0
    position.epochTotals = [0, 0, 0]
    position.flipSums = Array(repeating: 0, count: flipLayers.count)
    position.flipCounts = Array(repeating: 0, count: flipLayers.count)
    clock.epoch = epoch + 1
    if let policy = checkpointPolicy {
      let byEpoch = policy.everyEpochs > 0 && (epoch + 1) % policy.everyEpochs == 0
      let byStep = policy.everySteps > 0 && clock.step % policy.everySteps == 0
      if byEpoch || byStep { try saveCheckpoint(policy) }
    }
    return result
  }

  /// Mean test loss and accuracy over `dataset`, sharded over the ranks, count-weighted.
  public func evaluate(_ dataset: Dataset) throws -> (loss: Double, accuracy: Double) {
    try evaluateModel(
      model, on: dataset, communicator: communicator, batch: localCapacity, images: images, labels: labels, loss: loss)
  }

  /// With local BatchNorm each rank's moving statistics differ: average them so every rank
  /// holds the same model (identity on one process).
  public func synchronizeBatchNormStatistics() throws {
    let state = model.store.state
    guard communicator.size > 1, state.count > 0 else { return }
    try communicator.allreduceSum(state.pointer, count: state.count)
    scale(state, by: 1 / Float(communicator.size))
  }

  /// Starts the all-reduce (or, `sharded`, the reduce-scatter) of every bucket whose layers
  /// are all at or above `layer` (their gradients are final), then lets the started ones progress.
  func startReadyBuckets(after layer: Int, started: inout Int, sharded: Bool) throws {
    let g = model.store.gradients.pointer
    let list = sharded ? shards.buckets : buckets
    while started < list.count && list[started].firstLayer >= layer {
      let b = list[started]
      if sharded {
        reductions.append(
          try communicator.startReduceScatterSum(g + b.range.lowerBound, counts: shards.counts[started]))
      } else {
        try communicator.startAllreduceSum(g + b.range.lowerBound, count: b.range.count)
      }
      started += 1
    }
    try communicator.progressOutstanding()
  }

  /// The sharded step, bucket by bucket in order: once a bucket's reduce-scatter is complete
  /// (`wait`: after waiting for it), this rank updates its part of the bucket's variables and
  /// starts the all-gather that brings every rank's updated part to every rank. The
  /// optimizer's step is counted once all buckets are done. The bucket's layers are behind
  /// backward already, so neither the update nor the gather touches what backward still reads.
  /// `lap` splits the time: waiting as communication, updating as optimizer.
  func updateReducedBuckets(
    gradientScale: Float, wait: Bool, lap: (WritableKeyPath<StepTiming, UInt64>) -> Void
  ) throws {
    while updatedBuckets < reductions.count {
      let b = updatedBuckets
      if wait {
        try communicator.wait(reductions[b])
        lap(\.communication)
      } else if try !communicator.isComplete(reductions[b]) {
        return
      }
      optimizer.update(store: model.store, clock: clock, gradientScale: gradientScale, slices: [shards.mine[b]])
      try communicator.startAllgather(
        model.store.values.pointer + shards.buckets[b].range.lowerBound, counts: shards.counts[b])
      updatedBuckets += 1
      lap(\.optimizer)
    }
  }

  /// A 64-bit hash of everything that must be identical on every rank: the trainable
  /// variables and (unless the optimizer step is sharded) the optimizer state (BatchNorm moving statistics are left out: with local
  /// BatchNorm they differ per rank until averaged).
  public func replicaChecksum() -> UInt64 {
    var h = fnv1a64(model.store.values)
    // Sharded, each rank's optimizer state is valid in its own slice only.
    if !(options.shardOptimizer && communicator.size > 1) {
      for s in optimizer.stateBuffers { h = fnv1a64(s.buffer, seed: h) }
    }
    return h ^ UInt64(optimizer.iterations)
  }

  /// Compares `replicaChecksum()` across ranks; a mismatch stops the job naming the ranks.
  public func checkReplicas() throws {
    guard communicator.size > 1 else { return }
    let all = try communicator.allgather(replicaChecksum())
    guard Set(all).count == 1 else {
      let differing = all.indices.filter { all[$0] != all[0] }
      throw TrainingError.replicasDiverged(step: clock.step, ranks: differing)
    }
  }

  private func seconds(since start: DispatchTime) -> Double {
    Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e9
  }
}

/// The sharded (ZeRO-1) step's split of the flat buffers: every bucket's range cut into one
/// nearly equal contiguous part per rank, rank r owning part r of each. Reduce-scatters and
/// all-gathers then work bucket by bucket, so the reductions can start during backward.
public struct ShardLayout: Sendable, Equatable {
  public let buckets: [GradientBucket]
  /// Per bucket, the elements of each rank's part.
  public let counts: [[Int]]
  /// This rank's parts, as ranges of the flat buffer.
  public let mine: [Range<Int>]

  public init(buckets: [GradientBucket], ranks: Int, rank: Int) {
    self.buckets = buckets
    var counts: [[Int]] = []
    var mine: [Range<Int>] = []
    for b in buckets {
      let n = b.range.count
      let c = (0..<ranks).map { r in n / ranks + (r < n % ranks ? 1 : 0) }
      let start = b.range.lowerBound + c[..<rank].reduce(0, +)
      counts.append(c)
      mine.append(start..<(start + c[rank]))
    }
    self.counts = counts
    self.mine = mine
  }

  /// Copies every rank's parts of `buffer` to every rank (bucket by bucket, in place).
  public func allgather(_ buffer: FloatBuffer, communicator: Communicator) throws {
    for (b, c) in zip(buckets, counts) {
      try communicator.allgather(buffer.pointer + b.range.lowerBound, counts: c)
    }
  }
}

/// A contiguous range of the gradient buffer that is all-reduced as one message.
public struct GradientBucket: Equatable, Sendable {
  /// Elements of the gradient buffer.
  public var range: Range<Int>
  /// The lowest layer whose gradients it holds: it is ready once backward has passed it.
  public var firstLayer: Int

  /// Groups the views from the last layer down (the order backward finishes them) into
  /// buckets of at least `capBytes` where possible; a view is never split.
  static func plan(views: [ParameterView], capBytes: Int) -> [GradientBucket] {
    var buckets: [GradientBucket] = []
    var current: GradientBucket?
    for v in views.reversed() {
      let r = v.offset..<(v.offset + v.count)
      if var c = current {
        c.range = r.lowerBound..<c.range.upperBound
        c.firstLayer = min(c.firstLayer, v.layerIndex)
        current = c
      } else {
        current = GradientBucket(range: r, firstLayer: v.layerIndex)
      }
      if let c = current, c.range.count * MemoryLayout<Float>.stride >= max(capBytes, 1) {
        buckets.append(c)
        current = nil
      }
    }
    if let c = current { buckets.append(c) }
    return buckets
  }
}

/// FNV-1a over the 64-bit words of `buffer` (a fast, order-sensitive fingerprint).
func fnv1a64(_ buffer: FloatBuffer, seed: UInt64 = 0xCBF2_9CE4_8422_2325) -> UInt64 {
  var h = seed
  let words = buffer.count / 2
  UnsafeRawPointer(buffer.pointer).withMemoryRebound(to: UInt64.self, capacity: words) { w in
    for i in 0..<words { h = (h ^ w[i]) &* 0x0000_0100_0000_01B3 }
  }
  if buffer.count % 2 == 1 { h = (h ^ UInt64(buffer.pointer[buffer.count - 1].bitPattern)) &* 0x0000_0100_0000_01B3 }
  return h
}

/// Multiplies every element of `buffer` by `factor`.
func scale(_ buffer: FloatBuffer, by factor: Float) {
  let p = buffer.pointer
  for i in 0..<buffer.count { p[i] *= factor }
}

/// Evaluates `model` (inference mode) on this rank's contiguous shard of `dataset` in batches
/// of `batch`; sums are all-reduced so every rank gets the global mean loss and accuracy.
public func evaluateModel(
  _ model: Sequential, on dataset: Dataset, communicator: Communicator, batch: Int,
  images: FloatBuffer? = nil, labels: UnsafeMutablePointer<Int32>? = nil,
  loss: SparseCategoricalCrossentropy? = nil
) throws -> (loss: Double, accuracy: Double) {
  model.allocate(maxBatch: batch)
  let x = images ?? FloatBuffer(count: batch * dataset.sampleSize)
  let y = labels ?? .allocate(capacity: batch)
  defer { if labels == nil { y.deallocate() } }
  let lossFunction = loss ?? SparseCategoricalCrossentropy(classes: dataset.classes)
  let n = dataset.count
  let ranks = communicator.size
  let rank = communicator.rank
  let lo = rank * (n / ranks) + min(rank, n % ranks)
  let hi = lo + n / ranks + (rank < n % ranks ? 1 : 0)
  let all = Array(0..<n)
  var totals = [0.0, 0.0, Double(hi - lo)]
  var start = lo
  while start < hi {
    let end = min(start + batch, hi)
    dataset.fill(all[start..<end], images: x.pointer, labels: y)
    let r = try model.evaluate(x.pointer, labels: y, batch: end - start, loss: lossFunction)
    totals[0] += r.lossSum
    totals[1] += Double(r.correct)
    start = end
  }
  try communicator.allreduceSum(&totals)
  return (totals[0] / totals[2], totals[1] / totals[2])
}
