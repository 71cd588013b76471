import FlipTensor
import Foundation
import Testing

@testable import FlipBNN

// Finite-difference checks of every layer's backward pass, for the input gradient and the
// parameter gradients, with the scalar loss L = Σ y ⊙ r for a fixed random r (so dL/dy = r).
// Forward passes run in Float; L is summed in Double; central differences use the perturbation
// actually stored in Float.

/// A layer bound to its own store, a fixed input batch, and a fixed output weighting `r`.
final class GradientHarness {
  let layer: Layer
  let store: ParameterStore
  let batch: Int
  let x: FloatBuffer
  let r: FloatBuffer
  /// Runs before every forward (e.g. to reset a dropout generator so the mask stays fixed).
  var beforeForward: () -> Void = {}

  init(_ layer: Layer, batch: Int, input: [Float], seed: UInt64 = 7) {
    precondition(
      input.count == batch * layer.inputSize, "input has \(input.count) values, needs \(batch * layer.inputSize)")
    self.layer = layer
    self.batch = batch
    store = bindStandalone(layer, seed: seed)
    // Biases, betas and gammas start at 0 or 1: give them non-trivial values.
    var g = SplitMix64(seed: seed &+ 1)
    for v in store.views {
      let p = store.pointer(v)
      for i in 0..<v.count {
        let u = g.nextUnitFloat()
        switch v.role {
        case .bias, .beta: p[i] = u - 0.5
        case .gamma: p[i] = 0.5 + u
        default: break
        }
      }
    }
    layer.allocate(maxBatch: batch)
    x = FloatBuffer(input)
    r = FloatBuffer(randomValues(batch * layer.outputSize, seed: seed &+ 2))
  }

  /// Output of a training forward.
  func output(training: Bool = true) throws -> [Float] {
    beforeForward()
    let y = try layer.forward(x.pointer, batch: batch, training: training)
    return copyOut(y, batch * layer.outputSize)
  }

  /// L = Σ y ⊙ r in double precision (training forward).
  func loss() throws -> Double {
    beforeForward()
    let y = try layer.forward(x.pointer, batch: batch, training: true)
    var s = 0.0
    for i in 0..<r.count { s += Double(y[i]) * Double(r[i]) }
    return s
  }

  /// Backward's input gradient and the parameter gradients, starting from zeroed gradients.
  func analytic() throws -> (dx: [Float], parameters: [Float]) {
    store.zeroGradients()
    beforeForward()
    _ = try layer.forward(x.pointer, batch: batch, training: true)
    let dx = try #require(try layer.backward(r.pointer, batch: batch, needInputGradient: true))
    return (copyOut(dx, x.count), store.gradients.array)
  }

  func numericInput(eps: Float) throws -> [Float] { try centralDifferences(x.pointer, count: x.count, eps: eps) }
  func numericParameters(eps: Float) throws -> [Float] {
    try centralDifferences(store.values.pointer, count: store.values.count, eps: eps)
  }

  private func centralDifferences(_ p: UnsafeMutablePointer<Float>, count: Int, eps: Float) throws -> [Float] {
    var out = [Float](repeating: 0, count: count)
    for i in 0..<count {
      let saved = p[i]
      let up = saved + eps
      let down = saved - eps
      p[i] = up
      let plus = try loss()
      p[i] = down
      let minus = try loss()
      p[i] = saved
      out[i] = Float((plus - minus) / (Double(up) - Double(down)))
    }
    return out
  }

  /// Checks input and parameter gradients against central differences.
  func check(eps: Float, atol: Float, rtol: Float, _ what: String, sourceLocation: SourceLocation = #_sourceLocation)
    throws
  {
    let a = try analytic()
    let nx = try numericInput(eps: eps)
    expectGradients(a.dx, nx, atol: atol, rtol: rtol, "\(what) input gradient", sourceLocation: sourceLocation)
    if store.values.count > 0 {
      let np = try numericParameters(eps: eps)
      for v in store.views {
        let range = v.offset..<(v.offset + v.count)
        expectGradients(
          Array(a.parameters[range]), Array(np[range]), atol: atol, rtol: rtol, "\(what) \(v.role.rawValue) gradient",
          sourceLocation: sourceLocation)
      }
    }
  }
}

/// `|analytic − numeric| ≤ atol + rtol·|numeric|` everywhere, and the gradient is not trivially zero.
func expectGradients(
  _ analytic: [Float], _ numeric: [Float], atol: Float, rtol: Float, _ what: String,
  sourceLocation: SourceLocation = #_sourceLocation
) {
  #expect(analytic.count == numeric.count, "\(what): sizes", sourceLocation: sourceLocation)
  var worst: (Int, Float)? = nil
  for i in 0..<min(analytic.count, numeric.count) {
    let err = abs(analytic[i] - numeric[i]) - (atol + rtol * abs(numeric[i]))
    if err > 0 && (worst == nil || err > worst!.1) { worst = (i, err) }
  }
  if let (i, _) = worst {
    Issue.record(
      "\(what): element \(i) analytic \(analytic[i]) vs numeric \(numeric[i]) (of \(analytic.count))",
      sourceLocation: sourceLocation)
  }
  let scale = numeric.map(abs).max() ?? 0
  #expect(
    scale > 1e-2, "\(what): the numeric gradient is ~0, the check would be vacuous", sourceLocation: sourceLocation)
}

/// Keras `same` padding before the first row/column: `⌊max((O − 1)·S + K − H, 0)/2⌋`.
private func samePad(_ input: Int, _ kernel: Int, _ stride: Int) -> (out: Int, before: Int) {
  let out = (input + stride - 1) / stride
  return (out, max((out - 1) * stride + kernel - input, 0) / 2)
}

/// Direct NHWC convolution with a Keras (KH, KW, C, F) kernel; out-of-image taps read `padValue`.
private func naiveConv(
  _ x: [Float], batch: Int, h: Int, w: Int, c: Int, kernel: [Float], kh: Int, kw: Int, f: Int, bias: [Float]?,
  stride: (Int, Int), out: (Int, Int), pad: (Int, Int), padValue: Float
) -> [Float] {
  var y = [Float](repeating: 0, count: batch * out.0 * out.1 * f)
  for b in 0..<batch {
    for oy in 0..<out.0 {
      for ox in 0..<out.1 {
        for fi in 0..<f {
          var s = Double(bias?[fi] ?? 0)
          for ky in 0..<kh {
            for kx in 0..<kw {
              let iy = oy * stride.0 - pad.0 + ky
              let ix = ox * stride.1 - pad.1 + kx
              for ci in 0..<c {
                let v = (iy < 0 || iy >= h || ix < 0 || ix >= w) ? padValue : x[((b * h + iy) * w + ix) * c + ci]
                s += Double(v) * Double(kernel[((ky * kw + kx) * c + ci) * f + fi])
              }
            }
          }
          y[((b * out.0 + oy) * out.1 + ox) * f + fi] = Float(s)
        }
      }
    }
  }
  return y
}

/// Values spaced ≥ `gap` apart in a shuffled order (no ties for max pooling).
private func distinctValues(_ n: Int, seed: UInt64, gap: Float = 0.1, offset: Float = 0) -> [Float] {
  var v = (0..<n).map { Float($0) * gap + offset }
  var g = SplitMix64(seed: seed)
  g.shuffle(&v)
  return v
}

/// Random values in `range` at least `margin` away from every point of `kinks`.
private func valuesAvoiding(_ kinks: [Float], margin: Float, n: Int, seed: UInt64, in range: ClosedRange<Float>)
  -> [Float]
{
  randomValues(n, seed: seed, in: range).map { v in
    var v = v
    for k in kinks where abs(v - k) < margin { v = v < k ? k - margin : k + margin }
    return v
  }
}

@Suite("Layer gradients")
struct LayerGradientTests {

  @Test("the finite-difference check itself flags a gradient that is 2% off")
  func harnessDetectsErrors() throws {
    let layer = try QuantDense(units: 3, inputShape: [4])
    let h = GradientHarness(layer, batch: 2, input: randomValues(8, seed: 9))
    let a = try h.analytic()
    let numeric = try h.numericInput(eps: 1e-2)
    expectGradients(a.dx, numeric, atol: 1e-3, rtol: 1e-3, "exact")
    withKnownIssue("a wrong gradient must be reported") {
      expectGradients(a.dx.map { $0 * 1.02 + 0.01 }, numeric, atol: 1e-3, rtol: 1e-3, "scaled")
    }
  }

  // MARK: Dense / QuantDense

  @Test("Dense: forward x·W + b and finite-difference gradients of x, W, b")
  func dense() throws {
    var spec = LayerSpec(.dense)
    spec.units = 4
    let layer = try spec.make(inputShape: [5], seed: 1)
    #expect(layer.typeName == "dense")
    let x = randomValues(15, seed: 11)
    let h = GradientHarness(layer, batch: 3, input: x)
    let w = copyOut(h.store.pointer(h.store.views[0]), 20)
    let b = copyOut(h.store.pointer(h.store.views[1]), 4)
    let y = try h.output()
    for n in 0..<3 {
      for o in 0..<4 {
        var s = Double(b[o])
        for i in 0..<5 { s += Double(x[n * 5 + i]) * Double(w[i * 4 + o]) }
        #expect(close(y[n * 4 + o], Float(s), tol: 1e-5))
      }
    }
    try h.check(eps: 1e-2, atol: 1e-3, rtol: 1e-3, "Dense")
  }

  @Test("QuantDense with identity quantizers (noop) runs the quantized-kernel path and matches finite differences")
  func quantDenseIdentityQuantizers() throws {
    let layer = try QuantDense(
      units: 3, inputShape: [6], inputQuantizer: NoOpQuantizer(precision: 1),
      kernelQuantizer: NoOpQuantizer(precision: 1))
    #expect(layer.typeName == "quant_dense")
    let h = GradientHarness(layer, batch: 4, input: randomValues(24, seed: 12, in: -2...2))
    try h.check(eps: 1e-2, atol: 1e-3, rtol: 1e-3, "QuantDense(noop)")
    // Without a bias.
    let noBias = try QuantDense(units: 3, inputShape: [6], useBias: false)
    #expect(noBias.parameterSpecs.count == 1)
    try GradientHarness(noBias, batch: 2, input: randomValues(12, seed: 13)).check(
      eps: 1e-2, atol: 1e-3, rtol: 1e-3, "QuantDense(no bias)")
  }

  @Test("QuantDense with ste_sign quantizers: dW = (q(x)ᵀ·r) ⊙ 1[|W| ≤ 1], dx = (r·sign(W)ᵀ) ⊙ 1[|x| ≤ 1]")
  func quantDenseSteSign() throws {
    let layer = try QuantDense(
      units: 3, inputShape: [4], inputQuantizer: SteSign(), kernelQuantizer: SteSign(), useBias: true)
    let x: [Float] = [0.5, -1.5, 0, 0.9, -0.2, 1.2, -1, 0.3]
    let h = GradientHarness(layer, batch: 2, input: x)
    // Latent kernel with some |w| > 1 (clipped gradient) and a zero (sign +1).
    let wv = h.store.views[0]
    let latent: [Float] = [0.3, -1.2, 0.5, 0, 0.7, -0.4, 1.5, -0.1, 0.2, -0.6, 1, -1.0001]
    for i in 0..<12 { h.store.pointer(wv)[i] = latent[i] }
    let bias = copyOut(h.store.pointer(h.store.views[1]), 3)
    let sw = latent.map { $0 >= 0 ? Float(1) : -1 }
    let sx = x.map { $0 >= 0 ? Float(1) : -1 }
    let y = try h.output()
    for n in 0..<2 {
      for o in 0..<3 {
        var s = bias[o]
        for i in 0..<4 { s += sx[n * 4 + i] * sw[i * 3 + o] }
        #expect(close(y[n * 3 + o], s, tol: 1e-6))
      }
    }
    let a = try h.analytic()
    let r = h.r.array
    for i in 0..<4 {
      for o in 0..<3 {
        var g: Float = 0
        for n in 0..<2 { g += sx[n * 4 + i] * r[n * 3 + o] }
        let want = abs(latent[i * 3 + o]) <= 1 ? g : 0
        #expect(close(a.parameters[wv.offset + i * 3 + o], want, tol: 1e-6), "dW[\(i),\(o)]")
      }
    }
    for n in 0..<2 {
      for i in 0..<4 {
        var g: Float = 0
        for o in 0..<3 { g += r[n * 3 + o] * sw[i * 3 + o] }
        let want = abs(x[n * 4 + i]) <= 1 ? g : 0
        #expect(close(a.dx[n * 4 + i], want, tol: 1e-6), "dx[\(n),\(i)]")
      }
    }
    let bv = h.store.views[1]
    for o in 0..<3 { #expect(close(a.parameters[bv.offset + o], r[o] + r[3 + o], tol: 1e-6)) }
  }

  /// `ste_sign` with its pseudo-gradient computed the long way (no straight-through bound), to
  /// compare the layers' pass-through path with the masked one.
  final class MaskedSteSign: Quantizer {
    let base = SteSign()
    var name: String { base.name }
    var precision: Int? { base.precision }
    var hasIntegerLevels: Bool { true }
    func forward(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int, channels: Int) {
      base.forward(x, y, count: count, channels: channels)
    }
    func backward(
      _ x: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>, count: Int,
      channels: Int
    ) { base.backward(x, dy, dx, count: count, channels: channels) }
  }

  @Test(
    "a kernel within ste_sign's clip skips the mask: same gradients as the masked path; one weight outside masks",
    arguments: ["dense", "conv primitives", "conv im2col"])
  func straightThroughKernelGradient(kind: String) throws {
    func make(_ q: Quantizer) throws -> Layer {
      if kind == "dense" { return try QuantDense(units: 5, inputShape: [20], kernelQuantizer: q) }
      let layer = try QuantConv2D(filters: 3, kernelSize: (3, 3), inputShape: [5, 4, 2], kernelQuantizer: q)
      layer.usePrimitives = kind == "conv primitives"
      return layer
    }
    func gradients(_ q: Quantizer, latent: (UnsafeMutablePointer<Float>, Int) -> Void) throws -> [Float] {
      let layer = try make(q)
      let store = bindStandalone(layer, seed: 5)
      latent(store.pointer(store.views[0]), store.views[0].count)
      layer.allocate(maxBatch: 3)
      let x = randomValues(3 * layer.inputSize, seed: 6)
      for pass in 0..<2 {  // the second pass accumulates
        _ = try layer.forward(x, batch: 3, training: true)
        let dy = randomValues(3 * layer.outputSize, seed: UInt64(7 + pass))
        _ = try layer.backward(dy, batch: 3, needInputGradient: false)
      }
      return store.gradients.array
    }
    // Inside the clip, ±1 inclusive.
    let inside: (UnsafeMutablePointer<Float>, Int) -> Void = { w, n in
      for i in 0..<n { w[i] = Float(i % 9) / 4 - 1 }
    }
    let fast = try gradients(SteSign(), latent: inside)
    let masked = try gradients(MaskedSteSign(), latent: inside)
    #expect(fast.contains { $0 != 0 })
    #expect(allClose(fast, masked, tol: 1e-6), "differs by \(maxDifference(fast, masked))")
    // One weight just outside: its gradient is 0, the rest as before.
    let outside: (UnsafeMutablePointer<Float>, Int) -> Void = { w, n in
      inside(w, n)
      w[2] = 1.0001
    }
    let clipped = try gradients(SteSign(), latent: outside)
    #expect(clipped[2] == 0 && fast[2] != 0)
    var expected = fast
    expected[2] = 0
    #expect(allClose(clipped, expected, tol: 1e-6))
  }

  // MARK: QuantConv2D / Conv2D

  @Test(
    "QuantConv2D stride 2, same padding, pad_values 1, identity quantizers: forward and gradients", arguments: [5, 6])
  func quantConvStride2Same(size: Int) throws {
    let layer = try QuantConv2D(
      filters: 3, kernelSize: (3, 3), strides: (2, 2), padding: .same, padValue: 1, inputShape: [size, size, 2],
      inputQuantizer: NoOpQuantizer(precision: 1), kernelQuantizer: NoOpQuantizer(precision: 1))
    let (o, pad) = samePad(size, 3, 2)
    #expect(layer.outputShape == [o, o, 3])
    let x = randomValues(2 * size * size * 2, seed: 21)
    let h = GradientHarness(layer, batch: 2, input: x)
    let kernel = copyOut(h.store.pointer(h.store.views[0]), 54)
    let bias = copyOut(h.store.pointer(h.store.views[1]), 3)
    let want = naiveConv(
      x, batch: 2, h: size, w: size, c: 2, kernel: kernel, kh: 3, kw: 3, f: 3, bias: bias, stride: (2, 2),
      out: (o, o), pad: (pad, pad), padValue: 1)
    let y = try h.output()
    #expect(allClose(y, want, tol: 1e-5), "forward differs by \(maxDifference(y, want))")
    try h.check(eps: 1e-2, atol: 1e-3, rtol: 1e-3, "QuantConv2D(\(size)×\(size), s2, same)")
  }

  @Test("QuantConv2D same padding with pad_values 0 vs 1 differ only at the border")
  func padValuesMatter() throws {
    func run(_ pad: Float) throws -> [Float] {
      let layer = try QuantConv2D(
        filters: 1, kernelSize: (3, 3), padding: .same, padValue: pad, inputShape: [3, 3, 1], useBias: false)
      let store = bindStandalone(layer)
      store.values.fill(1)  // kernel of ones: each output is the 3×3 window sum
      layer.allocate(maxBatch: 1)
      let x = FloatBuffer([Float](repeating: 0.5, count: 9))
      return copyOut(try layer.forward(x.pointer, batch: 1, training: false), 9)
    }
    // Corners see 4 pixels + 5 padding, edges 6 + 3, the center 9 pixels.
    #expect(try run(0) == [2, 3, 2, 3, 4.5, 3, 2, 3, 2])
    #expect(try run(1) == [7, 6, 7, 6, 4.5, 6, 7, 6, 7])
  }

  @Test("Conv2D valid (stride 1 and 2): forward and gradients", arguments: [1, 2])
  func conv2dValid(stride: Int) throws {
    var spec = LayerSpec(.conv2D)
    spec.filters = 2
    spec.kernelSize = [3, 2]
    spec.strides = [stride]
    let layer = try spec.make(inputShape: [6, 5, 2], seed: 3)
    #expect(layer.typeName == "conv2d")
    let oh = (6 - 3) / stride + 1
    let ow = (5 - 2) / stride + 1
    #expect(layer.outputShape == [oh, ow, 2])
    let x = randomValues(2 * 6 * 5 * 2, seed: 22, in: -2...2)
    let h = GradientHarness(layer, batch: 2, input: x)
    let kernel = copyOut(h.store.pointer(h.store.views[0]), 24)
    let bias = copyOut(h.store.pointer(h.store.views[1]), 2)
    let want = naiveConv(
      x, batch: 2, h: 6, w: 5, c: 2, kernel: kernel, kh: 3, kw: 2, f: 2, bias: bias, stride: (stride, stride),
      out: (oh, ow), pad: (0, 0), padValue: 0)
    let y = try h.output()
    #expect(allClose(y, want, tol: 1e-5), "forward differs by \(maxDifference(y, want))")
    try h.check(eps: 1e-2, atol: 1e-3, rtol: 1e-3, "Conv2D valid s\(stride)")
  }

  // MARK: BatchNormalization

  @Test("BatchNormalization on 2-D input, training, center + scale")
  func batchNorm2D() throws {
    let layer = try BatchNormalization(inputShape: [3], momentum: 0.9)
    var x = randomValues(15, seed: 31, in: -2...2)
    for i in stride(from: 1, to: 15, by: 3) { x[i] = x[i] * 0.3 + 1 }  // a channel with another scale
    let h = GradientHarness(layer, batch: 5, input: x)
    // The training output is γ·x̂ + β with the biased batch variance.
    let y = try h.output()
    let gamma = copyOut(h.store.pointer(h.store.views[0]), 3)
    let beta = copyOut(h.store.pointer(h.store.views[1]), 3)
    for c in 0..<3 {
      let col = (0..<5).map { Double(x[$0 * 3 + c]) }
      let mean = col.reduce(0, +) / 5
      let variance = col.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / 5
      for n in 0..<5 {
        let want = Double(gamma[c]) * (col[n] - mean) / (variance + 1e-3).squareRoot() + Double(beta[c])
        #expect(close(y[n * 3 + c], Float(want), tol: 1e-5))
      }
    }
    try h.check(eps: 1e-3, atol: 2e-3, rtol: 2e-3, "BatchNormalization 2-D")
  }

  @Test("BatchNormalization on 4-D input, training, center + scale")
  func batchNorm4D() throws {
    let layer = try BatchNormalization(inputShape: [3, 3, 2], momentum: 0.9)
    let h = GradientHarness(layer, batch: 2, input: randomValues(36, seed: 32, in: -2...2))
    try h.check(eps: 1e-3, atol: 2e-3, rtol: 2e-3, "BatchNormalization 4-D")
  }

  @Test("BatchNormalization with scale=false (Flip's presets) and with neither center nor scale")
  func batchNormNoScale() throws {
    let centerOnly = try BatchNormalization(inputShape: [2, 2, 3], momentum: 0.9, center: true, scale: false)
    #expect(centerOnly.parameterSpecs.map(\.role) == [.beta, .movingMean, .movingVariance])
    try GradientHarness(centerOnly, batch: 2, input: randomValues(24, seed: 33, in: -2...2)).check(
      eps: 1e-3, atol: 2e-3, rtol: 2e-3, "BatchNormalization(scale=false)")
    let bare = try BatchNormalization(inputShape: [4], center: false, scale: false)
    let h = GradientHarness(bare, batch: 4, input: randomValues(16, seed: 34, in: -2...2))
    #expect(h.store.values.count == 0)
    let a = try h.analytic()
    expectGradients(a.dx, try h.numericInput(eps: 1e-3), atol: 2e-3, rtol: 2e-3, "BatchNormalization(bare)")
  }

  @Test("BatchNormalization 2-D moving statistics: biased variance, momentum 0.9; inference uses them")
  func batchNormMovingStatistics2D() throws {
    let layer = try BatchNormalization(inputShape: [3], momentum: 0.9)
    let store = bindStandalone(layer)
    layer.allocate(maxBatch: 4)
    // Channels: [1, 2, 3, 4] (mean 2.5, biased var 1.25), all 0, [−2, 2, −2, 2] (var 4).
    let x = FloatBuffer([1, 0, -2, 2, 0, 2, 3, 0, -2, 4, 0, 2])
    _ = try layer.forward(x.pointer, batch: 4, training: true)
    let mm = store.stateViews.first { $0.role == .movingMean }!
    let mv = store.stateViews.first { $0.role == .movingVariance }!
    #expect(allClose(copyOut(store.pointer(mm), 3), [0.25, 0, 0], tol: 1e-6))
    #expect(allClose(copyOut(store.pointer(mv), 3), [1.025, 0.9, 1.3], tol: 1e-6), "\(copyOut(store.pointer(mv), 3))")
    _ = try layer.forward(x.pointer, batch: 4, training: true)
    #expect(allClose(copyOut(store.pointer(mm), 3), [0.475, 0, 0], tol: 1e-6))
    #expect(allClose(copyOut(store.pointer(mv), 3), [1.0475, 0.81, 1.57], tol: 1e-6))

    // Inference: γ·(x − moving_mean)/√(moving_variance + ε) + β, and no update.
    let gamma: [Float] = [2, 0.5, -1]
    let beta: [Float] = [0.1, -0.3, 0.2]
    for i in 0..<3 {
      store.pointer(store.views[0])[i] = gamma[i]
      store.pointer(store.views[1])[i] = beta[i]
    }
    let y = copyOut(try layer.forward(x.pointer, batch: 4, training: false), 12)
    let m: [Float] = [0.475, 0, 0]
    let v: [Float] = [1.0475, 0.81, 1.57]
    for i in 0..<12 {
      let c = i % 3
      let want = gamma[c] * (x[i] - m[c]) / (v[c] + 1e-3).squareRoot() + beta[c]
      #expect(close(y[i], want, tol: 1e-5), "y[\(i)] = \(y[i]) vs \(want)")
    }
    #expect(allClose(copyOut(store.pointer(mm), 3), [0.475, 0, 0], tol: 1e-6))
  }

  @Test("BatchNormalization 4-D moving variance takes the Bessel-corrected variance (n = B·H·W)")
  func batchNormMovingStatistics4D() throws {
    let layer = try BatchNormalization(inputShape: [1, 2, 2], momentum: 0.9)
    let store = bindStandalone(layer)
    layer.allocate(maxBatch: 2)
    // n = 2·1·2 = 4 per channel: channel 0 = [1, 2, 3, 4], channel 1 = [−2, 2, −2, 2].
    let x = FloatBuffer([1, -2, 2, 2, 3, -2, 4, 2])
    _ = try layer.forward(x.pointer, batch: 2, training: true)
    let mm = store.stateViews.first { $0.role == .movingMean }!
    let mv = store.stateViews.first { $0.role == .movingVariance }!
    #expect(allClose(copyOut(store.pointer(mm), 2), [0.25, 0], tol: 1e-6))
    // Unbiased variances 5/3 and 16/3.
    let want: [Float] = [0.9 + 0.1 * 5 / 3, 0.9 + 0.1 * 16 / 3]
    #expect(allClose(copyOut(store.pointer(mv), 2), want, tol: 1e-6), "\(copyOut(store.pointer(mv), 2))")
    // The training output still normalizes with the biased variance.
    let y = copyOut(try layer.forward(x.pointer, batch: 2, training: true), 8)
    let want0 = (1 - 2.5) / (1.25 + 1e-3).squareRoot()
    #expect(close(y[0], Float(want0), tol: 1e-5))
  }

  @Test("BatchNormalization Keras defaults: momentum 0.99, epsilon 1e-3")
  func batchNormDefaults() throws {
    let layer = try #require(try LayerSpec(.batchNormalization).make(inputShape: [2], seed: 0) as? BatchNormalization)
    #expect(layer.momentum == 0.99 && layer.epsilon == Float(1e-3) && layer.center && layer.scale)
    let store = bindStandalone(layer)
    layer.allocate(maxBatch: 2)
    let x = FloatBuffer([1, 2, 3, 6])
    _ = try layer.forward(x.pointer, batch: 2, training: true)
    let mm = store.stateViews.first { $0.role == .movingMean }!
    #expect(allClose(copyOut(store.pointer(mm), 2), [0.02, 0.04], tol: 1e-6))
  }

  // MARK: MaxPool2D, Flatten

  @Test("MaxPool2D 2×2 valid: forward and gradients")
  func maxPoolValid() throws {
    let layer = try MaxPool2D(inputShape: [4, 4, 2])
    #expect(layer.outputShape == [2, 2, 2])
    let x = distinctValues(64, seed: 41, offset: -3)
    let h = GradientHarness(layer, batch: 2, input: x)
    let y = try h.output()
    for b in 0..<2 {
      for oy in 0..<2 {
        for ox in 0..<2 {
          for c in 0..<2 {
            var m = -Float.infinity
            for ky in 0..<2 { for kx in 0..<2 { m = max(m, x[((b * 4 + oy * 2 + ky) * 4 + ox * 2 + kx) * 2 + c]) } }
            #expect(y[((b * 2 + oy) * 2 + ox) * 2 + c] == m)
          }
        }
      }
    }
    try h.check(eps: 1e-2, atol: 1e-3, rtol: 1e-3, "MaxPool2D valid")
  }

  @Test("MaxPool2D same padding on negative inputs: padding never wins")
  func maxPoolSame() throws {
    let layer = try MaxPool2D(poolSize: (2, 2), padding: .same, inputShape: [5, 5, 1])
    #expect(layer.outputShape == [3, 3, 1])
    let x = distinctValues(25, seed: 42, offset: -5)  // all negative
    let h = GradientHarness(layer, batch: 1, input: x)
    let y = try h.output()
    // The last row/column windows cover only real pixels (pad after, 0 before).
    #expect(y[8] == x[24])
    #expect(y[2] == max(x[4], x[9]))
    #expect(y.allSatisfy { $0 < 0 })
    try h.check(eps: 1e-2, atol: 1e-3, rtol: 1e-3, "MaxPool2D same")
  }

  @Test("MaxPool2D routes a tie to the first maximal input")
  func maxPoolTie() throws {
    let layer = try MaxPool2D(inputShape: [2, 2, 1])
    bindStandalone(layer)
    layer.allocate(maxBatch: 1)
    let x = FloatBuffer([0.5, 1, 1, 0])
    _ = try layer.forward(x.pointer, batch: 1, training: true)
    let dy = FloatBuffer([3])
    let dx = copyOut(try #require(try layer.backward(dy.pointer, batch: 1, needInputGradient: true)), 4)
    #expect(dx == [0, 3, 0, 0])
  }

  @Test("Flatten passes values and gradients through")
  func flatten() throws {
    let layer = Flatten(inputShape: [2, 3, 2])
    #expect(layer.outputShape == [12])
    let h = GradientHarness(layer, batch: 2, input: randomValues(24, seed: 43))
    #expect(try h.output() == h.x.array)
    let a = try h.analytic()
    #expect(a.dx == h.r.array)
    expectGradients(a.dx, try h.numericInput(eps: 1e-2), atol: 1e-4, rtol: 1e-4, "Flatten")
  }

  // MARK: Activation

  @Test(
    "Activation gradients match finite differences",
    arguments: [ActivationKind.linear, .relu, .hardTanh, .tanh, .sigmoid, .softmax])
  func activation(kind: ActivationKind) throws {
    let layer = Activation(kind, inputShape: [5])
    let x = valuesAvoiding([-1, 0, 1], margin: 0.05, n: 20, seed: 51, in: -2.5...2.5)
    let h = GradientHarness(layer, batch: 4, input: x)
    let y = try h.output()
    for i in 0..<20 {
      let v = x[i]
      let want: Float
      switch kind {
      case .linear: want = v
      case .relu: want = max(v, 0)
      case .hardTanh: want = min(max(v, -1), 1)
      case .tanh: want = Float(Foundation.tanh(Double(v)))
      case .sigmoid: want = Float(1 / (1 + exp(-Double(v))))
      case .softmax:
        let row = (i / 5) * 5
        let denominator = (row..<(row + 5)).map { exp(Double(x[$0])) }.reduce(0, +)
        want = Float(exp(Double(v)) / denominator)
      }
      #expect(close(y[i], want, tol: 1e-6), "\(kind) y[\(i)]")
    }
    if kind == .softmax {
      for row in 0..<4 { #expect(close(y[(row * 5)..<(row * 5 + 5)].reduce(0, +), 1, tol: 1e-6)) }
    }
    try h.check(eps: 1e-3, atol: 1e-3, rtol: 1e-3, "Activation \(kind.rawValue)")
  }

  @Test("Activation boundaries: relu'(0) = 0; hard_tanh' passes at ±1 inclusive")
  func activationBoundaries() throws {
    let x: [Float] = [-1.0001, -1, 0, 1, 1.0001]
    let dy: [Float] = [1, 2, 3, 4, 5]
    func gradient(_ kind: ActivationKind) throws -> [Float] {
      let layer = Activation(kind, inputShape: [5])
      layer.allocate(maxBatch: 1)
      let xb = FloatBuffer(x)
      let db = FloatBuffer(dy)
      _ = try layer.forward(xb.pointer, batch: 1, training: true)
      return copyOut(try #require(try layer.backward(db.pointer, batch: 1, needInputGradient: true)), 5)
    }
    #expect(try gradient(.relu) == [0, 0, 0, 4, 5])
    #expect(try gradient(.hardTanh) == [0, 2, 3, 4, 0])
    #expect(throws: BNNError.unknownActivation("gelu")) { try Activation(named: "gelu", inputShape: [1]) }
  }

  // MARK: Dropout

  @Test("Dropout with a fixed seed: mask of 0 and 1/(1 − rate), gradient through the same mask")
  func dropout() throws {
    let rate: Float = 0.25
    let layer = try Dropout(rate: rate, inputShape: [10], seed: 5)
    let h = GradientHarness(layer, batch: 4, input: randomValues(40, seed: 61, in: 0.5...1.5))
    h.beforeForward = { layer.random = SplitMix64(seed: 42) }
    let y = try h.output()
    let x = h.x.array
    let keep = 1 / (1 - rate)
    var dropped = 0
    for i in 0..<40 {
      if y[i] == 0 { dropped += 1 } else { #expect(close(y[i], x[i] * keep, tol: 1e-6)) }
    }
    #expect(dropped > 0 && dropped < 40, "dropped \(dropped) of 40")
    // The mask comes from Flip's generator: the same draws, in order.
    var g = SplitMix64(seed: 42)
    for i in 0..<40 { #expect((y[i] == 0) == (g.nextUnitFloat() < rate), "mask[\(i)]") }
    let a = try h.analytic()
    for i in 0..<40 { #expect(a.dx[i] == (y[i] == 0 ? 0 : h.r[i] * keep)) }
    expectGradients(a.dx, try h.numericInput(eps: 1e-2), atol: 1e-4, rtol: 1e-4, "Dropout")
    // Inference is the identity.
    #expect(try h.output(training: false) == x)
    // A new training forward draws a new mask.
    h.beforeForward = {}
    let first = try h.output()
    let second = try h.output()
    #expect(first != second)
  }

  // MARK: Accumulation conventions

  @Test("parameter gradients accumulate across backward calls; input gradients are overwritten")
  func gradientsAccumulate() throws {
    let layer = try QuantConv2D(filters: 2, kernelSize: (2, 2), inputShape: [3, 3, 1], kernelQuantizer: SteSign())
    let h = GradientHarness(layer, batch: 2, input: randomValues(18, seed: 71))
    let once = try h.analytic()
    _ = try layer.forward(h.x.pointer, batch: 2, training: true)
    let dx2 = copyOut(try #require(try layer.backward(h.r.pointer, batch: 2, needInputGradient: true)), 18)
    let twice = h.store.gradients.array
    #expect(allClose(twice, once.parameters.map { 2 * $0 }, tol: 1e-6))
    #expect(allClose(dx2, once.dx, tol: 1e-6))
    #expect(once.parameters.contains { $0 != 0 })
    // needInputGradient: false still accumulates the parameter gradients. (A new forward first:
    // backward may reuse the forward's buffers, e.g. QuantConv2D's im2col matrix.)
    _ = try layer.forward(h.x.pointer, batch: 2, training: true)
    #expect(try layer.backward(h.r.pointer, batch: 2, needInputGradient: false) == nil)
    #expect(allClose(h.store.gradients.array, once.parameters.map { 3 * $0 }, tol: 1e-6))
  }

  @Test("two half batches accumulated equal one full batch (QuantDense → relu → QuantDense → softmax)")
  func halfBatchesEqualFullBatch() throws {
    func specs() -> [LayerSpec] {
      var d1 = LayerSpec(.quantDense)
      d1.units = 8
      d1.inputQuantizer = QuantizerSpec("ste_sign")
      d1.kernelQuantizer = QuantizerSpec("ste_sign")
      d1.kernelConstraint = .weightClip(clipValue: 1)
      var relu = LayerSpec(.activation)
      relu.activation = .relu
      var d2 = LayerSpec(.quantDense)
      d2.units = 4
      d2.kernelQuantizer = QuantizerSpec("ste_sign")
      var softmax = LayerSpec(.activation)
      softmax.activation = .softmax
      return [d1, relu, d2, softmax]
    }
    let full = try Model(specs: specs(), inputShape: [6], seed: 3)
    let halves = try Model(specs: specs(), inputShape: [6], seed: 3)
    #expect(full.store.values.array == halves.store.values.array)
    #expect(full.endsInSoftmax)
    full.allocate(maxBatch: 8)
    halves.allocate(maxBatch: 8)
    let x = FloatBuffer(randomValues(48, seed: 81, in: -1.5...1.5))
    let labels: [Int32] = [0, 1, 2, 3, 3, 2, 1, 0]
    let loss = SparseCategoricalCrossentropy(classes: 4)
    try labels.withUnsafeBufferPointer { l in
      full.store.zeroGradients()
      let a = try full.accumulateGradients(x.pointer, labels: l.baseAddress!, batch: 8, loss: loss)
      halves.store.zeroGradients()
      let b1 = try halves.accumulateGradients(x.pointer, labels: l.baseAddress!, batch: 4, loss: loss)
      let b2 = try halves.accumulateGradients(x.pointer + 24, labels: l.baseAddress! + 4, batch: 4, loss: loss)
      #expect(close(a.lossSum, b1.lossSum + b2.lossSum, tol: 1e-6))
      #expect(a.correct == b1.correct + b2.correct)
    }
    let g1 = full.store.gradients.array
    let g2 = halves.store.gradients.array
    #expect(g1.contains { abs($0) > 1e-3 })
    #expect(allClose(g1, g2, tol: 1e-5), "max difference \(maxDifference(g1, g2))")
  }

  /// Top-1 takes the first of equal scores; top-5 counts a label when fewer than 5 classes
  /// score strictly higher (TensorFlow's `in_top_k`: ties at the boundary are in).
  @Test func topOneAndTopFiveByHand() {
    let loss = SparseCategoricalCrossentropy(classes: 7)
    loss.allocate(maxBatch: 4)
    let scores: [Float] = [7, 6, 5, 4, 3, 2, 1] + [7, 6, 5, 4, 3, 2, 1] + [1, 1, 1, 1, 1, 1, 1] + [9, 1, 2, 3, 4, 5, 6]
    let labels: [Int32] = [4, 5, 6, 0]
    let r = scores.withUnsafeBufferPointer { s in
      labels.withUnsafeBufferPointer { l in
        loss.evaluate(s.baseAddress!, labels: l.baseAddress!, batch: 4, fromLogits: true, withGradient: false)
      }
    }
    // Sample 0: 4 higher (top-5 only); 1: 5 higher (neither); 2: all tied (top-5 only);
    // 3: the highest (both).
    #expect(r.correct == 1 && r.top5 == 3)
  }

  @Test("the loss gradient is softmax − onehot of the logits (sum over samples)")
  func lossGradient() throws {
    var d = LayerSpec(.dense)
    d.units = 3
    var softmax = LayerSpec(.activation)
    softmax.activation = .softmax
    let model = try Model(specs: [d, softmax], inputShape: [2], seed: 4)
    model.allocate(maxBatch: 2)
    let x = FloatBuffer([0.5, -1, 2, 0.25])
    let labels: [Int32] = [2, 0]
    let loss = SparseCategoricalCrossentropy(classes: 3)
    model.store.zeroGradients()
    let logits = copyOut(try model.forward(x.pointer, batch: 2, training: true, through: 1), 6)
    let result = try labels.withUnsafeBufferPointer {
      try model.accumulateGradients(x.pointer, labels: $0.baseAddress!, batch: 2, loss: loss)
    }
    var wantLoss = 0.0
    var dz = [Double](repeating: 0, count: 6)
    for n in 0..<2 {
      let z = (0..<3).map { Double(logits[n * 3 + $0]) }
      let lse = log(z.map(exp).reduce(0, +))
      wantLoss += lse - z[Int(labels[n])]
      for j in 0..<3 { dz[n * 3 + j] = exp(z[j] - lse) - (j == Int(labels[n]) ? 1 : 0) }
    }
    #expect(close(result.lossSum, wantLoss, tol: 1e-6))
    // Bias gradient = Σ_n dz; kernel gradient = xᵀ·dz.
    let bv = model.store.views[1]
    let kv = model.store.views[0]
    for j in 0..<3 {
      #expect(close(model.store.gradients[bv.offset + j], Float(dz[j] + dz[3 + j]), tol: 1e-5))
      for i in 0..<2 {
        let want = Double(x[i]) * dz[j] + Double(x[2 + i]) * dz[3 + j]
        #expect(close(model.store.gradients[kv.offset + i * 3 + j], Float(want), tol: 1e-5))
      }
    }
  }
}
