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
  /// Benchmarks: record when each step's backward ends, so `finishTiming()` can tell waiting
  /// for a slower rank (`imbalance`) from communicating (`communication`) without a barrier
  /// (which would idle a faster rank that has bucket updates to make).
  public var measureImbalance = false
  /// How each exact binary layer's forward kernel is chosen (`auto`: the faster on this CPU).
  public var binaryForward = BinaryForwardPolicy.auto
  /// The sharded step's wire format (`auto`: fp32 on one host, compact across hosts).
  public var wire = WirePolicy.auto
  /// Training-image augmentation (crop, flip; drawn per (seed, epoch, image)); nil: none.
  public var augmentation: Augmentation?
  /// Whether every epoch gathers the latent weights for TensorBoard's kernel histograms
  /// (every rank must agree: the gather is collective; rank 0 writes them).
  public var kernelHistograms = false
  public init(epochs: Int, batchSize: Int, seed: UInt64, logEverySteps: Int = 50, checkEverySteps: Int = 100) {
    self.epochs = epochs
    self.batchSize = batchSize
    self.seed = seed
    self.logEverySteps = logEverySteps
    self.checkEverySteps = checkEverySteps
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
  /// With `TrainingOptions.measureImbalance`, after `Trainer.finishTiming()`: the part of the
  /// communication waits spent waiting for the slowest rank's backward (otherwise it is part of
  /// `communication`).
  public var imbalance: UInt64 = 0
  public init() {}

  /// The phase's name in logs and timelines.
  static func name(of phase: WritableKeyPath<StepTiming, UInt64>) -> String {
    switch phase {
    case \StepTiming.data: return "data"
    case \StepTiming.compute: return "compute"
    case \StepTiming.communication: return "communication wait"
    case \StepTiming.optimizer: return "optimizer"
    default: return "waiting for the slowest rank"
    }
  }
}

/// The figures of one finished epoch.
public struct EpochResult: Sendable {
  public var epoch: Int
  public var step: Int
  public var loss: Double
  public var accuracy: Double
  public var testLoss: Double
  public var testAccuracy: Double
  /// The share of test images whose label is among the model's five highest scores.
  public var testTop5Accuracy: Double = 0
  public var learningRate: Double?
  public var flipRatio: [String: Double]
  public var imagesPerSecond: Double
  public var seconds: Double
  /// Seconds the slowest rank's steps waited for data in the epoch (since the resume, in an
  /// epoch resumed mid-way).
  public var dataWaitSeconds: Double = 0
  /// Bad images replaced so far in the run (nil: in-memory data).
  public var badImages: Int?
}

/// What watches a trainer: rank 0's metrics log, TensorBoard files and progress display, every
/// rank's timeline and stall inspector. Given at construction; nil means none.
public struct TrainingObservers {
  public var metrics: MetricsLog?
  public var tensorBoard: TensorBoardLog?
  public var timeline: Timeline?
  public var stallInspector: StallInspector?
  public var progress: ProgressReporter
  public init(progress: ProgressReporter = ProgressReporter(enabled: false)) { self.progress = progress }
}

/// Runs epochs of data-parallel training, step by step: data → forward/backward → the
/// exchange's synchronized optimizer step.
public final class Trainer {
  public let model: Model
  public let optimizer: Optimizer
  public let communicator: Communicator
  public let data: DataSplits
  public let options: TrainingOptions
  public let sampler: EpochSampler
  public let logger: Logger
  public let metrics: MetricsLog?
  /// TensorBoard event files (rank 0).
  public let tensorBoard: TensorBoardLog?
  /// Rank 0's watch on collectives that do not complete (every rank has one: the positions
  /// it publishes feed rank 0's).
  public let stallInspector: StallInspector?
  /// A Chrome trace of a window of steps on every rank (every rank has the same one).
  public let timeline: Timeline?
  public let progress: ProgressReporter
  public internal(set) var clock = TrainingClock()
  /// Where training stands (restored from a checkpoint by `restore`).
  public internal(set) var position = TrainingPosition()
  /// Set when training stopped early on a stop request agreed by all ranks.
  public private(set) var stopRequest: StopRequest?
  /// Checkpoints: when to write them (nil: never).
  public let checkpointPolicy: CheckpointPolicy?
  /// Time split of the steps since `startTiming()` (see `StepTiming`).
  public var timing: StepTiming { timer.timing }
  private let timer = StepTimer()
  /// With `measureImbalance`: per step since `startTiming()`, nanoseconds from the step's start
  /// to the end of its backward, and `timing.communication` at the step's end.
  private var stepEnds: [(backward: Double, communication: UInt64)] = []
  /// How the ranks combine gradients and reach the same weights each step.
  public let exchange: any GradientExchange & ExchangeDiagnostics
  /// Called with the global step number (1-based) before each step: tests inject faults here
  /// (`FaultInjection`).
  var beforeStep: ((Int) throws -> Void)?
  /// The forward kernel of each quantized layer, chosen for this rank's batch on this CPU.
  public private(set) var binaryForwardChoices: [BinaryForwardChoice] = []
  /// The checkpoints this trainer wrote, oldest first.
  public internal(set) var checkpointWrites: [CheckpointWrite] = []
  /// Rank 0's background writer of checkpoint files.
  var checkpointWriter: CheckpointWriter?

  private let loss: SparseCategoricalCrossentropy
  /// The sums of this step's earlier micro-steps, added to the last one's in tree order.
  private let microStepSums: MicroStepSums
  /// This rank's training batches (b, H, W, C) and labels, b ≤ the micro-step's batch; an
  /// image data set's are decoded ahead in background threads.
  private let trainFeed: BatchFeed
  /// The test set's feed, made at the first evaluation.
  private var testFeed: BatchFeed?
  /// The epoch and step whose batches the feed hands over next (nil: none announced).
  private var feedNext: (epoch: Int, step: Int)?
  private let localCapacity: Int
  /// Nanoseconds the steps waited for `trainFeed` (fill time for an in-memory data set), and
  /// the figure at the last metrics row.
  private var dataWait: UInt64 = 0
  private var dataWaitAtRow: UInt64 = 0
  private var dataWaitAtEpoch: UInt64 = 0
  /// When the last metrics row (or the epoch) started, for the data wait's share of it.
  private var rowStart = DispatchTime.now().uptimeNanoseconds
  /// Whether the data-wait warning was given (once per run).
  private var warnedDataWait = false
  /// Whether the data set is decoded from image files (bad images counted, data wait warned).
  private var streamsImages: Bool { data.train is StreamedImages }

  public init(
    model: Model, optimizer: Optimizer, communicator: Communicator, data: DataSplits,
    options: TrainingOptions, logger: Logger, observers: TrainingObservers = TrainingObservers(),
    checkpoints: CheckpointPolicy? = nil
  ) throws {
    try Self.check(model: model, data: data, options: options, worldSize: communicator.size)
    self.model = model
    self.optimizer = optimizer
    self.communicator = communicator
    self.data = data
    self.options = options
    self.logger = logger
    metrics = observers.metrics
    tensorBoard = observers.tensorBoard
    timeline = observers.timeline
    stallInspector = observers.stallInspector
    progress = observers.progress
    checkpointPolicy = checkpoints
    sampler = try EpochSampler(
      datasetSize: data.train.count, globalBatch: options.batchSize, seed: options.seed,
      rank: communicator.rank, worldSize: communicator.size, microSteps: options.accumulate)
    let perMicroStep = options.batchSize / communicator.size / options.accumulate
    localCapacity = perMicroStep
    model.allocate(maxBatch: perMicroStep)
    binaryForwardChoices = try model.chooseBinaryForward(batch: perMicroStep, policy: options.binaryForward)
    loss = SparseCategoricalCrossentropy(classes: data.train.classes)
    microStepSums = MicroStepSums(store: model.store, layerCount: model.layers.count)
    trainFeed = data.train.makeFeed(
      batch: perMicroStep, training: true, seed: options.seed, augmentation: options.augmentation,
      compute: model.compute)
    try optimizer.prepare(store: model.store)
    if options.syncBatchNorm && communicator.size > 1 {
      model.sumBatchStatistics { [unowned communicator] p, n in try communicator.allreduceSum(p, count: n) }
    }
    exchange = try makeGradientExchange(
      model: model, optimizer: optimizer, communicator: communicator, options: options)
    if !options.injectedFaults.isEmpty { injectFaults(options.injectedFaults) }
    if let inspector = stallInspector {
      exchange.willWait = { [unowned self] phase in try inspector.enter(step: self.clock.step + 1, phase, waiting: true) }
    }
    connectTimeline()
    let flipLayers = model.flipCountingLayers.count
    position.flipSums = Array(repeating: 0, count: flipLayers)
    position.flipCounts = Array(repeating: 0, count: flipLayers)
    // Every rank starts from rank 0's parameters and state.
    try communicator.broadcast(model.store.values.pointer, count: model.store.values.count, root: 0)
    try communicator.broadcast(model.store.state.pointer, count: model.store.state.count, root: 0)
  }

  /// Checks that `model`, `data` and `options` can train together on `worldSize` ranks, before
  /// anything is allocated: shapes, classes, augmentation, and the batch's split over the
  /// ranks and micro-steps.
  public static func check(model: Model, data: DataSplits, options: TrainingOptions, worldSize: Int) throws {
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
    try options.augmentation?.validate(sampleShape: data.train.sampleShape)
    guard options.accumulate >= 1 else {
      throw TrainingError.invalidArgument("accumulate must be at least 1, got \(options.accumulate)")
    }
    _ = try EpochSampler(datasetSize: data.train.count, globalBatch: options.batchSize, seed: 0, rank: 0, worldSize: worldSize)
    guard options.batchSize % (worldSize * options.accumulate) == 0 else {
      throw TrainingError.invalidArgument(
        "global batch size \(options.batchSize) is not divisible by ranks × micro-steps = \(worldSize) × \(options.accumulate); choose a multiple of \(worldSize * options.accumulate)"
      )
    }
    try model.checkBatchFits(options.batchSize / worldSize / options.accumulate)
  }

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
    try finishTimeline()
    // The model as a whole on every rank (a sharded step keeps each rank's own slices only).
    try exchange.gatherState()
    return results
  }

  /// One optimizer step on global batch `stepInEpoch` of `order`; returns this rank's summed
  /// loss, correct count, sample count and replaced bad images. Steps taken in order through
  /// an epoch find their batches prepared (`startFeed`); any other step announces the rest of
  /// the epoch from it.
  public func step(order: [Int], stepInEpoch: Int) throws -> (
    loss: Double, correct: Double, count: Double, badImages: Int
  ) {
    try beforeStep?(clock.step + 1)
    if feedNext?.epoch != clock.epoch || feedNext?.step != stepInEpoch {
      try startFeed(order: order, epoch: clock.epoch, from: stepInEpoch)
    }
    let shard = sampler.shard(step: stepInEpoch)
    model.store.zeroGradients()
    timer.restart()
    let start = DispatchTime.now().uptimeNanoseconds
    let scale = 1 / Float(sampler.globalBatchSize(step: stepInEpoch))
    try exchange.beginStep(gradientScale: scale, clock: clock, timer: timer)
    var sums: (loss: Double, correct: Int, bad: Int) = (0, 0, 0)
    let lastMicro = (0..<options.accumulate).last { runsMicroStep(stepInEpoch, $0) }
    for micro in 0..<options.accumulate where runsMicroStep(stepInEpoch, micro) {
      let waitStart = DispatchTime.now().uptimeNanoseconds
      let batch = try trainFeed.next()
      dataWait += DispatchTime.now().uptimeNanoseconds - waitStart
      timer.lap(\.data)
      model.reseedStochasticLayers(stream: dropoutStream(micro: micro))
      // On the last micro-step the exchange sees each gradient as soon as backward finishes it
      // (and the earlier micro-steps' sums have joined it).
      let last = micro == lastMicro
      let observer = last ? microStepSums.observing(for: exchange.overlapsBackward ? exchange : nil) : nil
      let m = try model.accumulateGradients(
        batch.images, labels: batch.labels, batch: batch.count, loss: loss, observer: observer)
      if last { microStepSums.finish() } else { microStepSums.push() }
      sums = (sums.loss + m.lossSum, sums.correct + m.correct, sums.bad + batch.badImages)
      timer.lap(\.compute)
    }
    let backwardEnd = Double(DispatchTime.now().uptimeNanoseconds - start)
    try exchange.finishStep()
    if options.measureImbalance { stepEnds.append((backwardEnd, timer.timing.communication)) }
    clock.step += 1
    feedNext = (clock.epoch, stepInEpoch + 1)
    return (sums.loss, Double(sums.correct), Double(shard.count), sums.bad)
  }

  /// Announces to the feed the micro-batches of this rank from step `first` of the epoch on.
  func startFeed(order: [Int], epoch: Int, from first: Int) throws {
    var batches: [ArraySlice<Int>] = []
    for s in first..<sampler.stepsPerEpoch {
      for micro in 0..<options.accumulate where runsMicroStep(s, micro) {
        batches.append(order[sampler.microShard(step: s, rank: communicator.rank, micro: micro)])
      }
    }
    try trainFeed.begin(epoch: epoch, batches: batches)
    feedNext = (epoch, first)
  }

  /// Starts a fresh time split (`timing`) from the next step on.
  public func startTiming() {
    timer.timing = StepTiming()
    stepEnds.removeAll(keepingCapacity: true)
  }

  /// Collective (with `measureImbalance`, on every rank): the time split since `startTiming()`,
  /// with the waiting for the slowest rank taken out of `communication`: in each step, what this
  /// rank waited beyond the wait of the rank that ended its backward last. (The ranks start a
  /// step together, when the previous step's all-gathers end; a faster rank spends part of its
  /// lead on bucket updates, so its lead alone would overstate the waiting.)
  public func finishTiming() throws -> StepTiming {
    var t = timer.timing
    guard options.measureImbalance, communicator.size > 1 else { return t }
    let ends = stepEnds.map(\.backward)
    let totals = [0] + stepEnds.map(\.communication)
    let waits = stepEnds.indices.map { Double(totals[$0 + 1] - totals[$0]) }
    var last = ends
    try communicator.allreduceMax(&last)
    // The last rank's wait in each step (every other rank offers 0).
    var lastWaits = ends.indices.map { ends[$0] == last[$0] ? waits[$0] : 0 }
    try communicator.allreduceMax(&lastWaits)
    t.imbalance = min(UInt64(zip(waits, lastWaits).reduce(0) { $0 + max(0, $1.0 - $1.1) }), t.communication)
    t.communication -= t.imbalance
    return t
  }

  /// Points the model's, the step timer's and the exchange's trace hooks at the timeline (or
  /// disconnects them once it has finished).
  func connectTimeline() {
    guard let t = timeline, !t.finished else {
      model.layerTrace = nil
      timer.trace = nil
      exchange.trace = nil
      return
    }
    let names = model.layers.map(\.name)
    model.layerTrace = { [unowned t] layer, backward, start, end in
      t.record("\(backward ? "backward" : "forward") \(names[layer])", track: .layers, start: start, end: end)
    }
    timer.trace = { [unowned t] phase, start, end in t.record(phase, track: .phases, start: start, end: end) }
    exchange.trace = { [unowned t] name, track, start, end in t.record(name, track: track, start: start, end: end) }
  }

  /// Collective: sends every rank's timeline events to rank 0, which writes the trace.
  public func finishTimeline() throws {
    guard let t = timeline, !t.finished else { return }
    try t.finish(
      communicator: communicator, layerNames: model.layers.map(\.name), hostName: ProcessInfo.processInfo.hostName)
    connectTimeline()
    if communicator.isRoot { logger.info("timeline of steps \(t.window.lowerBound)..<\(t.window.upperBound): \(t.path)") }
  }

  /// `step`, recorded in the timeline when it is in its window (which ends after its last step).
  public func tracedStep(order: [Int], stepInEpoch: Int) throws -> StepSums {
    try stallInspector?.enter(step: clock.step + 1, .compute, waiting: false)
    guard let t = timeline, !t.finished else { return StepSums(try step(order: order, stepInEpoch: stepInEpoch)) }
    try t.stepWillStart(clock.step + 1, communicator: communicator)
    let start = DispatchTime.now().uptimeNanoseconds
    let r = try step(order: order, stepInEpoch: stepInEpoch)
    t.record("step \(clock.step)", track: .step, start: start, end: DispatchTime.now().uptimeNanoseconds)
    if t.ends(after: clock.step) { try finishTimeline() }
    return StepSums(r)
  }

  /// Whether this rank runs micro-step `micro` of `step`: when it has samples in it, or under
  /// sync BatchNorm (whose collectives need every rank) when any rank has.
  func runsMicroStep(_ step: Int, _ micro: Int) -> Bool {
    if !sampler.microShard(step: step, rank: communicator.rank, micro: micro).isEmpty { return true }
    return options.syncBatchNorm
      && (0..<sampler.worldSize).contains { !sampler.microShard(step: step, rank: $0, micro: micro).isEmpty }
  }

  /// Dropout masks depend on (seed, step, micro-batch) only, the micro-batch counted over all
  /// ranks (`rank · accumulate + micro`): resumed runs repeat them, and so do runs on other rank
  /// counts with the same ranks × accumulate.
  func dropoutStream(micro: Int) -> UInt64 {
    let k = UInt64(options.accumulate)
    return UInt64(clock.step) &* UInt64(communicator.size) &* k &+ UInt64(communicator.rank) &* k &+ UInt64(micro)
  }

  /// Trains the rest of `epoch` (from `position.stepInEpoch`), evaluates, and writes the
  /// checkpoints the policy asks for. Returns nil when a stop request ended it early.
  func trainEpoch(_ epoch: Int) throws -> EpochResult? {
    let steps = sampler.stepsPerEpoch
    let order = sampler.permutation(epoch: epoch)
    progress.epochStarted(epoch + 1, of: options.epochs)
    var running = EpochTotals(position)
    let samplesBefore = running.samples
    let hyperparameters = optimizer.hyperparameters(clock)
    let start = DispatchTime.now()
    startDataWaitWindow()
    dataWaitAtEpoch = dataWait
    for s in position.stepInEpoch..<steps {
      let local = try tracedStep(order: order, stepInEpoch: s)
      let global = try agree(on: local)
      running.add(global, flipRatios: model.flipRatios, layers: model.flipCountingLayers)
      position.stepInEpoch = s + 1
      position.badImages += global.badImages
      running.store(into: &position)
      // Everything that follows in the step is diagnostics and bookkeeping.
      try afterStep(s + 1, of: steps, running: running, seconds: seconds(since: start), epoch: epoch)
      if global.stopRequests > 0 {
        stopRequest = StopRequest(step: clock.step, ranks: global.stopRequests, localSignal: global.signal)
        trainFeed.end()
        feedNext = nil
        progress.epochFinished(steps: s + 1, seconds: seconds(since: start), summary: "stopped at step \(clock.step)")
        if let policy = checkpointPolicy { try saveCheckpoint(policy, wait: true) }
        return nil
      }
      if let policy = checkpointPolicy, policy.everySteps > 0, clock.step % policy.everySteps == 0, s + 1 < steps {
        try saveCheckpoint(policy)
      }
    }
    let trainSeconds = seconds(since: start)
    // The next epoch's first batches decode while this one is evaluated.
    if epoch + 1 < options.epochs {
      try startFeed(order: sampler.permutation(epoch: epoch + 1), epoch: epoch + 1, from: 0)
    }
    let result = try finishEpoch(
      epoch, running: running, hyperparameters: hyperparameters,
      imagesPerSecond: (running.samples - samplesBefore) / trainSeconds, start: start)
    progress.epochFinished(
      steps: steps, seconds: trainSeconds,
      summary: String(
        format: "loss: %.4f - accuracy: %.4f - test_loss: %.4f - test_accuracy: %.4f - %.0f images/s",
        result.loss, result.accuracy, result.testLoss, result.testAccuracy, result.imagesPerSecond))
    try record(result, hyperparameters: hyperparameters)
    try startNextEpoch(after: epoch)
    return result
  }

  /// Sums one step's figures over the ranks. The stop flag and rank 0's news of a checkpoint
  /// that failed to write in the background ride on the same all-reduce, so every rank sees
  /// every request at the same step.
  func agree(on local: StepSums) throws -> StepSums {
    var local = local
    local.signal = flip_signals_stop_requested()
    local.stopRequests = local.signal != 0 ? 1 : 0
    let writeFailure = checkpointWriter?.poll()
    local.failedCheckpointStep = writeFailure.map { $0.step + 1 } ?? 0
    try stallInspector?.enter(step: clock.step, .metrics, waiting: true)
    let global = try local.summed(over: communicator)
    guard global.loss.isFinite else {
      throw TrainingError.nonFinite(
        "the loss became \(global.loss) at step \(clock.step) (epoch \(clock.epoch + 1)); lower the learning rate")
    }
    if global.failedCheckpointStep > 0, let policy = checkpointPolicy {
      try checkpointFailed(step: global.failedCheckpointStep - 1, writeFailure, policy: policy)
    }
    return global
  }

  /// The step's replica check, progress line and step row.
  func afterStep(_ done: Int, of steps: Int, running: EpochTotals, seconds elapsed: Double, epoch: Int) throws {
    if options.checkEverySteps > 0 && clock.step % options.checkEverySteps == 0 { try checkReplicas() }
    progress.step(done, of: steps, seconds: elapsed, loss: running.meanLoss, accuracy: running.accuracy)
    guard options.logEverySteps > 0 && clock.step % options.logEverySteps == 0 else { return }
    var row = MetricsRow(
      kind: "step", epoch: epoch + 1, step: clock.step, loss: running.meanLoss, accuracy: running.accuracy,
      seconds: elapsed)
    row.dataWaitSeconds = try takeDataWait().sinceRow
    row.badImages = streamsImages ? position.badImages : nil
    try metrics?.write(row)
    try tensorBoard?.step(
      step: clock.step, loss: running.meanLoss, accuracy: running.accuracy, dataWaitSeconds: row.dataWaitSeconds ?? 0)
  }

  func startDataWaitWindow() {
    dataWaitAtRow = dataWait
    rowStart = DispatchTime.now().uptimeNanoseconds
  }

  /// Collective: the seconds the slowest rank waited for data since the last row (or the
  /// epoch's start) and since the epoch's start, and, when the first is over 10 % of the
  /// time, a warning (once) on rank 0 that suggests more data threads.
  func takeDataWait() throws -> (sinceRow: Double, sinceEpoch: Double) {
    var waited = [Double(dataWait - dataWaitAtRow) / 1e9, Double(dataWait - dataWaitAtEpoch) / 1e9]
    let span = Double(DispatchTime.now().uptimeNanoseconds - rowStart) / 1e9
    try communicator.allreduceMax(&waited)
    startDataWaitWindow()
    if let images = data.train as? StreamedImages, !warnedDataWait, span > 0, waited[0] > 0.1 * span {
      warnedDataWait = true
      if communicator.isRoot {
        logger.warning(
          "the steps waited \(Int((100 * waited[0] / span).rounded())) % of their time for data (decoded in \(images.threads) thread\(images.threads == 1 ? "" : "s") per rank); pass --data-threads with more threads, or run fewer ranks per node"
        )
      }
    }
    return (waited[0], waited[1])
  }

  /// Averages the BatchNorm statistics, evaluates, and makes the epoch's figures.
  func finishEpoch(
    _ epoch: Int, running: EpochTotals, hyperparameters: [String: Double], imagesPerSecond: Double,
    start: DispatchTime
  ) throws -> EpochResult {
    try synchronizeBatchNormStatistics()
    let waited = try takeDataWait().sinceEpoch
    let evaluationStart = DispatchTime.now().uptimeNanoseconds
    let test = try evaluateTestSet()
    timeline?.record("evaluation", track: .evaluation, start: evaluationStart, end: DispatchTime.now().uptimeNanoseconds)
    return EpochResult(
      epoch: epoch + 1, step: clock.step, loss: running.meanLoss, accuracy: running.accuracy,
      testLoss: test.loss, testAccuracy: test.accuracy, testTop5Accuracy: test.top5Accuracy,
      learningRate: hyperparameters["learning_rate"],
      flipRatio: running.flipRatios(layers: model.flipCountingLayers, counts: position.flipCounts),
      imagesPerSecond: imagesPerSecond, seconds: seconds(since: start), dataWaitSeconds: waited,
      badImages: streamsImages ? position.badImages : nil)
  }

  /// The epoch's row in metrics.jsonl and TensorBoard, and its kernel histograms.
  func record(_ result: EpochResult, hyperparameters: [String: Double]) throws {
    try metrics?.write(MetricsRow(result))
    try tensorBoard?.epoch(result, hyperparameters: hyperparameters)
    if options.kernelHistograms {
      // The latent weights as a whole (a sharded step keeps each rank's own slices only).
      try exchange.gatherState()
      try tensorBoard?.kernelHistograms(model.store, step: clock.step)
    }
  }

  /// The next epoch starts: a checkpoint from here continues with its first batch.
  func startNextEpoch(after epoch: Int) throws {
    let flipLayers = model.flipCountingLayers.count
    position.stepInEpoch = 0
    position.epochTotals = [0, 0, 0]
    position.flipSums = Array(repeating: 0, count: flipLayers)
    position.flipCounts = Array(repeating: 0, count: flipLayers)
    clock.epoch = epoch + 1
    if let policy = checkpointPolicy {
      let byEpoch = policy.everyEpochs > 0 && (epoch + 1) % policy.everyEpochs == 0
      let byStep = policy.everySteps > 0 && clock.step % policy.everySteps == 0
      if byEpoch || byStep { try saveCheckpoint(policy) }
    }
  }

  /// Mean test loss and accuracy over `dataset`, sharded over the ranks, count-weighted.
  /// Through `feed` when given (one of `dataset`'s evaluation feeds), else a new one.
  public func evaluate(_ dataset: any SampleSet, feed: BatchFeed? = nil) throws -> Evaluation {
    try stallInspector?.enter(step: clock.step, .evaluation, waiting: true)
    return try evaluateModel(
      model, on: dataset, communicator: communicator, batch: localCapacity, loss: loss, feed: feed)
  }

  /// `evaluate(data.test)` through one feed kept from epoch to epoch (an image set's decoding
  /// threads and buffers are made once).
  func evaluateTestSet() throws -> Evaluation {
    let feed =
      testFeed
      ?? data.test.makeFeed(batch: localCapacity, training: false, seed: 0, augmentation: nil, compute: model.compute)
    testFeed = feed
    return try evaluate(data.test, feed: feed)
  }

  /// With local BatchNorm each rank's moving statistics differ: average them so every rank
  /// holds the same model (identity on one process).
  public func synchronizeBatchNormStatistics() throws {
    let state = model.store.state
    guard state.count > 0 else { return }
    try communicator.allreduceSum(state.pointer, count: state.count)
    scale(state, by: 1 / Float(communicator.size))
  }

  /// A 64-bit hash of everything that must be identical on every rank (the exchange knows
  /// what that is: with a sharded step, not the optimizer state). BatchNorm moving statistics
  /// are left out: with local BatchNorm they differ per rank until averaged.
  public func replicaChecksum() -> UInt64 { exchange.replicaChecksum() }

  /// Compares `replicaChecksum()` across ranks; a mismatch stops the job naming the ranks.
  public func checkReplicas() throws {
    try stallInspector?.enter(step: clock.step, .replicaCheck, waiting: true)
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

/// Multiplies every element of `buffer` by `factor`.
func scale(_ buffer: FloatBuffer, by factor: Float) {
  let p = buffer.pointer
  for i in 0..<buffer.count { p[i] *= factor }
}

/// A model's figures on a test set: mean loss, top-1 and top-5 accuracy.
public struct Evaluation: Sendable, Equatable {
  public var loss: Double
  public var accuracy: Double
  /// The share of samples whose label is among the five highest scores (Keras's
  /// `sparse_top_k_categorical_accuracy`, k = 5; 1 with five classes or fewer).
  public var top5Accuracy: Double
}

/// Evaluates `model` (inference mode) on this rank's contiguous shard of `dataset` in batches
/// of `batch` (through `feed`, one of `dataset`'s evaluation feeds, when given); sums are
/// all-reduced so every rank gets the global mean loss and accuracy.
public func evaluateModel(
  _ model: Model, on dataset: any SampleSet, communicator: Communicator, batch: Int,
  loss: SparseCategoricalCrossentropy? = nil, feed: BatchFeed? = nil
) throws -> Evaluation {
  model.allocate(maxBatch: batch)
  let feed =
    feed ?? dataset.makeFeed(batch: batch, training: false, seed: 0, augmentation: nil, compute: model.compute)
  let lossFunction = loss ?? SparseCategoricalCrossentropy(classes: dataset.classes)
  let n = dataset.count
  let ranks = communicator.size
  let rank = communicator.rank
  let lo = rank * (n / ranks) + min(rank, n % ranks)
  let hi = lo + n / ranks + (rank < n % ranks ? 1 : 0)
  let all = Array(0..<n)
  // Loss sum, correct, samples, top-5 correct.
  var totals = [0.0, 0.0, Double(hi - lo), 0.0]
  try feed.begin(epoch: 0, batches: stride(from: lo, to: hi, by: batch).map { all[$0..<min($0 + batch, hi)] })
  for _ in stride(from: lo, to: hi, by: batch) {
    let b = try feed.next()
    let r = try model.evaluate(b.images, labels: b.labels, batch: b.count, loss: lossFunction)
    totals[0] += r.lossSum
    totals[1] += Double(r.correct)
    totals[3] += Double(r.top5)
  }
  try communicator.allreduceSum(&totals)
  return Evaluation(loss: totals[0] / totals[2], accuracy: totals[1] / totals[2], top5Accuracy: totals[3] / totals[2])
}
