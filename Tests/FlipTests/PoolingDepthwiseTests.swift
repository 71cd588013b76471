import FlipTensor
import Foundation
import FlipTraining
import Testing

@testable import FlipBNN
@testable import FlipCLI

// AveragePooling2D, GlobalAveragePooling2D, DepthwiseConv2D and QuantDepthwiseConv2D: forward
// passes against hand-computed values and direct references, backward passes against central
// differences (GradientHarness, LayerGradientTests.swift), the quantized pseudo-gradients by
// hand, the accumulation convention, configs, summaries and errors.

/// Keras `same` padding: output size `⌈N/S⌉` and padding before `⌊max((O − 1)·S + K − N, 0)/2⌋`.
private func kerasSame(_ input: Int, _ kernel: Int, _ stride: Int) -> (out: Int, before: Int) {
  let out = (input + stride - 1) / stride
  return (out, max((out - 1) * stride + kernel - input, 0) / 2)
}

/// Keras `valid`: output size `⌊(N − K)/S⌋ + 1`, no padding.
private func kerasValid(_ input: Int, _ kernel: Int, _ stride: Int) -> (out: Int, before: Int) {
  ((input - kernel) / stride + 1, 0)
}

/// The sizes of one depthwise case.
struct DepthwiseCase: CustomStringConvertible, Sendable {
  var h: Int, w: Int, c: Int
  var kh: Int, kw: Int
  var sh: Int, sw: Int
  var m: Int
  var padding: Padding
  var batch = 2

  var outH: (out: Int, before: Int) { padding == .same ? kerasSame(h, kh, sh) : kerasValid(h, kh, sh) }
  var outW: (out: Int, before: Int) { padding == .same ? kerasSame(w, kw, sw) : kerasValid(w, kw, sw) }
  var description: String {
    "\(h)×\(w)×\(c) k\(kh)×\(kw) s\(sh)×\(sw) M\(m) \(padding.rawValue)"
  }
}

/// Direct depthwise convolution, `tf.nn.depthwise_conv2d`'s definition: output channel c·M + m is
/// input channel c convolved with kernel[:, :, c, m]; out-of-image taps read `padValue`.
private func referenceDepthwise(
  _ x: [Float], _ k: [Float], bias: [Float]?, _ s: DepthwiseCase, padValue: Float = 0
) -> [Float] {
  let (oh, pt) = s.outH
  let (ow, pl) = s.outW
  let f = s.c * s.m
  var y = [Float](repeating: 0, count: s.batch * oh * ow * f)
  for b in 0..<s.batch {
    for oy in 0..<oh {
      for ox in 0..<ow {
        for c in 0..<s.c {
          for m in 0..<s.m {
            var sum = Double(bias?[c * s.m + m] ?? 0)
            for ky in 0..<s.kh {
              for kx in 0..<s.kw {
                let iy = oy * s.sh - pt + ky
                let ix = ox * s.sw - pl + kx
                let inside = iy >= 0 && iy < s.h && ix >= 0 && ix < s.w
                let v = inside ? x[((b * s.h + iy) * s.w + ix) * s.c + c] : padValue
                let weight = k[((ky * s.kw + kx) * s.c + c) * s.m + m]
                sum += Double(v) * Double(weight)
              }
            }
            y[((b * oh + oy) * ow + ox) * f + c * s.m + m] = Float(sum)
          }
        }
      }
    }
  }
  return y
}

/// The depthwise kernel's gradient `Σ x̃·dy` and the input's gradient `Σ dy·K` by their definitions.
private func referenceDepthwiseGradients(
  _ x: [Float], _ k: [Float], dy: [Float], _ s: DepthwiseCase, padValue: Float = 0
) -> (dk: [Float], dx: [Float]) {
  let (oh, pt) = s.outH
  let (ow, pl) = s.outW
  let f = s.c * s.m
  var dk = [Double](repeating: 0, count: k.count)
  var dx = [Double](repeating: 0, count: x.count)
  for b in 0..<s.batch {
    for oy in 0..<oh {
      for ox in 0..<ow {
        for c in 0..<s.c {
          for m in 0..<s.m {
            let g = Double(dy[((b * oh + oy) * ow + ox) * f + c * s.m + m])
            for ky in 0..<s.kh {
              for kx in 0..<s.kw {
                let iy = oy * s.sh - pt + ky
                let ix = ox * s.sw - pl + kx
                let ki = ((ky * s.kw + kx) * s.c + c) * s.m + m
                if iy >= 0 && iy < s.h && ix >= 0 && ix < s.w {
                  let xi = ((b * s.h + iy) * s.w + ix) * s.c + c
                  dk[ki] += Double(x[xi]) * g
                  dx[xi] += Double(k[ki]) * g
                } else {
                  dk[ki] += Double(padValue) * g
                }
              }
            }
          }
        }
      }
    }
  }
  return (dk.map { Float($0) }, dx.map { Float($0) })
}

/// Mean pooling over the in-bounds part of each window (TensorFlow's `avg_pool`).
private func referenceAveragePool(
  _ x: [Float], batch: Int, h: Int, w: Int, c: Int, pool: (Int, Int), strides: (Int, Int), padding: Padding
) -> [Float] {
  let (oh, pt) = padding == .same ? kerasSame(h, pool.0, strides.0) : kerasValid(h, pool.0, strides.0)
  let (ow, pl) = padding == .same ? kerasSame(w, pool.1, strides.1) : kerasValid(w, pool.1, strides.1)
  var y = [Float](repeating: 0, count: batch * oh * ow * c)
  for b in 0..<batch {
    for oy in 0..<oh {
      for ox in 0..<ow {
        for ch in 0..<c {
          var sum = 0.0
          var n = 0
          for ky in 0..<pool.0 {
            for kx in 0..<pool.1 {
              let iy = oy * strides.0 - pt + ky
              let ix = ox * strides.1 - pl + kx
              guard iy >= 0, iy < h, ix >= 0, ix < w else { continue }
              sum += Double(x[((b * h + iy) * w + ix) * c + ch])
              n += 1
            }
          }
          y[((b * oh + oy) * ow + ox) * c + ch] = Float(sum / Double(n))
        }
      }
    }
  }
  return y
}

/// Writes `values` into a view of `store`.
private func setValues(_ store: ParameterStore, _ view: ParameterView, _ values: [Float]) {
  precondition(values.count == view.count)
  let p = store.pointer(view)
  for i in 0..<values.count { p[i] = values[i] }
}

let depthwiseCases: [DepthwiseCase] = [
  DepthwiseCase(h: 5, w: 5, c: 3, kh: 3, kw: 3, sh: 1, sw: 1, m: 1, padding: .valid),
  DepthwiseCase(h: 5, w: 5, c: 3, kh: 3, kw: 3, sh: 1, sw: 1, m: 2, padding: .same),
  DepthwiseCase(h: 6, w: 6, c: 2, kh: 3, kw: 3, sh: 2, sw: 2, m: 2, padding: .same),
  DepthwiseCase(h: 7, w: 6, c: 2, kh: 3, kw: 2, sh: 2, sw: 1, m: 1, padding: .same),
  DepthwiseCase(h: 6, w: 5, c: 3, kh: 2, kw: 2, sh: 2, sw: 2, m: 2, padding: .valid),
  DepthwiseCase(h: 4, w: 4, c: 1, kh: 1, kw: 1, sh: 1, sw: 1, m: 3, padding: .valid, batch: 3),
]

/// One average-pooling case: input (H, W, C), window, strides, padding.
struct AveragePoolCase: CustomStringConvertible, Sendable {
  var shape: [Int]
  var pool: (Int, Int)
  var strides: (Int, Int)
  var padding: Padding
  var description: String { "\(shape) pool \(pool) strides \(strides) \(padding.rawValue)" }
}

let averagePoolCases: [AveragePoolCase] = [
  AveragePoolCase(shape: [5, 5, 2], pool: (2, 2), strides: (2, 2), padding: .valid),
  AveragePoolCase(shape: [5, 5, 2], pool: (2, 2), strides: (2, 2), padding: .same),
  AveragePoolCase(shape: [6, 5, 3], pool: (3, 3), strides: (1, 1), padding: .same),
  AveragePoolCase(shape: [6, 5, 3], pool: (3, 2), strides: (2, 1), padding: .valid),
  AveragePoolCase(shape: [7, 7, 1], pool: (3, 3), strides: (2, 2), padding: .same),
  AveragePoolCase(shape: [4, 6, 2], pool: (2, 3), strides: (3, 2), padding: .same),
]

@Suite("Pooling and depthwise layers")
struct PoolingDepthwiseTests {

  // MARK: AveragePooling2D

  @Test("AveragePooling2D same, 2×2 stride 2 on 3×3: divisors 4, 2, 2, 1 (in-bounds elements only)")
  func averagePoolSameDivisorsStride2() throws {
    let layer = try AveragePooling2D(poolSize: (2, 2), padding: .same, inputShape: [3, 3, 1])
    #expect(layer.outputShape == [2, 2, 1])
    #expect(layer.divisor(outputRow: 0, column: 0) == 4)
    #expect(layer.divisor(outputRow: 0, column: 1) == 2)
    #expect(layer.divisor(outputRow: 1, column: 0) == 2)
    #expect(layer.divisor(outputRow: 1, column: 1) == 1)
    bindStandalone(layer)
    layer.allocate(maxBatch: 1)
    let x = FloatBuffer([1, 2, 3, 4, 5, 6, 7, 8, 9])
    let y = copyOut(try layer.forward(x.pointer, batch: 1, training: true), 4)
    // (1+2+4+5)/4, (3+6)/2, (7+8)/2, 9/1: padding (after, Keras's split) is neither summed nor counted.
    #expect(y == [3, 4.5, 7.5, 9])
    let dy = FloatBuffer([1, 1, 1, 1])
    let dx = copyOut(try #require(try layer.backward(dy.pointer, batch: 1, needInputGradient: true)), 9)
    #expect(dx == [0.25, 0.25, 0.5, 0.25, 0.25, 0.5, 0.5, 0.5, 1])
  }

  @Test("AveragePooling2D same, 3×3 stride 1 on 3×3: corners /4, edges /6, centre /9")
  func averagePoolSameDivisorsStride1() throws {
    let layer = try AveragePooling2D(poolSize: (3, 3), strides: (1, 1), padding: .same, inputShape: [3, 3, 2])
    #expect(layer.outputShape == [3, 3, 2])
    let divisors = (0..<3).flatMap { oy in (0..<3).map { ox in layer.divisor(outputRow: oy, column: ox) } }
    #expect(divisors == [4, 6, 4, 6, 9, 6, 4, 6, 4])
    bindStandalone(layer)
    layer.allocate(maxBatch: 1)
    // Channel 0: 1…9; channel 1: 10·(1…9).
    var values: [Float] = []
    for i in 1...9 { values += [Float(i), Float(10 * i)] }
    let x = FloatBuffer(values)
    let y = copyOut(try layer.forward(x.pointer, batch: 1, training: true), 18)
    let channel0 = stride(from: 0, to: 18, by: 2).map { y[$0] }
    let channel1 = stride(from: 1, to: 18, by: 2).map { y[$0] }
    // (1+2+4+5)/4 = 3, (1+2+3+4+5+6)/6 = 3.5, (2+3+5+6)/4 = 4, (1+2+4+5+7+8)/6 = 4.5, 45/9 = 5, ...
    let want: [Float] = [3, 3.5, 4, 4.5, 5, 5.5, 6, 6.5, 7]
    #expect(allClose(channel0, want, tol: 1e-6), "\(channel0)")
    #expect(allClose(channel1, want.map { 10 * $0 }, tol: 1e-6), "\(channel1)")
  }

  @Test("AveragePooling2D: Keras defaults (pool 2×2, strides = pool_size, valid) and a hand-computed window")
  func averagePoolDefaults() throws {
    let layer = try #require(
      try LayerSpec(.averagePooling2D).make(inputShape: [4, 5, 1], seed: 0) as? AveragePooling2D)
    #expect(layer.outputShape == [2, 2, 1])
    #expect(layer.geometry.strideHeight == 2 && layer.geometry.strideWidth == 2)
    #expect(layer.padding == .valid && layer.typeName == "average_pooling2d")
    bindStandalone(layer)
    layer.allocate(maxBatch: 1)
    let x = FloatBuffer((0..<20).map(Float.init))
    let y = copyOut(try layer.forward(x.pointer, batch: 1, training: false), 4)
    // Rows 0–1 × columns 0–1 of a 4×5 grid: (0 + 1 + 5 + 6)/4 = 3; the last column is dropped.
    #expect(y == [3, 5, 13, 15])
  }

  @Test(
    "AveragePooling2D forward matches the reference and gradients match finite differences",
    arguments: averagePoolCases)
  func averagePoolGradients(_ p: AveragePoolCase) throws {
    let (shape, pool, strides, padding) = (p.shape, p.pool, p.strides, p.padding)
    let layer = try AveragePooling2D(poolSize: pool, strides: strides, padding: padding, inputShape: shape)
    let batch = 2
    let x = randomValues(batch * layer.inputSize, seed: 101)
    let h = GradientHarness(layer, batch: batch, input: x)
    let want = referenceAveragePool(
      x, batch: batch, h: shape[0], w: shape[1], c: shape[2], pool: pool, strides: strides, padding: padding)
    let y = try h.output()
    #expect(allClose(y, want, tol: 1e-6), "forward differs by \(maxDifference(y, want))")
    try h.check(eps: 1e-2, atol: 1e-4, rtol: 1e-3, "AveragePooling2D \(p)")
  }

  // MARK: GlobalAveragePooling2D

  @Test("GlobalAveragePooling2D: mean over H and W per channel; keepdims; gradients")
  func globalAveragePool() throws {
    let layer = try GlobalAveragePooling2D(inputShape: [2, 3, 2])
    #expect(layer.outputShape == [2] && !layer.keepdims && layer.typeName == "global_average_pooling2d")
    // Channel 0: 1…6 (mean 3.5); channel 1: 0, 0, 0, 0, 0, 6 (mean 1).
    let x: [Float] = [1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6, 6]
    let h = GradientHarness(layer, batch: 1, input: x)
    #expect(allClose(try h.output(), [3.5, 1], tol: 1e-7))
    let a = try h.analytic()
    for i in 0..<12 { #expect(close(a.dx[i], h.r[i % 2] / 6, tol: 1e-7)) }
    let shapes: [[Int]] = [[4, 4, 3], [5, 3, 1], [1, 1, 4]]
    for shape in shapes {
      let g = try GlobalAveragePooling2D(inputShape: shape)
      try GradientHarness(g, batch: 3, input: randomValues(3 * g.inputSize, seed: 102)).check(
        eps: 1e-2, atol: 1e-4, rtol: 1e-3, "GlobalAveragePooling2D \(shape)")
    }
    let kept = try GlobalAveragePooling2D(keepdims: true, inputShape: [2, 3, 2])
    #expect(kept.outputShape == [1, 1, 2])
    let hk = GradientHarness(kept, batch: 1, input: x)
    #expect(allClose(try hk.output(), [3.5, 1], tol: 1e-7))
  }

  // MARK: DepthwiseConv2D

  @Test("DepthwiseConv2D by hand: 3×3×2 input, 2×2 kernel, depth_multiplier 2, output order c·M + m")
  func depthwiseByHand() throws {
    let layer = try QuantDepthwiseConv2D(kernelSize: (2, 2), depthMultiplier: 2, inputShape: [3, 3, 2])
    #expect(layer.typeName == "depthwise_conv2d" && layer.outputShape == [2, 2, 4])
    let store = bindStandalone(layer)
    #expect(
      store.views.map(\.name) == ["layers.0.depthwise_conv2d.depthwise_kernel", "layers.0.depthwise_conv2d.bias"])
    #expect(store.views[0].shape == [2, 2, 2, 2] && store.views[1].shape == [4])
    // Kernel (KH, KW, C, M): c0m0 picks the top-left tap, c0m1 the bottom-right,
    // c1m0 sums the window, c1m1 is top-left − top-right.
    var k = [Float](repeating: 0, count: 16)
    func set(_ ky: Int, _ kx: Int, _ c: Int, _ m: Int, _ v: Float) { k[((ky * 2 + kx) * 2 + c) * 2 + m] = v }
    set(0, 0, 0, 0, 1)
    set(1, 1, 0, 1, 1)
    for ky in 0..<2 { for kx in 0..<2 { set(ky, kx, 1, 0, 1) } }
    set(0, 0, 1, 1, 1)
    set(0, 1, 1, 1, -1)
    setValues(store, store.views[0], k)
    setValues(store, store.views[1], [0.5, 0, -1, 0])
    // Channel 0: [[1, 2, 3], [4, 5, 6], [7, 8, 9]]; channel 1: [[2, 0, 1], [1, 3, 0], [0, 1, 2]].
    let c0: [Float] = [1, 2, 3, 4, 5, 6, 7, 8, 9]
    let c1: [Float] = [2, 0, 1, 1, 3, 0, 0, 1, 2]
    let x = FloatBuffer((0..<9).flatMap { [c0[$0], c1[$0]] })
    layer.allocate(maxBatch: 1)
    let y = copyOut(try layer.forward(x.pointer, batch: 1, training: true), 16)
    let want: [Float] = [
      1.5, 5, 5, 2,  // (0, 0): 1 + 0.5, 5, (2+0+1+3) − 1, 2 − 0
      2.5, 6, 3, -1,  // (0, 1): 2 + 0.5, 6, (0+1+3+0) − 1, 0 − 1
      4.5, 8, 4, -2,  // (1, 0): 4 + 0.5, 8, (1+3+0+1) − 1, 1 − 3
      5.5, 9, 5, 3,  // (1, 1): 5 + 0.5, 9, (3+0+1+2) − 1, 3 − 0
    ]
    #expect(y == want)
    // Backward with dy = 1 on output channel 1 only (c0m1, the bottom-right tap): dx of channel 0
    // is 1 at the four bottom-right taps, the kernel's gradient at (1, 1, 0, 1) is 5+6+8+9.
    var dyValues = [Float](repeating: 0, count: 16)
    for p in 0..<4 { dyValues[p * 4 + 1] = 1 }
    let dy = FloatBuffer(dyValues)
    store.zeroGradients()
    let dx = copyOut(try #require(try layer.backward(dy.pointer, batch: 1, needInputGradient: true)), 18)
    let dx0 = stride(from: 0, to: 18, by: 2).map { dx[$0] }
    let dx1 = stride(from: 1, to: 18, by: 2).map { dx[$0] }
    #expect(dx0 == [0, 0, 0, 0, 1, 1, 0, 1, 1])
    #expect(dx1 == [Float](repeating: 0, count: 9))
    let dk = copyOut(store.gradient(store.views[0]), 16)
    var wantDk = [Float](repeating: 0, count: 16)
    for ky in 0..<2 {
      for kx in 0..<2 {
        // Σ over the four outputs of x0 at the tap's offset.
        var s: Float = 0
        for oy in 0..<2 { for ox in 0..<2 { s += c0[(oy + ky) * 3 + ox + kx] } }
        wantDk[((ky * 2 + kx) * 2 + 0) * 2 + 1] = s
      }
    }
    #expect(wantDk[((1 * 2 + 1) * 2 + 0) * 2 + 1] == 28)
    #expect(dk == wantDk)
    #expect(copyOut(store.gradient(store.views[1]), 4) == [0, 4, 0, 0])
  }

  @Test(
    "DepthwiseConv2D forward matches tf.nn.depthwise_conv2d's definition; gradients match finite differences",
    arguments: depthwiseCases)
  func depthwiseGradients(_ s: DepthwiseCase) throws {
    let layer = try QuantDepthwiseConv2D(
      kernelSize: (s.kh, s.kw), strides: (s.sh, s.sw), padding: s.padding, depthMultiplier: s.m,
      inputShape: [s.h, s.w, s.c])
    #expect(layer.outputShape == [s.outH.out, s.outW.out, s.c * s.m])
    let x = randomValues(s.batch * layer.inputSize, seed: 103)
    let h = GradientHarness(layer, batch: s.batch, input: x)
    let k = copyOut(h.store.pointer(h.store.views[0]), s.kh * s.kw * s.c * s.m)
    let bias = copyOut(h.store.pointer(h.store.views[1]), s.c * s.m)
    let want = referenceDepthwise(x, k, bias: bias, s)
    let y = try h.output()
    #expect(allClose(y, want, tol: 1e-5), "forward differs by \(maxDifference(y, want))")
    try h.check(eps: 1e-2, atol: 1e-3, rtol: 1e-3, "DepthwiseConv2D \(s)")
    // A smaller batch uses a prefix of the buffers.
    if s.batch > 1 {
      let y1 = copyOut(try layer.forward(h.x.pointer, batch: 1, training: true), layer.outputSize)
      #expect(allClose(y1, Array(want.prefix(layer.outputSize)), tol: 1e-5))
    }
  }

  @Test("DepthwiseConv2D without bias: one variable, the same gradients")
  func depthwiseNoBias() throws {
    let layer = try QuantDepthwiseConv2D(
      kernelSize: (3, 3), strides: (2, 2), padding: .same, depthMultiplier: 2, inputShape: [5, 5, 2], useBias: false)
    #expect(layer.parameterSpecs.count == 1)
    try GradientHarness(layer, batch: 2, input: randomValues(100, seed: 104)).check(
      eps: 1e-2, atol: 1e-3, rtol: 1e-3, "DepthwiseConv2D(no bias)")
  }

  @Test(
    "QuantDepthwiseConv2D same, pad_values 1, noop quantizers: padding takes 1; forward and gradients",
    arguments: [1, 2])
  func quantDepthwisePadValues(multiplier: Int) throws {
    let s = DepthwiseCase(h: 5, w: 4, c: 2, kh: 3, kw: 3, sh: 2, sw: 1, m: multiplier, padding: .same)
    let layer = try QuantDepthwiseConv2D(
      kernelSize: (3, 3), strides: (2, 1), padding: .same, padValue: 1, depthMultiplier: multiplier,
      inputShape: [5, 4, 2], inputQuantizer: NoOpQuantizer(precision: 1),
      depthwiseQuantizer: NoOpQuantizer(precision: 1))
    #expect(layer.typeName == "quant_depthwise_conv2d")
    let x = randomValues(s.batch * layer.inputSize, seed: 105)
    let h = GradientHarness(layer, batch: s.batch, input: x)
    let k = copyOut(h.store.pointer(h.store.views[0]), 9 * 2 * multiplier)
    let bias = copyOut(h.store.pointer(h.store.views[1]), 2 * multiplier)
    let want = referenceDepthwise(x, k, bias: bias, s, padValue: 1)
    let zeroPadded = referenceDepthwise(x, k, bias: bias, s, padValue: 0)
    #expect(maxDifference(want, zeroPadded) > 0.01)
    let y = try h.output()
    #expect(allClose(y, want, tol: 1e-5), "forward differs by \(maxDifference(y, want))")
    try h.check(eps: 1e-2, atol: 1e-3, rtol: 1e-3, "QuantDepthwiseConv2D(pad 1, M\(multiplier))")
  }

  @Test(
    "QuantDepthwiseConv2D ste_sign both: y = conv(sign(x) padded with pad_values, sign(K)); dK, dx masked by |·| ≤ 1")
  func quantDepthwiseSteSign() throws {
    let s = DepthwiseCase(h: 4, w: 4, c: 2, kh: 3, kw: 3, sh: 1, sw: 1, m: 2, padding: .same)
    let layer = try QuantDepthwiseConv2D(
      kernelSize: (3, 3), padding: .same, padValue: -1, depthMultiplier: 2, inputShape: [4, 4, 2],
      inputQuantizer: SteSign(), depthwiseQuantizer: SteSign(), depthwiseConstraint: .weightClip(clipValue: 1))
    #expect(layer.hasQuantizedKernel && layer.lastFlipRatio == nil)
    // Inputs with some |x| > 1 (no gradient) and zeros (sign +1).
    var x = randomValues(s.batch * layer.inputSize, seed: 106, in: -1.6...1.6)
    x[0] = 0
    x[5] = 1
    x[9] = -1
    let h = GradientHarness(layer, batch: s.batch, input: x)
    #expect(h.store.views[0].precision == 1)
    #expect(h.store.views[0].constraint == .weightClip(clipValue: 1))
    // Latent kernel with some |w| > 1 (masked) and a zero.
    var latent = randomValues(36, seed: 107, in: -1.3...1.3)
    latent[3] = 0
    latent[7] = -1
    setValues(h.store, h.store.views[0], latent)
    let bias = copyOut(h.store.pointer(h.store.views[1]), 4)
    let sx = x.map(binarySign)
    let sk = latent.map(binarySign)
    let want = referenceDepthwise(sx, sk, bias: bias, s, padValue: -1)
    let y = try h.output()
    #expect(allClose(y, want, tol: 1e-6), "forward differs by \(maxDifference(y, want))")
    let a = try h.analytic()
    let r = h.r.array
    let reference = referenceDepthwiseGradients(sx, sk, dy: r, s, padValue: -1)
    let wantDk = (0..<36).map { abs(latent[$0]) <= 1 ? reference.dk[$0] : 0 }
    let wantDx = (0..<x.count).map { abs(x[$0]) <= 1 ? reference.dx[$0] : 0 }
    let kernelView = h.store.views[0]
    let dk = Array(a.parameters[kernelView.offset..<(kernelView.offset + 36)])
    #expect(allClose(dk, wantDk, tol: 1e-5), "dK differs by \(maxDifference(dk, wantDk))")
    #expect(wantDk.contains(0) && wantDk.contains { $0 != 0 })
    #expect(allClose(a.dx, wantDx, tol: 1e-5), "dx differs by \(maxDifference(a.dx, wantDx))")
    let biasView = h.store.views[1]
    for j in 0..<4 {
      var sum: Float = 0
      for p in 0..<(s.batch * 16) { sum += r[p * 4 + j] }
      #expect(close(a.parameters[biasView.offset + j], sum, tol: 1e-5))
    }
    // Flip ratio: flipping the sign of four latent weights between two training forwards.
    _ = try h.output()
    let p = h.store.pointer(kernelView)
    for i in [1, 2, 10, 20] { p[i] = -p[i] + (p[i] == 0 ? -0.5 : 0) }
    _ = try h.output()
    #expect(layer.lastFlipRatio == 4.0 / 36)
  }

  @Test("QuantDepthwiseConv2D magnitude_aware_sign: one scale per multiplier m (all axes but the last)")
  func quantDepthwiseMagnitudeAware() throws {
    let layer = try QuantDepthwiseConv2D(
      kernelSize: (1, 1), depthMultiplier: 2, inputShape: [1, 1, 2], depthwiseQuantizer: MagnitudeAwareSign(),
      useBias: false)
    let store = bindStandalone(layer)
    // K (1, 1, 2, 2): m = 0 holds 1, −3 (scale 2); m = 1 holds 0.5, 0.5 (scale 0.5).
    setValues(store, store.views[0], [1, 0.5, -3, 0.5])
    layer.allocate(maxBatch: 1)
    let x = FloatBuffer([1, 1])
    let y = copyOut(try layer.forward(x.pointer, batch: 1, training: true), 4)
    #expect(y == [2, 0.5, -2, 0.5])
  }

  @Test("glorot_uniform for the depthwise kernel uses Keras's fans of (KH, KW, C, M)")
  func depthwiseInitializer() throws {
    #expect(Initializer.fans([3, 3, 4, 2]) == (36, 18))
    let layer = try QuantDepthwiseConv2D(kernelSize: (5, 5), inputShape: [8, 8, 16])
    let store = bindStandalone(layer, seed: 9)
    let w = copyOut(store.pointer(store.views[0]), 400)
    // fan_in = 5·5·16 = 400, fan_out = 5·5·1 = 25: limit √(6/425) ≈ 0.119 (not √(6/50) ≈ 0.346).
    let limit = Float((6.0 / 425).squareRoot())
    let largest = w.map(abs).max()!
    #expect(largest <= limit && largest > 0.9 * limit, "largest |w| \(largest), limit \(limit)")
    #expect(copyOut(store.pointer(store.views[1]), 16).allSatisfy { $0 == 0 })
  }

  // MARK: Accumulation convention

  @Test("parameter gradients accumulate: two backward passes give twice one; dx is overwritten")
  func depthwiseAccumulates() throws {
    let layer = try QuantDepthwiseConv2D(
      kernelSize: (3, 3), strides: (2, 2), padding: .same, padValue: 1, depthMultiplier: 2, inputShape: [5, 5, 2],
      inputQuantizer: SteSign(), depthwiseQuantizer: SteSign())
    let h = GradientHarness(layer, batch: 3, input: randomValues(150, seed: 108))
    let once = try h.analytic()
    _ = try layer.forward(h.x.pointer, batch: 3, training: true)
    let dx2 = copyOut(try #require(try layer.backward(h.r.pointer, batch: 3, needInputGradient: true)), 150)
    #expect(allClose(h.store.gradients.array, once.parameters.map { 2 * $0 }, tol: 1e-6))
    #expect(allClose(dx2, once.dx, tol: 1e-6))
    _ = try layer.forward(h.x.pointer, batch: 3, training: true)
    #expect(try layer.backward(h.r.pointer, batch: 3, needInputGradient: false) == nil)
    #expect(allClose(h.store.gradients.array, once.parameters.map { 3 * $0 }, tol: 1e-6))
  }

  @Test("two half batches accumulated equal one full batch (depthwise, pooling, global pooling)")
  func halfBatchesEqualFullBatch() throws {
    func specs() -> [LayerSpec] {
      var d1 = LayerSpec(.quantDepthwiseConv2D)
      d1.kernelSize = [3, 3]
      d1.padding = .same
      d1.padValues = 1
      d1.depthMultiplier = 2
      d1.inputQuantizer = QuantizerSpec("ste_sign")
      d1.depthwiseQuantizer = QuantizerSpec("ste_sign")
      d1.depthwiseConstraint = .weightClip(clipValue: 1)
      var pool = LayerSpec(.averagePooling2D)
      pool.padding = .same
      var d2 = LayerSpec(.depthwiseConv2D)
      d2.kernelSize = [2, 2]
      var relu = LayerSpec(.activation)
      relu.activation = .relu
      let gap = LayerSpec(.globalAveragePooling2D)
      var dense = LayerSpec(.dense)
      dense.units = 3
      var softmax = LayerSpec(.activation)
      softmax.activation = .softmax
      return [d1, pool, d2, relu, gap, dense, softmax]
    }
    let full = try Model(specs: specs(), inputShape: [7, 7, 2], seed: 5)
    let halves = try Model(specs: specs(), inputShape: [7, 7, 2], seed: 5)
    #expect(
      full.layers.map(\.name) == [
        "quant_depthwise_conv2d", "average_pooling2d", "depthwise_conv2d", "activation", "global_average_pooling2d",
        "dense", "activation_1",
      ])
    #expect(full.outputShape == [3])
    full.allocate(maxBatch: 8)
    halves.allocate(maxBatch: 8)
    let x = FloatBuffer(randomValues(8 * 98, seed: 109, in: -1.5...1.5))
    let labels: [Int32] = [0, 1, 2, 0, 1, 2, 2, 1]
    let loss = SparseCategoricalCrossentropy(classes: 3)
    try labels.withUnsafeBufferPointer { l in
      full.store.zeroGradients()
      let a = try full.accumulateGradients(x.pointer, labels: l.baseAddress!, batch: 8, loss: loss)
      halves.store.zeroGradients()
      let b1 = try halves.accumulateGradients(x.pointer, labels: l.baseAddress!, batch: 4, loss: loss)
      let b2 = try halves.accumulateGradients(x.pointer + 4 * 98, labels: l.baseAddress! + 4, batch: 4, loss: loss)
      #expect(close(a.lossSum, b1.lossSum + b2.lossSum, tol: 1e-6))
    }
    let g1 = full.store.gradients.array
    let g2 = halves.store.gradients.array
    #expect(g1.contains { abs($0) > 1e-3 })
    #expect(allClose(g1, g2, tol: 1e-5), "max difference \(maxDifference(g1, g2))")
    // Every variable of both depthwise layers got a gradient.
    for v in full.store.views where v.role == .depthwiseKernel {
      #expect(g1[v.offset..<(v.offset + v.count)].contains { $0 != 0 }, "\(v.name)")
    }
  }

  @Test("a training step with the new layers gives the same bits on 1 and 2 threads")
  func threadCountDoesNotChangeTheBits() throws {
    func specs() -> [LayerSpec] {
      var d1 = LayerSpec(.quantDepthwiseConv2D)
      d1.kernelSize = [3, 3]
      d1.strides = [2, 2]
      d1.padding = .same
      d1.padValues = 1
      d1.depthMultiplier = 3
      d1.inputQuantizer = QuantizerSpec("ste_sign")
      d1.depthwiseQuantizer = QuantizerSpec("ste_sign")
      var pool = LayerSpec(.averagePooling2D)
      pool.padding = .same
      pool.strides = [1, 1]
      var d2 = LayerSpec(.depthwiseConv2D)
      d2.kernelSize = [2, 2]
      let gap = LayerSpec(.globalAveragePooling2D)
      var dense = LayerSpec(.dense)
      dense.units = 5
      return [d1, pool, d2, gap, dense]
    }
    func step(threads: Int) throws -> (bits: [Float], log: ThreadLog) {
      let log = ThreadLog()
      let model = try Model(
        specs: specs(), inputShape: [9, 9, 2], seed: 6, compute: Compute(threads: threads, threadLog: log))
      model.allocate(maxBatch: 40)
      let optimizer = try OptimizerSpec.adam(learningRate: 0.01).make()
      try optimizer.prepare(store: model.store)
      let x = FloatBuffer(randomValues(40 * 162, seed: 110, in: -1.5...1.5))
      let labels = (0..<40).map { Int32($0 % 5) }
      let loss = SparseCategoricalCrossentropy(classes: 5)
      try labels.withUnsafeBufferPointer { l in
        for _ in 0..<2 {
          model.store.zeroGradients()
          _ = try model.accumulateGradients(x.pointer, labels: l.baseAddress!, batch: 40, loss: loss)
          optimizer.apply(store: model.store, clock: TrainingClock(), gradientScale: 1 / 40)
        }
      }
      return (model.store.values.array + model.store.gradients.array, log)
    }
    let one = try step(threads: 1)
    let two = try step(threads: 2)
    // The loops ran on the threads asked for (those of a single chunk inline), and so did oneDNN.
    #expect(one.log.loopTeams == [1] && two.log.loopTeams == [1, 2])
    #expect(one.log.oneDNNThreads == [1] && two.log.oneDNNThreads == [2])
    #expect(one.bits.contains { $0 != 0 })
    #expect(one.bits == two.bits)
  }

  // MARK: Configs

  @Test("YAML: the four layers parse with Keras/Larq keys, round-trip through yaml(), and build")
  func configRoundTrip() throws {
    let text = """
      layers:
        - {type: QuantDepthwiseConv2D, kernel_size: 3, strides: 2, padding: same, pad_values: 1.0, depth_multiplier: 2,
           input_quantizer: ste_sign, depthwise_quantizer: {type: ste_sign, clip_value: 1.0},
           depthwise_constraint: weight_clip, use_bias: false}
        - {type: AveragePooling2D, pool_size: [2, 2], strides: 1, padding: same}
        - {type: DepthwiseConv2D, kernel_size: [2, 3], depthwise_constraint: {type: weight_clip, clip_value: 0.5}}
        - {type: AvgPool2D}
        - {type: GlobalAveragePooling2D, keepdims: true}
        - {type: Flatten}
        - {type: GlobalAvgPool2D}
      """
    // The last layer cannot follow Flatten: parse first, then check the error on building.
    let c = try RunSettings.parse(yaml: text, file: "t.yaml")
    let d = c.layers[0]
    #expect(d.kind == .quantDepthwiseConv2D && d.kernelSize == [3, 3] && d.strides == [2, 2])
    #expect(d.padding == .same && d.padValues == 1 && d.depthMultiplier == 2 && !d.useBias)
    #expect(d.inputQuantizer == QuantizerSpec("ste_sign"))
    #expect(d.depthwiseQuantizer == QuantizerSpec("ste_sign", parameters: ["clip_value": 1]))
    #expect(d.depthwiseConstraint == .weightClip(clipValue: 1))
    #expect(c.layers[1].kind == .averagePooling2D && c.layers[1].poolSize == [2, 2] && c.layers[1].strides == [1, 1])
    #expect(c.layers[2].kind == .depthwiseConv2D && c.layers[2].kernelSize == [2, 3])
    #expect(c.layers[2].depthMultiplier == 1 && c.layers[2].useBias)
    #expect(c.layers[2].depthwiseConstraint == .weightClip(clipValue: 0.5))
    #expect(c.layers[3].kind == .averagePooling2D && c.layers[3].poolSize == nil)
    #expect(c.layers[4].kind == .globalAveragePooling2D && c.layers[4].keepdims)
    #expect(c.layers[6].kind == .globalAveragePooling2D && !c.layers[6].keepdims)

    let written = try c.yaml()
    #expect(written.contains("depthwise_quantizer") && written.contains("depthwise_constraint"))
    #expect(!written.contains("kernel_quantizer") && !written.contains("kernel_constraint"))
    let again = try RunSettings.parse(yaml: written, file: "round-trip")
    #expect(again == c)
    #expect(try RunSettings.parse(yaml: try again.yaml(), file: "round-trip 2") == c)

    do {
      _ = try Model(specs: c.layers, inputShape: [12, 12, 3], seed: 0)
      Issue.record("GlobalAveragePooling2D after Flatten must be an error")
    } catch { #expect("\(error)".contains("expects an image input"), "\(error)") }
    let model = try Model(specs: Array(c.layers.prefix(6)), inputShape: [12, 12, 3], seed: 0)
    #expect(model.layers.map(\.outputShape) == [[6, 6, 6], [6, 6, 6], [5, 4, 6], [2, 2, 6], [1, 1, 6], [6]])
    let names = model.store.views.map(\.name)
    #expect(
      names == [
        "layers.0.quant_depthwise_conv2d.depthwise_kernel", "layers.2.depthwise_conv2d.depthwise_kernel",
        "layers.2.depthwise_conv2d.bias",
      ])
    #expect(model.store.views.map(\.shape) == [[3, 3, 3, 2], [2, 3, 6, 1], [6]])
    #expect(model.store.views[0].precision == 1 && model.store.views[1].precision == 32)
    #expect(model.flipCountingLayers == ["quant_depthwise_conv2d"])
    // realValued() drops the depthwise quantizer and makes the input quantizer hard_tanh.
    let real = c.layers.realValued()
    #expect(real[0].depthwiseQuantizer == nil && real[0].inputQuantizer == QuantizerSpec("hard_tanh"))
  }

  private func parseError(_ text: String) -> String {
    do {
      _ = try RunSettings.parse(yaml: text, file: "bad.yaml")
      return "no error"
    } catch { return "\(error)" }
  }

  private func buildError(_ yaml: String, inputShape: [Int]) -> String {
    do {
      let c = try RunSettings.parse(yaml: yaml, file: "bad.yaml")
      _ = try Model(specs: c.layers, inputShape: inputShape, seed: 0)
      return "no error"
    } catch { return "\(error)" }
  }

  @Test("bad inputs give clear errors")
  func badInputs() throws {
    // Unknown keys, as for every layer: each depthwise layer names its own kernel keys.
    let wrongKey = parseError("layers: [{type: QuantDepthwiseConv2D, kernel_size: 3, kernel_quantizer: ste_sign}]")
    #expect(wrongKey.contains("unknown key 'kernel_quantizer' for QuantDepthwiseConv2D"), "\(wrongKey)")
    #expect(wrongKey.contains("depthwise_quantizer"))
    #expect(
      parseError("layers: [{type: DepthwiseConv2D, kernel_size: 3, input_quantizer: ste_sign}]").contains(
        "unknown key 'input_quantizer' for DepthwiseConv2D"))
    #expect(
      parseError("layers: [{type: DepthwiseConv2D, kernel_size: 3, pad_values: 1}]").contains(
        "unknown key 'pad_values'"))
    #expect(parseError("layers: [{type: AveragePooling2D, filters: 3}]").contains("unknown key 'filters'"))
    #expect(parseError("layers: [{type: GlobalAveragePooling2D, pool_size: 2}]").contains("unknown key 'pool_size'"))
    #expect(
      parseError("layers: [{type: QuantDepthwiseConv2D, kernel_size: 3, depthwise_quantizer: ste_sine}]").contains(
        "unknown quantizer 'ste_sine'"))
    #expect(
      parseError("layers: [{type: QuantDepthwiseConv2D, kernel_size: 3, depth_multiplier: two}]").contains(
        "expected an integer"))
    #expect(parseError("layers: [{type: GlobalAveragePooling2D, keepdims: 2}]").contains("expected true or false"))

    // Zero pool size.
    let zeroPool = buildError("layers: [{type: AveragePooling2D, pool_size: 0}]", inputShape: [4, 4, 1])
    #expect(zeroPool.contains("AveragePooling2D: invalid 'pool_size'"), "\(zeroPool)")
    #expect(throws: BNNError.self) { try AveragePooling2D(poolSize: (0, 2), inputShape: [4, 4, 1]) }
    do {
      _ = try AveragePooling2D(poolSize: (2, 0), inputShape: [4, 4, 1])
      Issue.record("a zero pool size must be an error")
    } catch let e as BNNError {
      #expect(e.description == "AveragePooling2D: invalid 'pool_size': must be positive integers, got (2, 0)")
    }
    let zeroStride = buildError("layers: [{type: AveragePooling2D, strides: [1, 0]}]", inputShape: [4, 4, 1])
    #expect(zeroStride.contains("invalid 'strides'"), "\(zeroStride)")

    // depth_multiplier 0.
    let zeroMultiplier = buildError(
      "layers: [{type: DepthwiseConv2D, kernel_size: 3, depth_multiplier: 0}]", inputShape: [5, 5, 2])
    #expect(
      zeroMultiplier.contains("DepthwiseConv2D: invalid 'depth_multiplier': must be a positive integer, got 0"),
      "\(zeroMultiplier)")
    let negativeMultiplier = buildError(
      "layers: [{type: QuantDepthwiseConv2D, kernel_size: 3, depth_multiplier: -2}]", inputShape: [5, 5, 2])
    #expect(negativeMultiplier.contains("QuantDepthwiseConv2D: invalid 'depth_multiplier'"), "\(negativeMultiplier)")
    #expect(
      buildError("layers: [{type: DepthwiseConv2D}]", inputShape: [5, 5, 2]).contains("'kernel_size': is required"))

    // A window larger than the input with valid padding (fine with same).
    let tooLarge = buildError("layers: [{type: AveragePooling2D, pool_size: 3}]", inputShape: [2, 2, 1])
    #expect(tooLarge.contains("layer 0 (AveragePooling2D)"), "\(tooLarge)")
    #expect(tooLarge.contains("a 3×3 window does not fit a 2×2 input with valid padding"), "\(tooLarge)")
    #expect(
      buildError("layers: [{type: AveragePooling2D, pool_size: 3, padding: same}]", inputShape: [2, 2, 1])
        == "no error")
    let kernelTooLarge = buildError("layers: [{type: DepthwiseConv2D, kernel_size: 4}]", inputShape: [3, 3, 1])
    #expect(kernelTooLarge.contains("does not fit"), "\(kernelTooLarge)")

    // Inputs that are not images.
    let flat = buildError("layers: [{type: DepthwiseConv2D, kernel_size: 1}]", inputShape: [10])
    #expect(flat.contains("expects an image input (height, width, channels)"), "\(flat)")
    #expect(
      buildError("layers: [{type: GlobalAveragePooling2D}]", inputShape: [10]).contains("expects an image input"))

    // Quantizers only on the quantized layer.
    var spec = LayerSpec(.depthwiseConv2D)
    spec.kernelSize = [3, 3]
    spec.depthwiseQuantizer = QuantizerSpec("ste_sign")
    #expect(
      throws: BNNError.invalidParameter(
        owner: "DepthwiseConv2D", parameter: "depthwise_quantizer",
        reason: "only QuantDense, QuantConv2D and QuantDepthwiseConv2D take quantizers")
    ) {
      try spec.make(inputShape: [4, 4, 1], seed: 0)
    }
  }

  // MARK: Summary

  @Test("summary rows as larq.models.summary counts them")
  func summaryRows() throws {
    var d1 = LayerSpec(.quantDepthwiseConv2D)
    d1.kernelSize = [3, 3]
    d1.padding = .same
    d1.depthMultiplier = 2
    d1.inputQuantizer = QuantizerSpec("ste_sign")
    d1.depthwiseQuantizer = QuantizerSpec("ste_sign")
    d1.useBias = false
    var d2 = LayerSpec(.depthwiseConv2D)
    d2.kernelSize = [3, 3]
    let pool = LayerSpec(.averagePooling2D)
    let gap = LayerSpec(.globalAveragePooling2D)
    var dense = LayerSpec(.quantDense)
    dense.units = 4
    dense.inputQuantizer = QuantizerSpec("ste_sign")
    dense.kernelQuantizer = QuantizerSpec("ste_sign")
    let model = try Model(specs: [d1, d2, pool, gap, dense], inputShape: [8, 8, 3], seed: 0)
    let summary = ModelSummary(modelName: "depthwise", model: model)
    let rows = summary.rows
    // quant_depthwise_conv2d: 3·3·3·2 = 54 one-bit weights; 8·8·54 = 3456 one-bit MACs.
    #expect(rows[0].profile.inputPrecision == 1 && rows[0].profile.outputShape == [8, 8, 6])
    #expect(rows[0].weightCount(precision: 1) == 54 && rows[0].weightCount(precision: 32) == 0)
    #expect(rows[0].macs(precision: 1) == 3456 && rows[0].macs(precision: 32) == 0)
    // depthwise_conv2d: 3·3·6·1 = 54 + 6 bias 32-bit weights; 6·6·54 = 1944 32-bit MACs (bias not counted).
    #expect(rows[1].profile.inputPrecision == nil && rows[1].profile.outputShape == [6, 6, 6])
    #expect(rows[1].weightCount(precision: 32) == 60 && rows[1].macs(precision: 32) == 1944)
    // average_pooling2d: no weights, 0 MACs; global_average_pooling2d: no weights, MACs unknown.
    #expect(rows[2].weights.isEmpty && rows[2].macs(precision: 32) == 0 && rows[2].profile.outputShape == [3, 3, 6])
    #expect(rows[3].weights.isEmpty && rows[3].macs(precision: 32) == nil && rows[3].profile.outputShape == [6])
    #expect(summary.macs(precision: 1) == 3456 + 24 && summary.macs(precision: 32) == 1944)
    #expect(summary.totalParameters == 54 + 60 + 28)
    let table = summary.render()
    let lines = table.split(separator: "\n").map(String.init)
    let depthwiseRow = try #require(lines.first { $0.hasPrefix("| quant_depthwise_conv2d ") })
    #expect(depthwiseRow.contains("(-1, 8, 8, 6)") && depthwiseRow.contains(" 3456 "), "\(depthwiseRow)")
    let poolRow = try #require(lines.first { $0.hasPrefix("| average_pooling2d ") })
    #expect(poolRow.hasSuffix(" 0 |") && poolRow.contains("(-1, 3, 3, 6)"), "\(poolRow)")
    let gapRow = try #require(lines.first { $0.hasPrefix("| global_average_pooling2d ") })
    #expect(gapRow.hasSuffix("? |") && gapRow.contains("(-1, 6)"), "\(gapRow)")
  }
}
