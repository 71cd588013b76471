import ArgumentParser
import FlipBNN
import FlipComm
import FlipTraining
import Foundation

struct TrainCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "train",
    abstract: "Train a model on an MNIST-style data set, evaluating on its test set after every epoch.",
    discussion: """
      The run directory (--out) receives metrics.jsonl (one JSON row per epoch and every \
      --log-every steps), config.yaml (the effective config, every layer written out) and \
      model.safetensors (the trained variables). --batch-size is the GLOBAL batch: under mpirun \
      each of N ranks takes batch/N samples of it.
      """)

  @OptionGroup var modelOptions: ModelOptions
  @OptionGroup var compute: ComputeOptions

  @Option(name: .long, help: "Epochs to train (default 10, or the config's).")
  var epochs: Int?
  @Option(name: .long, help: "Global batch size over all ranks (default 512, or the config's).")
  var batchSize: Int?
  @Option(name: .long, help: "Seed of initialization, shuffling and dropout (default 0).")
  var seed: Int?
  @Option(name: .long, help: "Adam/SGD learning rate as a constant (overrides the config's).")
  var learningRate: Double?
  @Option(name: .long, help: "Directory with the four IDX files (raw or .gz). Default: \(DataSplits.defaultDirectory).")
  var data: String?
  @Option(name: .long, help: "Run directory for metrics, config and model (default runs/<model>).")
  var out: String?
  @Flag(name: .long, help: "Replace the files of an earlier run in --out.")
  var overwrite = false
  @Option(name: .long, help: "A step row in metrics.jsonl every this many steps (0: none; default 50).")
  var logEvery: Int?
  @Flag(name: .long, help: "No progress bar or per-epoch lines on standard output.")
  var quiet = false
  @Option(
    name: .long,
    help: ArgumentHelp(
      "Learning-rate scaling for large batches: none, or linear (lr × batch / --lr-reference-batch, Goyal et al. 2017).",
      discussion: "The learning rate depends on the global batch only, never on the number of ranks."))
  var lrScaling: LearningRateScaling = .none
  @Option(name: .long, help: "The batch size the configured learning rate was tuned for (default 256).")
  var lrReferenceBatch = 256
  @Option(name: .long, help: "Linear warmup from the unscaled learning rate over this many epochs (default 0).")
  var warmupEpochs = 0
  @Option(
    name: .long,
    help:
      "Under mpirun: all-reduce gradients in buckets of about this many MiB, each started as soon as backward has finished its layers, overlapping the rest of backward (0: one all-reduce after backward; default 4)."
  )
  var bucketMb: Double = 4
  @Flag(
    inversion: .prefixedNo,
    help: ArgumentHelp(
      "Under mpirun: sharded optimizer step (ZeRO stage 1, the default): reduce-scatter the gradients, update 1/N of the variables per rank, all-gather them.",
      discussion:
        "The same bytes on the wire as the all-reduce and 1/N of the optimizer work per rank (measured 4–6 % faster than the all-reduce on 2 ranks). --no-shard-optimizer all-reduces the gradients in --bucket-mb buckets overlapping backward instead."
    ))
  var shardOptimizer = true
  @Flag(
    name: .long,
    help: ArgumentHelp(
      "Sync BatchNorm: normalize with the statistics of the global batch (summed across ranks).",
      discussion:
        "By default each rank normalizes with its local batch and the moving statistics are averaged before every evaluation."
    ))
  var syncBn = false
  @Option(
    name: .long,
    help: ArgumentHelp(
      "Gradient accumulation: K micro-steps of batch/(ranks·K) samples per rank before one all-reduce and one update (default 1).",
      discussion: "The global batch stays the batch of one update; BatchNorm statistics are those of each micro-step."))
  var accumulate = 1
  @Option(
    name: .long,
    help:
      "Under mpirun: compare a checksum of the weights and optimizer state across ranks every N steps (0: only at the end; default 100)."
  )
  var checkEvery = 100

  func validate() throws {
    if let epochs, epochs <= 0 { throw ValidationError("--epochs must be positive, got \(epochs)") }
    if let batchSize, batchSize <= 0 { throw ValidationError("--batch-size must be positive, got \(batchSize)") }
    if let seed, seed < 0 { throw ValidationError("--seed must be ≥ 0, got \(seed)") }
    if let learningRate, !(learningRate > 0) {
      throw ValidationError("--learning-rate must be positive, got \(learningRate)")
    }
    if let logEvery, logEvery < 0 { throw ValidationError("--log-every must be ≥ 0, got \(logEvery)") }
    if lrReferenceBatch <= 0 { throw ValidationError("--lr-reference-batch must be positive, got \(lrReferenceBatch)") }
    if warmupEpochs < 0 { throw ValidationError("--warmup-epochs must be ≥ 0, got \(warmupEpochs)") }
    if !(bucketMb >= 0) { throw ValidationError("--bucket-mb must be ≥ 0, got \(bucketMb)") }
    if accumulate < 1 { throw ValidationError("--accumulate must be at least 1, got \(accumulate)") }
    if checkEvery < 0 { throw ValidationError("--check-every must be ≥ 0, got \(checkEvery)") }
  }

  func run() throws {
    try Runtime.run(verbose: compute.verbose) { communicator, logger in
      var config = try modelOptions.resolve()
      if let epochs { config.epochs = epochs }
      if let batchSize { config.batchSize = batchSize }
      if let seed { config.seed = UInt64(seed) }
      if let data { config.data = data }
      if let logEvery { config.logEverySteps = logEvery }
      if let learningRate { config.optimizer = try config.optimizer.withLearningRate(learningRate) }
      guard config.epochs > 0 else { throw ValidationError("epochs must be positive, got \(config.epochs)") }
      guard config.batchSize > 0 else { throw ValidationError("batch_size must be positive, got \(config.batchSize)") }

      let threads = Runtime.configureThreads(compute.threads, localRanks: communicator.localSize)
      logger.info("\(Runtime.describeCompute(threads: threads, communicator: communicator))")

      let runDirectory = out ?? "runs/\(config.model)"
      if communicator.isRoot { try RunDirectory.prepare(runDirectory, overwrite: overwrite) }

      let data = try DataSplits.load(directory: config.data)
      logger.info(
        "data \(config.data): \(data.train.count) training and \(data.test.count) test images of \(data.train.sampleShape), \(data.train.classes) classes"
      )
      let stepsPerEpoch = (data.train.count + config.batchSize - 1) / config.batchSize
      let factor = lrScaling == .linear ? Double(config.batchSize) / Double(lrReferenceBatch) : 1
      if factor != 1 || warmupEpochs > 0 {
        config.optimizer = try config.optimizer.mappingLearningRates { h in
          var schedule = factor == 1 ? h.schedule : .scaled(factor: factor, inner: h.schedule)
          if warmupEpochs > 0 {
            let warmup = warmupEpochs * (h.unit == .step ? stepsPerEpoch : 1)
            schedule = .linearWarmup(warmup: warmup, start: h.schedule.value(at: 0), then: schedule)
          }
          return Hyperparameter(schedule, unit: h.unit)
        }
        logger.info(
          "learning rate: \(lrScaling == .linear ? "linear scaling ×\(factor)" : "unscaled")\(warmupEpochs > 0 ? ", \(warmupEpochs) warmup epoch(s)" : "")"
        )
      }
      let model = try Sequential(
        specs: config.layers, inputShape: config.inputShape ?? data.train.sampleShape, seed: config.seed)
      let optimizer = try config.optimizer.make()
      var options = TrainingOptions(
        epochs: config.epochs, batchSize: config.batchSize, seed: config.seed, logEverySteps: config.logEverySteps,
        checkEverySteps: checkEvery)
      options.accumulate = accumulate
      options.syncBatchNorm = syncBn
      options.shardOptimizer = shardOptimizer
      options.bucketBytes = Int(bucketMb * 1_048_576)
      let env = ProcessInfo.processInfo.environment
      if let rank = env["FLIP_TEST_FAIL_RANK"].flatMap(Int.init),
        let step = env["FLIP_TEST_FAIL_STEP"].flatMap(Int.init)
      {
        options.injectedFailure = (rank, step)
      }
      let trainer = try Trainer(
        model: model, optimizer: optimizer, communicator: communicator, data: data,
        options: options,
        logger: logger, progress: ProgressReporter(enabled: communicator.isRoot && !quiet))
      if communicator.isRoot {
        try RunDirectory.writeText(try config.yaml(), to: runDirectory + "/config.yaml")
        trainer.metrics = try MetricsLog(path: runDirectory + "/metrics.jsonl")
      }
      logger.info(
        "model \(config.model): \(model.store.parameterCount) trainable parameters; \(trainer.sampler.stepsPerEpoch) steps per epoch of global batch \(config.batchSize)"
      )
      let results = try trainer.fit()
      if communicator.isRoot {
        try ModelFile.save(
          model, to: runDirectory + "/model.safetensors",
          metadata: [
            "model": config.model, "config": try config.yaml(), "step": String(trainer.clock.step),
            "epoch": String(config.epochs),
          ])
        if let last = results.last {
          logger.info(
            "done: test accuracy \(String(format: "%.4f", last.testAccuracy)), test loss \(String(format: "%.4f", last.testLoss)); run directory \(runDirectory)"
          )
        }
      }
    }
  }
}

/// `--lr-scaling` values.
enum LearningRateScaling: String, ExpressibleByArgument, CaseIterable {
  case none, linear
}

extension OptimizerSpec {
  /// The same optimizer with every learning rate passed through `transform` (Adam's and SGD's;
  /// Bop has none). An optimizer without any learning rate is an error.
  func mappingLearningRates(_ transform: (Hyperparameter) -> Hyperparameter) throws -> OptimizerSpec {
    switch self {
    case .adam(let lr, let b1, let b2, let eps):
      return .adam(learningRate: transform(lr), beta1: b1, beta2: b2, epsilon: eps)
    case .sgd(let lr, let m, let n): return .sgd(learningRate: transform(lr), momentum: m, nesterov: n)
    case .bop:
      throw ValidationError("--lr-scaling and --warmup-epochs need a learning rate; bop has gamma and threshold")
    case .caseOptimizer(let cases, let fallback):
      let mapped = cases.map { c -> (VariablePredicate, OptimizerSpec) in
        (c.0, (try? c.1.mappingLearningRates(transform)) ?? c.1)
      }
      return .caseOptimizer(cases: mapped, default: try fallback?.mappingLearningRates(transform))
    }
  }

  /// The same optimizer with a constant learning rate (for --learning-rate).
  func withLearningRate(_ lr: Double) throws -> OptimizerSpec {
    switch self {
    case .adam(_, let b1, let b2, let eps):
      return .adam(learningRate: .constant(lr), beta1: b1, beta2: b2, epsilon: eps)
    case .sgd(_, let m, let n): return .sgd(learningRate: .constant(lr), momentum: m, nesterov: n)
    case .bop:
      throw ValidationError(
        "--learning-rate does not apply to bop (it has gamma and threshold); set them in the config")
    case .caseOptimizer(let cases, let fallback):
      guard let fallback else {
        throw ValidationError("--learning-rate needs a default optimizer in the case optimizer")
      }
      return .caseOptimizer(cases: cases, default: try fallback.withLearningRate(lr))
    }
  }
}

/// The run directory's files.
enum RunDirectory {
  static let runFiles = ["metrics.jsonl", "config.yaml", "model.safetensors"]

  /// Creates `path` (and parents) and checks that it is writable and holds no earlier run
  /// unless `overwrite`.
  static func prepare(_ path: String, overwrite: Bool) throws {
    let fm = FileManager.default
    var isDirectory: ObjCBool = false
    if fm.fileExists(atPath: path, isDirectory: &isDirectory) {
      guard isDirectory.boolValue else {
        throw TrainingError.unwritable(path: path, reason: "it is a file, not a directory")
      }
      let existing = runFiles.filter { fm.fileExists(atPath: path + "/" + $0) }
      if !existing.isEmpty && !overwrite {
        throw TrainingError.unwritable(
          path: path,
          reason:
            "it already holds a run (\(existing.joined(separator: ", "))); choose another --out or pass --overwrite")
      }
    } else {
      do { try fm.createDirectory(atPath: path, withIntermediateDirectories: true) } catch {
        throw TrainingError.unwritable(path: path, reason: "cannot create the directory: \(error.localizedDescription)")
      }
    }
    let probe = path + "/.flip-write-test-\(getpid())"
    guard fm.createFile(atPath: probe, contents: Data()) else {
      throw TrainingError.unwritable(path: path, reason: "the directory is not writable")
    }
    try? fm.removeItem(atPath: probe)
  }

  static func writeText(_ text: String, to path: String) throws {
    try ModelFile.writeAtomically(Data(text.utf8), to: path)
  }
}
