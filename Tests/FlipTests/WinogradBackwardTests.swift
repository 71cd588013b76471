import FlipTensor
import Foundation
import Testing

@testable import FlipBNN
@testable import FlipTensor

/// `backward_precision: winograd`: the 3×3 stride-1 convolutions' backward through Winograd's
/// F(4×4, 3×3): oneDNN's where it has one (AVX-512), Flip's own elsewhere (AVX2).
@Suite("Winograd backward convolutions")
struct WinogradBackwardTests {
  /// On its layers (3×3, stride 1, channels and filters multiples of 16), both backward
  /// convolutions run Winograd and stay within fp32's error: the input and kernel gradients
  /// within 1e-5 of the direct fp32 ones (relative to their largest magnitude), for a binary
  /// layer (whose copy of x is quantized in place) and a real one with a bias and ReLU inside,
  /// at 15×13 (tiles cut by the border). A stride-2 layer runs the direct fp32 backward: the
  /// same bits.
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
      let anyWinograd = OneDNN.effectiveISA.hasPrefix("avx512") || WinogradBackward.isAvailable
      #expect(expected == (anyWinograd && !label.contains("stride")), "\(label)")
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
  /// layers within the fp32 tolerance, and name a Winograd (oneDNN's on AVX-512, Flip's on
  /// AVX2) for their 3×3 stride-1 binary convolutions.
  @Test(arguments: [ModelPreset.birealnet18, .quicknet])
  func selfTestAcceptsTheWinogradBackward(preset: ModelPreset) throws {
    let (layers, shape) = preset.testLayers
    let checks = try KernelSelfTest.run(specs: layers, inputShape: shape, batch: 2, backwardPrecision: .winograd)
    for c in checks where !c.passed { Issue.record("\(c.kernel) of \(c.layer) (\(c.implementation)): \(c.maxError)") }
    let winograd = checks.filter { $0.kernel.hasPrefix("backward") && $0.implementation.contains("wino") }
    #expect(winograd.allSatisfy { $0.tolerance == KernelSelfTest.float32Tolerance })
    let anyWinograd = OneDNN.effectiveISA.hasPrefix("avx512") || WinogradBackward.isAvailable
    #expect(winograd.isEmpty == !anyWinograd, "\(checks.map(\.implementation))")
  }

  /// `--backward-precision winograd` trains on every ISA: `flip train` says on how many layers
  /// Winograd runs (larq-cnn's two 3×3 stride-1 convolutions: through oneDNN's on AVX-512, Flip's
  /// own under an AVX2 cap, as on AMD EPYC Zen 3), and the loss is finite.
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
    #expect(line.contains(avx512 || WinogradBackward.isAvailable ? "on 2 of" : "on 0 of"), "\(r.stderr)")
    let rows = try readMetrics(dir + "/run/metrics.jsonl").filter { $0["kind"] as? String == "epoch" }
    #expect(rows.count == 1 && (rows[0]["loss"] as? Double)?.isFinite == true, "\(rows)")
  }

  /// Flip's own Winograd (what runs where oneDNN has none) gives the direct fp32 backward's
  /// gradients within 1e-5 of their largest magnitude: binary x (quantized by the layer's
  /// `quantizeCopy` on its copy, the raw input left as it was) and kernel, dy in ±3, on maps
  /// that cut the last tiles (15×13, 9×6), a 7×7 map, a map of one tile, 'same' and 'valid'
  /// padding, batches cut into several chunks with a short last one, and without the input
  /// gradient.
  @Test(.enabled(if: WinogradBackward.isAvailable, "needs AVX2 and FMA"))
  func flipsWinogradMatchesTheDirectBackward() throws {
    let cases: [(batch: Int, height: Int, width: Int, channels: Int, filters: Int, chunk: Int?, padding: Padding)] = [
      (3, 15, 13, 32, 48, 7, .same), (2, 7, 7, 64, 16, nil, .same), (1, 4, 4, 16, 16, nil, .same),
      (2, 9, 6, 16, 32, 5, .same), (3, 15, 13, 32, 16, 7, .valid), (2, 6, 6, 16, 16, nil, .valid),
    ]
    for (n, (batch, height, width, channels, filters, chunk, padding)) in cases.enumerated() {
      let label =
        "\(batch)×\(height)×\(width)×\(channels) → \(filters), \(padding), \(chunk.map(String.init) ?? "default") tiles per chunk"
      let g = try ConvGeometry(
        inputHeight: height, inputWidth: width, channels: channels, kernelHeight: 3, kernelWidth: 3, strideHeight: 1,
        strideWidth: 1, padding: padding)
      #expect(WinogradBackward.isCandidate(geometry: g, filters: filters))
      let raw = randomValues(batch * g.inputSize, seed: UInt64(10 + n))
      let signs = raw.map { $0 < 0 ? Float(-1) : 1 }
      let kernel = randomValues(9 * channels * filters, seed: UInt64(20 + n)).map { $0 < 0 ? Float(-1) : 1 }
      let dy = randomValues(batch * g.outputPixels * filters, seed: UInt64(30 + n), in: -3...3)
      // The direct fp32 backward (its own scratch: blocked copies without AVX-512).
      let direct = try ConvolutionPrimitives(
        batch: batch, geometry: g, filters: filters, int8Forward: false, backwardPrecision: .fp32, compute: .serial)
      var (dx0, dw0) = ([Float](repeating: .nan, count: raw.count), [Float](repeating: .nan, count: kernel.count))
      let directScratch = UnsafeMutableRawPointer.allocate(byteCount: max(direct.scratchBytes, 64), alignment: 64)
      defer { directScratch.deallocate() }
      try direct.backward(
        src: signs, diffDst: dy, kernel: kernel, diffKernel: &dw0, diffSrc: &dx0, scratch: directScratch)
      let winograd = try WinogradBackward(
        batch: batch, geometry: g, filters: filters, compute: Compute(threads: 2), tilesPerChunk: chunk)
      let bytes = WinogradBackward.scratchBytes(batch: batch, geometry: g, filters: filters, tilesPerChunk: chunk)
      let scratch = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
      defer { scratch.deallocate() }
      var (dx1, dw1, dw2) = (
        [Float](repeating: .nan, count: raw.count), [Float](repeating: .nan, count: kernel.count),
        [Float](repeating: .nan, count: kernel.count)
      )
      let sign: (UnsafeMutablePointer<Float>, Int) -> Void = { p, count in
        for i in 0..<count { p[i] = p[i] < 0 ? -1 : 1 }
      }
      try winograd.backward(
        src: raw, quantizeCopy: sign, diffDst: dy, kernel: kernel, diffKernel: &dw1, diffSrc: &dx1, scratch: scratch)
      try winograd.backward(
        src: signs, quantizeCopy: nil, diffDst: dy, kernel: kernel, diffKernel: &dw2, diffSrc: nil, scratch: scratch)
      #expect(raw == randomValues(batch * g.inputSize, seed: UInt64(10 + n)), "\(label): the raw input changed")
      let dxOff = BackwardPrecisionTests.relativeDifference(dx1, dx0)
      let dwOff = BackwardPrecisionTests.relativeDifference(dw1, dw0)
      #expect(dxOff < 1e-5, "\(label): input gradient \(dxOff) off")
      #expect(dwOff < 1e-5, "\(label): kernel gradient \(dwOff) off")
      #expect(dw2 == dw1, "\(label): the kernel gradient depends on whether dx is asked for")
      #expect(dx0.allSatisfy(\.isFinite) && dx1.allSatisfy(\.isFinite))
    }
    // Strides and channel counts off the 16-wide blocks are not its layers.
    let strided = try ConvGeometry(
      inputHeight: 8, inputWidth: 8, channels: 16, kernelHeight: 3, kernelWidth: 3, strideHeight: 2, strideWidth: 2,
      padding: .same)
    let narrow = try ConvGeometry(
      inputHeight: 8, inputWidth: 8, channels: 24, kernelHeight: 3, kernelWidth: 3, strideHeight: 1, strideWidth: 1,
      padding: .same)
    #expect(!WinogradBackward.isCandidate(geometry: strided, filters: 16))
    #expect(!WinogradBackward.isCandidate(geometry: narrow, filters: 16))
  }
}
