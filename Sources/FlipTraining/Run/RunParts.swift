import FlipBNN
import FlipComm
import FlipTensor
import Foundation
import Logging

/// The pieces of a run built from its settings and data, each checked, before anything in
/// the run directory changes: the model, the optimizer, the trainer's options.
struct RunParts {
  let settings: RunSettings
  let data: DataSplits
  let environment: RunEnvironment
  let model: Model
  let options: TrainingOptions

  init(settings: RunSettings, data: DataSplits, environment env: RunEnvironment, compute: Compute) throws {
    try checkSameSettingsOnEveryRank(settings, communicator: env.communicator)
    self.settings = settings
    self.data = data
    environment = env
    model = try Model(
      specs: settings.layers, inputShape: settings.inputShape ?? data.train.sampleShape, seed: settings.seed,
      compute: compute)
    try model.setBackwardPrecision(settings.backwardPrecision)
    var options = TrainingOptions(settings)
    options.injectedFaults = env.faults
    self.options = options
    try Trainer.check(model: model, data: data, options: options, worldSize: env.communicator.size)
    if env.faults.contains(InjectedFault(action: .unscaledInt8, rank: env.communicator.rank, step: 1)) {
      // A test of the start-up check: the int8 convolutions' kernel levels not doubled.
      model.int8KernelScale = 1
    }
    if !env.skipSelftest {
      try checkKernelsAtStartup(
        specs: settings.layers, inputShape: model.inputShape, rank: env.communicator.rank, logger: env.logger,
        compute: compute, int8KernelScale: model.int8KernelScale, backwardPrecision: model.backwardPrecision)
    }
  }

  /// The trainer, with its checkpoints in `directory` and its observers.
  func makeTrainer(directory: String, observers: TrainingObservers) throws -> Trainer {
    let env = environment
    var observers = observers
    if let path = settings.timeline { observers.timeline = Timeline(path: path, window: settings.timelineSteps.range) }
    if settings.stallWarning > 0 {
      observers.stallInspector = try StallInspector(
        communicator: env.communicator, warning: settings.stallWarning, timeout: settings.stallTimeout,
        logger: env.logger)
    }
    let trainer = try Trainer(
      model: model, optimizer: try settings.optimizer.make(), communicator: env.communicator, data: data,
      options: options, logger: env.logger, observers: observers,
      checkpoints: CheckpointPolicy(directory: directory, settings: settings))
    env.logger.info("gradient exchange: \(trainer.exchange.description)")
    if settings.backwardPrecision == .bf16 {
      env.logger.info(
        "backward convolutions in bf16 (x, dy and kernels rounded to bfloat16, fp32 accumulation) on oneDNN ISA \(OneDNN.effectiveISA)"
      )
    }
    if settings.backwardPrecision == .winograd {
      let convolutions = model.layers.compactMap { $0 as? QuantConv2D }
      let winograd = convolutions.filter {
        ConvolutionPrimitives.winogradCandidate(geometry: $0.geometry, filters: $0.filters) && $0.usePrimitives
      }
      env.logger.info(
        "backward convolutions through Winograd F(4×4, 3×3) in fp32 on \(winograd.count) of \(convolutions.count) convolution layers (3×3, stride 1, channels and filters multiples of 16; oneDNN's on AVX-512, Flip's own on AVX2; ISA \(OneDNN.effectiveISA)); the others direct fp32"
      )
    }
    for choice in trainer.binaryForwardChoices {
      env.logger.info("binary forward on oneDNN ISA \(OneDNN.effectiveISA): \(choice)")
    }
    if let warning = settings.binaryForward.unusedWarning(trainer.binaryForwardChoices) {
      env.logger.warning("\(warning)")
    }
    env.logger.info(
      "model \(settings.model): \(model.store.parameterCount) trainable parameters; \(trainer.sampler.stepsPerEpoch) steps per epoch of global batch \(settings.batchSize)"
    )
    return trainer
  }
}

extension TrainingOptions {
  /// The trainer's options for `settings`.
  public init(_ settings: RunSettings) {
    self.init(
      epochs: settings.epochs, batchSize: settings.batchSize, seed: settings.seed, logEverySteps: settings.logEvery,
      checkEverySteps: settings.checkEvery)
    accumulate = settings.accumulate
    syncBatchNorm = settings.syncBN
    bucketBytes = Int(settings.bucketMB * 1_048_576)
    shardOptimizer = settings.shardOptimizer
    wire = settings.wire
    binaryForward = settings.binaryForward
    augmentation = Augmentation(mode: settings.augment ?? .none)
    kernelHistograms = settings.tensorboard
  }
}

extension CheckpointPolicy {
  /// The policy `settings` ask for, writing into `directory`.
  public init(directory: String, settings: RunSettings) {
    self.init(directory: directory)
    everySteps = settings.checkpointEvery
    everyEpochs = settings.checkpointEveryEpochs
    keep = settings.keepCheckpoints
    continueOnError = settings.onCheckpointError == .continue
    self.settings = settings
  }
}

/// Every rank must train the same run: compares a hash of the settings across ranks before the
/// first collective that depends on them (an MPMD launch such as `mpirun -np 1 flip train
/// --seed 0 : -np 1 flip train --seed 1` would otherwise train inconsistent replicas or hang).
func checkSameSettingsOnEveryRank(_ settings: RunSettings, communicator: Communicator) throws {
  guard communicator.size > 1 else { return }
  var run = settings
  // Per-rank choices that cannot make the replicas differ.
  run.threads = nil
  run.dataThreads = nil
  let h = FNV1a.hash(try SettingsEntry.text(run).utf8)
  let all = try communicator.allgather(h)
  let differing = all.indices.filter { all[$0] != all[0] }
  guard differing.isEmpty else {
    throw TrainingError.invalidArgument(
      "ranks \(differing.map(String.init).joined(separator: ", ")) were started with other settings than rank 0 (config or flags differ: hash \(String(all[differing[0]], radix: 16)) vs \(String(all[0], radix: 16))); start every rank with the same flags and config file"
    )
  }
}

/// The data set `settings` name: IDX and CIFAR-10 in memory, ImageNet-format data indexed
/// and decoded as `settings` ask (`image_size`, `augment`, `mean`, `std`, `data_threads`:
/// by default as many as the rank's compute threads, `bad_images`; a bad file is logged as a
/// warning naming this rank).
func loadData(_ settings: RunSettings, environment env: RunEnvironment, compute: Compute) throws -> DataSplits {
  let (logger, rank) = (env.logger, env.communicator.rank)
  let images = ImageDataOptions(settings, computeThreads: compute.threads) { message in
    logger.warning("rank \(rank): bad image \(message)")
  }
  // Rank 0 indexes shards first (one scan of every shard per core), the others then find its
  // index cache (on a shared home, also on the other hosts).
  let communicator = env.communicator
  if communicator.rank > 0 { try communicator.barrier() }
  let loaded = Result { try DataSplits.load(directory: settings.data, images: images) }
  if communicator.rank == 0 && communicator.size > 1 { try communicator.barrier() }
  let data = try loaded.get()
  if !(data.format?.isStreamed ?? false), settings.imageSize != nil {
    throw TrainingError.invalidArgument(
      "image_size (--image-size) applies to ImageNet-format data only; \(settings.data) holds \(data.format?.rawValue ?? "in-memory") images of \(data.train.sampleShape)"
    )
  }
  return data
}

/// A line on a data set for the log: `60000 training and 10000 test images of [28, 28, 1], 10 classes`.
func describe(_ data: DataSplits) -> String {
  let decoding = (data.train as? StreamedImages).map {
    ", decoded in \($0.threads) thread\($0.threads == 1 ? "" : "s") per rank"
  }
  let shape = data.train.sampleShape
  return
    "\(data.train.count) training and \(data.test.count) test images of \(shape), \(data.train.classes) classes\(decoding ?? "")"
}

/// `flip train`'s start-up check: the model's fast kernels against their references on this
/// rank's CPU. A failure names the kernels, the rank and the host.
public func checkKernelsAtStartup(
  specs: [LayerSpec], inputShape: [Int], rank: Int, logger: Logger, compute: Compute = .serial,
  int8KernelScale: Float = ConvolutionPrimitives.exactInt8KernelScale, backwardPrecision: BackwardPrecision = .fp32
) throws {
  let start = DispatchTime.now().uptimeNanoseconds
  let checks = try KernelSelfTest.run(
    specs: specs, inputShape: inputShape, compute: compute, int8KernelScale: int8KernelScale,
    backwardPrecision: backwardPrecision)
  let failures = checks.filter { !$0.passed }
  guard failures.isEmpty else {
    throw TrainingError.kernelCheckFailed(rank: rank, host: ProcessInfo.processInfo.hostName, failures: failures)
  }
  let ms = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6
  logger.info("kernel self-check: \(checks.count) kernels agree with their references (\(String(format: "%.0f", ms)) ms)")
}
