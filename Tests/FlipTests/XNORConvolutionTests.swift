import FlipTensor
import FlipXNOR
import Foundation
import Testing

/// The XNOR–popcount convolution against the exact sums of a plain loop: every variant this CPU
/// runs (portable C, AVX2, AVX-512 VPOPCNTDQ), with channels that fill no whole word and with
/// several words (10: AVX2's byte counts are added up between taps), filters in and outside the
/// vector kernels' tiles (16 on AVX2, 64 on AVX-512), pad values −1, 0 and +1, strides
/// and `same` padding, with and without scale and bias.
@Suite("XNOR convolution")
struct XNORConvolutionTests {
  static var variants: [flip_xnor_kernel] {
    var kernels = [FLIP_XNOR_BASELINE]
    if XNORConvolution.isAvailable { kernels.append(FLIP_XNOR_AVX2) }
    if XNORConvolution.defaultKernel == FLIP_XNOR_AVX512 { kernels.append(FLIP_XNOR_AVX512) }
    return kernels
  }

  @Test(arguments: [
    (5, 24, Padding.same, 1, 0),
    (70, 128, .same, 1, 1),
    (64, 64, .same, 2, -1),
    (130, 64, .valid, 1, 0),
    (64, 72, .same, 2, 0),
    (640, 32, .same, 1, 1),
  ])
  func equalsTheExactSums(channels: Int, filters: Int, padding: Padding, stride: Int, padValue: Int) throws {
    let batch = 2
    let g = try ConvGeometry(
      inputHeight: 7, inputWidth: 6, channels: channels, kernelHeight: 3, kernelWidth: 3, strideHeight: stride,
      strideWidth: 1, padding: padding)
    var random = SplitMix64(seed: UInt64(channels * filters))
    let x = (0..<(batch * g.inputSize)).map { _ in Int8(random.next() & 1 == 0 ? 1 : -1) }
    let w = (0..<(g.patchSize * filters)).map { _ in Int8(random.next() & 1 == 0 ? 1 : -1) }
    let scale = (0..<filters).map { Float($0 % 7) * 0.113 + 0.01 }
    let bias = (0..<filters).map { Float($0 % 5) * 0.31 - 0.7 }
    let exact = referenceConvolution(
      x: x.map(Float.init), kernel: w.map(Float.init), batch: batch, geometry: g, filters: filters,
      padValue: Float(padValue)
    ).values
    let rows = batch * g.outputPixels * filters
    for kernel in Self.variants {
      for (scaled, biased) in [(false, false), (true, true), (false, true)] {
        let conv = XNORConvolution(geometry: g, filters: filters, padValue: padValue, kernel: kernel)
        conv.allocate(batch: batch)
        w.withUnsafeBufferPointer { conv.setKernel(levels: $0.baseAddress!) }
        var y = [Float](repeating: .nan, count: rows)
        x.withUnsafeBufferPointer { xp in
          scale.withUnsafeBufferPointer { s in
            bias.withUnsafeBufferPointer { b in
              conv.run(
                levels: xp.baseAddress!, batch: batch, scale: scaled ? s.baseAddress : nil,
                bias: biased ? b.baseAddress : nil, into: &y, compute: Compute(threads: 2))
            }
          }
        }
        // The sum exact in float, then the scale and the bias, each rounded once.
        let want = exact.enumerated().map { i, sum -> Float in
          var v = Float(sum)
          if scaled { v = v * scale[i % filters] }
          if biased { v = v + bias[i % filters] }
          return v
        }
        let wrong = zip(y, want).filter { $0 != $1 }.count
        #expect(wrong == 0, "\(conv.implementation), scale \(scaled), bias \(biased): \(wrong) of \(rows) differ")
      }
    }
  }
}
