/// Resamples a window of an 8-bit RGB image to S × S × 3 floats: separable, with the triangle
/// (bilinear) filter at half-pixel centers, its support widened by the shrink factor when
/// shrinking (antialiased, as Pillow's and TensorFlow's `antialias=True` resizes do), taps
/// limited to the window's pixels and their weights renormalized at its edges. One per
/// thread: its coefficient and row buffers are reused from image to image.
final class ImageResampler {
  private var columns = Taps()
  private var rows = Taps()
  /// Horizontally resampled rows: (rows used, S, 3).
  private var horizontal: [Float] = []

  /// The filter taps of one axis: output `i` is `Σ_k weights[i·width + k] · in[start[i] + k]`
  /// for `k < count[i]`.
  struct Taps {
    var start: [Int] = []
    var count: [Int] = []
    var weights: [Float] = []
    var width = 0

    /// Taps mapping the window `[from, to)` of an axis (continuous coordinates, pixel `j`
    /// covers `[j, j + 1)`) onto `size` outputs, using only pixels in `pixels`.
    mutating func compute(from: Double, to: Double, size: Int, pixels: Range<Int>) {
      let scale = (to - from) / Double(size)
      let support = max(scale, 1)
      width = Int(support.rounded(.up)) * 2 + 1
      start.removeAll(keepingCapacity: true)
      count.removeAll(keepingCapacity: true)
      weights.removeAll(keepingCapacity: true)
      weights.reserveCapacity(size * width)
      for i in 0..<size {
        let center = from + (Double(i) + 0.5) * scale
        var lo = max(pixels.lowerBound, Int((center - support + 0.5).rounded(.down)))
        var hi = min(pixels.upperBound, Int((center + support + 0.5).rounded(.down)))
        if hi <= lo {
          // A window narrower than a pixel at the edge: the nearest pixel.
          lo = min(max(Int(center.rounded(.down)), pixels.lowerBound), pixels.upperBound - 1)
          hi = lo + 1
        }
        hi = min(hi, lo + width)
        let first = weights.count
        var total: Float = 0
        for k in 0..<width {
          let t = k < hi - lo ? abs((Double(lo + k) + 0.5 - center) / support) : 1
          let w = Float(max(0, 1 - t))
          weights.append(w)
          total += w
        }
        if total == 0 {
          // Only the window's edge in reach: the pixel under the center.
          weights[first + min(hi - lo - 1, max(0, Int(center.rounded(.down)) - lo))] = 1
          total = 1
        }
        for k in first..<(first + width) { weights[k] /= total }
        start.append(lo)
        count.append(hi - lo)
      }
    }
  }

  /// Writes `size × size × 3` floats to `out`: the window `[x0, x1) × [y0, y1)` of `source`
  /// (RGB8, `sourceWidth × sourceHeight`, `rowBytes` per row) resampled, mirrored left–right
  /// when `flip`, each channel `c` mapped to `value · scale[c] + bias[c]`.
  func resample(
    _ source: UnsafePointer<UInt8>, width sourceWidth: Int, height sourceHeight: Int, rowBytes: Int,
    window: (x0: Double, y0: Double, x1: Double, y1: Double), size: Int, flip: Bool,
    scale: SIMD4<Float>, bias: SIMD4<Float>, into out: UnsafeMutablePointer<Float>
  ) {
    let xPixels = max(0, Int(window.x0.rounded(.down)))..<min(sourceWidth, Int(window.x1.rounded(.up)))
    let yPixels = max(0, Int(window.y0.rounded(.down)))..<min(sourceHeight, Int(window.y1.rounded(.up)))
    precondition(!xPixels.isEmpty && !yPixels.isEmpty, "an empty resampling window")
    columns.compute(from: window.x0, to: window.x1, size: size, pixels: xPixels)
    rows.compute(from: window.y0, to: window.y1, size: size, pixels: yPixels)
    let firstRow = rows.start[0]
    let lastRow = (0..<size).map { rows.start[$0] + rows.count[$0] }.max()!
    let used = lastRow - firstRow
    let rowFloats = size * 3
    if horizontal.count < used * rowFloats { horizontal = [Float](repeating: 0, count: used * rowFloats) }
    horizontal.withUnsafeMutableBufferPointer { hp in
      let h = hp.baseAddress!
      columns.weights.withUnsafeBufferPointer { cw in
        for r in 0..<used {
          resampleRow(source + (firstRow + r) * rowBytes, weights: cw.baseAddress!, into: h + r * rowFloats, size: size)
        }
      }
      rows.weights.withUnsafeBufferPointer { rw in
        for i in 0..<size {
          let taps = rows.count[i]
          let wp = rw.baseAddress! + i * rows.width
          let base = h + (rows.start[i] - firstRow) * rowFloats
          let line = out + i * rowFloats
          for q in 0..<size {
            var acc = SIMD4<Float>(repeating: 0)
            var p = base + q * 3
            for k in 0..<taps {
              acc += wp[k] * SIMD4(p[0], p[1], p[2], 0)
              p += rowFloats
            }
            let v = acc * scale + bias
            let o = line + (flip ? size - 1 - q : q) * 3
            o[0] = v[0]
            o[1] = v[1]
            o[2] = v[2]
          }
        }
      }
    }
  }

  /// One source row resampled horizontally to `size` RGB floats.
  @inline(__always)
  private func resampleRow(
    _ row: UnsafePointer<UInt8>, weights: UnsafePointer<Float>, into out: UnsafeMutablePointer<Float>, size: Int
  ) {
    let width = columns.width
    for i in 0..<size {
      let taps = columns.count[i]
      var p = row + columns.start[i] * 3
      let wp = weights + i * width
      var acc = SIMD4<Float>(repeating: 0)
      for k in 0..<taps {
        acc += wp[k] * SIMD4(Float(p[0]), Float(p[1]), Float(p[2]), 0)
        p += 3
      }
      out[3 * i] = acc[0]
      out[3 * i + 1] = acc[1]
      out[3 * i + 2] = acc[2]
    }
  }
}
