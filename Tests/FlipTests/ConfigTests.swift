import FlipBNN
import Foundation
import FlipTraining
import Testing

@testable import FlipCLI

@Suite("Run configs")
struct ConfigTests {
  /// The package root, found from this file.
  static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().path

  @Test(arguments: ModelPreset.allCases)
  func presetFilesMatchThePresets(_ preset: ModelPreset) throws {
    let c = try RunSettings.load(path: "\(Self.root)/configs/\(preset.rawValue).yaml")
    #expect(c.layers == preset.layers)
    let settings = RunSettings(preset: preset)
    #expect(c.optimizer == settings.optimizer)
    #expect(c.epochs == (preset.epochs ?? 10) && c.batchSize == preset.batchSize && c.seed == 0)
    #expect(c.warmupEpochs == preset.warmupEpochs)
    #expect(c.backwardPrecision == settings.backwardPrecision)
    #expect(settings.backwardPrecision == (preset.isZoo ? .winograd : .fp32))
  }

  @Test func effectiveConfigRoundTrips() throws {
    for file in ["binarynet-mlp", "larq-cnn", "bop-mlp"] {
      let c = try RunSettings.load(path: "\(Self.root)/configs/\(file).yaml")
      let again = try RunSettings.parse(yaml: try c.yaml(), file: "round-trip")
      #expect(again == c)
    }
  }

  @Test func parsesQuantizersSchedulesAndOptimizers() throws {
    let text = """
      layers:
        - {type: QuantConv2D, filters: 4, kernel_size: [3, 3], strides: 2, padding: same, pad_values: 1.0,
           input_quantizer: {type: ste_sign, clip_value: null}, kernel_quantizer: {type: dorefa_quantizer, k_bit: 2, mode: weights}}
        - {type: Flatten}
        - {type: QuantDense, units: 3, kernel_quantizer: {type: ste_tern, threshold_value: 0.1, ternary_weight_networks: true}}
        - {type: Dropout, rate: 0.2}
      optimizer:
        type: adam
        learning_rate: {schedule: linear_warmup, warmup_steps: 10, then: {schedule: cosine_decay, initial: 1e-3, decay_steps: 100}}
        beta_1: {schedule: constant, value: 0.8, unit: epoch}
      epochs: 3
      batch_size: 64
      """
    let c = try RunSettings.parse(yaml: text, file: "t.yaml")
    #expect(c.layers[0].strides == [2, 2])
    #expect(c.layers[0].padding == .same)
    #expect(c.layers[0].padValues == 1)
    #expect(c.layers[0].inputQuantizer?.parameters["clip_value"]?.isNaN == true)
    #expect(c.layers[0].kernelQuantizer == QuantizerSpec("dorefa_quantizer", parameters: ["k_bit": 2], mode: "weights"))
    #expect(c.layers[2].kernelQuantizer?.parameters["ternary_weight_networks"] == 1)
    guard case .adam(let lr, let b1, _, _) = c.optimizer else {
      Issue.record("not adam")
      return
    }
    #expect(
      lr.schedule == .linearWarmup(warmup: 10, start: 0, then: .cosineDecay(initial: 1e-3, decaySteps: 100, alpha: 0)))
    #expect(b1.unit == .epoch)
    let model = try Model(specs: c.layers, inputShape: [8, 8, 1], seed: 0)
    #expect(model.outputShape == [3])
  }

  func parseError(_ text: String) -> String {
    do {
      _ = try RunSettings.parse(yaml: text, file: "bad.yaml")
      return "no error"
    } catch { return "\(error)" }
  }

  @Test func badConfigsSayWhatIsWrong() {
    #expect(parseError("model: resnet").contains("unknown preset 'resnet'"))
    #expect(parseError("layers: [{type: Dense2}]").contains("unknown layer type 'Dense2'"))
    #expect(parseError("layers: [{type: QuantDense, unit: 3}]").contains("layers[0].unit"))
    #expect(parseError("layers: [{type: QuantDense, units: many}]").contains("expected an integer"))
    #expect(
      parseError("layers: [{type: QuantDense, units: 3, kernel_quantizer: ste_sine}]").contains(
        "unknown quantizer 'ste_sine'"))
    #expect(
      parseError("layers: [{type: QuantDense, units: 3, kernel_constraint: clip}]").contains(
        "unknown kernel constraint"))
    #expect(parseError("model: larq-cnn\noptimizer: {type: adamw}").contains("unknown optimizer 'adamw'"))
    #expect(parseError("model: larq-cnn\nbatchsize: 5").contains("unknown key 'batchsize'"))
    #expect(
      parseError("model: larq-cnn\noptimizer: {type: adam, learning_rate: {schedule: cosine_decay, initial: 1}}")
        .contains("decay_steps"))
    #expect(parseError("model: [").contains("not valid YAML"))
    #expect(parseError("epochs: 3").contains("names no model"))
  }

  @Test func shapesThatDoNotFitAreErrors() throws {
    let c = try RunSettings.parse(yaml: "layers: [{type: QuantDense, units: 3}]", file: "t")
    do {
      _ = try Model(specs: c.layers, inputShape: [4, 4, 1], seed: 0)
      Issue.record("expected an error")
    } catch { #expect("\(error)".contains("Flatten")) }
    let d = try RunSettings.parse(yaml: "layers: [{type: QuantConv2D, filters: 2, kernel_size: 5}]", file: "t")
    do {
      _ = try Model(specs: d.layers, inputShape: [3, 3, 1], seed: 0)
      Issue.record("expected an error")
    } catch { #expect("\(error)".contains("does not fit")) }
  }
}
