import ArgumentParser
import FlipBNN
import FlipTraining

/// The run-setting flags `train` and `bench` share. Each overrides the key of the same name
/// in the run's settings (`--sync-bn` is `sync_bn`); one not given keeps the config's value,
/// or the default `RunSettings` states.
struct SharedSettingsOptions: ParsableArguments {
  @Option(name: .long, help: "Global batch size over all ranks (default: the config's, else \(RunSettings().batchSize)).")
  var batchSize: Int?
  @Option(
    name: .long,
    help: ArgumentHelp(
      "Data set directory: IDX files, CIFAR-10 batches, or ImageNet-format images (default: \(RunSettings().data)).",
      discussion:
        "ImageNet-format: an image folder (train/<class>/*, val/<class>/*), TFDS TFRecords (<name>/<version>/<name>-train.tfrecord-*) or WebDataset tar shards (train/*.tar, val/*.tar); check one with `flip data check DIR`."
    ))
  var data: String?
  @Option(
    name: .long,
    help: "Training-image augmentation: none, crop or crop-flip (default: the config's, else crop-flip for ImageNet-format data and none otherwise).")
  var augment: AugmentationMode?
  @Option(name: .long, help: "ImageNet-format data: the side of the square images the model sees (default 224).")
  var imageSize: Int?
  @Option(
    name: .long,
    help: "ImageNet-format data: decoding threads per rank (default: as many as the rank's compute threads).")
  var dataThreads: Int?
  @Option(
    name: .long,
    help: "ImageNet-format data: a file that does not decode cleanly is reported and replaced by another image (replace, the default) or stops the job (error).")
  var badImages: BadImagePolicy?
  @Option(name: .long, help: "Adam/SGD learning rate as a constant (overrides the config's).")
  var learningRate: Double?
  @Option(
    name: .long,
    help: ArgumentHelp(
      "Gradient accumulation: K micro-steps of batch/(ranks·K) samples per rank before one update (default 1).",
      discussion:
        "The global batch stays the batch of one update; BatchNorm statistics are those of each micro-step. Runs with the same ranks × K train the same bits (local BatchNorm, fp32 wire, the same threads per rank, K a power of two), so a resume on half the ranks with twice the K continues the run exactly."
    ))
  var accumulate: Int?
  @Flag(
    name: .customLong("sync-bn"), inversion: .prefixedNo,
    help: "Sync BatchNorm: normalize with the statistics of the global batch (default: each rank's own).")
  var syncBN: Bool?
  @Flag(
    inversion: .prefixedNo,
    help: "Under mpirun: the sharded optimizer step (ZeRO stage 1, the default), or (--no-shard-optimizer) the bucketed all-reduce.")
  var shardOptimizer: Bool?
  @Option(name: .long, help: "Under mpirun: all-reduce buckets of about this many MiB (0: one after backward; default 4).")
  var bucketMb: Double?
  @Option(
    name: .long,
    help: ArgumentHelp(
      "Under mpirun, the sharded step's wire: fp32, compact (bf16 gradients, binary kernels as sign bits), or auto (fp32 on one host, compact across hosts; the default).",
      discussion: "compact sends a quarter of fp32's bytes for a BNN; its gradients are rounded to bfloat16, so results differ in the last bits."))
  var wire: WirePolicy?
  @Option(name: .long, help: "Write a Chrome trace of the steps on every rank to this file (train: --timeline-steps).")
  var timeline: String?

  /// The keys these flags set.
  func overrides() -> [RunSettings.CodingKeys: ConfigValue] {
    var o: [RunSettings.CodingKeys: ConfigValue] = [:]
    if let batchSize { o[.batchSize] = .int(batchSize) }
    if let data { o[.data] = .string(data) }
    if let augment { o[.augment] = .string(augment.rawValue) }
    if let imageSize { o[.imageSize] = .int(imageSize) }
    if let dataThreads { o[.dataThreads] = .int(dataThreads) }
    if let badImages { o[.badImages] = .string(badImages.rawValue) }
    if let accumulate { o[.accumulate] = .int(accumulate) }
    if let syncBN { o[.syncBN] = .bool(syncBN) }
    if let shardOptimizer { o[.shardOptimizer] = .bool(shardOptimizer) }
    if let bucketMb { o[.bucketMB] = .double(bucketMb) }
    if let wire { o[.wire] = .string(wire.rawValue) }
    if let timeline { o[.timeline] = .string(timeline) }
    return o
  }
}

/// The model and its settings: a preset (`--model`) or a YAML config (`--config`), with the
/// shared flags applied.
extension ModelOptions {
  func settings(_ shared: SharedSettingsOptions, _ compute: ComputeOptions, defaultPreset: ModelPreset? = nil)
    throws -> RunSettings
  {
    var settings = try resolve(defaultPreset: defaultPreset)
    if let lr = shared.learningRate { settings.optimizer = try settings.optimizer.withLearningRate(lr) }
    let overrides = shared.overrides().merging(compute.overrides()) { a, _ in a }
    return try settings.overriding(overrides, source: "the command line")
  }
}
extension BadImagePolicy: ExpressibleByArgument {}
