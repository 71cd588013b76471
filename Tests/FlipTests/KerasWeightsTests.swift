import FlipBNN
import FlipTensor
import Foundation
import Testing

@testable import FlipTraining

/// Weights Keras saved (`model.save_weights`) from models with every variable random
/// (scripts/keras-weights.py, run by scripts/keras-weights-check.sh, which sets
/// FLIP_KERAS_WEIGHTS_DIR to its output), loaded into Flip's twin of each model: on the same
/// inputs Flip gives the same top-1 class on every input and pre-softmax outputs within 1e-4
/// relative on at least 99 % of entries. Prints how many inputs of each binarized layer have a
/// sign other than Keras's (where a float sum lands on the other side of 0).
@Suite("Keras weights against Keras's outputs")
struct KerasWeightsTests {
  struct Expected: Decodable {
    struct QuantizedLayer: Decodable {
      var name: String
      var count: Int
      var offset: Int
    }
    var images: Int
    var input_shape: [Int]
    var classes: Int
    var quantized_layers: [QuantizedLayer]
  }

  static let directory = ProcessInfo.processInfo.environment["FLIP_KERAS_WEIGHTS_DIR"]

  /// Flip's twin of each Keras model the script writes.
  static func specs(_ name: String) throws -> [LayerSpec] {
    if name == "tiny" {
      let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().path + "/Fixtures/keras-tiny.yaml"
      return try RunSettings.load(path: path).layers
    }
    let preset = try #require(ModelPreset(rawValue: name), "Flip has no preset \(name)")
    return RunSettings(preset: preset).layers
  }

  @Test(
    .enabled(if: directory != nil, "run scripts/keras-weights-check.sh (FLIP_KERAS_WEIGHTS_DIR is not set)"),
    arguments: ["tiny", "birealnet18", "quicknet"])
  func flipMatchesKeras(model name: String) throws {
    let base = Self.directory! + "/" + name
    let expected = try JSONDecoder().decode(Expected.self, from: Data(contentsOf: URL(fileURLWithPath: base + ".json")))
    let model = try Model(
      specs: try Self.specs(name), inputShape: expected.input_shape, seed: 0, compute: Compute(threads: 2))
    try KerasWeights.load(path: base + ".h5", into: model)
    let inputs = try Self.floats(base + ".inputs.f32")
    let kerasLogits = try Self.floats(base + ".logits.f32")
    let n = expected.images
    #expect(inputs.count == n * model.inputSize && kerasLogits.count == n * expected.classes)
    let run = try Self.forward(model, inputs, batch: n)
    let logits = try #require(run.logits)
    let agreement = Agreement(flip: logits, keras: kerasLogits, classes: expected.classes)
    let flips = try Self.signFlips(
      model, run, expected, signs: Data(contentsOf: URL(fileURLWithPath: base + ".signs.u8")))
    print("\(name): \(agreement)")
    print("\(name): binary inputs of another sign than Keras's, per layer: \(flips.joined(separator: ", "))")
    #expect(agreement.top1Equal == n, "top-1 differs on \(n - agreement.top1Equal) of \(n) inputs")
    #expect(agreement.fractionWithin >= 0.99, "\(agreement)")
  }

  /// One forward pass in inference mode, keeping what the comparison needs: the input of
  /// each layer with an input quantizer, and the output of the last Dense/QuantDense layer
  /// (before the softmax).
  struct Run {
    var quantizedInputs: [(layer: Int, values: [Float])] = []
    var logits: [Float]?
  }

  static func forward(_ model: Model, _ inputs: [Float], batch: Int) throws -> Run {
    model.allocate(maxBatch: batch)
    let logitsLayer = model.layers.lastIndex { $0 is QuantDense }
    var outputs: [UnsafePointer<Float>] = []
    var run = Run()
    try inputs.withUnsafeBufferPointer { x in
      for (i, layer) in model.layers.enumerated() {
        let sources = model.inputsOf[i].map { $0 < 0 ? x.baseAddress! : outputs[$0] }
        if inputQuantizer(layer) != nil {
          run.quantizedInputs.append((i, copyOut(sources[0], batch * layer.inputSize)))
        }
        if let merge = layer as? MergeLayer {
          outputs.append(try merge.forward(sources, batch: batch, training: false))
        } else {
          outputs.append(try layer.forward(sources[0], batch: batch, training: false))
        }
        if i == logitsLayer { run.logits = copyOut(outputs[i], batch * layer.outputSize) }
      }
    }
    return run
  }

  static func inputQuantizer(_ layer: Layer) -> Quantizer? {
    switch layer {
    case let l as QuantConv2D: return l.inputQuantizer
    case let l as QuantDense: return l.inputQuantizer
    case let l as QuantDepthwiseConv2D: return l.inputQuantizer
    default: return nil
    }
  }

  /// Per binarized layer: "name: k of n" inputs whose sign (x ≥ 0) differs from Keras's.
  static func signFlips(_ model: Model, _ run: Run, _ expected: Expected, signs: Data) throws -> [String] {
    try #require(
      run.quantizedInputs.count == expected.quantized_layers.count,
      "Flip has \(run.quantizedInputs.count) layers with an input quantizer, Keras \(expected.quantized_layers.count)")
    let bytes = [UInt8](signs)
    return zip(run.quantizedInputs, expected.quantized_layers).map { flip, keras in
      guard flip.values.count == keras.count else {
        Issue.record(
          "\(model.layers[flip.layer].name): \(flip.values.count) inputs, Keras's \(keras.name) \(keras.count)")
        return "\(model.layers[flip.layer].name): size differs"
      }
      var differ = 0
      for (j, v) in flip.values.enumerated() {
        let kerasPositive = bytes[keras.offset + j / 8] >> (j % 8) & 1 == 1
        if (v >= 0) != kerasPositive { differ += 1 }
      }
      return "\(model.layers[flip.layer].name) \(differ) of \(keras.count)"
    }
  }

  static func floats(_ path: String) throws -> [Float] {
    let data = try Data(contentsOf: URL(fileURLWithPath: path))
    return data.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
  }
}

/// How close Flip's pre-softmax outputs are to Keras's.
struct Agreement: CustomStringConvertible {
  var entries = 0
  var within = 0
  var maxRelative: Float = 0
  var top1Equal = 0
  var images = 0
  static let tolerance: Float = 1e-4

  init(flip: [Float], keras: [Float], classes: Int) {
    entries = keras.count
    images = keras.count / classes
    for (a, b) in zip(flip, keras) {
      let relative = abs(a - b) / abs(b)
      if relative <= Self.tolerance { within += 1 }
      maxRelative = max(maxRelative, relative.isNaN ? .infinity : relative)
    }
    for i in 0..<images {
      let row = { (x: [Float]) in x[(i * classes)..<((i + 1) * classes)] }
      if row(flip).indices.max(by: { flip[$0] < flip[$1] }) == row(keras).indices.max(by: { keras[$0] < keras[$1] }) {
        top1Equal += 1
      }
    }
  }

  var fractionWithin: Double { Double(within) / Double(max(entries, 1)) }

  var description: String {
    String(
      format:
        "top-1 equal on %d of %d inputs; pre-softmax outputs within 1e-4 relative: %d of %d (%.3f %%), max relative error %.3g",
      top1Equal, images, within, entries, 100 * fractionWithin, maxRelative)
  }
}
