import ArgumentParser
import FlipBNN
import FlipComm
import FlipTensor
import FlipTraining
import Foundation

struct EvaluateCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "evaluate",
    abstract:
      "Evaluate a trained model on the test set: a run directory (config.yaml and model.safetensors), one Flip file, or Keras weights for a model.",
    discussion: """
      Keras weights (model.save_weights("w.h5") of a Larq Zoo model, the format its pretrained weights ship in) \
      load by layer order and shape into the model named by --model or --config:
        flip evaluate --model birealnet18 --weights w.h5 --data DIR
      """)

  @Option(name: [.customLong("run")], help: "A run directory written by flip train.")
  var runDirectory: String?
  @Option(
    name: .long,
    help: "A model, checkpoint or binary-export file; the model is rebuilt from the config in its metadata.")
  var checkpoint: String?
  @Option(
    name: .long,
    help:
      "Keras weights (an HDF5 file of model.save_weights, e.g. Larq Zoo's) for the model named by --model or --config.")
  var weights: String?
  @OptionGroup var modelOptions: ModelOptions
  @Option(name: .long, help: "Data directory (default: the one the run was trained on, or the config's).")
  var data: String?
  @Option(
    name: .long,
    help: "ImageNet-format data: the side of the square images the model sees (default: the config's, else 224).")
  var imageSize: Int?
  @Option(name: .long, help: "Evaluation batch size (default 1000).")
  var batchSize = 1000
  @OptionGroup var compute: ComputeOptions

  func validate() throws {
    if compute.backwardPrecision != nil {
      throw ValidationError("--backward-precision applies to training (train, bench); evaluation runs no backward pass")
    }
    if [runDirectory, checkpoint, weights].compactMap({ $0 }).count != 1 {
      throw ValidationError(
        "name exactly one model: --run DIR, --checkpoint FILE or --weights FILE.h5 (with --model or --config)")
    }
    let named = modelOptions.model != nil || modelOptions.config != nil
    if weights != nil && !named {
      throw ValidationError("--weights needs the model it belongs to: --model NAME or --config FILE")
    }
    if weights == nil && named {
      throw ValidationError("--model and --config go with --weights (a run or a Flip file names its own model)")
    }
    if batchSize <= 0 { throw ValidationError("--batch-size must be positive, got \(batchSize)") }
  }

  /// The model's settings, and how its variables get into it once it is built.
  func source() throws -> (config: RunSettings, load: (Model) throws -> Void) {
    if let runDirectory {
      let config = try RunSettings.load(path: runDirectory + "/config.yaml")
      let path = runDirectory + "/model.safetensors"
      let (tensors, metadata) = try ModelFile.read(path: path)
      return (config, { try ModelFile.load(tensors, into: $0, path: path, metadata: metadata) })
    }
    if let checkpoint {
      let file = try FlipFile(path: checkpoint)
      return (file.config, { try ModelFile.load(file.tensors, into: $0, path: file.path, metadata: file.metadata) })
    }
    let keras = try KerasWeightsFile.read(path: weights!)
    return (try modelOptions.resolve(), { try KerasWeights.load(keras, into: $0, path: weights!) })
  }

  func run() throws {
    try Runtime.run(verbose: compute.verbose) { communicator, logger in
      let threads = Runtime.configureThreads(
        compute.threads, localRanks: communicator.localSize, logger: logger, communicator: communicator)
      var (config, load) = try source()
      if let data { config.data = data }
      if let imageSize { config.imageSize = imageSize }
      let rank = communicator.rank
      let splits = try DataSplits.load(
        directory: config.data,
        images: ImageDataOptions(config, computeThreads: threads) { logger.warning("rank \(rank): bad image \($0)") })
      let inputShape = config.inputShape ?? splits.test.sampleShape
      if weights != nil {
        // A preset named for Keras weights takes the data's image size and classes, as in training.
        config.layers = config.layers(forInputShape: inputShape, classes: splits.test.classes)
      }
      let model = try Model(
        specs: config.layers, inputShape: inputShape, seed: config.seed, compute: Compute(threads: threads))
      guard model.inputShape == splits.test.sampleShape else {
        throw TrainingError.datasetMismatch(
          "the model expects inputs of shape \(model.inputShape) but the images are \(splits.test.sampleShape)")
      }
      try load(model)
      try model.checkBatchFits(batchSize)
      model.allocate(maxBatch: batchSize)
      let policy = compute.binaryForward ?? .auto
      let choices = try model.chooseBinaryForward(batch: batchSize, policy: policy)
      for choice in choices { logger.debug("binary forward on oneDNN ISA \(OneDNN.effectiveISA): \(choice)") }
      if let warning = policy.unusedWarning(choices) { logger.warning("\(warning)") }
      let r = try evaluateModel(model, on: splits.test, communicator: communicator, batch: batchSize)
      if communicator.isRoot {
        print(
          String(
            format: "test_loss: %.4f - test_accuracy: %.4f - test_top5_accuracy: %.4f (%d images from %@)", r.loss,
            r.accuracy, r.top5Accuracy, splits.test.count, config.data))
      }
    }
  }
}

struct SummaryCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "summary",
    abstract: "Print the model table of larq.models.summary: per-layer precisions, weights, memory and MACs.")

  @OptionGroup var modelOptions: ModelOptions
  @Option(
    name: .long, parsing: .upToNextOption,
    help:
      "Input shape of one sample (default: the config's, else 224 224 3 for Larq Zoo's networks, 28 28 1 otherwise).")
  var inputShape: [Int] = []
  @Option(name: .long, help: "Square RGB images of this side: the input shape S S 3.")
  var imageSize: Int?
  @Flag(
    name: .long,
    help:
      "Print the model's run config as YAML (every layer written out: a preset as a config file to start from) instead of the table."
  )
  var printConfig = false

  func run() throws {
    do {
      let config = try modelOptions.resolve()
      if printConfig {
        print(try config.yaml(), terminator: "")
        return
      }
      let preset = ModelPreset(rawValue: config.model)
      guard inputShape.isEmpty || imageSize == nil else {
        throw ValidationError("give --input-shape or --image-size, not both")
      }
      let shape =
        imageSize.map { [$0, $0, 3] } ?? (!inputShape.isEmpty ? inputShape : nil) ?? config.inputShape
        ?? preset?.defaultInputShape ?? [28, 28, 1]
      let layers = config.layers(forInputShape: shape, classes: preset?.defaultClasses ?? 10)
      let model = try Model(specs: layers, inputShape: shape, seed: 0)
      print(ModelSummary(modelName: config.modelName, model: model).render(), terminator: "")
    } catch {
      Runtime.report(error, rank: 0)
      throw ExitCode.failure
    }
  }
}
