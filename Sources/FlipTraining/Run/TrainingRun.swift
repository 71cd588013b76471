import CSignals
import FlipBNN
import FlipComm
import FlipTensor
import Foundation
import Logging

/// What a process gives a run: its ranks, its log, how it shows progress, and test hooks.
public struct RunEnvironment {
  public var communicator: Communicator
  public var logger: Logger
  /// Rank 0's progress display (a disabled reporter elsewhere and when quiet).
  public var progress: ProgressReporter
  /// Skip the start-up check of the model's fast kernels against plain loops.
  public var skipSelftest = false
  /// Faults this rank injects into itself (tests: `FLIP_TEST_FAULT`).
  public var faults: [InjectedFault] = []
  /// `flip bench`: a Chrome trace of the timed steps, written to this file.
  public var timelinePath: String?
  /// Sets the compute threads once the run's settings are known (their `threads`, nil for the
  /// default) and returns the count; the command line logs it with the CPU's ISA.
  public var configureThreads: (Int?) -> Int = { $0 ?? 1 }

  public init(communicator: Communicator, logger: Logger, progress: ProgressReporter) {
    self.communicator = communicator
    self.logger = logger
    self.progress = progress
  }
}

/// How a run ended.
public enum RunOutcome: Equatable, Sendable {
  /// Every epoch trained; the model is in `model.safetensors`.
  case finished(testAccuracy: Double?, testLoss: Double?)
  /// Stopped by a stop request at a step boundary, with a checkpoint to continue from.
  case stopped(step: Int, cause: String, checkpoint: String?)
  /// Resumed a run that had already trained all its epochs: nothing to do.
  case alreadyTrained(epochs: Int)
}

/// A training run in its directory: `start` a new one, `resume` one from its newest valid
/// checkpoint, then `train`. The command line and the tests drive runs through this type.
///
/// Starting validates everything before it touches the directory: the settings, the data,
/// the model (built, checked on this CPU), the files it will write. Only then does it remove
/// an earlier run's files (with `overwrite`) and write the new run's `config.yaml`.
public final class TrainingRun {
  /// The run's settings as they were resolved when it started (`RunSettings.resolved`).
  public let settings: RunSettings
  public let directory: String
  public let trainer: Trainer
  let environment: RunEnvironment
  /// How to continue a stopped run, for its last log line (nil: `flip train --resume DIR`).
  var continueWith: String?

  init(settings: RunSettings, directory: String, trainer: Trainer, environment: RunEnvironment) {
    self.settings = settings
    self.directory = directory
    self.trainer = trainer
    self.environment = environment
  }

  /// Starts a new run of `settings` in `directory`.
  public static func start(
    _ settings: RunSettings, in directory: String, overwrite: Bool, environment env: RunEnvironment
  ) throws -> TrainingRun {
    let isRoot = env.communicator.isRoot
    try settings.validate()
    let compute = Compute(threads: env.configureThreads(settings.threads))
    if isRoot { try RunDirectory.check(directory, overwrite: overwrite) }
    if isRoot, let timeline = settings.timeline { try RunDirectory.checkWritable(file: timeline) }
    let data = try loadData(settings, environment: env, compute: compute)
    let resolved = try settings.resolved(
      trainSamples: data.train.count, sampleShape: data.train.sampleShape, classes: data.train.classes,
      streamed: data.format?.isStreamed ?? false)
    env.logger.info(
      "data \(settings.data) (\(data.format?.rawValue ?? "IDX")): \(describe(data)); augmentation \(resolved.augment?.rawValue ?? "none")"
    )
    if settings.lrScaling != .none || settings.warmupEpochs > 0 {
      env.logger.info(
        "learning rate: \(settings.lrScaling == .linear ? "linear scaling ×\(Double(settings.batchSize) / Double(settings.lrReferenceBatch))" : "unscaled")\(settings.warmupEpochs > 0 ? ", \(settings.warmupEpochs) warmup epoch(s)" : "")"
      )
    }
    let parts = try RunParts(settings: resolved, data: data, environment: env, compute: compute)
    if let initFrom = resolved.initFrom, isRoot {
      // Rank 0 reads the file (a Flip file or Keras weights); the trainer broadcasts its
      // variables to the other ranks.
      let source = try initialize(parts.model, fromFile: initFrom)
      env.logger.info("initialized from \(source)")
    }
    // Everything is checked: from here on the directory holds the new run.
    var observers = TrainingObservers(progress: env.progress)
    if isRoot {
      try RunDirectory.prepare(directory, overwrite: overwrite)
      try RunDirectory.writeText(try resolved.yaml(), to: directory + "/config.yaml")
      if let names = data.classNames {
        try RunDirectory.writeText(names.joined(separator: "\n") + "\n", to: directory + "/labels.txt")
      }
      observers.metrics = try MetricsLog(path: directory + "/metrics.jsonl")
      if resolved.tensorboard {
        let log = try TensorBoardLog(directory: directory + "/tensorboard")
        try log.text(
          "model/summary", ModelSummary(modelName: resolved.modelName, model: parts.model).render(), step: 0,
          preformatted: true)
        try log.text("model/config", try resolved.yaml(), step: 0, preformatted: true)
        observers.tensorBoard = log
      }
    }
    let trainer = try parts.makeTrainer(directory: directory, observers: observers)
    return TrainingRun(settings: resolved, directory: directory, trainer: trainer, environment: env)
  }

  /// Resumes the run in `directory` from its newest valid checkpoint (rank 0 reads it and
  /// broadcasts it), on however many ranks this job has. `overrides` may change only the
  /// keys in `RunSettings.resumableKeys`; the rest are the run's own.
  /// With `expected` (`startOrResume`), settings that differ from the run's in any other key
  /// are an error naming each difference.
  public static func resume(
    _ directory: String, overrides: [RunSettings.CodingKeys: ConfigValue], expected: RunSettings? = nil,
    environment env: RunEnvironment
  ) throws -> TrainingRun {
    let fixed = overrides.keys.filter { !RunSettings.resumableKeys.contains($0) }.map(\.flag).sorted()
    guard fixed.isEmpty else {
      throw TrainingError.invalidArgument(
        "\(fixed.joined(separator: ", ")) cannot be changed when resuming: the run's settings come from its checkpoint (only \(RunSettings.resumableKeys.map(\.flag).sorted().joined(separator: ", ")) may change)"
      )
    }
    let checkpoint = try LoadedCheckpoint.broadcastNewest(
      in: directory, communicator: env.communicator, logger: env.logger)
    let saved = try SettingsEntry.read(checkpoint.metadata, file: checkpoint.path)
    let settings = try saved.overriding(overrides, source: "the command line")
    try settings.validate()
    let compute = Compute(threads: env.configureThreads(settings.threads))
    let data = try loadData(settings, environment: env, compute: compute)
    if let expected { try requireSameRun(expected, as: saved, data: data, directory: directory) }
    let position = try checkpoint.position()
    let parts = try RunParts(settings: settings, data: data, environment: env, compute: compute)
    var observers = TrainingObservers(progress: env.progress)
    if env.communicator.isRoot && position.epoch < settings.epochs {
      let metricsPath = directory + "/metrics.jsonl"
      try MetricsLog.truncate(path: metricsPath, afterStep: position.step)
      observers.metrics = try MetricsLog(path: metricsPath, append: true)
      if settings.tensorboard {
        observers.tensorBoard = try TensorBoardLog(
          directory: directory + "/tensorboard", resumingAfterStep: position.step)
      }
    }
    let trainer = try parts.makeTrainer(directory: directory, observers: observers)
    try trainer.restore(tensors: checkpoint.tensors, metadata: checkpoint.metadata, path: checkpoint.path)
    let savedRanks = checkpoint.metadata["world_size"].flatMap { Int($0) }
    let size = env.communicator.size
    var moved = ""
    if let savedRanks, savedRanks != size {
      moved = "saved on \(savedRanks) rank\(savedRanks == 1 ? "" : "s"), continuing on \(size)"
      let parts = savedRanks * saved.accumulate
      if parts != size * settings.accumulate {
        // Micro-batches of another size: BatchNorm's statistics, and so the bits, change.
        let keep = parts % size == 0 ? "; --accumulate \(parts / size) keeps them" : ""
        moved +=
          "; ranks × accumulate was \(savedRanks) × \(saved.accumulate), now \(size) × \(settings.accumulate), so each micro-batch (and its BatchNorm statistics) has another size\(keep)"
      }
      moved = " (\(moved))"
    }
    env.logger.info(
      "resuming from \(checkpoint.path): step \(trainer.clock.step), epoch \(trainer.clock.epoch + 1) at batch \(trainer.position.stepInEpoch) of \(trainer.sampler.stepsPerEpoch)\(moved)"
    )
    return TrainingRun(settings: settings, directory: directory, trainer: trainer, environment: env)
  }

  /// Trains the remaining epochs with stop signals caught, then writes the model (rank 0), or
  /// says how to continue.
  @discardableResult
  public func train() throws -> RunOutcome {
    let logger = environment.logger
    let communicator = environment.communicator
    guard trainer.clock.epoch < settings.epochs else {
      logger.info(
        "the run has already trained \(trainer.clock.epoch) of \(settings.epochs) epochs; pass a larger --epochs to continue it"
      )
      return .alreadyTrained(epochs: trainer.clock.epoch)
    }
    flip_signals_install()
    let results = try trainer.fit()
    flip_signals_uninstall()
    try trainer.tensorBoard?.close()
    if let stop = trainer.stopRequest {
      let cause =
        stop.localSignal != 0
        ? "signal \(signalName(stop.localSignal))"
        : "a stop request on \(stop.ranks) other rank\(stop.ranks == 1 ? "" : "s")"
      let launcher = communicator.size > 1 ? "mpirun -np \(communicator.size) " : ""
      let checkpoint = trainer.checkpointWrites.last?.path
      let how = continueWith ?? "\(launcher)flip train --resume \(directory)"
      logger.info("stopped at step \(stop.step) (\(cause)); checkpoint \(checkpoint ?? "none"). Continue with: \(how)")
      return .stopped(step: stop.step, cause: cause, checkpoint: checkpoint)
    }
    if communicator.isRoot {
      try ModelFile.save(
        trainer.model, to: directory + "/model.safetensors",
        metadata: [
          "model": settings.model, SettingsEntry.key: try SettingsEntry.text(settings),
          "step": String(trainer.clock.step),
          "epoch": String(settings.epochs),
        ])
    }
    guard let last = results.last else { return .finished(testAccuracy: nil, testLoss: nil) }
    if communicator.isRoot {
      logger.info(
        "done: test accuracy \(String(format: "%.4f", last.testAccuracy)), test loss \(String(format: "%.4f", last.testLoss)); run directory \(directory)"
      )
    }
    return .finished(testAccuracy: last.testAccuracy, testLoss: last.testLoss)
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
