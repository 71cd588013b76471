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
  /// The outputs computed, when only a sample of them is (`nil`: all).
  public var checked: [Int]?

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

/// The outputs a self-check compares for a large convolution: rows (of the output, or of the
/// input for the input gradient), filters and channels; nil for all of them.
public struct ConvolutionSample: Sendable {
  public var rows: [Int]?
  public var filters: [Int]?
  public var channels: [Int]?
  public init(rows: [Int]? = nil, filters: [Int]? = nil, channels: [Int]? = nil) {
    (self.rows, self.filters, self.channels) = (rows, filters, channels)
  }
  public static let all = ConvolutionSample()
}

/// Calls `body(outputIndex, inputIndex or nil for padding, kernelIndex)` for every term of a
/// convolution: output (B, OH, OW, F), input (B, H, W, C), kernel (KH, KW, C, F); only for the
/// output rows `rows`, the filters `filters` and the channels `channels` when given.
@inline(__always)
func forEachConvolutionTerm(
  batch: Int, geometry g: ConvGeometry, filters: Int, rows: [Int]? = nil, filterSubset: [Int]? = nil,
  channels: [Int]? = nil, _ body: (Int, Int?, Int) -> Void
) {
  let outputRows = rows ?? Array(0..<g.outputHeight)
  let fs = filterSubset ?? Array(0..<filters)
  let cs = channels ?? Array(0..<g.channels)
  for b in 0..<batch {
    for oy in outputRows {
      for ox in 0..<g.outputWidth {
        for f in fs {
          let out = ((b * g.outputHeight + oy) * g.outputWidth + ox) * filters + f
          for ky in 0..<g.kernelHeight {
            let y = oy * g.strideHeight - g.padTop + ky
            for kx in 0..<g.kernelWidth {
              let x = ox * g.strideWidth - g.padLeft + kx
              let inside = y >= 0 && y < g.inputHeight && x >= 0 && x < g.inputWidth
              for c in cs {
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
/// take `padValue` (Larq's `pad_values`). Only the sample's output rows and filters.
public func referenceConvolution(
  x: [Float], kernel: [Float], batch: Int, geometry g: ConvGeometry, filters: Int, padValue: Float = 0,
  sample: ConvolutionSample = .all
) -> ReferenceResult {
  var r = ReferenceResult(count: batch * g.outputPixels * filters)
  forEachConvolutionTerm(batch: batch, geometry: g, filters: filters, rows: sample.rows, filterSubset: sample.filters) {
    out, input, w in
    r.add(out, input.map { x[$0] } ?? padValue, kernel[w])
  }
  if sample.rows != nil || sample.filters != nil {
    r.checked = sampledIndices(
      batch: batch, height: g.outputHeight, width: g.outputWidth, depth: filters, rows: sample.rows,
      lanes: sample.filters)
  }
  return r
}

/// `dx (B, H, W, C)` for the output gradient `dy (B, OH, OW, F)` through `kernel`
/// (padding positions are constants: they receive nothing). Only the sample's input rows
/// (`rows`) and channels.
public func referenceConvolutionBackwardData(
  dy: [Float], kernel: [Float], batch: Int, geometry g: ConvGeometry, filters: Int, sample: ConvolutionSample = .all
) -> ReferenceResult {
  var r = ReferenceResult(count: batch * g.inputSize)
  let rowSize = g.inputWidth * g.channels
  let wanted = sample.rows.map { rows in (0..<g.inputHeight).map { rows.contains($0) } }
  // The output rows whose windows reach the wanted input rows.
  let outputRows = sample.rows.map { rows in
    (0..<g.outputHeight).filter { oy in
      rows.contains { iy in (0..<g.kernelHeight).contains(iy - (oy * g.strideHeight - g.padTop)) }
    }
  }
  forEachConvolutionTerm(batch: batch, geometry: g, filters: filters, rows: outputRows, channels: sample.channels) {
    out, input, w in
    guard let input else { return }
    if let wanted, !wanted[(input / rowSize) % g.inputHeight] { return }
    r.add(input, dy[out], kernel[w])
  }
  if sample.rows != nil || sample.channels != nil {
    r.checked = sampledIndices(
      batch: batch, height: g.inputHeight, width: g.inputWidth, depth: g.channels, rows: sample.rows,
      lanes: sample.channels)
  }
  return r
}

/// `dW (KH, KW, C, F)` for the output gradient `dy (B, OH, OW, F)` and the input `x`
/// (padding positions hold `padValue`). Only the sample's channels and filters.
public func referenceConvolutionBackwardWeights(
  x: [Float], dy: [Float], batch: Int, geometry g: ConvGeometry, filters: Int, padValue: Float = 0,
  sample: ConvolutionSample = .all
) -> ReferenceResult {
  var r = ReferenceResult(count: g.patchSize * filters)
  forEachConvolutionTerm(
    batch: batch, geometry: g, filters: filters, filterSubset: sample.filters, channels: sample.channels
  ) { out, input, w in
    r.add(w, input.map { x[$0] } ?? padValue, dy[out])
  }
  if sample.filters != nil || sample.channels != nil {
    let taps = g.kernelHeight * g.kernelWidth
    r.checked = sampledIndices(
      batch: 1, height: taps, width: 1, depth: g.channels * filters, rows: nil,
      lanes: (sample.channels ?? Array(0..<g.channels)).flatMap { c in
        (sample.filters ?? Array(0..<filters)).map { c * filters + $0 }
      })
  }
  return r
}

/// The indices of a (B, height, width, depth) tensor at rows `rows` and lanes `lanes` of the
/// last axis (nil: all).
func sampledIndices(batch: Int, height: Int, width: Int, depth: Int, rows: [Int]?, lanes: [Int]?) -> [Int] {
  var out: [Int] = []
  let lanes = lanes ?? Array(0..<depth)
  for b in 0..<batch {
    for y in rows ?? Array(0..<height) {
      for x in 0..<width {
        let base = ((b * height + y) * width + x) * depth
        for l in lanes { out.append(base + l) }
      }
    }
  }
  return out
}

/// A sample of `0..<count` for the self-check of a large layer: the two first and two last
/// (the padded edges) and `middle` spread between them.
public func referenceSample(_ count: Int, middle: Int) -> [Int] {
  var picks = Set([0, 1, count - 2, count - 1].filter { $0 >= 0 && $0 < count })
  for i in 1...max(1, middle) { picks.insert(count * i / (middle + 1)) }
  return picks.filter { $0 >= 0 && $0 < count }.sorted()
}
