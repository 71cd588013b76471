import FlipBNN
import Foundation
import Testing

@testable import FlipTraining

// Initializing a binary model from its real-valued variant (Larq's two-step training).

@Suite("init from a model")
struct InitFromTests {
  /// Flatten → QuantDense(3, weight_clip 0.5, bias) → BatchNorm → QuantDense(2).
  static let specs: [LayerSpec] = {
    var d1 = LayerSpec(.quantDense)
    d1.units = 3
    d1.kernelQuantizer = QuantizerSpec("ste_sign")
    d1.kernelConstraint = .weightClip(clipValue: 0.5)
    var d2 = LayerSpec(.quantDense)
    d2.units = 2
    d2.inputQuantizer = QuantizerSpec("ste_sign")
    d2.kernelQuantizer = QuantizerSpec("ste_sign")
    d2.useBias = false
    return [LayerSpec(.flatten), d1, LayerSpec(.batchNormalization), d2]
  }()

  static func set(_ model: Model, _ name: String, _ values: [Float]) {
    let v = (model.store.views + model.store.stateViews).first { $0.name == name }!
    values.withUnsafeBufferPointer { model.store.pointer(v).update(from: $0.baseAddress!, count: v.count) }
  }

  static func get(_ model: Model, _ name: String) -> [Float] {
    let v = (model.store.views + model.store.stateViews).first { $0.name == name }!
    return copyOut(model.store.pointer(v), v.count)
  }

  func initError(_ tensors: [String: SafeTensors.Tensor], into model: Model) -> String {
    do {
      try initialize(model, from: tensors, path: "real.safetensors")
      return "no error"
    } catch { return "\(error)" }
  }

  @Test func copiesEveryTensorAndClipsKernels() throws {
    let real = try Model(specs: Self.specs.realValued(), inputShape: [2, 1], seed: 1)
    Self.set(real, "layers.1.quant_dense.kernel", [0.2, -0.7, 0.5, 1.5, -0.5, -0.49])
    Self.set(real, "layers.1.quant_dense.bias", [3, -4, 0.25])
    Self.set(real, "layers.2.batch_normalization.moving_mean", [0.1, 0.2, 0.3])
    Self.set(real, "layers.2.batch_normalization.moving_variance", [2, 3, 4])
    Self.set(real, "layers.3.quant_dense_1.kernel", [-1.25, 0.5, 0.75, -0.25, 2, 0])
    var tensors = ModelFile.tensors(of: real)
    tensors["optimizer.adam.m.layers.1.quant_dense.kernel"] = .init(shape: [1], values: [9])
    let binary = try Model(specs: Self.specs, inputShape: [2, 1], seed: 2)
    try initialize(binary, from: tensors, path: "real.safetensors")
    // weight_clip(0.5) on the first kernel; the second has no constraint.
    #expect(Self.get(binary, "layers.1.quant_dense.kernel") == [0.2, -0.5, 0.5, 0.5, -0.5, -0.49])
    #expect(Self.get(binary, "layers.3.quant_dense_1.kernel") == [-1.25, 0.5, 0.75, -0.25, 2, 0])
    #expect(Self.get(binary, "layers.1.quant_dense.bias") == [3, -4, 0.25])
    #expect(Self.get(binary, "layers.2.batch_normalization.moving_mean") == [0.1, 0.2, 0.3])
    #expect(Self.get(binary, "layers.2.batch_normalization.moving_variance") == [2, 3, 4])
    #expect(Self.get(binary, "layers.2.batch_normalization.gamma") == [1, 1, 1])
  }

  @Test func missingAndExtraTensorsAreOneError() throws {
    let binary = try Model(specs: Self.specs, inputShape: [2, 1], seed: 2)
    let before = binary.store.values.array
    var tensors = ModelFile.tensors(of: try Model(specs: Self.specs, inputShape: [2, 1], seed: 5))
    tensors["layers.1.quant_dense.bias"] = nil
    tensors["layers.2.batch_normalization.moving_variance"] = nil
    tensors["layers.4.dense.kernel"] = .init(shape: [2, 2], values: [1, 2, 3, 4])
    let e = initError(tensors, into: binary)
    #expect(e.hasPrefix("real.safetensors: "))
    #expect(
      e.contains(
        "missing tensors: layers.1.quant_dense.bias, layers.2.batch_normalization.moving_variance; unexpected tensors: layers.4.dense.kernel"
      ))
    #expect(binary.store.values.array == before)
  }

  @Test func shapeMismatchesNameTheTensorAndBothShapes() throws {
    let binary = try Model(specs: Self.specs, inputShape: [2, 1], seed: 2)
    let before = binary.store.values.array
    var tensors = ModelFile.tensors(of: try Model(specs: Self.specs, inputShape: [2, 1], seed: 5))
    tensors["layers.1.quant_dense.kernel"] = .init(shape: [3, 2], values: [1, 2, 3, 4, 5, 6])
    let e = initError(tensors, into: binary)
    #expect(
      e.contains("real.safetensors")
        && e.contains("layers.1.quant_dense.kernel has shape [3, 2], the model needs [2, 3]"))
    #expect(binary.store.values.array == before)
  }

  @Test func aBinaryExportInitializesWithItsSigns() throws {
    let source = try Model(specs: Self.specs, inputShape: [2, 1], seed: 1)
    Self.set(source, "layers.3.quant_dense_1.kernel", [-1.25, 0.5, 0.75, -0.25, 2, 0])
    let (tensors, _) = try BinaryExport.export(model: source, metadata: [:])
    #expect(tensors["layers.3.quant_dense_1.kernel"]?.dtype == .u32)
    let target = try Model(specs: Self.specs, inputShape: [2, 1], seed: 2)
    try initialize(target, from: tensors, path: "binary.safetensors")
    #expect(Self.get(target, "layers.3.quant_dense_1.kernel") == [-1, 1, 1, -1, 1, 1])
    // ±1 kernels are clipped to weight_clip(0.5) like any other.
    #expect(Self.get(target, "layers.1.quant_dense.kernel").allSatisfy { $0 == 0.5 || $0 == -0.5 })
  }
}

/// `flip train --real-valued` then `--init-from`: Larq's two-step training through the CLI.
@Suite("init-from on the command line", .serialized)
struct InitFromCLITests {
  @Test func realValuedPretrainingThenBinaryRun() throws {
    let dir = try ResumeTests.setUp()
    let common = ["train", "--data", dir, "--epochs", "1", "--batch-size", "32", "--threads", "1", "--quiet"]
    let real = try runFlip(common + ["--config", CLITestsConfig.path(dir), "--real-valued", "--out", dir + "/real"])
    #expect(real.status == 0, "\(real.stderr)")
    let yaml = try String(contentsOfFile: dir + "/real/config.yaml", encoding: .utf8)
    #expect(yaml.contains("hard_tanh") && !yaml.contains("ste_sign"))
    #expect(yaml.contains("model: tiny-real"))
    let binary = try runFlip(
      common + [
        "--config", CLITestsConfig.path(dir), "--init-from", dir + "/real/model.safetensors", "--out", dir + "/bnn",
      ])
    #expect(binary.status == 0, "\(binary.stderr)")
    #expect(binary.stderr.contains("initialized from \(dir)/real/model.safetensors (tiny-real"), "\(binary.stderr)")
    // A model of another architecture: one error listing what does not match.
    let other = try runFlip(
      common + ["--config", dir + "/m.yaml", "--init-from", dir + "/real/model.safetensors", "--out", dir + "/other"])
    #expect(other.status != 0)
    #expect(other.stderr.contains("does not match the model"), "\(other.stderr)")
    let resumeConflict = try runFlip([
      "train", "--resume", dir + "/bnn", "--init-from", dir + "/real/model.safetensors",
    ])
    #expect(resumeConflict.stderr.contains("--init-from cannot be given with --resume"), "\(resumeConflict.stderr)")
  }
}

/// The CLI tests' tiny BatchNorm model written into a directory.
enum CLITestsConfig {
  static func path(_ dir: String) throws -> String {
    let path = dir + "/tiny.yaml"
    try CLITests.tinyModel.write(toFile: path, atomically: true, encoding: .utf8)
    return path
  }
}
