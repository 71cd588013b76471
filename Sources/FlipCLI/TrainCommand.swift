import ArgumentParser
import CSignals
import FlipBNN
import FlipComm
import FlipTensor
import FlipTraining
import Foundation
import Logging

struct TrainCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "train",
    abstract: "Train a model on an MNIST-style data set, evaluating on its test set after every epoch.",
    discussion: """
      The run directory (--out) receives metrics.jsonl (one JSON row per epoch and every \
      --log-every steps), config.yaml (the effective config, every layer written out), \
      checkpoints ckpt-<step>.safetensors (every epoch by default) and model.safetensors (the \
      trained variables). --batch-size is the GLOBAL batch: under mpirun each of N ranks takes \
      batch/N samples of it.

      Stopping and resuming: SIGUSR1 (which mpirun forwards to every rank; SLURM sends it with \
      --signal=B:USR1@60), or SIGTERM/SIGINT delivered to a rank, stops all ranks at the next \
      step boundary; rank 0 writes a checkpoint and every rank exits 0. A second SIGINT exits at \
      once. `flip train --resume DIR` continues from the newest valid checkpoint in DIR, on any \
      number of ranks that divides the global batch, with the run's own settings (only \
      --epochs, --data and the compute, logging and checkpoint options may be given).
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
    help: """
      Progress on standard output: auto (a bar on a terminal, else a line every 20 steps), bar, or \
      lines. Under mpirun every rank writes to a pseudo-terminal even when mpirun's output goes to a \
      file: use lines for batch jobs' logs.
      """)
  var progress: ProgressStyleArgument = .auto
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
  @Option(
    name: .long,
    help: ArgumentHelp(
      "Under mpirun, the sharded step's wire: fp32, compact (bf16 gradients, binary kernels as sign bits), or auto (the default: fp32 when every rank is on one host, compact across hosts).",
      discussion:
        "compact sends a quarter of fp32's bytes for a BNN; its gradients are rounded to bfloat16 (summed in fp32), so results differ from fp32's in the last bits."
    ))
  var wire: WirePolicy = .auto
  @Flag(
    name: .customLong("sync-bn"), inversion: .prefixedNo,
    help: ArgumentHelp(
      "Sync BatchNorm: normalize with the statistics of the global batch (summed across ranks).",
      discussion:
        "By default each rank normalizes with its local batch and the moving statistics are averaged before every evaluation."
    ))
  var syncBn: Bool?
  @Option(
    name: .long,
    help: ArgumentHelp(
      "Gradient accumulation: K micro-steps of batch/(ranks·K) samples per rank before one all-reduce and one update (default 1).",
      discussion: "The global batch stays the batch of one update; BatchNorm statistics are those of each micro-step."))
  var accumulate: Int?
  @Option(
    name: .long,
    help:
      "Under mpirun: compare a checksum of the weights and optimizer state across ranks every N steps (0: only at the end; default 100)."
  )
  var checkEvery = 100
  @Flag(
    name: .long,
    help: ArgumentHelp(
      "Train the same architecture real-valued: hard_tanh in place of every input quantizer, no kernel quantizer.",
      discussion:
        "Larq's guide: pretrain real-valued, then start the BNN from it with --init-from. Tensor names stay the same; the model is named <model>-real."
    ))
  var realValued = false
  @Option(
    name: .long,
    help: ArgumentHelp(
      "Start from the weights of a Flip model, checkpoint or export (e.g. a --real-valued run's model.safetensors).",
      discussion:
        "Every variable and BatchNorm statistic is copied by name, kernels clipped to their weight_clip; missing or extra tensors are an error listing them. The optimizer starts fresh."
    ))
  var initFrom: String?
  @Option(
    name: .long,
    help: ArgumentHelp(
      "Continue the run in this directory from its newest valid checkpoint.",
      discussion:
        "A corrupt newest checkpoint is reported and the one before it is used. The model, optimizer, batch, seed and data order come from the checkpoint."
    ))
  var resume: String?
  @Option(
    name: .long, help: "Write a checkpoint every N optimizer steps (default 0: only by epoch; --resume: the run's).")
  var checkpointEvery: Int?
  @Option(
    name: .long,
    help: "Write a checkpoint at the end of every N epochs (default 1; 0: none by epoch; --resume: the run's).")
  var checkpointEveryEpochs: Int?
  @Option(name: .long, help: "Keep the newest K checkpoints, deleting older ones (default 3; --resume: the run's).")
  var keepCheckpoints: Int?
  @Option(
    name: .long,
    help: ArgumentHelp(
      "Training-image augmentation: none, crop (4 black pixels of padding, a random crop back to the image size), or crop-flip (also a random horizontal flip). Default: the config's augment (the residual presets: crop-flip; others none).",
      discussion: "Each image's crop and flip are drawn from (seed, epoch, image index): a resumed run, and any number of ranks, sees the same images. Evaluation is never augmented."
    ))
  var augment: AugmentationMode?
  @Option(
    name: .long,
    help: ArgumentHelp(
      "Write a Chrome trace (Perfetto, chrome://tracing) of --timeline-steps on every rank to this file.",
      discussion:
        "One process per rank: each step's phases, every layer's forward and backward, each gradient bucket's communication from start to completion, evaluation and checkpoints. Rank 0 writes the file at the end of the window."
    ))
  var timeline: String?
  @Option(name: .long, help: "With --timeline: the global steps A ≤ step < B to record, as A:B (default 1:21).")
  var timelineSteps: StepWindow = StepWindow(1..<21)
  @Option(
    name: .long,
    help: ArgumentHelp(
      "Under mpirun: when rank 0 has waited this many seconds in a collective, log which ranks have not reached it (default 60; 0: off).",
      discussion:
        "One line, e.g. `stall: step 120, gradient bucket 3 waited 60 s for rank 1`. Every rank publishes its step and phase on an MPI one-sided window on rank 0, read by a thread there."
    ))
  var stallWarning: Double = 60
  @Option(
    name: .long,
    help: "Under mpirun: end the job when rank 0 has waited this many seconds in a collective (default: never); the last checkpoint stays."
  )
  var stallTimeout: Double?
  @Flag(
    inversion: .prefixedNo,
    help: ArgumentHelp(
      "TensorBoard event files in <run>/tensorboard, written by rank 0 as training goes (the default): step and epoch scalars, kernel histograms, the model summary.",
      discussion: "tensorboard --logdir runs/ shows every run; a resumed run drops the events after its checkpoint and appends."
    ))
  var tensorboard = true
  @Flag(
    name: .long,
    help: ArgumentHelp(
      "Skip the start-up check of the model's fast kernels against plain reference loops on every rank.",
      discussion: "The check is `flip selftest` for this model: it takes milliseconds and stops the job if a kernel computes wrongly on a rank's CPU."))
  var skipSelftest = false
  @Option(
    name: .long,
    help:
      "When a checkpoint cannot be written (disk full, permissions): stop (every rank stops with an error; earlier checkpoints stay intact; the default) or continue (warn and train on)."
  )
  var onCheckpointError: CheckpointErrorPolicy?

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
    if let accumulate, accumulate < 1 { throw ValidationError("--accumulate must be at least 1, got \(accumulate)") }
    if checkEvery < 0 { throw ValidationError("--check-every must be ≥ 0, got \(checkEvery)") }
    if !(stallWarning >= 0) { throw ValidationError("--stall-warning must be ≥ 0 seconds, got \(stallWarning)") }
    if let stallTimeout, !(stallTimeout > 0) {
      throw ValidationError("--stall-timeout must be positive seconds, got \(stallTimeout)")
    }
    if let checkpointEvery, checkpointEvery < 0 {
      throw ValidationError("--checkpoint-every must be ≥ 0, got \(checkpointEvery)")
    }
    if let checkpointEveryEpochs, checkpointEveryEpochs < 0 {
      throw ValidationError("--checkpoint-every-epochs must be ≥ 0, got \(checkpointEveryEpochs)")
    }
    if let keepCheckpoints, keepCheckpoints < 1 {
      throw ValidationError("--keep-checkpoints must be at least 1, got \(keepCheckpoints)")
    }
    if resume != nil {
      // The run's settings come from its checkpoint; flags that would change them are errors.
      var fixed: [String] = []
      if modelOptions.model != nil { fixed.append("--model") }
      if modelOptions.config != nil { fixed.append("--config") }
      if batchSize != nil { fixed.append("--batch-size") }
      if seed != nil { fixed.append("--seed") }
      if learningRate != nil { fixed.append("--learning-rate") }
      if lrScaling != .none { fixed.append("--lr-scaling") }
      if warmupEpochs != 0 { fixed.append("--warmup-epochs") }
      if accumulate != nil { fixed.append("--accumulate") }
      if syncBn != nil { fixed.append("--sync-bn") }
      if augment != nil { fixed.append("--augment") }
      if out != nil { fixed.append("--out") }
      if overwrite { fixed.append("--overwrite") }
      if realValued { fixed.append("--real-valued") }
      if initFrom != nil { fixed.append("--init-from") }
      if !fixed.isEmpty {
        throw ValidationError(
          "\(fixed.joined(separator: ", ")) cannot be given with --resume: the run's settings come from its checkpoint (only --epochs, --data and compute, logging and checkpoint options may change)"
        )
      }
    }
  }

  func run() throws {
    try Runtime.run(verbose: compute.verbose) { communicator, logger in
      let threads = Runtime.configureThreads(compute.threads, localRanks: communicator.localSize)
      logger.info("\(Runtime.describeCompute(threads: threads, communicator: communicator))")
      if let resume {
        try resumeRun(resume, communicator: communicator, logger: logger)
      } else {
        try newRun(communicator: communicator, logger: logger)
      }
    }
  }

  /// A run from scratch: the config from --model/--config and the flags.
  func newRun(communicator: Communicator, logger: Logger) throws {
    var config = try modelOptions.resolve()
    if let epochs { config.epochs = epochs }
    if let batchSize { config.batchSize = batchSize }
    if let seed { config.seed = UInt64(seed) }
    if let data { config.data = data }
    if let logEvery { config.logEverySteps = logEvery }
    if let augment { config.augment = augment }
    if let learningRate { config.optimizer = try config.optimizer.withLearningRate(learningRate) }
    guard config.epochs > 0 else { throw ValidationError("epochs must be positive, got \(config.epochs)") }
    guard config.batchSize > 0 else { throw ValidationError("batch_size must be positive, got \(config.batchSize)") }
    if realValued {
      config.layers = config.layers.realValued()
      config.model += "-real"
    }

    let runDirectory = out ?? "runs/\(config.model)"
    if communicator.isRoot { try RunDirectory.prepare(runDirectory, overwrite: overwrite) }

    let data = try DataSplits.load(directory: config.data)
    logger.info(
      "data \(config.data) (\(data.format?.rawValue ?? "IDX")): \(data.train.count) training and \(data.test.count) test images of \(data.train.sampleShape), \(data.train.classes) classes; augmentation \(config.augment.rawValue)"
    )
    config.inputShape = config.inputShape ?? data.train.sampleShape
    config.adaptOutput(toClasses: data.train.classes)
    let stepsPerEpoch = (data.train.count + config.batchSize - 1) / config.batchSize
    config.optimizer = config.optimizer.resolvingRunLength(totalSteps: config.epochs * stepsPerEpoch)
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
    var options = TrainingOptions(
      epochs: config.epochs, batchSize: config.batchSize, seed: config.seed, logEverySteps: config.logEverySteps,
      checkEverySteps: checkEvery)
    options.accumulate = accumulate ?? 1
    options.syncBatchNorm = syncBn ?? false
    options.augmentation = Augmentation(mode: config.augment)
    let trainer = try makeTrainer(
      config: config, options: options, data: data, runDirectory: runDirectory, communicator: communicator,
      logger: logger)
    if communicator.isRoot {
      try RunDirectory.writeText(try config.yaml(), to: runDirectory + "/config.yaml")
      trainer.metrics = try MetricsLog(path: runDirectory + "/metrics.jsonl")
      if tensorboard {
        let log = try TensorBoardLog(directory: runDirectory + "/tensorboard")
        let name = ModelPreset(rawValue: config.model)?.modelName ?? config.model.replacingOccurrences(of: "-", with: "_")
        try log.text("model/summary", ModelSummary(modelName: name, model: trainer.model).render(), step: 0, preformatted: true)
        try log.text("model/config", try config.yaml(), step: 0, preformatted: true)
        trainer.tensorBoard = log
      }
    }
    try train(trainer, config: config, runDirectory: runDirectory, communicator: communicator, logger: logger)
  }

  /// Continues the run in `directory` from its newest valid checkpoint, which rank 0 reads and
  /// broadcasts, on however many ranks this job has.
  func resumeRun(_ directory: String, communicator: Communicator, logger: Logger) throws {
    var path = Data()
    var bytes = Data()
    var failure: Error?
    if communicator.isRoot {
      do {
        let found = try CheckpointFiles.newestValid(directory, logger: logger)
        path = Data(found.path.utf8)
        bytes = found.data
      } catch { failure = error }
    }
    path = try communicator.broadcast(path, root: 0)
    bytes = try communicator.broadcast(bytes, root: 0)
    if let failure { throw failure }
    guard !bytes.isEmpty else {
      throw TrainingError.invalidArgument("rank 0 found no valid checkpoint in \(directory)")
    }
    let file = String(decoding: path, as: UTF8.self)
    let (tensors, metadata) = try ModelFile.decode(bytes, path: file)
    guard let yaml = metadata["config"] else {
      throw TrainingError.modelFile(path: file, reason: "the metadata has no config")
    }
    var config = try RunConfig.parse(yaml: yaml, file: file + " (config)")
    if let epochs { config.epochs = epochs }
    if let data { config.data = data }
    if let logEvery { config.logEverySteps = logEvery }
    let training =
      (metadata["training"].flatMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) } as? [String: Any]) ?? [:]
    var options = TrainingOptions(
      epochs: config.epochs, batchSize: config.batchSize, seed: config.seed, logEverySteps: config.logEverySteps,
      checkEverySteps: checkEvery)
    options.accumulate = training["accumulate"] as? Int ?? 1
    options.syncBatchNorm = training["sync_batch_norm"] as? Bool ?? false
    options.augmentation = Augmentation(mode: config.augment)
    let data = try DataSplits.load(directory: config.data)
    let saved =
      (metadata["checkpointing"].flatMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) } as? [String: Any])
      ?? [:]
    let trainer = try makeTrainer(
      config: config, options: options, data: data, runDirectory: directory, communicator: communicator,
      logger: logger, savedPolicy: saved)
    try trainer.restore(tensors: tensors, metadata: metadata, path: file)
    let savedRanks = metadata["world_size"] ?? "?"
    logger.info(
      "resuming from \(file): step \(trainer.clock.step), epoch \(trainer.clock.epoch + 1) at batch \(trainer.position.stepInEpoch) of \(trainer.sampler.stepsPerEpoch)\(savedRanks != String(communicator.size) ? " (saved on \(savedRanks) ranks, continuing on \(communicator.size))" : "")"
    )
    guard trainer.clock.epoch < config.epochs else {
      logger.info(
        "the run has already trained \(trainer.clock.epoch) of \(config.epochs) epochs; pass a larger --epochs to continue it"
      )
      return
    }
    if communicator.isRoot {
      let metricsPath = directory + "/metrics.jsonl"
      try MetricsLog.truncate(path: metricsPath, afterStep: trainer.clock.step)
      trainer.metrics = try MetricsLog(path: metricsPath, append: true)
      if tensorboard {
        trainer.tensorBoard = try TensorBoardLog(
          directory: directory + "/tensorboard", resumingAfterStep: trainer.clock.step)
      }
    }
    try train(trainer, config: config, runDirectory: directory, communicator: communicator, logger: logger)
  }

  func makeTrainer(
    config: RunConfig, options base: TrainingOptions, data: DataSplits, runDirectory: String,
    communicator: Communicator, logger: Logger, savedPolicy saved: [String: Any] = [:]
  ) throws -> Trainer {
    try checkSameSettingsOnEveryRank(config: config, options: base, communicator: communicator)
    let threads = Runtime.configureThreads(compute.threads, localRanks: communicator.localSize)
    let model = try Model(
      specs: config.layers, inputShape: config.inputShape ?? data.train.sampleShape, seed: config.seed,
      compute: Compute(threads: threads))
    if let initFrom, communicator.isRoot {
      // Rank 0 reads the file; the trainer broadcasts its variables to the other ranks.
      let (tensors, metadata) = try ModelFile.read(path: initFrom)
      try initialize(model, from: tensors, path: initFrom)
      logger.info("initialized from \(initFrom) (\(metadata["model"] ?? "?"), step \(metadata["step"] ?? "?"))")
    }
    let optimizer = try config.optimizer.make()
    var options = base
    options.shardOptimizer = shardOptimizer
    options.bucketBytes = Int(bucketMb * 1_048_576)
    options.wire = wire
    options.kernelHistograms = tensorboard
    options.binaryForward = compute.binaryForward
    if let faults = ProcessInfo.processInfo.environment["FLIP_TEST_FAULT"] {
      options.injectedFaults = try faults.split(separator: ",").map { text in
        guard let f = InjectedFault(String(text)) else {
          throw ValidationError(
            "FLIP_TEST_FAULT must be action:rank:step[,...] (action: fail, kill, usr1, term, int, stop, perturb, unscaled-int8), got \(faults)"
          )
        }
        return f
      }
    }
    if options.injectedFaults.contains(InjectedFault(action: .unscaledInt8, rank: communicator.rank, step: 1)) {
      model.int8KernelScale = 1
    }
    if !skipSelftest {
      try checkKernelsAtStartup(
        specs: config.layers, inputShape: model.inputShape, rank: communicator.rank, logger: logger,
        compute: model.compute, int8KernelScale: model.int8KernelScale)
    }
    let trainer = try Trainer(
      model: model, optimizer: optimizer, communicator: communicator, data: data, options: options,
      logger: logger, progress: ProgressReporter(enabled: communicator.isRoot && !quiet, style: progress.style))
    var policy = CheckpointPolicy(directory: runDirectory)
    // Flags, else (resuming) the run's own policy, else the defaults.
    policy.everySteps = checkpointEvery ?? saved["every_steps"] as? Int ?? 0
    policy.everyEpochs = checkpointEveryEpochs ?? saved["every_epochs"] as? Int ?? 1
    policy.keep = max(1, keepCheckpoints ?? saved["keep"] as? Int ?? 3)
    let onError = onCheckpointError ?? (saved["on_error"] as? String).flatMap(CheckpointErrorPolicy.init) ?? .stop
    policy.continueOnError = onError == .continue
    let checkpointing: [String: Any] = [
      "every_steps": policy.everySteps, "every_epochs": policy.everyEpochs, "keep": policy.keep,
      "on_error": onError.rawValue,
    ]
    policy.metadata = [
      "model": config.model, "config": try config.yaml(),
      "checkpointing": String(
        decoding: try JSONSerialization.data(withJSONObject: checkpointing, options: [.sortedKeys]), as: UTF8.self),
    ]
    trainer.checkpointPolicy = policy
    if let timeline { trainer.timeline = Timeline(path: timeline, window: timelineSteps.range) }
    if stallWarning > 0 {
      trainer.stallInspector = try StallInspector(
        communicator: communicator, warning: stallWarning, timeout: stallTimeout, logger: logger)
    }
    logger.info("gradient exchange: \(trainer.exchange.description)")
    for choice in trainer.binaryForwardChoices {
      logger.info("binary forward on oneDNN ISA \(OneDNN.effectiveISA): \(choice)")
    }
    if let warning = compute.binaryForward.unusedWarning(trainer.binaryForwardChoices) { logger.warning("\(warning)") }
    logger.info(
      "model \(config.model): \(model.store.parameterCount) trainable parameters; \(trainer.sampler.stepsPerEpoch) steps per epoch of global batch \(config.batchSize)"
    )
    return trainer
  }

  /// Trains with stop signals caught, then writes the model (or says how to resume).
  func train(_ trainer: Trainer, config: RunConfig, runDirectory: String, communicator: Communicator, logger: Logger)
    throws
  {
    flip_signals_install()
    let results = try trainer.fit()
    flip_signals_uninstall()
    try trainer.tensorBoard?.close()
    if let stop = trainer.stopRequest {
      let cause =
        stop.localSignal != 0
        ? "signal \(signalName(stop.localSignal))"
        : "a stop request on \(stop.ranks) other rank\(stop.ranks == 1 ? "" : "s")"
      let relaunch =
        communicator.size > 1
        ? "mpirun -np \(communicator.size) flip train --resume \(runDirectory)" : "flip train --resume \(runDirectory)"
      logger.info(
        "stopped at step \(stop.step) (\(cause)); checkpoint \(trainer.checkpointWrites.last?.path ?? "none"). Continue with: \(relaunch)"
      )
      return
    }
    if communicator.isRoot {
      try ModelFile.save(
        trainer.model, to: runDirectory + "/model.safetensors",
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

/// Every rank must train the same run: compares a hash of the effective config and training
/// options across ranks before the first collective that depends on them (an MPMD launch
/// such as `mpirun -np 1 flip train --seed 0 : -np 1 flip train --seed 1` would otherwise
/// train inconsistent replicas or hang).
func checkSameSettingsOnEveryRank(config: RunConfig, options: TrainingOptions, communicator: Communicator) throws {
  guard communicator.size > 1 else { return }
  let text =
    try config.yaml()
    + "\nbatch=\(options.batchSize) seed=\(options.seed) epochs=\(options.epochs) accumulate=\(options.accumulate) sync_bn=\(options.syncBatchNorm)"
  var h: UInt64 = 0xCBF2_9CE4_8422_2325
  for b in text.utf8 { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01B3 }
  let all = try communicator.allgather(h)
  let differing = all.indices.filter { all[$0] != all[0] }
  guard differing.isEmpty else {
    throw TrainingError.invalidArgument(
      "ranks \(differing.map(String.init).joined(separator: ", ")) were started with other settings than rank 0 (config or flags differ: hash \(String(all[differing[0]], radix: 16)) vs \(String(all[0], radix: 16))); start every rank with the same flags and config file"
    )
  }
}

func signalName(_ s: Int32) -> String {
  switch s {
  case SIGUSR1: return "SIGUSR1"
  case SIGTERM: return "SIGTERM"
  case SIGINT: return "SIGINT"
  default: return "\(s)"
  }
}

/// `--on-checkpoint-error` values.
enum CheckpointErrorPolicy: String, ExpressibleByArgument, CaseIterable {
  case stop, `continue`
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
      let checkpoints = (try? CheckpointFiles.list(path)) ?? []
      let existing =
        runFiles.filter { fm.fileExists(atPath: path + "/" + $0) }
        + checkpoints.map { ($0.path as NSString).lastPathComponent }
      if !existing.isEmpty && !overwrite {
        throw TrainingError.unwritable(
          path: path,
          reason:
            "it already holds a run (\(existing.prefix(4).joined(separator: ", "))\(existing.count > 4 ? ", ..." : "")); continue it with --resume \(path), choose another --out, or pass --overwrite"
        )
      }
      // A fresh run must not leave an older run's checkpoints behind for --resume to pick up,
      // nor its TensorBoard events beside the new ones.
      for c in checkpoints { try? fm.removeItem(atPath: c.path) }
      try? fm.removeItem(atPath: path + "/tensorboard")
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

/// `--progress` values.
enum ProgressStyleArgument: String, ExpressibleByArgument, CaseIterable {
  case auto, bar, lines
  var style: ProgressReporter.Style { ProgressReporter.Style(rawValue: rawValue)! }
}

/// `--timeline-steps A:B`: global optimizer steps A ≤ step < B.
struct StepWindow: ExpressibleByArgument {
  let range: Range<Int>
  init(_ range: Range<Int>) { self.range = range }
  init?(argument: String) {
    let parts = argument.split(separator: ":").map { Int($0) }
    guard parts.count == 2, let a = parts[0], let b = parts[1], a >= 1, b > a else { return nil }
    range = a..<b
  }
  var defaultValueDescription: String { "\(range.lowerBound):\(range.upperBound)" }
}
