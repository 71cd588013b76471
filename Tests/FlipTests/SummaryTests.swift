import FlipTensor
import Testing

@testable import FlipBNN

// The model summary must print exactly what `larq.models.summary` prints for the two presets
// (Larq's own output, as in docs/reference).

/// Larq's `larq.models.summary` for `binarynet-mlp` on 28×28×1 inputs.
let larqSummaryBinarynetMLP = """
  +binarynet_mlp stats---------------------------------------------------------------------------------+
  | Layer                  Input prec.     Outputs  # 1-bit  # 32-bit  Memory  1-bit MACs  32-bit MACs |
  |                              (bit)                  x 1       x 1    (kB)                          |
  +----------------------------------------------------------------------------------------------------+
  | flatten                          -   (-1, 784)        0         0       0           0            0 |
  | quant_dense                      -  (-1, 1024)   802816         0   98.00           0       802816 |
  | batch_normalization              -  (-1, 1024)        0      2048    8.00           0            0 |
  | quant_dense_1                    1  (-1, 1024)  1048576         0  128.00     1048576            0 |
  | batch_normalization_1            -  (-1, 1024)        0      2048    8.00           0            0 |
  | quant_dense_2                    1  (-1, 1024)  1048576         0  128.00     1048576            0 |
  | batch_normalization_2            -  (-1, 1024)        0      2048    8.00           0            0 |
  | quant_dense_3                    1    (-1, 10)    10240         0    1.25       10240            0 |
  | batch_normalization_3            -    (-1, 10)        0        20    0.08           0            0 |
  | activation                       -    (-1, 10)        0         0       0           ?            ? |
  +----------------------------------------------------------------------------------------------------+
  | Total                                           2910208      6164  379.33     2107392       802816 |
  +----------------------------------------------------------------------------------------------------+
  +binarynet_mlp summary-------------------------+
  | Total params                      2.92 M     |
  | Trainable params                  2.91 M     |
  | Non-trainable params              6.16 k     |
  | Model size                        379.33 KiB |
  | Model size (8-bit FP weights)     361.27 KiB |
  | Float-32 Equivalent               11.13 MiB  |
  | Compression Ratio of Memory       0.03       |
  | Number of MACs                    2.91 M     |
  | Ratio of MACs that are binarized  0.7241     |
  +----------------------------------------------+
  """ + "\n"

/// Larq's `larq.models.summary` for `larq-cnn` on 28×28×1 inputs.
let larqSummaryLarqCNN = """
  +larq_cnn stats--------------------------------------------------------------------------------------------+
  | Layer                  Input prec.           Outputs  # 1-bit  # 32-bit  Memory  1-bit MACs  32-bit MACs |
  |                              (bit)                        x 1       x 1    (kB)                          |
  +----------------------------------------------------------------------------------------------------------+
  | quant_conv2d                     -  (-1, 26, 26, 32)      288         0    0.04           0       194688 |
  | max_pooling2d                    -  (-1, 13, 13, 32)        0         0       0           0            0 |
  | batch_normalization              -  (-1, 13, 13, 32)        0        64    0.25           0            0 |
  | quant_conv2d_1                   1  (-1, 11, 11, 64)    18432         0    2.25     2230272            0 |
  | max_pooling2d_1                  -    (-1, 5, 5, 64)        0         0       0           0            0 |
  | batch_normalization_1            -    (-1, 5, 5, 64)        0       128    0.50           0            0 |
  | quant_conv2d_2                   1    (-1, 3, 3, 64)    36864         0    4.50      331776            0 |
  | batch_normalization_2            -    (-1, 3, 3, 64)        0       128    0.50           0            0 |
  | flatten                          -         (-1, 576)        0         0       0           0            0 |
  | quant_dense                      1          (-1, 64)    36864         0    4.50       36864            0 |
  | batch_normalization_3            -          (-1, 64)        0       128    0.50           0            0 |
  | quant_dense_1                    1          (-1, 10)      640         0    0.08         640            0 |
  | batch_normalization_4            -          (-1, 10)        0        20    0.08           0            0 |
  | activation                       -          (-1, 10)        0         0       0           ?            ? |
  +----------------------------------------------------------------------------------------------------------+
  | Total                                                   93088       468   13.19     2599552       194688 |
  +----------------------------------------------------------------------------------------------------------+
  +larq_cnn summary------------------------------+
  | Total params                      93.6 k     |
  | Trainable params                  93.1 k     |
  | Non-trainable params              468        |
  | Model size                        13.19 KiB  |
  | Model size (8-bit FP weights)     11.82 KiB  |
  | Float-32 Equivalent               365.45 KiB |
  | Compression Ratio of Memory       0.04       |
  | Number of MACs                    2.79 M     |
  | Ratio of MACs that are binarized  0.9303     |
  +----------------------------------------------+
  """ + "\n"

/// A line-by-line diff for failure messages.
private func lineDiff(_ got: String, _ want: String) -> String {
  let g = got.split(separator: "\n", omittingEmptySubsequences: false)
  let w = want.split(separator: "\n", omittingEmptySubsequences: false)
  var out: [String] = []
  for i in 0..<max(g.count, w.count) {
    let a = i < g.count ? String(g[i]) : "<none>"
    let b = i < w.count ? String(w[i]) : "<none>"
    if a != b { out.append("line \(i + 1):\n  got:  \(a)\n  want: \(b)") }
  }
  return out.joined(separator: "\n")
}

@Suite("Model summary")
struct SummaryTests {
  private func summary(_ preset: ModelPreset) throws -> ModelSummary {
    ModelSummary(
      modelName: preset.modelName, model: try Model(specs: preset.layers, inputShape: [28, 28, 1], seed: 0))
  }

  @Test("binarynet-mlp summary equals Larq's output exactly")
  func binarynetMLPText() throws {
    let text = try summary(.binarynetMLP).render()
    #expect(text == larqSummaryBinarynetMLP, "diff:\n\(lineDiff(text, larqSummaryBinarynetMLP))")
  }

  @Test("larq-cnn summary equals Larq's output exactly")
  func larqCNNText() throws {
    let text = try summary(.larqCNN).render()
    #expect(text == larqSummaryLarqCNN, "diff:\n\(lineDiff(text, larqSummaryLarqCNN))")
  }

  @Test("binarynet-mlp totals: 2,910,208 one-bit and 6,164 32-bit weights, 379.33 KiB, 0.7241 binarized")
  func binarynetMLPTotals() throws {
    let s = try summary(.binarynetMLP)
    #expect(s.modelName == "binarynet_mlp")
    #expect(s.weightCount(precision: 1) == 2_910_208)
    #expect(s.weightCount(precision: 32) == 6_164)
    #expect(ModelSummary.memory(bits: s.memoryBits) == "379.33 KiB")
    #expect(s.macs(precision: 1) == 2_107_392)
    #expect(s.macs(precision: 32) == 802_816)
    #expect(abs(s.binarizedMACRatio - 0.7241) < 5e-5, "\(s.binarizedMACRatio)")
    #expect(s.ternarizedMACRatio == 0)
  }

  @Test("larq-cnn totals: 93,088 one-bit and 468 32-bit weights, 13.19 KiB, 0.9303 binarized")
  func larqCNNTotals() throws {
    let s = try summary(.larqCNN)
    #expect(s.modelName == "larq_cnn")
    #expect(s.weightCount(precision: 1) == 93_088)
    #expect(s.weightCount(precision: 32) == 468)
    #expect(ModelSummary.memory(bits: s.memoryBits) == "13.19 KiB")
    #expect(s.macs(precision: 1) == 2_599_552)
    #expect(s.macs(precision: 32) == 194_688)
    #expect(abs(s.binarizedMACRatio - 0.9303) < 5e-5, "\(s.binarizedMACRatio)")
  }

  @Test("Larq's readable numbers and memory strings")
  func readableNumbers() {
    #expect(ModelSummary.readable(2_916_372) == "2.92 M")
    #expect(ModelSummary.readable(6_164) == "6.16 k")
    #expect(ModelSummary.readable(468) == "468")
    #expect(ModelSummary.readable(93_556) == "93.6 k")
    #expect(ModelSummary.memory(bits: 8 * 1000) == "1000.00 B")
    #expect(ModelSummary.memory(bits: 8 * 1024) == "1.00 KiB")
    #expect(ModelSummary.kilobytes(0) == "0")
    #expect(ModelSummary.kilobytes(8192 * 3 / 2) == "1.50")
  }
}
