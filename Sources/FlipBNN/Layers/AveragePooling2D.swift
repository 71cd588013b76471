import FlipTensor

// Legend: B batch, H/W input height/width, C channels, KH/KW pool window, SH/SW strides,
// OH/OW output height/width (NHWC). A window's in-bounds elements are
// `n(oy, ox) = |[y0, y0 + KH) ∩ [0, H)| · |[x0, x0 + KW) ∩ [0, W)|` with
// `y0 = oy·SH − pad_top`, `x0 = ox·SW − pad_left` (Keras's `same` split: the smaller half before).

/// `AveragePooling2D(pool_size=(2, 2), strides=None, padding="valid")` (Keras; `strides`
/// defaults to `pool_size`): the mean of each window per channel,
/// `y[b, oy, ox, c] = (1/n(oy, ox)) · Σ_{in-bounds (iy, ix) of the window} x[b, iy, ix, c]`.
///
/// With `valid` padding every window lies inside the image, so `n = KH·KW`. With `same` padding
/// the divisor is the count of in-bounds elements only, as TensorFlow's `avg_pool` computes it
/// (padded positions are neither summed nor counted; PyTorch's `count_include_pad=False`).
///
/// backward: `dx[b, iy, ix, c] = Σ_{windows (oy, ox) holding (iy, ix)} dy[b, oy, ox, c] / n(oy, ox)`.
public final class AveragePooling2D: Layer, LentInputGradient {
  public var name = "average_pooling2d"
  public var compute = Compute.serial
  public let typeName = "average_pooling2d"
  public let inputShape: [Int]
  public let outputShape: [Int]
  public let geometry: ConvGeometry
  public let padding: Padding
  /// (OH·OW) the divisors `n(oy, ox)`, fixed by the geometry.
  private let counts: FloatBuffer
  private var maxBatch = 0
  /// (B, OH, OW, C) output.
  private var y = FloatBuffer(count: 0)
  /// (B, H, W, C) input gradient.
  public var inputGradient = FloatBuffer(count: 0)
  public var inputGradientIsLent = false

  public init(poolSize: (Int, Int) = (2, 2), strides: (Int, Int)? = nil, padding: Padding = .valid, inputShape: [Int])
    throws
  {
    let s = strides ?? poolSize
    try checkPositivePair(poolSize, owner: "AveragePooling2D", parameter: "pool_size")
    try checkPositivePair(s, owner: "AveragePooling2D", parameter: "strides")
    geometry = try windowGeometry(
      layer: "average_pooling2d", inputShape: inputShape, window: poolSize, strides: s, padding: padding)
    self.inputShape = inputShape
    self.padding = padding
    outputShape = [geometry.outputHeight, geometry.outputWidth, inputShape[2]]
    let g = geometry
    counts = FloatBuffer(count: g.outputPixels)
    for oy in 0..<g.outputHeight {
      for ox in 0..<g.outputWidth {
        // Never zero: with Keras's `same` split every window overlaps the image.
        counts.pointer[oy * g.outputWidth + ox] = Float(divisor(outputRow: oy, column: ox))
      }
    }
  }

  /// `n(oy, ox)`: the count of in-bounds elements the window of output pixel (oy, ox) averages.
  public func divisor(outputRow oy: Int, column ox: Int) -> Int {
    geometry.validRange(output: oy, axis: .height).count * geometry.validRange(output: ox, axis: .width).count
  }

  public var parameterSpecs: [ParameterSpec] { [] }
  public func bind(store: ParameterStore, views: [ParameterView]) {}

  public func allocate(maxBatch: Int) {
    guard maxBatch > self.maxBatch else { return }
    self.maxBatch = maxBatch
    y = FloatBuffer(count: maxBatch * outputSize)
    if !inputGradientIsLent { inputGradient = FloatBuffer(count: maxBatch * inputSize) }
  }

  public func forward(_ x: UnsafePointer<Float>, batch: Int, training: Bool) throws -> UnsafePointer<Float> {
    let g = geometry
    let c = g.channels
    let out = y.pointer
    let divisors = UnsafePointer(counts.pointer)
    compute.forRanges(count: batch, grain: 8) { images in
      for b in images {
        let image = x + b * g.inputSize
        for oy in 0..<g.outputHeight {
          let rows = g.validRange(output: oy, axis: .height)
          for ox in 0..<g.outputWidth {
            let columns = g.validRange(output: ox, axis: .width)
            let o = out + ((b * g.outputHeight + oy) * g.outputWidth + ox) * c
            o.update(repeating: 0, count: c)
            for iy in rows {
              for ix in columns {
                let v = image + (iy * g.inputWidth + ix) * c
                for ch in 0..<c { o[ch] += v[ch] }
              }
            }
            // The sum divided by the count, as TensorFlow's mean reducer finishes.
            let n = divisors[oy * g.outputWidth + ox]
            for ch in 0..<c { o[ch] /= n }
          }
        }
      }
    }
    return UnsafePointer(out)
  }

  public func backward(_ dy: UnsafePointer<Float>, batch: Int, needInputGradient: Bool) throws -> UnsafePointer<Float>?
  {
    guard needInputGradient else { return nil }
    let g = geometry
    let c = g.channels
    let d = inputGradient.pointer
    let divisors = UnsafePointer(counts.pointer)
    compute.forRanges(count: batch, grain: 8) { images in
      for b in images {
        let image = d + b * g.inputSize
        image.update(repeating: 0, count: g.inputSize)
        for oy in 0..<g.outputHeight {
          let rows = g.validRange(output: oy, axis: .height)
          for ox in 0..<g.outputWidth {
            let columns = g.validRange(output: ox, axis: .width)
            let gradient = dy + ((b * g.outputHeight + oy) * g.outputWidth + ox) * c
            let n = divisors[oy * g.outputWidth + ox]
            for iy in rows {
              for ix in columns {
                let v = image + (iy * g.inputWidth + ix) * c
                for ch in 0..<c { v[ch] += gradient[ch] / n }
              }
            }
          }
        }
      }
    }
    return UnsafePointer(d)
  }

  /// Larq counts pooling layers' MACs as 0 (no weights, no MAC operations).
  public var profile: LayerProfile {
    LayerProfile(name: name, inputPrecision: nil, outputShape: outputShape, weights: [], macs: .none)
  }
}

/// `GlobalAveragePooling2D(keepdims=False)` (Keras): the mean over height and width per channel,
/// `y[b, c] = (1/(H·W)) · Σ_{h, w} x[b, h, w, c]`; output (C), or (1, 1, C) with `keepdims`.
///
/// backward: `dx[b, h, w, c] = dy[b, c] / (H·W)`.
public final class GlobalAveragePooling2D: Layer, LentInputGradient {
  public var name = "global_average_pooling2d"
  public var compute = Compute.serial
  public let typeName = "global_average_pooling2d"
  public let inputShape: [Int]
  public let outputShape: [Int]
  public let keepdims: Bool
  private var maxBatch = 0
  /// (B, C) output (the same values for (B, 1, 1, C)).
  private var y = FloatBuffer(count: 0)
  /// (B, H, W, C) input gradient.
  public var inputGradient = FloatBuffer(count: 0)
  public var inputGradientIsLent = false

  public init(keepdims: Bool = false, inputShape: [Int]) throws {
    guard inputShape.count == 3, inputShape.allSatisfy({ $0 > 0 }) else {
      throw BNNError.shapeMismatch(
        layer: "global_average_pooling2d",
        reason: "expects an image input (height, width, channels), got shape \(inputShape)")
    }
    self.inputShape = inputShape
    self.keepdims = keepdims
    outputShape = keepdims ? [1, 1, inputShape[2]] : [inputShape[2]]
  }

  public var parameterSpecs: [ParameterSpec] { [] }
  public func bind(store: ParameterStore, views: [ParameterView]) {}

  public func allocate(maxBatch: Int) {
    guard maxBatch > self.maxBatch else { return }
    self.maxBatch = maxBatch
    y = FloatBuffer(count: maxBatch * outputSize)
    if !inputGradientIsLent { inputGradient = FloatBuffer(count: maxBatch * inputSize) }
  }

  public func forward(_ x: UnsafePointer<Float>, batch: Int, training: Bool) throws -> UnsafePointer<Float> {
    let c = inputShape[2]
    let pixels = inputShape[0] * inputShape[1]
    let n = Float(pixels)
    let out = y.pointer
    compute.forRanges(count: batch, grain: 8) { images in
      for b in images {
        let o = out + b * c
        o.update(repeating: 0, count: c)
        let image = x + b * pixels * c
        for p in 0..<pixels {
          let v = image + p * c
          for ch in 0..<c { o[ch] += v[ch] }
        }
        for ch in 0..<c { o[ch] /= n }
      }
    }
    return UnsafePointer(out)
  }

  public func backward(_ dy: UnsafePointer<Float>, batch: Int, needInputGradient: Bool) throws -> UnsafePointer<Float>?
  {
    guard needInputGradient else { return nil }
    let c = inputShape[2]
    let pixels = inputShape[0] * inputShape[1]
    let n = Float(pixels)
    let d = inputGradient.pointer
    compute.forRanges(count: batch, grain: 8) { images in
      for b in images {
        let gradient = dy + b * c
        let image = d + b * pixels * c
        for ch in 0..<c { image[ch] = gradient[ch] / n }
        for p in 1..<pixels { (image + p * c).update(from: image, count: c) }
      }
    }
    return UnsafePointer(d)
  }

  /// Larq's summary does not count this layer's operations: its MACs print as `?`.
  public var profile: LayerProfile {
    LayerProfile(name: name, inputPrecision: nil, outputShape: outputShape, weights: [], macs: .unknown)
  }
}

// MARK: Window helpers shared by the pooling and depthwise layers

enum WindowAxis { case height, width }

extension ConvGeometry {
  /// The input rows (or columns) that window `output` covers inside the image.
  @inline(__always)
  func validRange(output: Int, axis: WindowAxis) -> Range<Int> {
    let (stride, pad, kernel, size) =
      axis == .height
      ? (strideHeight, padTop, kernelHeight, inputHeight) : (strideWidth, padLeft, kernelWidth, inputWidth)
    let start = output * stride - pad
    return max(0, start)..<min(size, start + kernel)
  }
}

/// Throws unless both values of a window or stride pair are positive.
func checkPositivePair(_ p: (Int, Int), owner: String, parameter: String) throws {
  guard p.0 > 0, p.1 > 0 else {
    throw BNNError.invalidParameter(
      owner: owner, parameter: parameter, reason: "must be positive integers, got (\(p.0), \(p.1))")
  }
}

/// The geometry of a window over an image input (H, W, C), with shape errors naming the layer.
func windowGeometry(
  layer: String, inputShape: [Int], window: (Int, Int), strides: (Int, Int), padding: Padding
) throws -> ConvGeometry {
  guard inputShape.count == 3, inputShape.allSatisfy({ $0 > 0 }) else {
    throw BNNError.shapeMismatch(
      layer: layer, reason: "expects an image input (height, width, channels), got shape \(inputShape)")
  }
  do {
    return try ConvGeometry(
      inputHeight: inputShape[0], inputWidth: inputShape[1], channels: inputShape[2],
      kernelHeight: window.0, kernelWidth: window.1, strideHeight: strides.0, strideWidth: strides.1,
      padding: padding)
  } catch let e as TensorError {
    throw BNNError.shapeMismatch(layer: layer, reason: e.description)
  }
}
