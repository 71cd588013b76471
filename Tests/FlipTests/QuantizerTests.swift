import FlipTensor
import Foundation
import Testing

@testable import FlipBNN

// Every quantizer against hand-computed forward values and pseudo-gradients (Larq's
// definitions of the quantizers' formulas), including the boundary cases.

/// Builds a quantizer from its Larq name and keyword arguments; fails the test on nil.
private func make(_ name: String, _ parameters: [String: Double] = [:], mode: String? = nil) throws -> Quantizer {
  try #require(try QuantizerSpec(name, parameters: parameters, mode: mode).make())
}

@Suite("Quantizers")
struct QuantizerTests {

  // MARK: ste_sign

  @Test("ste_sign: sign with sign(0) = +1, gradient passes for |x| ≤ 1 inclusive")
  func steSign() throws {
    let q = try make("ste_sign")
    #expect(q is SteSign)
    #expect(q.name == "ste_sign")
    #expect(q.precision == 1)
    let x: [Float] = [-2, -1.0001, -1, -0.5, 0, 0.5, 1, 1.0001, 2]
    #expect(quantizerForward(q, x) == [-1, -1, -1, -1, 1, 1, 1, 1, 1])
    let dy: [Float] = [1, 2, 3, 4, 5, 6, 7, 8, 9]
    #expect(pseudoGradient(q, x, dy: dy) == [0, 0, 3, 4, 5, 6, 7, 0, 0])
    // -0.0 is a zero too: sign(-0) = +1.
    #expect(quantizerForward(q, [-0.0]) == [1])
  }

  @Test("ste_sign(clip_value=0.5) and the class without a clip")
  func steSignClip() throws {
    let q = try make("ste_sign", ["clip_value": 0.5])
    let x: [Float] = [-0.75, -0.5, -0.25, 0, 0.5, 0.5001, 3]
    #expect(pseudoGradient(q, x) == [0, 1, 1, 1, 1, 0, 0])
    let unclipped = SteSign(clipValue: nil)
    #expect(pseudoGradient(unclipped, x, dy: [1, 2, 3, 4, 5, 6, 7]) == [1, 2, 3, 4, 5, 6, 7])
    #expect(quantizerForward(SteSign(), [-3, 0, 3]) == [-1, 1, 1])
  }

  // MARK: approx_sign

  @Test("approx_sign: gradient max(0, 2 − 2|x|)")
  func approxSign() throws {
    let q = try make("approx_sign")
    #expect(q is ApproxSign)
    #expect(q.precision == 1)
    let x: [Float] = [-1.5, -1, -0.75, -0.25, 0, 0.25, 0.75, 1, 1.5]
    #expect(quantizerForward(q, x) == [-1, -1, -1, -1, 1, 1, 1, 1, 1])
    #expect(pseudoGradient(q, x) == [0, 0, 0.5, 1.5, 2, 1.5, 0.5, 0, 0])
    let dy: [Float] = [1, 1, 2, 2, -3, 2, 2, 1, 1]
    #expect(pseudoGradient(ApproxSign(), x, dy: dy) == [0, 0, 1, 3, -6, 3, 1, 0, 0])
    // Long enough for the 16-lane loop: the same values, and 0 (not NaN) where x is NaN.
    let long: [Float] = [.nan, -0.0] + (0..<4).flatMap { _ in x }
    let longDy: [Float] = [1, 5] + (0..<4).flatMap { _ in dy }
    let want: [Float] = [0, 10] + (0..<4).flatMap { _ -> [Float] in [0, 0, 1, 3, -6, 3, 1, 0, 0] }
    #expect(pseudoGradient(ApproxSign(), long, dy: longDy) == want)
  }

  // MARK: swish_sign

  @Test("swish_sign: hand values of β(2 − βx·tanh(βx/2))/(1 + cosh βx)")
  func swishSignHandValues() throws {
    let q = try make("swish_sign")
    #expect(q is SwishSign)
    #expect(q.precision == 1)
    let x: [Float] = [0, 0.1, -0.3, 0.5, 1.2, -1.2]
    #expect(quantizerForward(q, x) == [1, 1, -1, 1, 1, -1])
    // Values from the formula at β = 5 (computed in double precision by hand).
    let expected: [Float] = [5, 4.412290270, 1.561975850, -0.08462156523, -0.09792852190, -0.09792852190]
    let g = pseudoGradient(q, x)
    for i in x.indices { #expect(close(g[i], expected[i], tol: 1e-5), "x = \(x[i]): \(g[i]) vs \(expected[i])") }

    let q2 = try make("swish_sign", ["beta": 2])
    let g2 = pseudoGradient(q2, [0, 0.5, -1], dy: [1, 2, 1])
    #expect(close(g2[0], 2, tol: 1e-6))
    #expect(close(g2[1], 2 * 1.2094644752, tol: 1e-5))
    #expect(close(g2[2], 0.2002486748, tol: 1e-5))
  }

  @Test("swish_sign: the pseudo-gradient is the derivative of 2σ(βx)(1 + βx(1 − σ(βx))) − 1")
  func swishSignIsSignSwishDerivative() throws {
    let beta = 5.0
    func signSwish(_ x: Double) -> Double {
      let s = 1 / (1 + exp(-beta * x))
      return 2 * s * (1 + beta * x * (1 - s)) - 1
    }
    let q = SwishSign(beta: Float(beta))
    let x: [Float] = [-1.5, -0.7, -0.2, -0.05, 0, 0.03, 0.25, 0.6, 2]
    let g = pseudoGradient(q, x)
    for i in x.indices {
      let xd = Double(x[i])
      let h = 1e-5
      let numeric = (signSwish(xd + h) - signSwish(xd - h)) / (2 * h)
      #expect(close(Double(g[i]), numeric, tol: 1e-5), "x = \(x[i]): \(g[i]) vs \(numeric)")
    }
  }

  // MARK: magnitude_aware_sign

  @Test("magnitude_aware_sign: per-channel mean|x| (last axis), STE with clip times the scale")
  func magnitudeAwareSign() throws {
    let q = try make("magnitude_aware_sign")
    let m = try #require(q as? MagnitudeAwareSign)
    #expect(q.precision == 1)
    // A (3, 2) kernel: channel 0 = [0.5, -0.25, 0], channel 1 = [-2, 0.5, -1.5].
    let x: [Float] = [0.5, -2, -0.25, 0.5, 0, -1.5]
    let s0: Float = 0.25
    let s1: Float = 4.0 / 3.0
    let y = quantizerForward(q, x, channels: 2)
    #expect(m.scale.count == 2)
    #expect(close(m.scale[0], s0, tol: 1e-6) && close(m.scale[1], s1, tol: 1e-6))
    let expectedY: [Float] = [s0, -s1, -s0, s1, s0, -s1]
    #expect(allClose(y, expectedY, tol: 1e-6), "\(y)")
    let g = pseudoGradient(q, x, dy: [1, 1, 2, 1, 1, 1], channels: 2)
    let expectedG: [Float] = [s0, 0, 2 * s0, s1, s0, 0]
    #expect(allClose(g, expectedG, tol: 1e-6), "\(g)")
  }

  @Test("magnitude_aware_sign on a conv kernel (KH, KW, C, F): the scale is per output channel")
  func magnitudeAwareSignConvKernel() throws {
    let q = MagnitudeAwareSign(clipValue: 1)
    // Kernel (1, 2, 2, 3): 4 rows, 3 filters.
    let x: [Float] = [
      1, -0.1, 0.2,
      -1, 0.3, -0.2,
      0.5, -0.5, 0.2,
      -0.5, 0.1, 1.4,
    ]
    let scale: [Float] = [0.75, 0.25, 0.5]
    let y = quantizerForward(q, x, channels: 3)
    let expected: [Float] = (0..<12).map { i in scale[i % 3] * (x[i] >= 0 ? 1 : -1) }
    #expect(allClose(y, expected, tol: 1e-6), "\(y)")
    let g = pseudoGradient(q, x, channels: 3)
    #expect(allClose(g, [0.75, 0.25, 0.5, 0.75, 0.25, 0.5, 0.75, 0.25, 0.5, 0.75, 0.25, 0], tol: 1e-6), "\(g)")
  }

  // MARK: ste_heaviside

  @Test("ste_heaviside: 1[x > 0] (heaviside(0) = 0), gradient for |x| ≤ 1")
  func steHeaviside() throws {
    let q = try make("ste_heaviside")
    #expect(q is SteHeaviside)
    #expect(q.precision == 1)
    let x: [Float] = [-2, -1, -0.5, 0, 0.5, 1, 1.0001]
    #expect(quantizerForward(q, x) == [0, 0, 0, 0, 1, 1, 1])
    #expect(pseudoGradient(q, x) == [0, 1, 1, 1, 1, 1, 0])
    let wide = try make("ste_heaviside", ["clip_value": 2])
    #expect(pseudoGradient(wide, x) == [1, 1, 1, 1, 1, 1, 1])
  }

  // MARK: ste_tern

  @Test("ste_tern: |x| = threshold gives ±1; gradient for |x| ≤ clip")
  func steTern() throws {
    let q = try make("ste_tern")
    let t = try #require(q as? SteTern)
    #expect(q.precision == 2)
    #expect(t.threshold == Float(0.05))
    let x: [Float] = [-0.5, -0.05, -0.049, 0, 0.049, 0.05, 0.5, 1.5, -1]
    #expect(quantizerForward(q, x) == [-1, -1, 0, 0, 0, 1, 1, 1, -1])
    #expect(pseudoGradient(q, x) == [1, 1, 1, 1, 1, 1, 1, 0, 1])

    let q2 = try make("ste_tern", ["threshold_value": 0.5, "clip_value": 0.5])
    let x2: [Float] = [-0.75, -0.5, -0.4999, 0.25, 0.5, 0.5001]
    #expect(quantizerForward(q2, x2) == [-1, -1, 0, 0, 1, 1])
    #expect(pseudoGradient(q2, x2) == [0, 1, 1, 1, 1, 0])
  }

  @Test("ste_tern(threshold_value=0): sign with sign(0) = 0, as sign(sign(x) + sign(x))")
  func steTernZeroThreshold() throws {
    let q = try make("ste_tern", ["threshold_value": 0])
    #expect(quantizerForward(q, [-0.3, 0, 0.3]) == [-1, 0, 1])
  }

  @Test("ste_tern TWN: threshold = 0.7·mean|x| over the whole tensor")
  func steTernTWN() throws {
    let q = try make("ste_tern", ["ternary_weight_networks": 1])
    let t = try #require(q as? SteTern)
    #expect(t.ternaryWeightNetworks)
    // mean|x| = 2/6, threshold = 0.7/3 ≈ 0.2333.
    let x: [Float] = [0.1, -0.2, 0.3, -0.4, 1.0, 0]
    let y = quantizerForward(q, x, channels: 2)
    #expect(close(t.threshold, 0.7 / 3, tol: 1e-6), "threshold \(t.threshold)")
    #expect(y == [0, 0, 1, -1, 1, 0])
    // Scaling the tensor scales the threshold: the same pattern comes out.
    let y10 = quantizerForward(q, x.map { $0 * 10 }, channels: 2)
    #expect(close(t.threshold, 7 / 3, tol: 1e-6))
    #expect(y10 == [0, 0, 1, -1, 1, 0])
    // The class form, and a different tensor gives a different threshold (not the fixed value).
    let c = SteTern(thresholdValue: 0.05, ternaryWeightNetworks: true, clipValue: 1)
    #expect(quantizerForward(c, [0.06, -0.06, 0.5, -0.5]) == [0, 0, 1, -1])
    #expect(close(c.threshold, 0.7 * 0.28, tol: 1e-6))
    #expect(pseudoGradient(c, [0.06, -1.5, 0.5, 1]) == [1, 0, 1, 1])
  }

  // MARK: dorefa_quantizer

  @Test("dorefa activations k=2: clip to [0,1], round half to even, gradient inside [0, 1]")
  func dorefaActivations() throws {
    let q = try make("dorefa_quantizer", ["k_bit": 2])
    let d = try #require(q as? DoReFaQuantizer)
    #expect(d.mode == .activations)
    #expect(q.precision == 2)
    let x: [Float] = [-0.5, 0, Float(1.0 / 6.0), 0.25, 0.5, 0.9, 1, 1.5]
    // x·3 = [0, 0, 0.5 → 0 (even), 0.75 → 1, 1.5 → 2 (even), 2.7 → 3, 3, 3].
    let expected: [Float] = [0, 0, 0, 1.0 / 3, 2.0 / 3, 1, 1, 1]
    #expect(allClose(quantizerForward(q, x), expected, tol: 1e-7), "\(quantizerForward(q, x))")
    #expect(pseudoGradient(q, x, dy: [1, 2, 3, 4, 5, 6, 7, 8]) == [0, 2, 3, 4, 5, 6, 7, 0])
  }

  @Test("dorefa activations at other bit widths: half-to-even at k=1 and k=3")
  func dorefaActivationsOtherBits() throws {
    let k1 = try make("dorefa_quantizer", ["k_bit": 1], mode: "activations")
    #expect(quantizerForward(k1, [0.5, 0.5001, 0.75, 0.25]) == [0, 1, 1, 0])
    let k3 = DoReFaQuantizer(kBit: 3, mode: .activations)
    // 0.5·7 = 3.5 → 4 (even); 0.25·7 = 1.75 → 2; 0.0625·7 = 0.4375 → 0.
    let y = quantizerForward(k3, [0.5, 0.25, 0.0625])
    #expect(allClose(y, [4.0 / 7, 2.0 / 7, 0], tol: 1e-7), "\(y)")
    #expect(k3.precision == 3)
  }

  @Test("dorefa weights: 2·round(n·(tanh x/(2M) + ½))/n − 1, gradient dy·(1 − t²)/M")
  func dorefaWeights() throws {
    let q = try make("dorefa_quantizer", ["k_bit": 2], mode: "weights")
    #expect((q as? DoReFaQuantizer)?.mode == .weights)
    let x: [Float] = [2, -1, 0.5, 0, -0.2]
    // t = tanh x = [0.96403, -0.76159, 0.46212, 0, -0.19738], M = 0.96403,
    // 3u = [3, 0.315, 2.219, 1.5, 1.193] → [3, 0, 2, 2 (half to even), 1].
    let y = quantizerForward(q, x)
    #expect(allClose(y, [1, -1, 1.0 / 3, 1.0 / 3, -1.0 / 3], tol: 1e-6), "\(y)")
    let g = pseudoGradient(q, x, dy: [1, 1, 1, 1, 2])
    // (1 − t²)/M by hand: [0.0732871, 0.435646, 0.815794, 1.037315, 2·0.996904].
    let expected: [Float] = [0.0732871, 0.435646, 0.815794, 1.037315, 1.993808]
    #expect(allClose(g, expected, tol: 2e-6), "\(g)")
    // Computed from the formula in double precision too.
    let m = tanh(2.0)
    for i in x.indices {
      let t = tanh(Double(x[i]))
      let want = (i == 4 ? 2 : 1) * (1 - t * t) / m
      #expect(close(Double(g[i]), want, tol: 1e-5))
    }
  }

  @Test("dorefa weights with an all-zero tensor: divide_no_nan gives 1/3 (k=2) and zero gradient")
  func dorefaWeightsZero() throws {
    let q = DoReFaQuantizer(kBit: 2, mode: .weights)
    let y = quantizerForward(q, [0, 0, 0])
    #expect(allClose(y, [1.0 / 3, 1.0 / 3, 1.0 / 3], tol: 1e-6))
    #expect(pseudoGradient(q, [0, 0, 0]) == [0, 0, 0])
  }

  // MARK: noop and identity

  @Test("noop(precision=p): identity that reports p bits")
  func noop() throws {
    let q = try make("noop", ["precision": 1])
    #expect(q is NoOpQuantizer)
    #expect(q.precision == 1)
    let x: [Float] = [-2.5, 0, 0.3, 7]
    #expect(quantizerForward(q, x) == x)
    #expect(pseudoGradient(q, x, dy: [1, 2, 3, 4]) == [1, 2, 3, 4])
    #expect(try make("noop").precision == 32)
    #expect(NoOpQuantizer(precision: 8).precision == 8)
  }

  @Test("none / identity / linear build no quantizer")
  func identityNames() throws {
    for name in ["none", "identity", "linear"] {
      #expect(try QuantizerSpec(name).make() == nil)
    }
  }

  @Test("every known quantizer name builds, with Larq's precision")
  func allKinds() throws {
    let precision: [QuantizerKind: Int] = [
      .steSign: 1, .approxSign: 1, .swishSign: 1, .magnitudeAwareSign: 1, .steHeaviside: 1,
      .steTern: 2, .dorefa: 2, .noop: 32,
    ]
    for kind in QuantizerKind.allCases {
      let q = try make(kind.rawValue)
      #expect(q.name == kind.rawValue)
      #expect(q.precision == precision[kind], "\(kind.rawValue)")
    }
  }

  // MARK: errors

  @Test("an unknown quantizer name throws unknownQuantizer")
  func unknownName() {
    #expect(throws: BNNError.unknownQuantizer("ste_sgn")) { try QuantizerSpec("ste_sgn").make() }
    #expect(throws: BNNError.unknownQuantizer("SteSign")) { try QuantizerSpec("SteSign").make() }
  }

  @Test("a parameter the quantizer does not take throws invalidParameter naming it")
  func unacceptedParameter() {
    let cases: [(QuantizerSpec, String)] = [
      (QuantizerSpec("ste_sign", parameters: ["beta": 5]), "beta"),
      (QuantizerSpec("approx_sign", parameters: ["clip_value": 1]), "clip_value"),
      (QuantizerSpec("swish_sign", parameters: ["clip_value": 1]), "clip_value"),
      (QuantizerSpec("dorefa_quantizer", parameters: ["threshold_value": 0.1]), "threshold_value"),
      (QuantizerSpec("noop", parameters: ["k_bit": 1]), "k_bit"),
      (QuantizerSpec("ste_sign", mode: "weights"), "mode"),
      (QuantizerSpec("dorefa_quantizer", mode: "kernel"), "mode"),
    ]
    for (spec, parameter) in cases {
      let error = #expect(throws: BNNError.self) { try spec.make() }
      guard case .invalidParameter(_, let p, _)? = error else {
        Issue.record("\(spec.name): expected invalidParameter, got \(String(describing: error))")
        continue
      }
      #expect(p == parameter, "\(spec.name)")
    }
  }

  @Test("out-of-range values throw invalidParameter: negative or zero clip, bad k_bit, threshold, precision")
  func invalidValues() {
    let cases: [(QuantizerSpec, String)] = [
      (QuantizerSpec("ste_sign", parameters: ["clip_value": -1]), "clip_value"),
      (QuantizerSpec("ste_sign", parameters: ["clip_value": 0]), "clip_value"),
      (QuantizerSpec("magnitude_aware_sign", parameters: ["clip_value": -0.5]), "clip_value"),
      (QuantizerSpec("ste_heaviside", parameters: ["clip_value": -2]), "clip_value"),
      (QuantizerSpec("ste_tern", parameters: ["clip_value": -1]), "clip_value"),
      (QuantizerSpec("ste_tern", parameters: ["threshold_value": -0.1]), "threshold_value"),
      (QuantizerSpec("dorefa_quantizer", parameters: ["k_bit": 0]), "k_bit"),
      (QuantizerSpec("dorefa_quantizer", parameters: ["k_bit": 2.5]), "k_bit"),
      (QuantizerSpec("noop", parameters: ["precision": 0]), "precision"),
      (QuantizerSpec("noop", parameters: ["precision": 33]), "precision"),
    ]
    for (spec, parameter) in cases {
      let error = #expect(throws: BNNError.self) { try spec.make() }
      guard case .invalidParameter(_, let p, _)? = error else {
        Issue.record("\(spec.name) \(spec.parameters): expected invalidParameter, got \(String(describing: error))")
        continue
      }
      #expect(p == parameter, "\(spec.name) \(spec.parameters)")
    }
  }

  @Test("error messages name the problem")
  func errorMessages() {
    let unknown = BNNError.unknownQuantizer("foo").description
    #expect(unknown.contains("foo") && unknown.contains("ste_sign"))
    do {
      _ = try QuantizerSpec("ste_sign", parameters: ["clip_value": -1]).make()
      Issue.record("negative clip_value accepted")
    } catch {
      let text = "\(error)"
      #expect(text.contains("clip_value") && text.contains("-1"), "\(text)")
    }
  }

  @Test("ste_sign's fused kernel pass equals forward + counting changes + the bound check")
  func steSignFusedKernelChunk() {
    let n = 16 * 3 + 11
    var x = randomValues(n, seed: 31, in: -1.2...1.2)
    x[0] = 0
    x[1] = -0.0
    x[17] = 1
    x[n - 1] = -1
    let previous = (0..<n).map { i in i % 4 == 0 ? Float(1) : -1 }
    let sign = SteSign()
    for clip: Float? in [1, 1.5, nil] {
      let q = SteSign(clipValue: clip)
      for inside in [false, true] {
        let xs = inside ? x.map { min(max($0, -1), 1) } : x
        var y = [Float](repeating: 9, count: n)
        let fused = q.forwardKernelChunk(xs, &y, previous: previous, count: n)
        var want = [Float](repeating: 0, count: n)
        sign.forward(xs, &want, count: n, channels: 1)
        #expect(y == want)
        #expect(fused.changed == zip(previous, want).filter { $0 != $1 }.count)
        #expect(
          fused.withinBound == xs.allSatisfy { abs($0) <= (clip ?? .infinity) }, "clip \(String(describing: clip))")
        #expect(q.forwardKernelChunk(xs, &y, previous: nil, count: n).changed == 0)
      }
    }
    // The tail alone decides: an element past the bound in the last, scalar, part.
    var tail = [Float](repeating: 0.5, count: n)
    tail[n - 1] = 1.01
    var y = [Float](repeating: 0, count: n)
    #expect(!sign.forwardKernelChunk(tail, &y, previous: nil, count: n).withinBound)
  }
}
