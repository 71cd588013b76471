import FlipBNN
import Foundation
import Testing

@testable import FlipTraining

// The Keras HDF5 weights reader and its mapping onto a Flip model (files written here through
// the HDF5 C API in Keras's layout; KerasWeightsTests compares with weights Keras wrote).

@Suite("Keras weights files")
struct KerasWeightsFileTests {
  /// Conv2D → BatchNormalization → QuantConv2D (weight_clip) → Flatten → Dense, on 4×4×2.
  static let specs: [LayerSpec] = {
    var conv = LayerSpec(.conv2D)
    conv.filters = 3
    conv.kernelSize = [3, 3]
    conv.padding = .same
    conv.useBias = false
    var binary = LayerSpec(.quantConv2D)
    binary.filters = 2
    binary.kernelSize = [3, 3]
    binary.inputQuantizer = QuantizerSpec("ste_sign")
    binary.kernelQuantizer = QuantizerSpec("ste_sign")
    binary.kernelConstraint = .weightClip(clipValue: 1)
    var dense = LayerSpec(.dense)
    dense.units = 5
    return [conv, LayerSpec(.batchNormalization), binary, LayerSpec(.flatten), dense]
  }()

  static func model(seed: UInt64 = 1) throws -> Model {
    try Model(specs: specs, inputShape: [4, 4, 2], seed: seed)
  }

  /// The model's variables as Keras would save them: every layer (with an input layer first,
  /// as `model.layers` of a functional model), Keras's weight names, distinct values.
  static func kerasFile(of model: Model) -> KerasWeightsFile {
    var layers = [KerasWeightsFile.Layer(name: "input_1", weights: [])]
    var next: Float = 0.25
    for (i, layer) in model.layers.enumerated() {
      let weights = model.store.views(ofLayer: i).map { v in
        defer { next += Float(v.count) }
        return KerasWeightsFile.Weight(
          name: "\(layer.name)/\(v.role.rawValue):0", shape: v.shape,
          values: (0..<v.count).map { i in
            v.role == .kernel ? Float(i % 9 - 4) * 0.3 + next * 1e-4 : next + Float(i) * 0.5
          })
      }
      layers.append(KerasWeightsFile.Layer(name: layer.name, weights: weights))
    }
    return KerasWeightsFile(layers: layers)
  }

  static func values(_ model: Model) -> [Float] {
    copyOut(model.store.values.pointer, model.store.values.count)
      + copyOut(model.store.state.pointer, model.store.state.count)
  }

  func loadError(_ file: String, into model: Model) -> String {
    do {
      try KerasWeights.load(path: file, into: model)
      return "no error"
    } catch { return "\(error)" }
  }

  @Test(arguments: [
    KerasH5Writer(strings: .fixedLength), KerasH5Writer(strings: .variableLength),
    KerasH5Writer(strings: .fixedLength, underModelWeights: true),
    KerasH5Writer(strings: .variableLength, underModelWeights: true),
    KerasH5Writer(strings: .fixedLength, layerNamesChunk: 2),
  ])
  func loadsEveryVariableByOrderAndRole(writer: KerasH5Writer) throws {
    let source = try Self.model(seed: 1)
    let keras = Self.kerasFile(of: source)
    let path = temporaryDirectory("keras-h5") + "/w.h5"
    writer.write(keras, to: path)
    let model = try Self.model(seed: 2)
    let summary = try KerasWeights.load(path: path, into: model)
    #expect(summary == .init(layers: 4, tensors: 9))
    for v in model.store.views + model.store.stateViews {
      let layer = keras.layers.first { $0.name == model.layers[v.layerIndex].name }!
      let w = layer.weights.first { $0.role == v.role.rawValue }!
      let expected = v.constraint.map { c in w.values.map { min(max($0, c.bounds.0), c.bounds.1) } } ?? w.values
      #expect(copyOut(model.store.pointer(v), v.count) == expected, "\(v.name)")
    }
    // The binary kernel's values beyond ±1 were clipped (weight_clip), as after a training step.
    let kernel = model.store.views.first { $0.layerIndex == 2 && $0.role == .kernel }!
    let clipped = copyOut(model.store.pointer(kernel), kernel.count)
    #expect(clipped.contains(-1) && clipped.contains(1) && clipped.contains { abs($0) < 1 })
  }

  @Test func notAnHDF5FileIsNamed() throws {
    let path = temporaryDirectory("keras-h5") + "/w.h5"
    write(Array("{\"not\": \"hdf5\"}".utf8), to: path)
    let message = loadError(path, into: try Self.model())
    #expect(message.contains(path) && message.contains("is not an HDF5 file"), "\(message)")
    #expect(loadError(path + ".missing", into: try Self.model()).contains("no such file"))
    #expect(loadError(NSTemporaryDirectory(), into: try Self.model()).contains("it is a directory"))
  }

  @Test func truncatedFileIsAnErrorNotACrash() throws {
    let dir = temporaryDirectory("keras-h5")
    KerasH5Writer().write(Self.kerasFile(of: try Self.model()), to: dir + "/w.h5")
    let bytes = [UInt8](FileManager.default.contents(atPath: dir + "/w.h5")!)
    for cut in [bytes.count / 2, bytes.count - 100, 600] {
      write(Array(bytes.prefix(cut)), to: dir + "/cut.h5")
      let model = try Self.model()
      let before = Self.values(model)
      let message = loadError(dir + "/cut.h5", into: model)
      #expect(message.contains(dir + "/cut.h5") && message.contains("truncated"), "cut at \(cut): \(message)")
      #expect(Self.values(model) == before)
    }
  }

  @Test func fileWithoutLayerNamesIsNotKerasWeights() throws {
    let path = temporaryDirectory("keras-h5") + "/w.h5"
    KerasH5Writer(layerNames: false).write(Self.kerasFile(of: try Self.model()), to: path)
    let message = loadError(path, into: try Self.model())
    #expect(message.contains(path) && message.contains("has no attribute layer_names"), "\(message)")
  }

  /// Writes `file` changed by `edit`, loads it into a model and returns the error, checking
  /// that the model is unchanged.
  func mismatch(_ edit: (inout KerasWeightsFile) -> Void, writer: KerasH5Writer = KerasH5Writer()) throws -> String {
    var file = Self.kerasFile(of: try Self.model())
    edit(&file)
    let path = temporaryDirectory("keras-h5") + "/w.h5"
    writer.write(file, to: path)
    let model = try Self.model(seed: 3)
    let before = Self.values(model)
    let message = loadError(path, into: model)
    #expect(Self.values(model) == before)
    #expect(message.hasPrefix(path + ": "), "\(message)")
    return message
  }

  @Test func shapeMismatchNamesBothLayers() throws {
    let message = try mismatch { file in
      let w = file.layers[3].weights[0]
      file.layers[3].weights[0] = .init(name: w.name, shape: [3, 3, 3, 3], values: Array(repeating: 0, count: 81))
    }
    #expect(
      message.contains(
        "Keras's quant_conv2d/kernel:0 has shape [3, 3, 3, 3], the kernel of Flip's quant_conv2d (layer 2"),
      "\(message)")
  }

  @Test func wrongLayerCountSaysWhereTheListsPart() throws {
    let message = try mismatch { file in file.layers.remove(at: 2) }  // batch_normalization
    #expect(message.contains("has 3 layers with weights, the model 4"), "\(message)")
    #expect(
      message.contains(
        "position 2, are Keras's quant_conv2d (bias [2], kernel [3, 3, 3, 2]) and Flip's batch_normalization (layer 1"),
      "\(message)")
  }

  @Test func missingAndExtraRolesAreOneError() throws {
    let message = try mismatch { file in
      file.layers[2].weights.removeLast()  // moving_variance
      file.layers[1].weights.append(.init(name: "conv2d/bias:0", shape: [3], values: [1, 2, 3]))
    }
    #expect(
      message.contains("Keras layer batch_normalization has no moving_variance for Flip's batch_normalization"),
      "\(message)")
    #expect(
      message.contains("Keras's conv2d/bias:0 ([3]) has no place in Flip's conv2d (layer 0: kernel [3, 3, 2, 3])"),
      "\(message)")
  }

  @Test func integerDatasetIsNamed() throws {
    let message = try mismatch({ _ in }, writer: KerasH5Writer(integerWeights: ["dense/bias:0"]))
    #expect(
      message.contains("dataset 'dense/bias:0' in /dense holds 32-bit integers, not floating-point weights"),
      "\(message)")
  }

  @Test func kerasFilesAreToldFromFlipFilesByTheirSignature() throws {
    let dir = temporaryDirectory("keras-h5")
    KerasH5Writer().write(Self.kerasFile(of: try Self.model()), to: dir + "/w.h5")
    write(Array("not hdf5".utf8), to: dir + "/x.safetensors")
    #expect(KerasWeightsFile.isHDF5(path: dir + "/w.h5"))
    #expect(!KerasWeightsFile.isHDF5(path: dir + "/x.safetensors"))
    #expect(!KerasWeightsFile.isHDF5(path: dir + "/none"))
  }
}

/// Keras weights through the command line: `flip evaluate --weights` and `flip train --init-from`.
@Suite("Keras weights on the command line", .serialized)
struct KerasWeightsCLITests {
  /// A trained run's variables rewritten as Keras would save them (layer names, weight names,
  /// an input layer first), through the model the run's config builds.
  static func kerasFile(ofRun run: String) throws -> KerasWeightsFile {
    let config = try RunSettings.load(path: run + "/config.yaml")
    let model = try Model(specs: config.layers, inputShape: [6, 6, 1], seed: 0)  // ResumeTests' toy data
    let (tensors, _) = try ModelFile.read(path: run + "/model.safetensors")
    return kerasFile(of: model) { tensors[$0.name]!.values }
  }

  /// `model`'s variables (or `values` of each view) as Keras would save them.
  static func kerasFile(of model: Model, values: ((ParameterView) -> [Float])? = nil) -> KerasWeightsFile {
    var layers = [KerasWeightsFile.Layer(name: "input_1", weights: [])]
    for (i, layer) in model.layers.enumerated() {
      let weights = model.store.views(ofLayer: i).map { v in
        KerasWeightsFile.Weight(
          name: "\(layer.name)/\(v.role.rawValue):0", shape: v.shape,
          values: values?(v) ?? copyOut(model.store.pointer(v), v.count))
      }
      layers.append(KerasWeightsFile.Layer(name: layer.name, weights: weights))
    }
    return KerasWeightsFile(layers: layers)
  }

  @Test func evaluateAndInitFromTakeKerasWeights() throws {
    let dir = try ResumeTests.setUp()
    let config = try CLITestsConfig.path(dir)
    let train = ["train", "--data", dir, "--epochs", "1", "--batch-size", "32", "--threads", "1", "--quiet"]
    let run = try runFlip(train + ["--config", config, "--out", dir + "/run"])
    #expect(run.status == 0, "\(run.stderr)")
    KerasH5Writer().write(try Self.kerasFile(ofRun: dir + "/run"), to: dir + "/w.h5")
    // The same variables give the same evaluation from the run and from the Keras file.
    let fromRun = try runFlip(["evaluate", "--run", dir + "/run", "--threads", "1"])
    let fromKeras = try runFlip([
      "evaluate", "--config", config, "--weights", dir + "/w.h5", "--data", dir, "--threads", "1",
    ])
    #expect(fromRun.status == 0 && fromKeras.status == 0, "\(fromRun.stderr)\(fromKeras.stderr)")
    #expect(fromKeras.stdout.contains("test_accuracy") && fromKeras.stdout == fromRun.stdout, "\(fromKeras.stdout)")
    let initFrom = try runFlip(train + ["--config", config, "--init-from", dir + "/w.h5", "--out", dir + "/again"])
    #expect(initFrom.status == 0, "\(initFrom.stderr)")
    #expect(
      initFrom.stderr.contains("initialized from \(dir)/w.h5 (Keras weights: 4 layers, 8 tensors)"),
      "\(initFrom.stderr)")
    // Another architecture: the mismatch names both layers; --weights needs its model.
    let other = try runFlip(["evaluate", "--config", dir + "/m.yaml", "--weights", dir + "/w.h5", "--data", dir])
    #expect(other.status != 0 && other.stderr.contains("\(dir)/w.h5: "), "\(other.stderr)")
    let unnamed = try runFlip(["evaluate", "--weights", dir + "/w.h5", "--data", dir])
    #expect(
      unnamed.status != 0 && unnamed.stderr.contains("--weights needs the model it belongs to"), "\(unnamed.stderr)")
  }
}

/// `flip evaluate --model birealnet18 --weights`: the preset takes the data's image size and
/// classes before the weights load, as in training.
@Suite("Keras weights for a preset on the command line", .serialized)
struct KerasWeightsPresetCLITests {
  @Test func evaluatePresetOnImagesOfTheirSize() throws {
    let dir = temporaryDirectory("keras-preset")
    try writeImageFolder(dir + "/data", classes: 3, perClass: 2, valPerClass: 2, width: 40, height: 40)
    let layers = ModelPreset.birealnet18.layers(inputShape: [32, 32, 3], classes: 3)
    let model = try Model(specs: layers, inputShape: [32, 32, 3], seed: 5)
    KerasH5Writer().write(KerasWeightsCLITests.kerasFile(of: model), to: dir + "/w.h5")
    let common = [
      "evaluate", "--model", "birealnet18", "--data", dir + "/data", "--image-size", "32", "--threads", "1",
    ]
    let r = try runFlip(common + ["--weights", dir + "/w.h5"])
    #expect(r.status == 0, "\(r.stderr)")
    #expect(r.stdout.contains("test_accuracy") && r.stdout.contains("(6 images from"), "\(r.stdout)")
    // Weights for 1,000 classes do not fit the 3 of these images: the dense layer is named.
    let wide = try Model(
      specs: ModelPreset.birealnet18.layers(inputShape: [32, 32, 3], classes: 1000), inputShape: [32, 32, 3], seed: 5)
    KerasH5Writer().write(KerasWeightsCLITests.kerasFile(of: wide), to: dir + "/wide.h5")
    let mismatch = try runFlip(common + ["--weights", dir + "/wide.h5"])
    #expect(mismatch.status != 0 && mismatch.stderr.contains("Flip's dense"), "\(mismatch.stderr)")
  }
}
