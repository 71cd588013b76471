/// Resamples a window of an 8-bit RGB image to S × S × 3 floats: separable, with the triangle
/// (bilinear) filter at half-pixel centers, its support widened by the shrink factor when
/// shrinking (antialiased, as Pillow's and TensorFlow's `antialias=True` resizes do), taps
/// limited to the window's pixels and their weights renormalized at its edges. One per
/// thread: its coefficient and row buffers are reused from image to image.
final class ImageResampler {
  private var columns = Taps()
  private var rows = Taps()
  /// One vertically resampled row (with a float of slack for 4-wide loads).
  private var line = Scratch()

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
    line.free()
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
    // Vertically first (contiguous rows of bytes, vectorized), over the window's columns only;
    // then horizontally, on S rows instead of the window's height.
    let columnsUsed = xPixels.count * 3
    let rowFloats = size * 3
    let v = line.reserve(columnsUsed + 1)
    v[columnsUsed] = 0
    let window = source + xPixels.lowerBound * 3
    rows.weights.withUnsafeBufferPointer { rw in
      columns.start.withUnsafeBufferPointer { starts in
        columns.count.withUnsafeBufferPointer { counts in
          columns.weights.withUnsafeBufferPointer { weights in
            let taps = Taps.Pointers(
              start: starts.baseAddress!, count: counts.baseAddress!, weights: weights.baseAddress!,
              width: columns.width)
            for i in 0..<size {
              let wp = rw.baseAddress! + i * rows.width
              let first = window + rows.start[i] * rowBytes
              let w0 = wp[0]
              for t in 0..<columnsUsed { v[t] = w0 * Float(first[t]) }
              for k in 1..<max(1, rows.count[i]) {
                let w = wp[k]
                let row = first + k * rowBytes
                for t in 0..<columnsUsed { v[t] += w * Float(row[t]) }
              }
              Self.resampleRow(
                v - xPixels.lowerBound * 3, taps: taps, size: size, flip: flip, scale: scale, bias: bias,
                into: out + i * rowFloats)
            }
          }
        }
      }
    }
  }

  /// One row of floats (RGB, indexed from the row's pixel 0) resampled horizontally to `size`
  /// RGB floats, each channel `c` mapped to `value · scale[c] + bias[c]`, written mirrored when
  /// `flip`; reads one float past a tap's pixel (4-wide loads).
  @inline(__always)
  private static func resampleRow(
    _ row: UnsafePointer<Float>, taps: Taps.Pointers, size: Int, flip: Bool, scale: SIMD4<Float>,
    bias: SIMD4<Float>, into out: UnsafeMutablePointer<Float>
  ) {
    for i in 0..<size {
      var p = UnsafeRawPointer(row + Int(taps.start[i]) * 3)
      let wp = taps.weights + i * taps.width
      var a = SIMD4<Float>(repeating: 0)
      for k in 0..<Int(taps.count[i]) {
        a += wp[k] * p.loadUnaligned(as: SIMD4<Float>.self)
        p += 12
      }
      a = a * scale + bias
      let o = out + 3 * (flip ? size - 1 - i : i)
      o[0] = a[0]
      o[1] = a[1]
      o[2] = a[2]
    }
  }
}
