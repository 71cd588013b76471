import FlipBNN
import FlipTensor
import Foundation
import Testing

@testable import FlipTraining

extension ModelPreset {
  /// The preset's layers and input shape for tests that build every preset: the small presets
  /// at 28×28×1, Larq Zoo's networks at 64×64×3 (their smallest sizes run slowly at 224).
  var testLayers: (layers: [LayerSpec], shape: [Int]) {
    let shape = isZoo ? [64, 64, 3] : [28, 28, 1]
    return (layers(inputShape: shape, classes: 10), shape)
  }
}

@Suite("Larq Zoo's networks")
struct ZooPresetTests {
  static let zoo = ModelPreset.allCases.filter(\.isZoo)

  /// Larq's summary of the Larq Zoo model (larq-zoo 2.4.0, TensorFlow 2.15.1, larq 0.14.0,
  /// `weights=None`), and zoo.py's totals line after it.
  static func reference(_ preset: ModelPreset) throws -> (summary: String, params: Int, trainable: Int) {
    let path = "\(ConfigTests.root)/Tests/FlipTests/Fixtures/zoo/\(preset.rawValue).txt"
    let text = try String(contentsOfFile: path, encoding: .utf8)
    var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
    while lines.last?.isEmpty == true { lines.removeLast() }
    let last = lines.popLast()
    let totals = try #require(last)
    let json = try #require(try JSONSerialization.jsonObject(with: Data(totals.utf8)) as? [String: Any])
    return (lines.joined(separator: "\n") + "\n", json["params"] as? Int ?? -1, json["trainable"] as? Int ?? -1)
  }

  @Test(arguments: zoo)
  func summaryEqualsLarqZoos(_ preset: ModelPreset) throws {
    #expect(preset.defaultInputShape == [224, 224, 3] && preset.defaultClasses == 1000)
    let model = try Model(specs: preset.layers, inputShape: preset.defaultInputShape, seed: 0)
    let summary = ModelSummary(modelName: preset.modelName, model: model)
    let want = try Self.reference(preset)
    let got = summary.render()
    let (g, w) = (got.split(separator: "\n"), want.summary.split(separator: "\n"))
    for (i, (a, b)) in zip(g, w).enumerated() where a != b {
      Issue.record("line \(i + 1):\n  flip: \(a)\n  larq: \(b)")
      break
    }
    #expect(got == want.summary)
    // Keras counts every variable (Larq's table leaves out BatchNorm's gamma and beta).
    #expect(model.store.parameterCount + model.store.state.count == want.params)
    #expect(model.store.parameterCount == want.trainable)
  }

  /// The same from the command line, and `--image-size` rebuilds the head for the size.
  @Test func summaryCommandTakesTheImageSize() throws {
    let full = try runFlip(["summary", "--model", "quicknet"])
    let want = try Self.reference(.quicknet).summary
    #expect(full.status == 0 && full.stdout == want, "\(full.stderr)")
    let small = try runFlip(["summary", "--model", "binary-resnet-e18", "--image-size", "32"])
    #expect(small.status == 0, "\(small.stderr)")
    // Below 50 pixels Larq Zoo's stem is one 3×3 convolution, and the pool covers the last 4×4 map.
    let rows = small.stdout.split(separator: "\n")
    let row = { (name: String) in rows.first { $0.hasPrefix("| \(name) ") }.map(String.init) ?? "" }
    #expect(row("conv2d").contains("(-1, 32, 32, 64)") && row("quant_conv2d").contains("(-1, 32, 32, 64)"))
    #expect(!small.stdout.contains("max_pooling2d"))
    #expect(row("average_pooling2d_3").contains("(-1, 1, 1, 512)"), "\(small.stdout)")
    let both = try runFlip(["summary", "--model", "quicknet", "--image-size", "64", "--input-shape", "64", "64", "3"])
    #expect(both.status != 0 && both.stderr.contains("not both"))
    let tiny = try runFlip(["summary", "--model", "quicknet", "--image-size", "16"])
    #expect(tiny.status != 0, "\(tiny.stdout)")
  }

  /// The layers follow the data: a preset run on 64×64 images with 5 classes pools the last
  /// 2×2 map and has 5 outputs; layers a config wrote out itself are kept as they are.
  @Test func presetLayersFollowTheData() throws {
    var settings = RunSettings(preset: .birealnet18)
    let r = try settings.resolved(trainSamples: 100, sampleShape: [64, 64, 3], classes: 5, streamed: true)
    let pool = try #require(r.layers.last { $0.kind == .averagePooling2D })
    #expect(pool.poolSize == [2, 2] && r.layers.last { $0.kind == .dense }?.units == 5)
    settings.layers[0].filters = 32
    let custom = try settings.resolved(trainSamples: 100, sampleShape: [224, 224, 3], classes: 5, streamed: true)
    #expect(custom.layers[0].filters == 32 && custom.layers.last { $0.kind == .dense }?.units == 5)
  }

  /// QuickNet's recipe: Adam for the binary kernels, SGD for the rest, 5 epochs of warm-up
  /// from 0, then a cosine to 0 over the remaining steps.
  @Test func quickNetRecipe() throws {
    let r = try RunSettings(preset: .quicknet).resolved(
      trainSamples: 2048 * 10, sampleShape: [64, 64, 3], classes: 10, streamed: true)
    guard case .caseOptimizer(let cases, let fallback?) = r.optimizer, case .adam(let adam, _, _, _) = cases[0].1,
      case .sgd(let sgd, let momentum, _) = fallback
    else {
      Issue.record("not Adam + SGD: \(r.optimizer)")
      return
    }
    #expect(cases[0].0 == .binary && momentum == .constant(0.9))
    let total = 600 * 10
    for (h, peak) in [(adam, 1e-2), (sgd, 0.1)] {
      #expect(h.schedule.value(at: 0) == 0)
      #expect(abs(h.schedule.value(at: 25) - peak / 2) < 1e-12)
      #expect(h.schedule.value(at: 50) == peak)
      #expect(abs(h.schedule.value(at: 50 + (total - 50) / 2) - peak / 2) < 1e-9)
      #expect(h.schedule.value(at: total) == 0)
    }
  }

  /// BinaryResNetE18's and BinaryDenseNet28's step decays fall at Larq Zoo's epochs.
  @Test func stepDecayRecipes() throws {
    for (preset, epochs, rates) in [
      (
        ModelPreset.binaryResNetE18, [0, 69, 70, 89, 90, 109, 110, 119],
        [4e-3, 4e-3, 1.2e-3, 1.2e-3, 3.6e-4, 3.6e-4, 1.08e-4, 1.08e-4]
      ),
      (.binaryDenseNet28, [0, 99, 100, 109, 110], [4e-3, 4e-3, 4e-4, 4e-4, 4e-5]),
    ] {
      guard case .adam(let lr, _, _, let epsilon)? = preset.optimizer else {
        Issue.record("\(preset): not Adam")
        continue
      }
      #expect(lr.unit == .epoch && epsilon == .constant(1e-8))
      for (e, want) in zip(epochs, rates) { #expect(abs(lr.schedule.value(at: e) - want) < 1e-15, "\(preset) \(e)") }
    }
  }
}

extension ZooPresetTests {
  /// The compact wire carries every binary kernel of Larq Zoo's networks as signs: ste_sign
  /// at clip 1.25 and 1.3 under weight_clip of the same value (QuickNet, BinaryResNetE18,
  /// BinaryDenseNet28), and Bi-Real Net's magnitude_aware_sign under weight_clip 1.
  @Test(arguments: zoo)
  func everyBinaryKernelTravelsAsSigns(_ preset: ModelPreset) throws {
    let (layers, shape) = preset.testLayers
    let model = try Model(specs: layers, inputShape: shape, seed: 0)
    let binary = model.layers.compactMap { $0 as? QuantConv2D }.filter { $0.kernelQuantizer != nil }
    #expect(!binary.isEmpty)
    #expect(model.signKernels.count == binary.count, "\(preset)")
    let clip: Float = preset == .birealnet18 ? 1 : preset == .binaryDenseNet28 ? 1.3 : 1.25
    for case .magnitude(let c) in model.signKernels.map(\.encoding) { #expect(c == clip) }
  }
}
