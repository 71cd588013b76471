import FlipTensor
import Foundation
import FlipTraining
import Testing

@testable import FlipBNN
@testable import FlipCLI

// hard_tanh on inputs and the real-valued variant of a binary model (Larq's two-step training).

@Suite("hard_tanh and real-valued models")
struct RealValuedTests {
  @Test("hard_tanh: clip to [−1, 1], gradient 1 for |x| ≤ 1 inclusive, real-valued precision")
  func hardTanh() throws {
    let q = try #require(try QuantizerSpec("hard_tanh").make())
    #expect(q is HardTanh)
    #expect(q.name == "hard_tanh")
    #expect(q.precision == nil)
    #expect(!q.hasIntegerLevels)
    let x: [Float] = [-2, -1.0001, -1, -0.5, 0, 0.25, 1, 1.0001, 3]
    #expect(quantizerForward(q, x) == [-1, -1, -1, -0.5, 0, 0.25, 1, 1, 1])
    #expect(pseudoGradient(q, x, dy: [1, 2, 3, 4, 5, 6, 7, 8, 9]) == [0, 0, 3, 4, 5, 6, 7, 0, 0])
    // 20 values: the 16-lane path and the tail agree with the scalar rule.
    let long: [Float] = (0..<20).map { Float($0) * 0.125 - 1.25 }  // −1.25 … 1.125
    let expected: [Float] = long.map { abs($0) <= 1 ? 2 : 0 }
    #expect(pseudoGradient(q, long, dy: [Float](repeating: 2, count: 20)) == expected)
    #expect(quantizerForward(q, long) == long.map { min(max($0, -1), 1) })
    // It takes no parameters.
    #expect(throws: BNNError.self) { try QuantizerSpec("hard_tanh", parameters: ["clip_value": 2]).make() }
  }

  @Test func configsNameHardTanh() throws {
    let text = """
      layers:
        - {type: Flatten}
        - {type: QuantDense, units: 3, input_quantizer: hard_tanh}
        - {type: QuantDense, units: 2, input_quantizer: {type: hard_tanh}, kernel_quantizer: ste_sign}
      """
    let c = try RunSettings.parse(yaml: text, file: "t.yaml")
    #expect(c.layers[1].inputQuantizer == QuantizerSpec("hard_tanh"))
    #expect(c.layers[2].inputQuantizer == QuantizerSpec("hard_tanh"))
    #expect(try RunSettings.parse(yaml: try c.yaml(), file: "again") == c)
    let model = try Model(specs: c.layers, inputShape: [2, 2, 1], seed: 0)
    let dense = try #require(model.layers[1] as? QuantDense)
    #expect(dense.inputQuantizer is HardTanh)
    #expect(dense.forwardKernels == [.fp32])
  }

  @Test func theSummaryCountsHardTanhInputsAsFloat() throws {
    let model = try Model(specs: ModelPreset.binarynetMLP.layers.realValued(), inputShape: [28, 28, 1], seed: 0)
    let summary = ModelSummary(modelName: "m", model: model)
    let row = try #require(summary.rows.first { $0.profile.name == "quant_dense_1" })
    #expect(row.profile.inputPrecision == nil)
    #expect(row.macs(precision: 32) == 1024 * 1024)
    #expect(row.weightCount(precision: 32) == 1024 * 1024)
    #expect(summary.macs(precision: 1) == 0)
    #expect(summary.weightCount(precision: 1) == 0)
    #expect(summary.statsTable().contains("| quant_dense_1                    -"))
  }

  @Test(arguments: ModelPreset.allCases)
  func realValuedVariantKeepsEveryTensor(_ preset: ModelPreset) throws {
    let (binary, shape) = preset.testLayers
    let real = binary.realValued()
    #expect(real.count == binary.count)
    for (r, b) in zip(real, binary) {
      #expect(r.kind == b.kind)
      #expect(r.kernelQuantizer == nil)
      #expect(r.inputQuantizer == (b.inputQuantizer == nil ? nil : QuantizerSpec("hard_tanh")))
      #expect(r.kernelConstraint == b.kernelConstraint)
      var same = r
      same.inputQuantizer = b.inputQuantizer
      same.kernelQuantizer = b.kernelQuantizer
      #expect(same == b, "only the quantizers change")
    }
    #expect(real.contains { $0.inputQuantizer != nil })
    let a = try Model(specs: binary, inputShape: shape, seed: 0)
    let m = try Model(specs: real, inputShape: shape, seed: 0)
    let names = { (s: Model) in (s.store.views + s.store.stateViews).map { "\($0.name) \($0.shape)" } }
    #expect(names(a) == names(m))
    #expect(m.layers.map(\.name) == a.layers.map(\.name))
    for layer in m.layers {
      if let d = layer as? QuantDense {
        #expect(d.kernelQuantizer == nil)
        #expect(d.inputQuantizer == nil || d.inputQuantizer is HardTanh)
      }
      if let c = layer as? QuantConv2D {
        #expect(c.kernelQuantizer == nil)
        #expect(c.inputQuantizer == nil || c.inputQuantizer is HardTanh)
      }
    }
  }
}
