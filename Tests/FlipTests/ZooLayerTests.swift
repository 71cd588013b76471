import FlipTensor
import Foundation
import Testing

@testable import FlipBNN
@testable import FlipTraining

/// What Larq Zoo's networks need of the layers: an activation inside a convolution, a frozen
/// blur-pool depthwise convolution, and Keras's `he_normal`.
@Suite("Larq Zoo's layer features")
struct ZooLayerTests {
  /// `QuantConv2D(activation=relu)` is `max(conv, 0)`, and its backward is the plain layer's
  /// backward of `dy ⊙ 1[y > 0]`, exactly (the same weights, the same products).
  @Test(arguments: [Float(0), 1])
  func convolutionWithReLU(padValue: Float) throws {
    func make(_ activation: ActivationKind?) throws -> QuantConv2D {
      try QuantConv2D(
        filters: 4, kernelSize: (3, 3), padding: .same, padValue: padValue, inputShape: [5, 6, 3],
        inputQuantizer: SteSign(clipValue: 1.25), kernelQuantizer: SteSign(clipValue: 1.25),
        constraint: .weightClip(clipValue: 1.25), useBias: false, activation: activation)
    }
    let (relu, plain) = (try make(.relu), try make(nil))
    #expect(relu.activation == .relu && plain.activation == nil)
    let x = randomValues(2 * relu.inputSize, seed: 5, in: -2...2)
    let a = GradientHarness(relu, batch: 2, input: x, seed: 3)
    let b = GradientHarness(plain, batch: 2, input: x, seed: 3)
    let y = try a.output()
    let z = try b.output()
    #expect(y == z.map { max($0, 0) })
    #expect(z.contains { $0 < 0 } && z.contains { $0 > 0 })
    let (dx, dw) = try a.analytic()
    for i in 0..<b.r.count where z[i] <= 0 { b.r.pointer[i] = 0 }
    let (dxPlain, dwPlain) = try b.analytic()
    #expect(dx == dxPlain && dw == dwPlain)
    #expect(dx.contains { $0 != 0 } && dw.contains { $0 != 0 })
  }

  /// A smooth activation inside the convolution against finite differences.
  @Test func convolutionWithTanhMatchesFiniteDifferences() throws {
    let layer = try QuantConv2D(
      filters: 3, kernelSize: (3, 3), strides: (2, 2), padding: .same, inputShape: [5, 5, 2], activation: .tanh)
    try GradientHarness(layer, batch: 2, input: randomValues(100, seed: 9)).check(
      eps: 1e-2, atol: 1e-3, rtol: 1e-2, "Conv2D(activation=tanh)")
  }

  /// Only activations whose derivative the output gives go inside a convolution.
  @Test func convolutionRefusesSoftmaxAndHardTanh() {
    for kind in [ActivationKind.softmax, .hardTanh] {
      #expect(throws: BNNError.self) {
        try QuantConv2D(filters: 2, kernelSize: (1, 1), inputShape: [2, 2, 1], activation: kind)
      }
    }
  }

  /// QuickNet's blur pool: each channel's 3×3 kernel is [1,2,1]ᵀ[1,2,1]/16, frozen: no
  /// trainable variable, the kernel kept in the state, no gradient, and the input gradient
  /// still right.
  @Test func frozenBlurPool() throws {
    let layer = try QuantDepthwiseConv2D(
      kernelSize: (3, 3), strides: (2, 2), padding: .same, inputShape: [6, 6, 2], useBias: false,
      depthwiseInitializer: .blurpool, trainable: false)
    let h = GradientHarness(layer, batch: 2, input: randomValues(144, seed: 4))
    #expect(h.store.views.isEmpty && h.store.stateViews.map(\.role) == [.depthwiseKernel])
    let kernel = copyOut(h.store.state.pointer, 18)
    let taps: [Float] = [1, 2, 1]
    for ky in 0..<3 {
      for kx in 0..<3 {
        for c in 0..<2 { #expect(kernel[(ky * 3 + kx) * 2 + c] == taps[ky] * taps[kx] / 16) }
      }
    }
    try h.check(eps: 1e-2, atol: 1e-3, rtol: 1e-3, "blur pool")
    #expect(copyOut(h.store.state.pointer, 18) == kernel)
    #expect(!layer.profile.weights[0].trainable)
    // A constant image stays constant inside (the kernel sums to 1).
    let constant = [Float](repeating: 0.5, count: 72)
    let y = copyOut(try layer.forward(constant, batch: 1, training: false), layer.outputSize)
    #expect(abs(y[(1 * 3 + 1) * 2] - 0.5) < 1e-6)
  }

  @Test func blurPoolNeedsAWindowOf2_3Or5AndOneMultiplier() {
    for (k, m) in [(4, 1), (3, 2)] {
      #expect(throws: BNNError.self) {
        try QuantDepthwiseConv2D(
          kernelSize: (k, k), depthMultiplier: m, inputShape: [6, 6, 2], depthwiseInitializer: .blurpool)
      }
    }
  }

  /// Keras's HeNormal: a normal truncated at 2 deviations of standard deviation √(2 / fan_in).
  @Test func heNormal() {
    var g = SplitMix64(seed: 1)
    let shape = [3, 3, 32, 64]
    let n = shape.reduce(1, *)
    let p = UnsafeMutablePointer<Float>.allocate(capacity: n)
    defer { p.deallocate() }
    Initializer.heNormal.fill(p, shape: shape, random: &g)
    let values = UnsafeBufferPointer(start: p, count: n)
    let deviation = (values.reduce(0.0) { $0 + Double($1 * $1) } / Double(n)).squareRoot()
    let want = (2.0 / Double(3 * 3 * 32)).squareRoot()
    #expect(abs(deviation / want - 1) < 0.02, "\(deviation) vs \(want)")
    #expect(values.allSatisfy { Double(abs($0)) <= 2 * want / 0.8796 + 1e-6 })
  }

  /// The new keys in configs, written back as they were read.
  @Test func configKeysRoundTrip() throws {
    let text = """
      layers:
        - {type: QuantConv2D, filters: 4, kernel_size: 3, padding: same, pad_values: 1.0, activation: relu, kernel_initializer: he_normal}
        - {type: DepthwiseConv2D, kernel_size: 3, strides: 2, padding: same, depthwise_initializer: blurpool_initializer, trainable: false, use_bias: false}
      """
    let c = try RunSettings.parse(yaml: text, file: "t.yaml")
    #expect(c.layers[0].activation == .relu && c.layers[0].kernelInitializer == .heNormal)
    #expect(c.layers[1].kernelInitializer == .blurpool && !c.layers[1].trainable)
    #expect(try RunSettings.parse(yaml: try c.yaml(), file: "again").layers == c.layers)
    let model = try Model(specs: c.layers, inputShape: [8, 8, 2], seed: 0)
    // The convolution's kernel and bias train; the blur kernel is state.
    #expect(model.store.views.count == 2 && model.store.stateViews.map(\.role) == [.depthwiseKernel])
    for (bad, message) in [
      ("{type: Conv2D, filters: 2, kernel_size: 1, trainable: false}", "unknown key 'trainable'"),
      ("{type: DepthwiseConv2D, kernel_size: 3, depthwise_initializer: lecun}", "unknown initializer 'lecun'"),
    ] {
      #expect(throws: ConfigError.self) { try RunSettings.parse(yaml: "layers:\n  - \(bad)\n", file: "t.yaml") }
      do { _ = try RunSettings.parse(yaml: "layers:\n  - \(bad)\n", file: "t.yaml") } catch {
        #expect("\(error)".contains(message), "\(error)")
      }
    }
  }
}
