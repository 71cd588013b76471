import FlipTensor

// Legend: B batch, H/W input, C channels, OH/OW output (NHWC).

/// `MaxPooling2D(pool_size, strides=pool_size, padding)`: the maximum of each window per
/// channel; backward routes each output gradient to the first maximal input of its window
/// (TensorFlow's choice on ties). With `same` padding, padded positions never win.
public final class MaxPool2D: Layer, LentInputGradient {
  public var name = "max_pooling2d"
  public var compute = Compute.serial
  public let typeName = "max_pooling2d"
  public let inputShape: [Int]
  public let outputShape: [Int]
  public let geometry: ConvGeometry
  private var maxBatch = 0
  /// (B, OH, OW, C) output; (B, OH, OW, C) index of the winning input element in the batch.
  private var y = FloatBuffer(count: 0)
  private var argmax: UnsafeMutablePointer<Int32>?
  /// (B, H, W, C) input gradient.
  public var inputGradient = FloatBuffer(count: 0)
  public var inputGradientIsLent = false

  public init(poolSize: (Int, Int) = (2, 2), strides: (Int, Int)? = nil, padding: Padding = .valid, inputShape: [Int])
    throws
  {
    guard inputShape.count == 3 else {
      throw BNNError.shapeMismatch(
        layer: "max_pooling2d", reason: "expects an image input (height, width, channels), got shape \(inputShape)")
    }
    let s = strides ?? poolSize
    do {
      geometry = try ConvGeometry(
        inputHeight: inputShape[0], inputWidth: inputShape[1], channels: inputShape[2],
        kernelHeight: poolSize.0, kernelWidth: poolSize.1, strideHeight: s.0, strideWidth: s.1,
        padding: padding)
    } catch let e as TensorError {
      throw BNNError.shapeMismatch(layer: "max_pooling2d", reason: e.description)
    }
    self.inputShape = inputShape
    outputShape = [geometry.outputHeight, geometry.outputWidth, inputShape[2]]
  }

  deinit { argmax?.deallocate() }

  public var parameterSpecs: [ParameterSpec] { [] }
  public func bind(store: ParameterStore, views: [ParameterView]) {}

  public func allocate(maxBatch: Int) {
    guard maxBatch > self.maxBatch else { return }
    self.maxBatch = maxBatch
    y = FloatBuffer(count: maxBatch * outputSize)
    if !inputGradientIsLent { inputGradient = FloatBuffer(count: maxBatch * inputSize) }
    argmax?.deallocate()
    argmax = .allocate(capacity: maxBatch * outputSize)
  }

  public func forward(_ x: UnsafePointer<Float>, batch: Int, training: Bool) throws -> UnsafePointer<Float> {
    let g = geometry
    let c = g.channels
    let out = y.pointer
    let arg = argmax!
    if c % 16 == 0 {
      forwardSIMD(x, batch: batch)
      return UnsafePointer(out)
    }
    compute.forRanges(count: batch, grain: 8) { images in
      for b in images {
        let imageOffset = b * g.inputSize
        for oy in 0..<g.outputHeight {
          for ox in 0..<g.outputWidth {
            let o = ((b * g.outputHeight + oy) * g.outputWidth + ox) * c
            let best = out + o
            let winners = arg + o
            var first = true
            for ky in 0..<g.kernelHeight {
              let yy = oy * g.strideHeight - g.padTop + ky
              if yy < 0 || yy >= g.inputHeight { continue }
              for kx in 0..<g.kernelWidth {
                let xx = ox * g.strideWidth - g.padLeft + kx
                if xx < 0 || xx >= g.inputWidth { continue }
                let i = imageOffset + (yy * g.inputWidth + xx) * c
                let v = x + i
                if first {
                  // The first valid position of the window starts the maximum.
                  for ch in 0..<c {
                    best[ch] = v[ch]
                    winners[ch] = Int32(i + ch)
                  }
                  first = false
                } else {
                  // Strictly greater: ties keep the first maximum (TensorFlow's choice).
                  for ch in 0..<c {
                    let better = v[ch] > best[ch]
                    best[ch] = better ? v[ch] : best[ch]
                    winners[ch] = better ? Int32(i + ch) : winners[ch]
                  }
                }
              }
            }
          }
        }
      }
    }
    return UnsafePointer(out)
  }

  /// The same as the scalar loop, 16 channels at a time (channels a multiple of 16).
  private func forwardSIMD(_ x: UnsafePointer<Float>, batch: Int) {
    let g = geometry
    let c = g.channels
    let out = y.pointer
    let arg = argmax!
    var lanes = SIMD16<Int32>()
    for l in 0..<16 { lanes[l] = Int32(l) }
    let laneOffsets = lanes
    compute.forRanges(count: batch, grain: 8) { images in
      for b in images {
        let imageOffset = b * g.inputSize
        for oy in 0..<g.outputHeight {
          let y0 = oy * g.strideHeight - g.padTop
          let yLo = max(0, y0)
          let yHi = min(g.inputHeight, y0 + g.kernelHeight)
          for ox in 0..<g.outputWidth {
            let x0 = ox * g.strideWidth - g.padLeft
            let xLo = max(0, x0)
            let xHi = min(g.inputWidth, x0 + g.kernelWidth)
            let o = ((b * g.outputHeight + oy) * g.outputWidth + ox) * c
            var cb = 0
            while cb < c {
              // The first valid position starts the maximum; later ones win only if strictly
              // greater (ties keep the first, as TensorFlow does).
              var i = imageOffset + (yLo * g.inputWidth + xLo) * c + cb
              var best = UnsafeRawPointer(x + i).loadUnaligned(as: SIMD16<Float>.self)
              var index = SIMD16<Int32>(repeating: Int32(i)) &+ laneOffsets
              for yy in yLo..<yHi {
                for xx in xLo..<xHi where yy != yLo || xx != xLo {
                  i = imageOffset + (yy * g.inputWidth + xx) * c + cb
                  let v = UnsafeRawPointer(x + i).loadUnaligned(as: SIMD16<Float>.self)
                  let better = v .> best
                  best.replace(with: v, where: better)
                  index.replace(with: SIMD16<Int32>(repeating: Int32(i)) &+ laneOffsets, where: better)
                }
              }
              UnsafeMutableRawPointer(out + o + cb).storeBytes(of: best, as: SIMD16<Float>.self)
              UnsafeMutableRawPointer(arg + o + cb).storeBytes(of: index, as: SIMD16<Int32>.self)
              cb += 16
            }
          }
        }
      }
    }
  }

  public func backward(_ dy: UnsafePointer<Float>, batch: Int, needInputGradient: Bool) throws -> UnsafePointer<Float>?
  {
    guard needInputGradient else { return nil }
    let d = inputGradient.pointer
    let arg = argmax!
    let inSize = inputSize
    let outSize = outputSize
    compute.forRanges(count: batch, grain: 8) { images in
      (d + images.lowerBound * inSize).update(repeating: 0, count: images.count * inSize)
      for o in (images.lowerBound * outSize)..<(images.upperBound * outSize) { d[Int(arg[o])] += dy[o] }
    }
    return UnsafePointer(d)
  }

  public var profile: LayerProfile {
    LayerProfile(name: name, inputPrecision: nil, outputShape: outputShape, weights: [], macs: .none)
  }
}

/// `Flatten`: reshapes (B, ...) to (B, ∏...); data and gradients pass through untouched.
public final class Flatten: Layer {
  public var name = "flatten"
  public var compute = Compute.serial
  public let typeName = "flatten"
  public let inputShape: [Int]
  public let outputShape: [Int]
  public init(inputShape: [Int]) {
    self.inputShape = inputShape
    outputShape = [inputShape.reduce(1, *)]
  }
  public var parameterSpecs: [ParameterSpec] { [] }
  public func bind(store: ParameterStore, views: [ParameterView]) {}
  public func allocate(maxBatch: Int) {}
  public func forward(_ x: UnsafePointer<Float>, batch: Int, training: Bool) throws -> UnsafePointer<Float> { x }
  public func backward(_ dy: UnsafePointer<Float>, batch: Int, needInputGradient: Bool) throws -> UnsafePointer<Float>?
  {
    needInputGradient ? dy : nil
  }
  public var profile: LayerProfile {
    LayerProfile(name: name, inputPrecision: nil, outputShape: outputShape, weights: [], macs: .none)
  }
}
