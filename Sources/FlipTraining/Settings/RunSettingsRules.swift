import FlipBNN
import Foundation

extension RunSettings {
  /// Checks every setting by the same rules whatever set it (a flag, a config file, a
  /// checkpoint); the error names the key and its flag.
  public func validate() throws {
    func bad(_ key: CodingKeys, _ message: String) -> ConfigError {
      ConfigError(path: key.stringValue, message: "\(message) (\(key.flag))")
    }
    if layers.isEmpty { throw bad(.layers, "the settings name no layers") }
    if epochs <= 0 { throw bad(.epochs, "must be positive, got \(epochs)") }
    if batchSize <= 0 { throw bad(.batchSize, "must be positive, got \(batchSize)") }
    if accumulate < 1 { throw bad(.accumulate, "must be at least 1, got \(accumulate)") }
    if lrReferenceBatch <= 0 { throw bad(.lrReferenceBatch, "must be positive, got \(lrReferenceBatch)") }
    if warmupEpochs < 0 { throw bad(.warmupEpochs, "must be ≥ 0, got \(warmupEpochs)") }
    if !(bucketMB >= 0 && bucketMB <= 1024) { throw bad(.bucketMB, "must be in [0, 1024] MiB, got \(bucketMB)") }
    if checkpointEvery < 0 { throw bad(.checkpointEvery, "must be ≥ 0, got \(checkpointEvery)") }
    if checkpointEveryEpochs < 0 { throw bad(.checkpointEveryEpochs, "must be ≥ 0, got \(checkpointEveryEpochs)") }
    if keepCheckpoints < 1 { throw bad(.keepCheckpoints, "must be at least 1, got \(keepCheckpoints)") }
    if logEvery < 0 { throw bad(.logEvery, "must be ≥ 0, got \(logEvery)") }
    if checkEvery < 0 { throw bad(.checkEvery, "must be ≥ 0, got \(checkEvery)") }
    if !(stallWarning >= 0) { throw bad(.stallWarning, "must be ≥ 0 seconds, got \(stallWarning)") }
    if let t = stallTimeout, !(t > 0) { throw bad(.stallTimeout, "must be positive seconds, got \(t)") }
    if let t = threads, t <= 0 { throw bad(.threads, "must be positive, got \(t)") }
    if let shape = inputShape, shape.isEmpty || shape.contains(where: { $0 <= 0 }) {
      throw bad(.inputShape, "must be positive sizes, got \(shape)")
    }
    if data.isEmpty { throw bad(.data, "must name a directory") }
    if let s = imageSize, !(8...4096).contains(s) { throw bad(.imageSize, "must be in 8...4096 pixels, got \(s)") }
    if let t = dataThreads, !(1...256).contains(t) { throw bad(.dataThreads, "must be in 1...256, got \(t)") }
    if mean.count != 3 || !mean.allSatisfy(\.isFinite) {
      throw bad(.mean, "must be 3 finite values (R, G, B of pixels in [0, 1]), got \(mean)")
    }
    if std.count != 3 || !std.allSatisfy({ $0 > 0 && $0.isFinite }) {
      throw bad(.std, "must be 3 positive values (R, G, B of pixels in [0, 1]), got \(std)")
    }
    do { try optimizer.validate() } catch let e as BNNError {
      throw ConfigError(path: CodingKeys.optimizer.stringValue, message: e.description)
    }
    if lrScaling != .none || warmupEpochs > 0 {
      do { _ = try optimizer.mappingLearningRates { $0 } } catch let e as BNNError {
        throw ConfigError(path: CodingKeys.optimizer.stringValue, message: e.description)
      }
    }
  }

  /// The settings of a run about to start on a data set of `trainSamples` samples of
  /// `sampleShape` in `classes` classes: a preset's output layer gives one output per class,
  /// the input shape is the data's, the real-valued variant is built, and the learning-rate
  /// schedule is fixed for the run (`decay_steps: run` resolved to its step count, linear
  /// scaling and warm-up folded into the schedules). A resumed run reads these back as they are.
  public func resolved(trainSamples: Int, sampleShape: [Int], classes: Int, streamed: Bool = false) throws
    -> RunSettings
  {
    var s = self
    s.augment = augment ?? (streamed ? .cropFlip : AugmentationMode.none)
    if streamed { s.imageSize = imageSize ?? ImagePreprocessing.defaultImageSize }
    s.layers = layers(forInputShape: inputShape ?? sampleShape, classes: classes)
    if realValued {
      s.layers = s.layers.realValued()
      s.model += "-real"
      s.realValued = false
    }
    s.inputShape = inputShape ?? sampleShape
    let stepsPerEpoch = (trainSamples + batchSize - 1) / batchSize
    let totalSteps = epochs * stepsPerEpoch
    let factor = lrScaling == .linear ? Double(batchSize) / Double(lrReferenceBatch) : 1
    if factor != 1 || warmupEpochs > 0 {
      let warmupEpochs = warmupEpochs
      s.optimizer = try s.optimizer.mappingLearningRates { h in
        var schedule = factor == 1 ? h.schedule : .scaled(factor: factor, inner: h.schedule)
        if warmupEpochs > 0 {
          let warmup = warmupEpochs * (h.unit == .step ? stepsPerEpoch : 1)
          let unscaled = h.schedule.resolvingRunLength(totalSteps).value(at: 0)
          schedule = .linearWarmup(warmup: warmup, start: factor == 1 ? 0 : unscaled, then: schedule)
        }
        return Hyperparameter(schedule, unit: h.unit)
      }
    }
    // `decay_steps: run` after the warm-up covers the steps left (QuickNet's cosine ends at 0).
    s.optimizer = s.optimizer.resolvingRunLength(totalSteps: totalSteps)
    s.lrScaling = .none
    s.warmupEpochs = 0
    return s
  }

  /// The layers for samples of `inputShape` in `classes` classes: a preset's built for them
  /// (`ModelPreset.layers(inputShape:classes:)`) while the layers are the preset's own; else
  /// the layers as given, a preset's output layer with one unit per class.
  public func layers(forInputShape inputShape: [Int], classes: Int) -> [LayerSpec] {
    guard let preset = ModelPreset(rawValue: model) else { return layers }
    if layers == preset.layers { return preset.layers(inputShape: inputShape, classes: classes) }
    var specs = layers
    if let last = specs.lastIndex(where: { $0.kind == .dense || $0.kind == .quantDense }) {
      specs[last].units = classes
    }
    return specs
  }

  /// The Keras model name a summary prints (`binarynet_mlp`).
  public var modelName: String {
    ModelPreset(rawValue: model)?.modelName ?? model.replacingOccurrences(of: "-", with: "_")
  }
}
