/// Resamples a window of an 8-bit RGB image to S × S × 3 floats: separable, with the triangle
/// (bilinear) filter at half-pixel centers, its support widened by the shrink factor when
/// shrinking (antialiased, as Pillow's and TensorFlow's `antialias=True` resizes do), taps
/// limited to the window's pixels and their weights renormalized at its edges. One per
/// thread: its coefficient and row buffers are reused from image to image.
final class ImageResampler {
  private var columns = Taps()
  private var rows = Taps()
  /// The window's rows as floats (rows used × columns × 3), one vertically resampled row (with
  /// a float of slack for 4-wide loads), and one output row.
  private var horizontal = Scratch()
  private var line = Scratch()
  private var sum = Scratch()

  /// A float buffer that grows and is never shrunk.
  struct Scratch {
    private(set) var pointer = UnsafeMutablePointer<Float>.allocate(capacity: 1)
    private var capacity = 1
    mutating func reserve(_ n: Int) -> UnsafeMutablePointer<Float> {
      if n > capacity {
        pointer.deallocate()
        pointer = .allocate(capacity: n)
        capacity = n
      }
      return pointer
    }
    func free() { pointer.deallocate() }
  }

  deinit {
    horizontal.free()
    line.free()
    sum.free()
  }

  /// The filter taps of one axis: output `i` is `Σ_k weights[i·width + k] · in[start[i] + k]`
  /// for `k < count[i]`.
  struct Taps {
    var start: [Int] = []
    var count: [Int] = []
    var weights: [Float] = []
    var width = 0

    /// The taps' arrays as pointers, for the inner loops.
    struct Pointers {
      var start: UnsafePointer<Int>
      var count: UnsafePointer<Int>
      var weights: UnsafePointer<Float>
      var width: Int
    }

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
    // Vertically first (contiguous rows, vectorized), over the window's columns only; then
    // horizontally, on S rows instead of the window's height.
    let columnsUsed = xPixels.count * 3
    let firstRow = rows.start[0]
    let used = (0..<size).map { rows.start[$0] + rows.count[$0] }.max()! - firstRow
    let rowFloats = size * 3
    let f = horizontal.reserve(used * columnsUsed)
    let v = line.reserve(columnsUsed + 1)
    let acc = sum.reserve(rowFloats)
    v[columnsUsed] = 0
    for r in 0..<used {
      let src = source + (firstRow + r) * rowBytes + xPixels.lowerBound * 3
      let dst = f + r * columnsUsed
      for t in 0..<columnsUsed { dst[t] = Float(src[t]) }
    }
    let pattern = Affine(scale: scale, bias: bias)
    rows.weights.withUnsafeBufferPointer { rw in
      columns.start.withUnsafeBufferPointer { starts in
        columns.count.withUnsafeBufferPointer { counts in
          columns.weights.withUnsafeBufferPointer { weights in
            let taps = Taps.Pointers(
              start: starts.baseAddress!, count: counts.baseAddress!, weights: weights.baseAddress!,
              width: columns.width)
            for i in 0..<size {
              let wp = rw.baseAddress! + i * rows.width
              let first = f + (rows.start[i] - firstRow) * columnsUsed
              let w0 = wp[0]
              for t in 0..<columnsUsed { v[t] = w0 * first[t] }
              for k in 1..<max(1, rows.count[i]) {
                let w = wp[k]
                let row = first + k * columnsUsed
                for t in 0..<columnsUsed { v[t] += w * row[t] }
              }
              Self.resampleRow(v - xPixels.lowerBound * 3, taps: taps, size: size, into: acc)
              Self.writeRow(acc, size: size, flip: flip, pattern: pattern, into: out + i * rowFloats)
            }
          }
        }
      }
    }
  }

  /// One row of floats (RGB, indexed from the row's pixel 0) resampled horizontally to `size`
  /// RGB floats; reads one float past a tap's pixel (4-wide loads).
  @inline(__always)
  private static func resampleRow(
    _ row: UnsafePointer<Float>, taps: Taps.Pointers, size: Int, into out: UnsafeMutablePointer<Float>
  ) {
    for i in 0..<size {
      var p = UnsafeRawPointer(row + Int(taps.start[i]) * 3)
      let wp = taps.weights + i * taps.width
      var a = SIMD4<Float>(repeating: 0)
      for k in 0..<Int(taps.count[i]) {
        a += wp[k] * p.loadUnaligned(as: SIMD4<Float>.self)
        p += 12
      }
      out[3 * i] = a[0]
      out[3 * i + 1] = a[1]
      out[3 * i + 2] = a[2]
    }
  }

  /// A per-channel affine map over RGB floats: `s[k]`, `b[k]` hold the scales and biases of
  /// the channels of floats 4k…4k+3 of every 12 (channels 0 1 2 0, 1 2 0 1, 2 0 1 2).
  struct Affine {
    var s: (SIMD4<Float>, SIMD4<Float>, SIMD4<Float>)
    var b: (SIMD4<Float>, SIMD4<Float>, SIMD4<Float>)
    var scale: SIMD4<Float>
    var bias: SIMD4<Float>
    init(scale: SIMD4<Float>, bias: SIMD4<Float>) {
      func rotate(_ v: SIMD4<Float>, _ k: Int) -> SIMD4<Float> {
        SIMD4(v[k % 3], v[(k + 1) % 3], v[(k + 2) % 3], v[k % 3])
      }
      s = (rotate(scale, 0), rotate(scale, 1), rotate(scale, 2))
      b = (rotate(bias, 0), rotate(bias, 1), rotate(bias, 2))
      self.scale = scale
      self.bias = bias
    }
  }

  /// A resampled row normalized per channel into `out`, mirrored when `flip`.
  @inline(__always)
  private static func writeRow(
    _ acc: UnsafeMutablePointer<Float>, size: Int, flip: Bool, pattern: Affine, into out: UnsafeMutablePointer<Float>
  ) {
    let n = size * 3
    var t = 0
    let raw = UnsafeMutableRawPointer(acc)
    while t + 12 <= n {
      let p = raw + t * 4
      p.storeBytes(of: p.loadUnaligned(as: SIMD4<Float>.self) * pattern.s.0 + pattern.b.0, as: SIMD4<Float>.self)
      (p + 16).storeBytes(
        of: (p + 16).loadUnaligned(as: SIMD4<Float>.self) * pattern.s.1 + pattern.b.1, as: SIMD4<Float>.self)
      (p + 32).storeBytes(
        of: (p + 32).loadUnaligned(as: SIMD4<Float>.self) * pattern.s.2 + pattern.b.2, as: SIMD4<Float>.self)
      t += 12
    }
    while t < n {
      acc[t] = acc[t] * pattern.scale[t % 3] + pattern.bias[t % 3]
      t += 1
    }
    if !flip {
      out.update(from: acc, count: n)
      return
    }
    for q in 0..<size {
      let a = acc + 3 * q
      let o = out + 3 * (size - 1 - q)
      o[0] = a[0]
      o[1] = a[1]
      o[2] = a[2]
    }
  }
}
