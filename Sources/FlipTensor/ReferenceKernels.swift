// Legend: B batch, H/W input height/width, C input channels, KH/KW kernel, F filters,
// OH/OW output height/width; M, N, K the sizes of a matrix product. Activations NHWC,
// kernels HWIO (Keras's [KH, KW, C, F]).

/// The plain loops that the fast kernels must equal: test oracles and the reference of
/// `flip selftest`. Each sums in double precision and also returns, per output, the sum of
/// the magnitudes of its terms (`Σ |a·b|`), the scale that an fp32 kernel's rounding error
/// is measured against: an fp32 sum of K terms may be off by about K·2⁻²⁴ of it.
public struct ReferenceResult: Sendable {
  public var values: [Double]
  public var magnitudes: [Double]

  init(count: Int) {
    values = [Double](repeating: 0, count: count)
    magnitudes = [Double](repeating: 0, count: count)
  }

  @inline(__always) mutating func add(_ i: Int, _ a: Float, _ b: Float) {
    let p = Double(a) * Double(b)
    values[i] += p
    magnitudes[i] += abs(p)
  }
}

/// `C (M, N) = op(A) · op(B)` with A stored (M, K) or, transposed, (K, M), and B stored
/// (K, N) or, transposed, (N, K); dense row-major storage.
public func referenceProduct(
  _ transA: Transpose, _ transB: Transpose, m: Int, n: Int, k: Int, a: [Float], b: [Float]
) -> ReferenceResult {
  precondition(a.count == m * k && b.count == k * n, "referenceProduct: operand sizes do not match \(m)×\(n)×\(k)")
  var r = ReferenceResult(count: m * n)
  // Strides of op(A) (row i, term p) and op(B) (term p, column j) in storage.
  let (aRow, aTerm) = transA == .none ? (k, 1) : (1, m)
  let (bTerm, bColumn) = transB == .none ? (n, 1) : (1, k)
  for i in 0..<m {
    for j in 0..<n {
      var sum = 0.0
      var magnitude = 0.0
      for p in 0..<k {
        let product = Double(a[i * aRow + p * aTerm]) * Double(b[p * bTerm + j * bColumn])
        sum += product
        magnitude += abs(product)
      }
      r.values[i * n + j] = sum
      r.magnitudes[i * n + j] = magnitude
    }
  }
  return r
}

/// Calls `body(outputIndex, inputIndex or nil for padding, kernelIndex)` for every term of a
/// convolution: output (B, OH, OW, F), input (B, H, W, C), kernel (KH, KW, C, F).
@inline(__always)
func forEachConvolutionTerm(
  batch: Int, geometry g: ConvGeometry, filters: Int, _ body: (Int, Int?, Int) -> Void
) {
  for b in 0..<batch {
    for oy in 0..<g.outputHeight {
      for ox in 0..<g.outputWidth {
        for f in 0..<filters {
          let out = ((b * g.outputHeight + oy) * g.outputWidth + ox) * filters + f
          for ky in 0..<g.kernelHeight {
            let y = oy * g.strideHeight - g.padTop + ky
            for kx in 0..<g.kernelWidth {
              let x = ox * g.strideWidth - g.padLeft + kx
              let inside = y >= 0 && y < g.inputHeight && x >= 0 && x < g.inputWidth
              for c in 0..<g.channels {
                let input = inside ? ((b * g.inputHeight + y) * g.inputWidth + x) * g.channels + c : nil
                body(out, input, ((ky * g.kernelWidth + kx) * g.channels + c) * filters + f)
              }
            }
          }
        }
      }
    }
  }
}

/// `y (B, OH, OW, F) = conv(x (B, H, W, C), kernel (KH, KW, C, F))`; positions in the padding
/// take `padValue` (Larq's `pad_values`).
public func referenceConvolution(
  x: [Float], kernel: [Float], batch: Int, geometry g: ConvGeometry, filters: Int, padValue: Float = 0
) -> ReferenceResult {
  var r = ReferenceResult(count: batch * g.outputPixels * filters)
  forEachConvolutionTerm(batch: batch, geometry: g, filters: filters) { out, input, w in
    r.add(out, input.map { x[$0] } ?? padValue, kernel[w])
  }
  return r
}

/// `dx (B, H, W, C)` for the output gradient `dy (B, OH, OW, F)` through `kernel`
/// (padding positions are constants: they receive nothing).
public func referenceConvolutionBackwardData(
  dy: [Float], kernel: [Float], batch: Int, geometry g: ConvGeometry, filters: Int
) -> ReferenceResult {
  var r = ReferenceResult(count: batch * g.inputSize)
  forEachConvolutionTerm(batch: batch, geometry: g, filters: filters) { out, input, w in
    if let input { r.add(input, dy[out], kernel[w]) }
  }
  return r
}

/// `dW (KH, KW, C, F)` for the output gradient `dy (B, OH, OW, F)` and the input `x`
/// (padding positions hold `padValue`).
public func referenceConvolutionBackwardWeights(
  x: [Float], dy: [Float], batch: Int, geometry g: ConvGeometry, filters: Int, padValue: Float = 0
) -> ReferenceResult {
  var r = ReferenceResult(count: g.patchSize * filters)
  forEachConvolutionTerm(batch: batch, geometry: g, filters: filters) { out, input, w in
    r.add(w, input.map { x[$0] } ?? padValue, dy[out])
  }
  return r
}
