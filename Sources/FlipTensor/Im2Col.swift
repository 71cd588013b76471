// Legend: B batch, H/W input height/width, C input channels, KH/KW kernel size,
// OH/OW output height/width, F output channels (filters). Activations are NHWC, kernels
// [KH, KW, C, F] (Keras layout), so a kernel is already the [KH·KW·C, F] matrix of im2col.

/// Padding mode of a convolution or pooling window, by Keras's names.
public enum Padding: String, Sendable, Codable {
  case valid, same
}

/// The geometry of a 2-D window operation (convolution or pooling) over NHWC data.
public struct ConvGeometry: Sendable, Equatable {
  public let inputHeight: Int, inputWidth: Int, channels: Int
  public let kernelHeight: Int, kernelWidth: Int
  public let strideHeight: Int, strideWidth: Int
  public let padTop: Int, padLeft: Int
  public let outputHeight: Int, outputWidth: Int

  /// Keras's rule: `valid` → `OH = ⌊(H − KH)/S⌋ + 1`; `same` → `OH = ⌈H/S⌉`, total padding
  /// `max((OH − 1)·S + KH − H, 0)`, the smaller half before.
  public init(
    inputHeight: Int, inputWidth: Int, channels: Int, kernelHeight: Int, kernelWidth: Int,
    strideHeight: Int, strideWidth: Int, padding: Padding
  ) throws {
    guard kernelHeight > 0, kernelWidth > 0, strideHeight > 0, strideWidth > 0 else {
      throw TensorError.shapeMismatch("kernel size and strides must be positive")
    }
    self.inputHeight = inputHeight
    self.inputWidth = inputWidth
    self.channels = channels
    self.kernelHeight = kernelHeight
    self.kernelWidth = kernelWidth
    self.strideHeight = strideHeight
    self.strideWidth = strideWidth
    switch padding {
    case .valid:
      guard inputHeight >= kernelHeight, inputWidth >= kernelWidth else {
        throw TensorError.shapeMismatch(
          "a \(kernelHeight)×\(kernelWidth) window does not fit a \(inputHeight)×\(inputWidth) input with valid padding"
        )
      }
      outputHeight = (inputHeight - kernelHeight) / strideHeight + 1
      outputWidth = (inputWidth - kernelWidth) / strideWidth + 1
      padTop = 0
      padLeft = 0
    case .same:
      outputHeight = (inputHeight + strideHeight - 1) / strideHeight
      outputWidth = (inputWidth + strideWidth - 1) / strideWidth
      padTop = max((outputHeight - 1) * strideHeight + kernelHeight - inputHeight, 0) / 2
      padLeft = max((outputWidth - 1) * strideWidth + kernelWidth - inputWidth, 0) / 2
    }
  }

  /// Elements of one im2col row: `KH·KW·C`.
  public var patchSize: Int { kernelHeight * kernelWidth * channels }
  /// Output pixels per image: `OH·OW`.
  public var outputPixels: Int { outputHeight * outputWidth }
  /// Input elements per image: `H·W·C`.
  public var inputSize: Int { inputHeight * inputWidth * channels }
}

/// Unfolds `batch` NHWC images `x` (B, H, W, C) into `columns` (B·OH·OW, KH·KW·C); positions in
/// the padding take `padValue` (Larq's `pad_values`). Generic so the exact int8 path unfolds
/// int8 data directly. Split over `compute`'s threads by image.
@inlinable
public func im2col<T>(
  _ x: UnsafePointer<T>, batch: Int, geometry g: ConvGeometry, padValue: T,
  into columns: UnsafeMutablePointer<T>, compute: Compute
) {
  let c = g.channels
  compute.forRanges(count: batch, grain: 8) { images in
    var row = columns + images.lowerBound * g.outputPixels * g.patchSize
    for b in images {
      let image = x + b * g.inputSize
      for oy in 0..<g.outputHeight {
        let y0 = oy * g.strideHeight - g.padTop
        for ox in 0..<g.outputWidth {
          let x0 = ox * g.strideWidth - g.padLeft
          var out = row
          for ky in 0..<g.kernelHeight {
            let y = y0 + ky
            if y < 0 || y >= g.inputHeight {
              out.update(repeating: padValue, count: g.kernelWidth * c)
              out += g.kernelWidth * c
              continue
            }
            let line = image + y * g.inputWidth * c
            let xStart = x0
            let xEnd = x0 + g.kernelWidth
            if xStart >= 0 && xEnd <= g.inputWidth {
              out.update(from: line + xStart * c, count: g.kernelWidth * c)
              out += g.kernelWidth * c
            } else {
              for kx in 0..<g.kernelWidth {
                let xx = x0 + kx
                if xx < 0 || xx >= g.inputWidth {
                  out.update(repeating: padValue, count: c)
                } else {
                  out.update(from: line + xx * c, count: c)
                }
                out += c
              }
            }
          }
          row += g.patchSize
        }
      }
    }
  }
}

/// The adjoint of `im2col`: adds each column entry back onto the input position it came
/// from. `dx` (B, H, W, C) is overwritten; padding positions are dropped. Split over
/// `compute`'s threads by image.
public func col2im(
  _ columns: UnsafePointer<Float>, batch: Int, geometry g: ConvGeometry,
  into dx: UnsafeMutablePointer<Float>, compute: Compute
) {
  let c = g.channels
  compute.forRanges(count: batch, grain: 8) { images in
    (dx + images.lowerBound * g.inputSize).update(repeating: 0, count: images.count * g.inputSize)
    var row = columns + images.lowerBound * g.outputPixels * g.patchSize
    for b in images {
      let image = dx + b * g.inputSize
      for oy in 0..<g.outputHeight {
        let y0 = oy * g.strideHeight - g.padTop
        for ox in 0..<g.outputWidth {
          let x0 = ox * g.strideWidth - g.padLeft
          var src = row
          for ky in 0..<g.kernelHeight {
            let y = y0 + ky
            if y < 0 || y >= g.inputHeight {
              src += g.kernelWidth * c
              continue
            }
            let line = image + y * g.inputWidth * c
            for kx in 0..<g.kernelWidth {
              let xx = x0 + kx
              if xx >= 0 && xx < g.inputWidth {
                let dst = line + xx * c
                for i in 0..<c { dst[i] += src[i] }
              }
              src += c
            }
          }
          row += g.patchSize
        }
      }
    }
  }
}
