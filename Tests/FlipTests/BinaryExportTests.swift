import FlipBNN
import Foundation
import Testing

@testable import FlipTraining

// Binary export: bit packing by hand, layouts, loading exports back, corrupt exports.

/// A one-layer model `[in] → QuantDense(units)` without bias, its kernel set to `kernel`.
private func denseModel(in inputs: Int, units: Int, quantizer: String, kernel: [Float]? = nil) throws -> Model {
  var s = LayerSpec(.quantDense)
  s.units = units
  s.kernelQuantizer = QuantizerSpec(quantizer)
  s.useBias = false
  let model = try Model(specs: [s], inputShape: [inputs], seed: 3)
  if let kernel { setKernel(model, layer: 0, kernel) }
  return model
}

private func setKernel(_ model: Model, layer: Int, _ values: [Float]) {
  let v = model.store.views(ofLayer: layer).first { $0.role == .kernel }!
  precondition(v.count == values.count)
  values.withUnsafeBufferPointer { model.store.pointer(v).update(from: $0.baseAddress!, count: v.count) }
}

private func loadError(_ tensors: [String: SafeTensors.Tensor], _ metadata: [String: String], into model: Model)
  -> String
{
  do {
    try ModelFile.load(tensors, into: model, path: "export.safetensors", metadata: metadata)
    return "no error"
  } catch { return "\(error)" }
}

@Suite("binary export")
struct BinaryExportTests {
  /// Dense [35, 2]: output 0 is negative at inputs 0, 3, 31, 32, 34 and zero at 5 (sign(0) = +1);
  /// output 1 is negative everywhere. Latent magnitudes vary, only the signs count.
  static func denseKernel() -> [Float] {
    var w = [Float](repeating: 0, count: 35 * 2)
    for i in 0..<35 {
      w[i * 2] = [0, 3, 31, 32, 34].contains(i) ? -0.25 * Float(i % 3 + 1) : (i == 5 ? 0 : 0.5)
      w[i * 2 + 1] = -0.75
    }
    return w
  }

  @Test func packsADenseKernelByHand() throws {
    let model = try denseModel(in: 35, units: 2, quantizer: "ste_sign", kernel: Self.denseKernel())
    let (tensors, metadata) = try BinaryExport.export(model: model, metadata: ["model": "m"])
    let t = try #require(tensors["layers.0.quant_dense.kernel"])
    #expect(t.dtype == .u32)
    #expect(t.shape == [2, 2])
    // Row 0: bits 0, 3, 31 | bits 32−32, 34−32; row 1: all 35 bits, padding 0.
    #expect(t.words == [0x8000_0009, 0x0000_0005, 0xFFFF_FFFF, 0x0000_0007])
    #expect(metadata["model"] == "m")
    let entries = try BinaryExport.packedKernels(in: metadata, path: "x")
    #expect(
      entries == [
        "layers.0.quant_dense.kernel": .init(kerasShape: [35, 2], axisLength: 35, quantizer: "ste_sign")
      ])
    #expect(metadata[BinaryExport.binaryKernelsKey]!.contains("\"axis_length\":35"))
    // Unpacking gives the signs back, in Keras's layout.
    let back = try BinaryExport.unpack(t, kerasShape: [35, 2], name: "k", path: "x")
    #expect(back == Self.denseKernel().map { $0 >= 0 ? 1 : -1 })
  }

  @Test func packsConv2DKernelsOutputChannelFirst() throws {
    var s = LayerSpec(.quantConv2D)
    s.filters = 2
    s.kernelSize = [2, 2]
    s.kernelQuantizer = QuantizerSpec("approx_sign")
    s.useBias = false
    let model = try Model(specs: [s], inputShape: [4, 4, 3], seed: 0)
    // Keras [kh, kw, cin, cout] = [2, 2, 3, 2]; negative at (y, x, c, o):
    let negative: Set<[Int]> = [
      [0, 0, 1, 0], [1, 1, 0, 0], [1, 1, 2, 0], [0, 1, 0, 1], [0, 1, 1, 1], [0, 1, 2, 1], [1, 0, 2, 1],
    ]
    var w = [Float](repeating: 0.5, count: 24)
    for y in 0..<2 {
      for x in 0..<2 {
        for c in 0..<3 {
          for o in 0..<2 where negative.contains([y, x, c, o]) { w[((y * 2 + x) * 3 + c) * 2 + o] = -0.5 }
        }
      }
    }
    setKernel(model, layer: 0, w)
    let (tensors, metadata) = try BinaryExport.export(model: model, metadata: [:])
    let t = try #require(tensors["layers.0.quant_conv2d.kernel"])
    // OHWI: [cout, kh, kw, ⌈cin/32⌉]; word (o, y, x) holds bit c.
    #expect(t.shape == [2, 2, 2, 1])
    #expect(t.words == [0b010, 0, 0, 0b101, 0, 0b111, 0b100, 0])
    #expect(
      try BinaryExport.packedKernels(in: metadata, path: "x")["layers.0.quant_conv2d.kernel"]
        == .init(kerasShape: [2, 2, 3, 2], axisLength: 3, quantizer: "approx_sign"))
  }

  @Test func otherQuantizersExportQuantizedFloatsAndScales() throws {
    // Dense [3, 2] = [[0.5, −1], [−0.25, 2], [0.75, 0]].
    let kernel: [Float] = [0.5, -1, -0.25, 2, 0.75, 0]
    let mas = try denseModel(in: 3, units: 2, quantizer: "magnitude_aware_sign", kernel: kernel)
    let (a, am) = try BinaryExport.export(model: mas, metadata: [:])
    // Scales: mean |w| per output channel = (0.5 + 0.25 + 0.75)/3 = 0.5 and (1 + 2 + 0)/3 = 1.
    #expect(a["layers.0.quant_dense.kernel"] == SafeTensors.Tensor(shape: [3, 2], values: [0.5, -1, -0.5, 1, 0.5, 1]))
    let scales = try JSONDecoder().decode([String: [Float]].self, from: Data(am[BinaryExport.kernelScalesKey]!.utf8))
    #expect(scales == ["layers.0.quant_dense.kernel": [0.5, 1]])
    #expect(am[BinaryExport.quantizedKernelsKey] == #"{"layers.0.quant_dense.kernel":"magnitude_aware_sign"}"#)
    #expect(am[BinaryExport.binaryKernelsKey] == "{}")
    let tern = try denseModel(in: 3, units: 2, quantizer: "ste_tern", kernel: [0.5, -1, -0.25, 0.04, 0.75, -0.05])
    let (b, bm) = try BinaryExport.export(model: tern, metadata: [:])
    #expect(b["layers.0.quant_dense.kernel"]?.values == [1, -1, -1, 0, 1, -1])
    #expect(bm[BinaryExport.kernelScalesKey] == nil)
    // dorefa weights, q = 2·round(n·u)/n − 1 with u = tanh(x)/(2·tanh 1) + 1/2: 2 bits map their
    // levels {−1, −1/3, 1/3, 1} to themselves; 4 bits do not (q(0.6): 15u = 12.79 → 11/15, but
    // q(11/15): 15u = 13.66 → 13/15), so a 4-bit kernel keeps its latent weights.
    func dorefa(_ bits: Double) throws -> Model {
      var s = LayerSpec(.quantDense)
      s.units = 2
      s.kernelQuantizer = QuantizerSpec("dorefa_quantizer", parameters: ["k_bit": bits], mode: "weights")
      let m = try Model(specs: [s], inputShape: [3], seed: 0)
      setKernel(m, layer: 0, [1, -1, 0.8, 0.1, -0.3, 0.6])
      return m
    }
    let (d2, d2m) = try BinaryExport.export(model: try dorefa(2), metadata: [:])
    #expect(allClose(d2["layers.0.quant_dense.kernel"]!.values, [1, -1, 1, 1.0 / 3, -1.0 / 3, 1], tol: 1e-6))
    #expect(d2m[BinaryExport.latentKernelsKey] == nil)
    let (d4, d4m) = try BinaryExport.export(model: try dorefa(4), metadata: [:])
    #expect(d4["layers.0.quant_dense.kernel"]?.values == [1, -1, 0.8, 0.1, -0.3, 0.6])
    #expect(d4m[BinaryExport.latentKernelsKey] == #"{"layers.0.quant_dense.kernel":"dorefa_quantizer"}"#)
    #expect(d4m[BinaryExport.quantizedKernelsKey] == nil)
    // No quantizer: the latent kernel as it is.
    var plain = LayerSpec(.dense)
    plain.units = 2
    let dense = try Model(specs: [plain], inputShape: [3], seed: 0)
    setKernel(dense, layer: 0, kernel)
    let (c, _) = try BinaryExport.export(model: dense, metadata: [:])
    #expect(c["layers.0.dense.kernel"]?.values == kernel)
    #expect(c["layers.0.dense.bias"]?.values == [0, 0])
  }

  /// A small CNN with every kind of kernel: packed sign kernels, F32 quantized ones, a bias.
  static let mixedSpecs: [LayerSpec] = {
    func conv(_ f: Int, _ input: String?, _ kernel: String) -> LayerSpec {
      var s = LayerSpec(.quantConv2D)
      s.filters = f
      s.kernelSize = [3, 3]
      s.padding = .same
      s.inputQuantizer = input.map { QuantizerSpec($0) }
      s.kernelQuantizer = QuantizerSpec(kernel)
      s.kernelConstraint = .weightClip(clipValue: 1)
      return s
    }
    func dense(_ u: Int, _ input: String?, _ kernel: String, bias: Bool) -> LayerSpec {
      var s = LayerSpec(.quantDense)
      s.units = u
      s.inputQuantizer = input.map { QuantizerSpec($0) }
      s.kernelQuantizer = QuantizerSpec(kernel)
      s.useBias = bias
      return s
    }
    var bn = LayerSpec(.batchNormalization)
    bn.momentum = 0.9
    var softmax = LayerSpec(.activation)
    softmax.activation = .softmax
    var dorefa4 = dense(5, "ste_sign", "dorefa_quantizer", bias: false)
    dorefa4.kernelQuantizer = QuantizerSpec("dorefa_quantizer", parameters: ["k_bit": 4], mode: "weights")
    return [
      conv(8, nil, "ste_sign"), bn, conv(40, "ste_sign", "swish_sign"), bn, LayerSpec(.flatten),
      dense(35, "ste_sign", "approx_sign", bias: false), bn, dense(6, "ste_sign", "magnitude_aware_sign", bias: true),
      dorefa4, dense(3, "ste_sign", "ste_tern", bias: true), bn, softmax,
    ]
  }()

  @Test func aLoadedExportGivesTheSameOutputs() throws {
    let original = try Model(specs: Self.mixedSpecs, inputShape: [5, 5, 2], seed: 11)
    // Non-trivial BatchNorm statistics and biases.
    for v in original.store.stateViews + original.store.views where v.role != .kernel {
      let p = original.store.pointer(v)
      for i in 0..<v.count { p[i] = (v.role == .movingVariance ? 1 : 0) + 0.1 * Float(i % 5) + 0.05 }
    }
    let batch = 4
    let x = randomValues(batch * 50, seed: 5, in: -2...2)
    original.allocate(maxBatch: batch)
    let before = copyOut(try original.forward(x, batch: batch, training: false), batch * 3)
    let dir = temporaryDirectory()
    let path = dir + "/model-binary.safetensors"
    let (tensors, metadata) = try BinaryExport.export(model: original, metadata: ["model": "mixed"])
    try ModelFile.write(tensors, metadata: metadata, kind: .binaryExport, to: path)
    let (read, readMetadata) = try ModelFile.read(path: path)
    #expect(ModelFile.kind(readMetadata) == .binaryExport)
    #expect(read.values.filter { $0.dtype == .u32 }.count == 3)
    #expect(
      readMetadata[BinaryExport.quantizedKernelsKey]
        == #"{"layers.7.quant_dense_1.kernel":"magnitude_aware_sign","layers.9.quant_dense_3.kernel":"ste_tern"}"#)
    #expect(readMetadata[BinaryExport.latentKernelsKey] == #"{"layers.8.quant_dense_2.kernel":"dorefa_quantizer"}"#)
    let fresh = try Model(specs: Self.mixedSpecs, inputShape: [5, 5, 2], seed: 99)
    try ModelFile.load(read, into: fresh, path: path, metadata: readMetadata)
    fresh.allocate(maxBatch: batch)
    let after = copyOut(try fresh.forward(x, batch: batch, training: false), batch * 3)
    #expect(after == before)
    // The loaded sign kernels are the ±1 weights themselves.
    let k = fresh.store.views.first { $0.name == "layers.2.quant_conv2d_1.kernel" }!
    #expect(copyOut(fresh.store.pointer(k), k.count).allSatisfy { $0 == 1 || $0 == -1 })
  }

  @Test func theExportOfBinaryNetIsAboutThirtyTimesSmaller() throws {
    let model = try Model(specs: ModelPreset.binarynetMLP.layers, inputShape: [28, 28, 1], seed: 0)
    func bytes(_ t: [String: SafeTensors.Tensor]) -> Int { t.values.reduce(0) { $0 + $1.count * 4 } }
    let full = ModelFile.tensors(of: model)
    let (packed, _) = try BinaryExport.export(model: model, metadata: [:])
    #expect(Set(packed.keys) == Set(full.keys))
    // Kernels 784·1024 + 2·1024² + 1024·10 floats, BatchNorm 3·(3·1024 + 10) floats.
    #expect(bytes(full) == (802_816 + 2_097_152 + 10_240 + 9_246) * 4)
    // Packed: 1024 rows of ⌈784/32⌉ = 25 words, 2·1024 rows of 32 words, 10 rows of 32 words.
    #expect(packed["layers.1.quant_dense.kernel"]?.shape == [1024, 25])
    #expect(bytes(packed) == (25_600 + 65_536 + 320 + 9_246) * 4)
    #expect(Double(bytes(full)) / Double(bytes(packed)) > 28.9)
  }

  @Test func corruptOrMismatchedExportsAreErrors() throws {
    let model = try denseModel(in: 35, units: 2, quantizer: "ste_sign", kernel: Self.denseKernel())
    let (tensors, metadata) = try BinaryExport.export(model: model, metadata: [:])
    let name = "layers.0.quant_dense.kernel"
    let target = try denseModel(in: 35, units: 2, quantizer: "ste_sign")
    #expect(loadError(tensors, metadata, into: target) == "no error")
    // Bit 37 of row 0 (input 37 ≥ 35) is padding.
    var padded = tensors
    padded[name]!.words[1] |= 1 << 5
    let e1 = loadError(padded, metadata, into: target)
    #expect(e1.contains("export.safetensors") && e1.contains("padding bits") && e1.contains(name))
    // A packed shape that does not fit the kernel.
    var short = tensors
    short[name] = SafeTensors.Tensor(shape: [2, 1], words: [0, 0])
    let e2 = loadError(short, metadata, into: target)
    #expect(e2.contains("[2, 1]") && e2.contains("packs to U32 [2, 2]"))
    // The same packed shape, but a model with 36 inputs: the true length tells them apart.
    let wider = try denseModel(in: 36, units: 2, quantizer: "ste_sign")
    let e3 = loadError(tensors, metadata, into: wider)
    #expect(e3.contains("unpacks to shape [35, 2]") && e3.contains("needs [36, 2]"))
    // A U32 tensor the metadata does not list.
    let e4 = loadError(tensors, [:], into: target)
    #expect(e4.contains("U32") && e4.contains("binary_kernels does not list it"))
    var bad = metadata
    bad[BinaryExport.binaryKernelsKey] = "[1, 2]"
    #expect(loadError(tensors, bad, into: target).contains("binary_kernels is not a JSON object"))
    // Nothing was copied by the failed loads.
    let k = target.store.views[0]
    #expect(copyOut(target.store.pointer(k), k.count) == Self.denseKernel().map { $0 >= 0 ? 1 : -1 })
  }
}
