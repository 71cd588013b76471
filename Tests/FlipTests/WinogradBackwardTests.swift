import FlipTensor
import Foundation
import Testing

@testable import FlipBNN

/// `backward_precision: winograd`: the 3×3 stride-1 convolutions' backward through oneDNN's
/// Winograd F(4×4, 3×3), where it has one (AVX-512).
@Suite("Winograd backward convolutions")
struct WinogradBackwardTests {
  /// On its layers (3×3, stride 1, channels and filters multiples of 16) on AVX-512, both
  /// backward convolutions run Winograd and stay within fp32's error: the input and kernel
  /// gradients within 1e-5 of the direct fp32 ones (relative to their largest magnitude), for a
  /// binary layer (whose blocked copy of x is quantized in place) and a real one with a bias and
  /// ReLU inside, at 15×13 (tiles cut by the border). A stride-2 layer, and every layer under an
  /// ISA without Winograd (CI's AVX2 leg), runs the direct fp32 backward: the same bits.
  @Test func winogradGradientsAreFP32Grade() throws {
    let shape = [15, 13, 32]
    let cases: [(String, () throws -> QuantConv2D)] = [
      (
        "binary",
        {
          try QuantConv2D(
            filters: 48, kernelSize: (3, 3), padding: .same, inputShape: shape, inputQuantizer: SteSign(),
            kernelQuantizer: SteSign(), useBias: false)
        }
      ),
      (
        "real, bias, relu",
        { try QuantConv2D(filters: 32, kernelSize: (3, 3), padding: .same, inputShape: shape, activation: .relu) }
      ),
      (
        "binary, stride 2",
        {
          try QuantConv2D(
            filters: 32, kernelSize: (3, 3), strides: (2, 2), padding: .same, inputShape: shape,
            inputQuantizer: SteSign(), kernelQuantizer: SteSign(), useBias: false)
        }
      ),
    ]
    let batch = 3
    let x = randomValues(batch * shape.reduce(1, *), seed: 1)
    for (label, make) in cases {
      let probe = try make()
      let dy = randomValues(probe.outputSize * batch, seed: 2, in: -3...3)
      let winograd = try BackwardPrecisionTests.backward(make, precision: .winograd, x: x, dy: dy, batch: batch)
      let fp32 = try BackwardPrecisionTests.backward(make, precision: .fp32, x: x, dy: dy, batch: batch)
      probe.backwardPrecision = .winograd
      probe.allocate(maxBatch: batch)
      let runs = try probe.primitives(batch: batch).runsWinograd
      let expected = ConvolutionPrimitives.winogradCandidate(geometry: probe.geometry, filters: probe.filters)
      #expect(runs == expected, "\(label): Winograd \(runs) on ISA \(OneDNN.effectiveISA)")
      #expect(expected == (OneDNN.effectiveISA.hasPrefix("avx512") && !label.contains("stride")), "\(label)")
      for (name, a, b) in [
        ("input gradient", winograd.dx, fp32.dx), ("kernel gradient", winograd.gradients, fp32.gradients),
      ] {
        if runs {
          let off = BackwardPrecisionTests.relativeDifference(a, b)
          #expect(off < 1e-5, "\(label), \(name): Winograd vs fp32 \(off)")
        } else {
          #expect(a == b, "\(label), \(name): not Winograd, yet not fp32's bits")
        }
      }
    }
  }

  /// The self-test's references accept the Winograd backward of Bi-Real Net's and QuickNet's
  /// layers within the fp32 tolerance, and (on AVX-512) name oneDNN's Winograd for their 3×3
  /// stride-1 binary convolutions.
  @Test(arguments: [ModelPreset.birealnet18, .quicknet])
  func selfTestAcceptsTheWinogradBackward(preset: ModelPreset) throws {
    let (layers, shape) = preset.testLayers
    let checks = try KernelSelfTest.run(specs: layers, inputShape: shape, batch: 2, backwardPrecision: .winograd)
    for c in checks where !c.passed { Issue.record("\(c.kernel) of \(c.layer) (\(c.implementation)): \(c.maxError)") }
    let winograd = checks.filter { $0.kernel.hasPrefix("backward") && $0.implementation.contains("wino") }
    #expect(winograd.allSatisfy { $0.tolerance == KernelSelfTest.float32Tolerance })
    #expect(winograd.isEmpty == !OneDNN.effectiveISA.hasPrefix("avx512"), "\(checks.map(\.implementation))")
  }

  /// `--backward-precision winograd` trains on every ISA: `flip train` says on how many layers
  /// Winograd runs (larq-cnn's two 3×3 stride-1 convolutions on AVX-512, none under an AVX2
  /// cap, as on AMD EPYC Zen 3), and the loss is finite.
  @Test(arguments: ["", "AVX2"])
  func trainsWithWinogradOnEveryISA(cap: String) throws {
    let dir = temporaryDirectory("flip-winograd")
    defer { try? FileManager.default.removeItem(atPath: dir) }
    writeToyDataset(to: dir, train: 64, test: 32, height: 28, width: 28)
    let r = try runFlip(
      [
        "train", "--model", "larq-cnn", "--data", dir, "--epochs", "1", "--batch-size", "32", "--out", dir + "/run",
        "--backward-precision", "winograd",
      ], environment: cap.isEmpty ? [:] : ["ONEDNN_MAX_CPU_ISA": cap])
    #expect(r.status == 0, "\(r.stderr)")
    let avx512 = cap.isEmpty && OneDNN.effectiveISA.hasPrefix("avx512")
    let line = r.stderr.split(separator: "\n").first { $0.contains("Winograd") }.map(String.init) ?? ""
    #expect(line.contains(avx512 ? "on 2 of" : "on 0 of"), "\(r.stderr)")
    let rows = try readMetrics(dir + "/run/metrics.jsonl").filter { $0["kind"] as? String == "epoch" }
    #expect(rows.count == 1 && (rows[0]["loss"] as? Double)?.isFinite == true, "\(rows)")
  }
}
