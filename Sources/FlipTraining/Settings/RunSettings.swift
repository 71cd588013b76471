import FlipBNN
import FlipTensor
import Foundation

/// Everything a training run is, as one value: the model, the data, the optimizer and its
/// schedule, the batch, the exchange between ranks, checkpoints, logging and observability.
/// Each default is stated here once.
///
/// Read from YAML (`RunSettings.parse`, strict: an unknown or mistyped key is an error naming
/// its path and the accepted keys), overridden by the command line's flags (each key is named
/// after its flag: `sync_bn` is `--sync-bn`), validated by `validate()` whatever the source,
/// written whole to the run directory's `config.yaml` and as one versioned entry into every
/// checkpoint and model file (`SettingsEntry`), from which `--resume` restores it.
public struct RunSettings: Equatable, Sendable {
  // MARK: The model
  /// A preset's name (`binarynet-mlp`), or a name of the user's model.
  public var model = "custom"
  public var layers: [LayerSpec] = []
  /// The shape of one input sample; by default the data set's.
  public var inputShape: [Int]?
  /// Train the architecture real-valued (`hard_tanh` for every input quantizer, no kernel
  /// quantizer); applied when the run starts (`resolved`), which renames the model `<model>-real`.
  public var realValued = false
  /// Start from the variables of this Flip file instead of the initializers.
  public var initFrom: String?

  // MARK: The data
  public var data = DataSplits.defaultDirectory
  /// Augmentation of the training images (nil: the data's own, fixed when the run starts
  /// (`resolved`): crop-flip for ImageNet-format data, none for in-memory data sets).
  public var augment: AugmentationMode?
  /// ImageNet-format data: the side S of the square images the model sees (nil: 224).
  public var imageSize: Int?
  /// ImageNet-format data: per-channel mean and standard deviation of pixels in [0, 1],
  /// normalized as `(x − mean) / std` (ImageNet's, as Larq Zoo).
  public var mean = ImagePreprocessing.imageNetMean
  public var std = ImagePreprocessing.imageNetStd
  /// ImageNet-format data: decoding threads per rank (nil: as many as the rank's compute threads).
  public var dataThreads: Int?
  /// ImageNet-format data: what a file that does not decode cleanly does.
  public var badImages = BadImagePolicy.replace

  // MARK: Optimization
  public var optimizer = OptimizerSpec.adam()
  /// Linear learning-rate scaling `lr · batch / lr_reference_batch` (Goyal et al.); applied to
  /// the optimizer's schedules when the run starts (`resolved`).
  public var lrScaling = LearningRateScaling.none
  public var lrReferenceBatch = 256
  /// Linear warm-up over this many epochs, from 0 (or, under `lr_scaling: linear`, from the
  /// unscaled learning rate, as Goyal et al.); applied when the run starts (`resolved`).
  public var warmupEpochs = 0
  public var epochs = 10
  /// The GLOBAL batch size (all ranks together).
  public var batchSize = 512
  public var seed: UInt64 = 0
  /// Micro-steps per optimizer step (gradient accumulation).
  public var accumulate = 1
  /// Sync BatchNorm: normalize with the global batch's statistics.
  public var syncBN = false

  // MARK: The exchange between ranks
  /// The sharded (ZeRO-1) optimizer step; false: the bucketed all-reduce.
  public var shardOptimizer = true
  /// The all-reduce's bucket size in MiB (0: one all-reduce after backward).
  public var bucketMB = 4.0
  public var wire = WirePolicy.auto

  // MARK: Checkpoints
  /// A checkpoint every this many optimizer steps (0: none by step count).
  public var checkpointEvery = 0
  /// A checkpoint at the end of every this many epochs (0: none by epoch).
  public var checkpointEveryEpochs = 1
  public var keepCheckpoints = 3
  public var onCheckpointError = CheckpointErrorPolicy.stop

  // MARK: Logging and observability
  /// A step row in metrics.jsonl and TensorBoard every this many steps (0: none).
  public var logEvery = 50
  /// Compare the replicas' checksums every this many steps (0: only at the end).
  public var checkEvery = 100
  public var tensorboard = true
  /// Seconds rank 0 waits in a collective before naming the ranks it waits for (0: off).
  public var stallWarning = 60.0
  /// Seconds after which such a wait ends the job (nil: never).
  public var stallTimeout: Double?
  /// A Chrome trace of `timelineSteps` on every rank, written to this file.
  public var timeline: String?
  public var timelineSteps = StepWindow(1..<21)

  // MARK: Compute
  /// The forward kernel of exact binary layers (the choice never changes results).
  public var binaryForward = BinaryForwardPolicy.auto
  /// The arithmetic of the convolutions' backward passes: fp32 (direct, the default but for
  /// Larq Zoo's presets), winograd (their default: fp32 through Winograd's transforms on 3×3
  /// stride-1 layers, on CPUs with AVX2 or AVX-512), or bf16 (about twice as fast where the CPU
  /// has AVX512_BF16 or AMX; gradients rounded like mixed-precision training's).
  public var backwardPrecision = BackwardPrecision.fp32
  /// Compute threads per rank (nil: the cores divided by the ranks on the node).
  public var threads: Int?

  public init() {}

  /// A preset's architecture and training recipe (`ModelPreset.optimizer`, `batchSize`,
  /// `epochs`, `warmupEpochs`); the small residual presets crop and flip in-memory images.
  /// Larq Zoo's networks run the Winograd backward (at 224×224 their 3×3 stride-1 layers'
  /// backward is most of a step: 1.5–1.7× the direct fp32 backward's speed, at fp32's error).
  public init(preset: ModelPreset) {
    model = preset.rawValue
    layers = preset.layers
    if let o = preset.optimizer { optimizer = o }
    batchSize = preset.batchSize
    if let e = preset.epochs { epochs = e }
    warmupEpochs = preset.warmupEpochs
    augment = preset == .birealnet || preset == .quicknetMini ? .cropFlip : nil
    backwardPrecision = preset.isZoo ? .winograd : .fp32
  }

  /// The settings a run may change when it is resumed (`flip train --resume DIR ...`): how
  /// long it trains, where the data lies, and how it is logged, checkpointed, computed and
  /// exchanged between ranks.
  /// Every other key is the run's own.
  public static let resumableKeys: Set<CodingKeys> = [
    .epochs, .data, .dataThreads, .badImages, .logEvery, .checkEvery, .tensorboard, .stallWarning, .stallTimeout, .timeline, .timelineSteps,
    .checkpointEvery, .checkpointEveryEpochs, .keepCheckpoints, .onCheckpointError, .binaryForward, .backwardPrecision,
    .threads, .accumulate,
    .shardOptimizer, .bucketMB, .wire,
  ]
}

/// `lr_scaling` values.
public enum LearningRateScaling: String, CaseIterable, Sendable {
  case none, linear
}

/// `on_checkpoint_error` values: stop every rank (earlier checkpoints stay), or warn and go on.
public enum CheckpointErrorPolicy: String, CaseIterable, Sendable {
  case stop, `continue`
}

/// `timeline_steps: A:B`, the global optimizer steps A ≤ step < B.
public struct StepWindow: Equatable, Sendable, CustomStringConvertible {
  public let range: Range<Int>
  public init(_ range: Range<Int>) { self.range = range }
  public init?(_ text: String) {
    let parts = text.split(separator: ":", omittingEmptySubsequences: false).map { Int($0) }
    guard parts.count == 2, let a = parts[0], let b = parts[1], a >= 1, b > a else { return nil }
    range = a..<b
  }
  public var description: String { "\(range.lowerBound):\(range.upperBound)" }
}
