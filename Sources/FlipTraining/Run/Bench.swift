import FlipBNN
import FlipComm
import FlipTensor
import Foundation

/// What `flip bench` measures; its JSON keys are `flip bench --json`'s.
public struct BenchResult: Codable, Sendable {
  public var model: String
  /// The side of the square images the model takes (nil for other inputs).
  public var imageSize: Int?
  public var batchSize: Int
  public var steps: Int
  public var threads: Int
  public var ranks: Int
  public var isa: String
  public var imagesPerSecond: Double
  public var msPerStep: Double
  public var fp32GemmGflopsPerSecond: Double
  public var int8GemmGopsPerSecond: Double
  public var fp32GemmTimeShare: Double
  public var int8GemmTimeShare: Double
  public var gemmTimeShare: Double
  public var xnorGopsPerSecond: Double
  public var xnorTimeShare: Double
  public var dataMs: Double
  public var computeMs: Double
  public var communicationWaitMs: Double
  public var optimizerMs: Double
  public var communicationAloneMs: Double
  public var hiddenFraction: Double
  public var imbalanceWaitMs: Double
  public var shardedOptimizer: Bool
  public var bucketMb: Double
  public var mpiProgress: String
  public var exchange: String
  public var bytesSentPerStep: Int
  public var wire: String
  public var variables: Int
  public var signVariables: Int
  /// Bytes of the pooled activation gradients (`Model.gradientBufferBytes`), what they would
  /// take if every layer kept its own, and the layers' shared scratch.
  public var activationGradientBytes: Int
  public var activationGradientBytesIfKept: Int
  public var scratchBytes: Int
  /// GEMM calls in the timed steps (for the text report).
  public var fp32GemmCalls: Int
  public var int8GemmCalls: Int
  public var xnorCalls: Int
  /// The arithmetic of the convolutions' backward (`fp32`, `winograd` or `bf16`).
  public var backwardPrecision = BackwardPrecision.fp32.rawValue

  enum CodingKeys: String, CodingKey {
    case model, steps, threads, ranks, isa, exchange, wire, variables
    case batchSize = "batch_size"
    case imageSize = "image_size"
    case imagesPerSecond = "images_per_second"
    case msPerStep = "ms_per_step"
    case fp32GemmGflopsPerSecond = "fp32_gemm_gflops_per_second"
    case int8GemmGopsPerSecond = "int8_gemm_gops_per_second"
    case fp32GemmTimeShare = "fp32_gemm_time_share"
    case int8GemmTimeShare = "int8_gemm_time_share"
    case gemmTimeShare = "gemm_time_share"
    case xnorGopsPerSecond = "xnor_gops_per_second"
    case xnorTimeShare = "xnor_time_share"
    case dataMs = "data_ms"
    case computeMs = "compute_ms"
    case communicationWaitMs = "communication_wait_ms"
    case optimizerMs = "optimizer_ms"
    case communicationAloneMs = "communication_alone_ms"
    case hiddenFraction = "hidden_fraction"
    case imbalanceWaitMs = "imbalance_wait_ms"
    case shardedOptimizer = "sharded_optimizer"
    case bucketMb = "bucket_mb"
    case mpiProgress = "mpi_progress"
    case bytesSentPerStep = "bytes_sent_per_step"
    case signVariables = "sign_variables"
    case activationGradientBytes = "activation_gradient_bytes"
    case activationGradientBytesIfKept = "activation_gradient_bytes_if_kept"
    case scratchBytes = "scratch_bytes"
    case backwardPrecision = "backward_precision"
    case fp32GemmCalls = "fp32_gemm_calls"
    case int8GemmCalls = "int8_gemm_calls"
    case xnorCalls = "xnor_calls"
  }
}

/// How `flip bench` runs besides the run's settings.
public struct BenchPlan: Sendable {
  public var steps = 100
  public var warmup = 5
  /// Random images of the model's input shape instead of the data set.
  public var synthetic = false
  /// Convolutions as im2col + GEMM instead of oneDNN's primitives.
  public var im2col = false
  /// `testall` or `thread` (reported only: the communicator was made with it).
  public var mpiProgress = "testall"
  /// The compute threads per rank (set from the settings when the bench runs).
  public internal(set) var threads = 1
  public init() {}
}

extension TrainingRun {
  /// Times `plan.steps` training steps of `settings` after `plan.warmup` untimed ones (full
  /// batches of the data set, or random images), with the step's time split averaged over the
  /// ranks. Collective; every rank returns the result.
  public static func bench(_ settings: RunSettings, plan: BenchPlan, environment env: RunEnvironment) throws
    -> BenchResult
  {
    var settings = settings
    try settings.validate()
    var plan = plan
    plan.threads = env.configureThreads(settings.threads)
    let preset = ModelPreset(rawValue: settings.model)
    let syntheticShape =
      settings.inputShape ?? settings.imageSize.map { [$0, $0, 3] } ?? preset?.defaultInputShape ?? [28, 28, 1]
    let splits =
      try plan.synthetic
      ? syntheticData(shape: syntheticShape, classes: preset?.defaultClasses ?? 10, count: settings.batchSize * 4)
      : loadData(settings, environment: env, compute: Compute(threads: plan.threads))
    if plan.synthetic { settings.imageSize = nil }
    settings.timeline = nil
    settings = try settings.resolved(
      trainSamples: splits.train.count, sampleShape: splits.train.sampleShape, classes: splits.train.classes,
      streamed: splits.format?.isStreamed ?? false)
    var options = TrainingOptions(settings)
    options.logEverySteps = 0
    options.checkEverySteps = 0
    options.kernelHistograms = false
    options.measureImbalance = env.communicator.size > 1
    let profiler = GEMMProfiler()
    let model = try Model(
      specs: settings.layers, inputShape: settings.inputShape ?? splits.train.sampleShape, seed: 0,
      compute: Compute(threads: plan.threads, profiler: profiler))
    if plan.im2col { for case let conv as QuantConv2D in model.layers { conv.usePrimitives = false } }
    try model.setBackwardPrecision(settings.backwardPrecision)
    var observers = TrainingObservers()
    if let path = env.timelinePath {
      observers.timeline = Timeline(path: path, window: (plan.warmup + 1)..<(plan.warmup + plan.steps + 1))
    }
    let trainer = try Trainer(
      model: model, optimizer: try settings.optimizer.make(), communicator: env.communicator, data: splits,
      options: options, logger: env.logger, observers: observers)
    return try measure(trainer, settings: settings, plan: plan, profiler: profiler, environment: env)
  }

  static func syntheticData(shape: [Int], classes: Int = 10, count n: Int) throws -> DataSplits {
    var g = SplitMix64(seed: 1)
    let size = shape.reduce(1, *)
    let images = (0..<(n * size)).map { _ in UInt8(truncatingIfNeeded: g.next()) }
    let labels = (0..<n).map { Int32($0 % classes) }
    let set = try Dataset(images: images, labels: labels, sampleShape: shape, classes: classes)
    return DataSplits(train: set, test: set)
  }

  static func measure(
    _ trainer: Trainer, settings: RunSettings, plan: BenchPlan, profiler: GEMMProfiler, environment env: RunEnvironment
  ) throws -> BenchResult {
    let communicator = env.communicator
    // Full batches only: skip the epoch's last, partial batch.
    let fullSteps = max(1, trainer.data.train.count / settings.batchSize)
    var order = trainer.sampler.permutation(epoch: 0)
    var cursor = 0
    func next() throws {
      if cursor >= fullSteps {
        cursor = 0
        order = trainer.sampler.permutation(epoch: 1)
      }
      _ = try trainer.tracedStep(order: order, stepInEpoch: cursor)
      cursor += 1
    }
    for _ in 0..<plan.warmup { try next() }
    profiler.reset()
    profiler.enabled = true
    trainer.startTiming()
    try communicator.barrier()
    let start = DispatchTime.now().uptimeNanoseconds
    for _ in 0..<plan.steps { try next() }
    let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
    profiler.enabled = false
    try trainer.finishTimeline()
    // The step's time split, averaged over the ranks (ms per step), and the same
    // communication run alone, for the fraction of it that the step hides.
    let t = try trainer.finishTiming()
    var split = [t.data, t.compute, t.communication, t.optimizer, t.imbalance].map {
      Double($0) / 1e6 / Double(plan.steps)
    }
    split.insert(try trainer.exchange.communicationAlone(repeats: 20), at: 4)
    try communicator.allreduceSum(&split)
    split = split.map { $0 / Double(communicator.size) }
    return result(trainer, settings: settings, plan: plan, profiler: profiler, seconds: seconds, split: split)
  }

  static func result(
    _ trainer: Trainer, settings: RunSettings, plan: BenchPlan, profiler: GEMMProfiler, seconds: Double,
    split: [Double]
  ) -> BenchResult {
    let size = trainer.communicator.size
    let (f32, i8, xnor) = (profiler.float32, profiler.int8, profiler.xnor)
    let model = trainer.model
    func share(_ ns: UInt64) -> Double { Double(ns) / 1e9 / seconds }
    let shape = settings.inputShape ?? []
    var result = BenchResult(
      model: settings.model, imageSize: shape.count == 3 && shape[0] == shape[1] && shape[2] == 3 ? shape[0] : nil,
      batchSize: settings.batchSize, steps: plan.steps, threads: plan.threads, ranks: size,
      isa: OneDNN.effectiveISA, imagesPerSecond: Double(plan.steps * settings.batchSize) / seconds,
      msPerStep: seconds / Double(plan.steps) * 1000, fp32GemmGflopsPerSecond: f32.rate,
      int8GemmGopsPerSecond: i8.rate, fp32GemmTimeShare: share(f32.nanoseconds),
      int8GemmTimeShare: share(i8.nanoseconds),
      gemmTimeShare: share(f32.nanoseconds + i8.nanoseconds + xnor.nanoseconds), xnorGopsPerSecond: xnor.rate,
      xnorTimeShare: share(xnor.nanoseconds), dataMs: split[0], computeMs: split[1], communicationWaitMs: split[2],
      optimizerMs: split[3], communicationAloneMs: split[4],
      hiddenFraction: size > 1 && split[4] > 0 ? 1 - split[2] / split[4] : 0, imbalanceWaitMs: split[5],
      shardedOptimizer: settings.shardOptimizer && size > 1, bucketMb: settings.bucketMB, mpiProgress: plan.mpiProgress,
      exchange: trainer.exchange.description, bytesSentPerStep: trainer.exchange.bytesSentPerStep,
      wire: trainer.exchange.wireFormat.rawValue, variables: model.store.values.count,
      signVariables: model.signKernels.reduce(0) { $0 + model.store.views[$1.view].count },
      activationGradientBytes: model.gradientBufferBytes, activationGradientBytesIfKept: model.gradientBytesIfKept,
      scratchBytes: model.scratchBytes,
      fp32GemmCalls: f32.calls, int8GemmCalls: i8.calls, xnorCalls: xnor.calls)
    result.backwardPrecision = settings.backwardPrecision.rawValue
    return result
  }
}
