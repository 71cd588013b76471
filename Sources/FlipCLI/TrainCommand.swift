import ArgumentParser
import FlipBNN
import FlipTraining
import Foundation

struct TrainCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "train",
    abstract: "Train a model on an MNIST-style data set, evaluating on its test set after every epoch.",
    discussion: """
      The run directory (--out) receives metrics.jsonl (one JSON row per epoch and every \
      --log-every steps), config.yaml (the run's settings, every key and layer written out), \
      checkpoints ckpt-<step>.safetensors (every epoch by default) and model.safetensors (the \
      trained variables). --batch-size is the GLOBAL batch: under mpirun each of N ranks takes \
      batch/N samples of it. Every flag that sets a run setting has a config key of the same \
      name (--sync-bn is sync_bn).

      Stopping and resuming: SIGUSR1 (which mpirun forwards to every rank; SLURM sends it with \
      --signal=B:USR1@60), or SIGTERM/SIGINT delivered to a rank, stops all ranks at the next \
      step boundary; rank 0 writes a checkpoint and every rank exits 0. A second SIGINT exits at \
      once. `flip train --resume DIR` continues from the newest valid checkpoint in DIR, on any \
      number of ranks that divides the global batch, with the run's own settings (only \
      --epochs, --data and the compute, exchange, logging and checkpoint options may be given).

      Chains of batch jobs (SLURM): `flip train --config FILE --resume-or-start DIR` starts the \
      run when DIR holds no checkpoint and continues it otherwise; stopped by a signal it exits \
      with status 75 ("to be continued"), on which scripts/slurm-example.sh requeues the job.
      """)

  @OptionGroup var modelOptions: ModelOptions
  @OptionGroup var shared: SharedSettingsOptions
  @OptionGroup var own: TrainSettingsOptions
  @OptionGroup var compute: ComputeOptions
  @OptionGroup var output: OutputOptions

  @Option(name: .long, help: "Run directory for metrics, config and model (default runs/<model>).")
  var out: String?
  @Flag(
    name: .long,
    help:
      "Replace the files of an earlier run in --out (once the new run's settings, model and data have been checked).")
  var overwrite = false
  @Option(
    name: .long,
    help: ArgumentHelp(
      "Continue the run in this directory from its newest valid checkpoint.",
      discussion:
        "A corrupt newest checkpoint is reported and the one before it is used. The model, optimizer, batch, seed and data order come from the checkpoint."
    ))
  var resume: String?
  @Option(
    name: .long,
    help: ArgumentHelp(
      "Start a new run in this directory, or continue it when it holds a checkpoint (batch jobs that requeue themselves).",
      discussion:
        "Continues from the newest valid checkpoint when there is one; settings that differ from the run's (other than those --resume accepts) are an error naming each difference. Stopped by a signal, every rank exits with status \(TrainCommand.stoppedToContinueStatus) (the run is to be continued) instead of 0."
    ))
  var resumeOrStart: String?

  /// The exit status of a run stopped by a signal under `--resume-or-start`: to be continued
  /// (EX_TEMPFAIL of sysexits.h, "try again later"). `scripts/slurm-example.sh` requeues on it.
  static let stoppedToContinueStatus: Int32 = 75

  func validate() throws {
    if resumeOrStart != nil {
      let flags = [resume.map { _ in "--resume" }, out.map { _ in "--out" }, overwrite ? "--overwrite" : nil]
      let given = flags.compactMap { $0 }
      if !given.isEmpty {
        throw ValidationError(
          "\(given.joined(separator: ", ")) cannot be given with --resume-or-start: it names the run directory and decides whether to start or continue"
        )
      }
      if modelOptions.model == nil && modelOptions.config == nil {
        throw ValidationError(
          "--resume-or-start needs the run's settings: give --model or --config, as for the run's first start")
      }
    }
    guard resume != nil else { return }
    // The run's settings come from its checkpoint; flags that would change them are errors.
    var fixed = [modelOptions.model.map { _ in "--model" }, modelOptions.config.map { _ in "--config" }]
    fixed += [
      out.map { _ in "--out" }, overwrite ? "--overwrite" : nil, shared.learningRate.map { _ in "--learning-rate" },
    ]
    fixed += overrides().keys.filter { !RunSettings.resumableKeys.contains($0) }.map(\.flag)
    let given = fixed.compactMap { $0 }.sorted()
    if !given.isEmpty {
      throw ValidationError(
        "\(given.joined(separator: ", ")) cannot be given with --resume: the run's settings come from its checkpoint (only --epochs, --data and compute, exchange, logging and checkpoint options may change)"
      )
    }
  }

  /// Every run-setting key the flags set.
  func overrides() -> [RunSettings.CodingKeys: ConfigValue] {
    shared.overrides().merging(own.overrides()) { a, _ in a }.merging(compute.overrides()) { a, _ in a }
  }

  func run() throws {
    var outcome: RunOutcome?
    try Runtime.run(verbose: compute.verbose) { communicator, logger in
      var env = RunEnvironment(
        communicator: communicator, logger: logger,
        progress: ProgressReporter(enabled: communicator.isRoot && !output.quiet, style: output.progress.style))
      env.skipSelftest = own.skipSelftest
      env.faults = try InjectedFault.fromEnvironment()
      env.configureThreads = {
        Runtime.configureThreads($0, localRanks: communicator.localSize, logger: logger, communicator: communicator)
      }
      let run: TrainingRun
      if let resume {
        run = try TrainingRun.resume(resume, overrides: overrides(), environment: env)
      } else if let directory = resumeOrStart {
        var settings = try modelOptions.settings(shared, compute)
        settings = try settings.overriding(own.overrides(), source: "the command line")
        run = try TrainingRun.startOrResume(settings, in: directory, environment: env)
      } else {
        var settings = try modelOptions.settings(shared, compute)
        settings = try settings.overriding(own.overrides(), source: "the command line")
        let directory = out ?? "runs/\(settings.model)\(settings.realValued ? "-real" : "")"
        run = try TrainingRun.start(settings, in: directory, overwrite: overwrite, environment: env)
      }
      outcome = try run.train()
    }
    if resumeOrStart != nil, case .stopped? = outcome { throw ExitCode(Self.stoppedToContinueStatus) }
  }
}

/// The run-setting flags of `train` alone.
struct TrainSettingsOptions: ParsableArguments {
  @Option(name: .long, help: "Epochs to train (default: the config's, else \(RunSettings().epochs)).")
  var epochs: Int?
  @Option(name: .long, help: "Seed of initialization, shuffling and dropout (default \(RunSettings().seed)).")
  var seed: Int?
  @Option(
    name: .long, help: "A step row in metrics.jsonl every this many steps (0: none; default \(RunSettings().logEvery))."
  )
  var logEvery: Int?
  @Option(
    name: .long,
    help: ArgumentHelp(
      "Learning-rate scaling for large batches: none, or linear (lr × batch / --lr-reference-batch, Goyal et al. 2017).",
      discussion: "The learning rate depends on the global batch only, never on the number of ranks."))
  var lrScaling: LearningRateScaling?
  @Option(
    name: .long,
    help: "The batch size the configured learning rate was tuned for (default \(RunSettings().lrReferenceBatch)).")
  var lrReferenceBatch: Int?
  @Option(name: .long, help: "Linear warmup from the unscaled learning rate over this many epochs (default 0).")
  var warmupEpochs: Int?
  @Option(
    name: .long,
    help:
      "Under mpirun: compare a checksum of the replicas every N steps (0: only at the end; default \(RunSettings().checkEvery))."
  )
  var checkEvery: Int?
  @Flag(
    name: .long,
    help: ArgumentHelp(
      "Train the same architecture real-valued: hard_tanh in place of every input quantizer, no kernel quantizer.",
      discussion:
        "Larq's guide: pretrain real-valued, then start the BNN from it with --init-from. The model is named <model>-real."
    ))
  var realValued = false
  @Option(
    name: .long,
    help: ArgumentHelp(
      "Start from the weights of a Flip model, checkpoint or export (e.g. a --real-valued run's model.safetensors), or from Keras weights (model.save_weights(\"w.h5\"), e.g. Larq Zoo's).",
      discussion:
        "Every variable and BatchNorm statistic is copied: by name from a Flip file, by layer order and shape from a Keras .h5 (docs/keras-weights.md). Kernels are clipped to their weight_clip; the optimizer starts fresh."
    ))
  var initFrom: String?
  @Option(
    name: .long, help: "Write a checkpoint every N optimizer steps (default 0: only by epoch; --resume: the run's).")
  var checkpointEvery: Int?
  @Option(
    name: .long,
    help:
      "Write a checkpoint at the end of every N epochs (0: none by epoch; default \(RunSettings().checkpointEveryEpochs))."
  )
  var checkpointEveryEpochs: Int?
  @Option(
    name: .long, help: "Keep the newest K checkpoints, deleting older ones (default \(RunSettings().keepCheckpoints)).")
  var keepCheckpoints: Int?
  @Option(
    name: .long,
    help:
      "When a checkpoint cannot be written: stop (every rank stops with an error; the default) or continue (warn and train on)."
  )
  var onCheckpointError: CheckpointErrorPolicy?
  @Option(
    name: .long,
    help: "With --timeline: the global steps A ≤ step < B to record, as A:B (default \(RunSettings().timelineSteps)).")
  var timelineSteps: String?
  @Option(
    name: .long,
    help:
      "Under mpirun: when rank 0 has waited this many seconds in a collective, log which ranks have not reached it (0: off; default \(Int(RunSettings().stallWarning)))."
  )
  var stallWarning: Double?
  @Option(
    name: .long,
    help:
      "Under mpirun: end the job when rank 0 has waited this many seconds in a collective (default: never); the last checkpoint stays."
  )
  var stallTimeout: Double?
  @Flag(inversion: .prefixedNo, help: "TensorBoard event files in <run>/tensorboard, written by rank 0 (default: on).")
  var tensorboard: Bool?
  @Flag(
    name: .long,
    help: "Skip the start-up check of the model's fast kernels against plain reference loops on every rank.")
  var skipSelftest = false

  /// The keys these flags set.
  func overrides() -> [RunSettings.CodingKeys: ConfigValue] {
    var o: [RunSettings.CodingKeys: ConfigValue] = [:]
    func put(_ key: RunSettings.CodingKeys, _ value: ConfigValue?) { if let value { o[key] = value } }
    put(.epochs, epochs.map { .int($0) })
    put(.seed, seed.map { .int($0) })
    put(.logEvery, logEvery.map { .int($0) })
    put(.lrScaling, lrScaling.map { .string($0.rawValue) })
    put(.lrReferenceBatch, lrReferenceBatch.map { .int($0) })
    put(.warmupEpochs, warmupEpochs.map { .int($0) })
    put(.checkEvery, checkEvery.map { .int($0) })
    put(.realValued, realValued ? .bool(true) : nil)
    put(.initFrom, initFrom.map { .string($0) })
    put(.checkpointEvery, checkpointEvery.map { .int($0) })
    put(.checkpointEveryEpochs, checkpointEveryEpochs.map { .int($0) })
    put(.keepCheckpoints, keepCheckpoints.map { .int($0) })
    put(.onCheckpointError, onCheckpointError.map { .string($0.rawValue) })
    put(.timelineSteps, timelineSteps.map { .string($0) })
    put(.stallWarning, stallWarning.map { .double($0) })
    put(.stallTimeout, stallTimeout.map { .double($0) })
    put(.tensorboard, tensorboard.map { .bool($0) })
    return o
  }
}

/// How `train` shows its progress.
struct OutputOptions: ParsableArguments {
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
}

/// `--progress` values.
enum ProgressStyleArgument: String, ExpressibleByArgument, CaseIterable {
  case auto, bar, lines
  var style: ProgressReporter.Style { ProgressReporter.Style(rawValue: rawValue)! }
}

extension LearningRateScaling: ExpressibleByArgument {}
extension CheckpointErrorPolicy: ExpressibleByArgument {}
extension AugmentationMode: ExpressibleByArgument {}
