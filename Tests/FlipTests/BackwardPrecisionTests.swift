import FlipComm
import FlipTensor
import Foundation
import Testing

@testable import FlipBNN
@testable import FlipTraining

/// `backward_precision: bf16`: the convolutions' backward passes on bfloat16 operands.
@Suite("bf16 backward convolutions")
struct BackwardPrecisionTests {
  /// One forward and backward of `layer` in `precision`; the input gradient and the kernel's
  /// gradient (the bias's is summed from the fp32 dy in both precisions).
  static func backward(
    _ make: () throws -> QuantConv2D, precision: BackwardPrecision, x: [Float], dy: [Float], batch: Int,
    roundLatents: Bool = false
  ) throws -> (dx: [Float], gradients: [Float]) {
    let layer = try make()
    layer.backwardPrecision = precision
    let store = bindStandalone(layer, seed: 4)
    if roundLatents { roundToBFloat16(layer.kernel.latent, count: layer.kernel.count) }
    layer.allocate(maxBatch: batch)
    _ = try layer.forward(x, batch: batch, training: true)
    let dx = copyOut(try layer.backward(dy, batch: batch, needInputGradient: true)!, x.count)
    return (dx, Array(store.gradients.array.prefix(layer.kernel.count)))
  }

  static func rounded(_ values: [Float]) -> [Float] {
    var r = values
    roundToBFloat16(&r, count: r.count)
    return r
  }

  /// The largest difference relative to the largest magnitude of `b`.
  static func relativeDifference(_ a: [Float], _ b: [Float]) -> Float {
    maxDifference(a, b) / max(b.map(abs).max() ?? 0, .leastNormalMagnitude)
  }

  /// The bf16 backward equals the fp32 backward of operands rounded to bfloat16 (to nearest,
  /// ties to even) up to the order of fp32 sums, and differs from the fp32 backward of the
  /// unrounded dy: a binary convolution (±1 input and kernel, exact in bf16) with stride 2, and
  /// a real-valued one (bias, ReLU inside) whose input and weights are bf16 values already.
  @Test(
    .enabled(if: ConvolutionPrimitives.bf16BackwardIsAvailable, "needs oneDNN's bf16 convolutions (AVX512_BF16, AMX)"))
  func bf16BackwardIsTheFP32BackwardOfRoundedOperands() throws {
    let shape = [11, 10, 16]
    let cases: [(String, () throws -> QuantConv2D, Bool)] = [
      (
        "binary, stride 2",
        {
          try QuantConv2D(
            filters: 32, kernelSize: (3, 3), strides: (2, 2), padding: .same, inputShape: shape,
            inputQuantizer: SteSign(), kernelQuantizer: SteSign(), useBias: false)
        }, false
      ),
      (
        "real, bias, relu",
        {
          try QuantConv2D(
            filters: 24, kernelSize: (3, 3), padding: .same, inputShape: shape, useBias: true, activation: .relu)
        }, true
      ),
    ]
    let batch = 3
    let x = Self.rounded(randomValues(batch * 11 * 10 * 16, seed: 1))
    for (label, make, roundLatents) in cases {
      let outputs = try make().outputSize * batch
      let dy = randomValues(outputs, seed: 2, in: -3...3)
      let bf16 = try Self.backward(make, precision: .bf16, x: x, dy: dy, batch: batch, roundLatents: roundLatents)
      let ofRounded = try Self.backward(
        make, precision: .fp32, x: x, dy: Self.rounded(dy), batch: batch, roundLatents: roundLatents)
      let fp32 = try Self.backward(make, precision: .fp32, x: x, dy: dy, batch: batch, roundLatents: roundLatents)
      for (name, a, b, c) in [
        ("input gradient", bf16.dx, ofRounded.dx, fp32.dx),
        ("kernel gradient", bf16.gradients, ofRounded.gradients, fp32.gradients),
      ] {
        #expect(Self.relativeDifference(a, b) < 1e-5, "\(label), \(name): \(Self.relativeDifference(a, b))")
        let off = Self.relativeDifference(a, c)
        #expect(off > 1e-5 && off < 0x1p-7, "\(label), \(name): bf16 vs fp32 \(off)")
      }
    }
  }

  /// The self-test's references accept the bf16 backward of Bi-Real Net's and QuickNet's
  /// layers (magnitude_aware_sign, approx_sign, pad value 1, ReLU inside, the real stem) within
  /// `bf16Tolerance`, and name oneDNN's bf16 implementations.
  @Test(
    .enabled(if: ConvolutionPrimitives.bf16BackwardIsAvailable, "needs oneDNN's bf16 convolutions (AVX512_BF16, AMX)"),
    arguments: [ModelPreset.birealnet18, .quicknet])
  func selfTestAcceptsTheBF16Backward(preset: ModelPreset) throws {
    let (layers, shape) = preset.testLayers
    let checks = try KernelSelfTest.run(specs: layers, inputShape: shape, batch: 2, backwardPrecision: .bf16)
    for c in checks where !c.passed { Issue.record("\(c.kernel) of \(c.layer) (\(c.implementation)): \(c.maxError)") }
    let backward = checks.filter { $0.kernel.hasPrefix("backward") && $0.layer.contains("conv2d") }
    #expect(!backward.isEmpty)
    for c in backward {
      #expect(c.tolerance == KernelSelfTest.bf16Tolerance && c.implementation.contains("bf16"), "\(c.layer): \(c)")
    }
  }

  /// The bf16 backward needs room for bf16 copies of x and dy: the model's shared scratch grows
  /// when it is switched on after allocation (here from none: a real-valued convolution needs
  /// no scratch in fp32), and a training step runs.
  @Test(
    .enabled(if: ConvolutionPrimitives.bf16BackwardIsAvailable, "needs oneDNN's bf16 convolutions (AVX512_BF16, AMX)"))
  func switchingAnAllocatedModelGrowsItsScratch() throws {
    let yaml = """
      layers:
        - {type: QuantConv2D, filters: 8, kernel_size: 3}
        - {type: Flatten}
        - {type: QuantDense, units: 10}
        - {type: Activation, activation: softmax}
      """
    let (layers, shape) = (try RunSettings.parse(yaml: yaml, file: "t.yaml").layers, [8, 8, 3])
    let model = try Model(specs: layers, inputShape: shape, seed: 1)
    model.allocate(maxBatch: 4)
    #expect(model.scratchBytes == 0)
    model.backwardPrecision = .bf16
    // x (4·8·8·3) and dy (4·6·6·8) as bf16: 1,536 + 2,304 bytes (both multiples of 64).
    #expect(model.scratchBytes == 2 * 4 * 8 * 8 * 3 + 2 * 4 * 6 * 6 * 8)
    let x = randomValues(4 * shape.reduce(1, *), seed: 3)
    _ = try model.forward(x, batch: 4, training: true)
    try model.backward(randomValues(4 * 10, seed: 4), batch: 4)
    #expect(model.store.gradients.array.allSatisfy { $0.isFinite })
  }

  /// `backward_precision` in a config and on the command line; a value it does not know is an
  /// error naming the accepted ones; a resumed run may change it.
  @Test func theSettingParsesAndIsResumable() throws {
    let s = try RunSettings.parse(yaml: "model: birealnet\nbackward_precision: bf16\n", file: "t.yaml")
    #expect(s.backwardPrecision == .bf16)
    #expect(try RunSettings.parse(yaml: "model: birealnet\n", file: "t.yaml").backwardPrecision == .fp32)
    #expect(RunSettings.resumableKeys.contains(.backwardPrecision))
    do {
      _ = try RunSettings.parse(yaml: "backward_precision: half\n", file: "t.yaml")
      Issue.record("half was accepted")
    } catch {
      #expect("\(error)".contains("backward_precision") && "\(error)".contains("bf16"), "\(error)")
    }
  }

  /// Where oneDNN has no bf16 convolutions (here: under an AVX2 cap, as on AMD EPYC Zen 3), or
  /// only emulates them (an AVX512_CORE cap, as on Skylake-SP: 2.2× slower than fp32), the run
  /// stops before its first step with an error that says so and what to use instead.
  @Test(arguments: ["AVX2", "AVX512_CORE"])
  func withoutBF16TheRunStopsWithAClearError(cap: String) throws {
    let r = try runFlip(
      ["bench", "--model", "larq-cnn", "--steps", "1", "--warmup", "0", "--backward-precision", "bf16"],
      environment: ["ONEDNN_MAX_CPU_ISA": cap])
    #expect(r.status != 0)
    #expect(
      r.stderr.contains("bf16 backward convolutions") && r.stderr.contains("backward_precision fp32"), "\(r.stderr)")
    let bad = try runFlip(["bench", "--model", "larq-cnn", "--backward-precision", "half"])
    #expect(bad.status != 0 && bad.stderr.contains("half"), "\(bad.stderr)")
  }
}
