import FlipTensor

/// How the encoded images of ImageNet-format data become a model's input: Larq Zoo's
/// preprocessing (`larq_zoo/training/data.py`). Training: a crop as TensorFlow's
/// `sample_distorted_bounding_box` draws it (`ImageCrops.training`), resized to S × S, flipped
/// left–right with probability ½ (`crop-flip`); evaluation, and training with `augment: none`:
/// the central `S/(S+32)` of the shorter side (0.875 at 224) resized to S × S. Then
/// `(x − 255·mean[c]) / (255·std[c])` per channel, on the resampled values (not rounded to bytes).
///
/// Resampling differs from Larq Zoo's on purpose: Larq Zoo calls `resize_bicubic` (TensorFlow
/// 1's, corners not aligned, no antialiasing, so a crop shrunk more than 2× aliases); Flip
/// uses the triangle (bilinear) filter at half-pixel centers, antialiased when shrinking
/// (`ImageResampler`), from a JPEG decoded at the smallest DCT scale n/8 that keeps the crop at
/// least S pixels on both sides (`decodeScale`).
public struct ImagePreprocessing: Sendable, Equatable {
  /// S: the side of the square model input.
  public var imageSize: Int
  public var augment: AugmentationMode
  /// Per-channel mean and standard deviation of pixels scaled to [0, 1].
  public var mean: [Float]
  public var std: [Float]

  /// ImageNet's, as Larq Zoo normalizes (`MEAN_RGB`, `STDDEV_RGB` divided by 255).
  public static let imageNetMean: [Double] = [0.485, 0.456, 0.406]
  public static let imageNetStd: [Double] = [0.229, 0.224, 0.225]
  public static let defaultImageSize = 224
  /// The DCT scales n/8 the JPEG decoder may use: full, and the three reduced scales whose
  /// inverse DCTs libjpeg-turbo has SIMD code for (docs/data.md has the measurement).
  public static let decodeScales = [1, 2, 4, 8]

  public init(
    imageSize: Int = defaultImageSize, augment: AugmentationMode = .cropFlip,
    mean: [Float] = imageNetMean.map(Float.init), std: [Float] = imageNetStd.map(Float.init)
  ) {
    self.imageSize = imageSize
    self.augment = augment
    self.mean = mean
    self.std = std
  }

  public var sampleShape: [Int] { [imageSize, imageSize, 3] }

  public func validate() throws {
    guard (8...4096).contains(imageSize) else {
      throw TrainingError.invalidArgument("image_size must be in 8...4096 pixels, got \(imageSize)")
    }
    guard mean.count == 3, std.count == 3 else {
      throw TrainingError.invalidArgument(
        "mean and std need one value per RGB channel (3 each), got \(mean.count) and \(std.count)")
    }
    if let bad = std.first(where: { !($0 > 0) || !$0.isFinite }) {
      throw TrainingError.invalidArgument("std values must be positive and finite, got \(bad)")
    }
    if let bad = mean.first(where: { !$0.isFinite }) {
      throw TrainingError.invalidArgument("mean values must be finite, got \(bad)")
    }
  }

  /// The choices for one image: where to crop (full-resolution pixels), whether to flip, and
  /// the DCT scale to decode at.
  public struct Draw: Sendable, Equatable {
    public var crop: PixelRect
    public var flip: Bool
    public var scaleEighths: Int
  }

  /// The draw for sample `index` in `epoch` of an image of `header`'s size: from
  /// `Augmentation.generator(seed:epoch:index:)` alone, crop first, then the flip, so the same
  /// image comes out on any rank, in any batch, and in a resumed run.
  public func draw(_ header: ImageHeader, training: Bool, seed: UInt64, epoch: Int, index: Int) -> Draw {
    let (w, h) = (header.width, header.height)
    guard training && augment != .none else {
      let crop = ImageCrops.central(width: w, height: h, imageSize: imageSize)
      return Draw(crop: crop, flip: false, scaleEighths: decodeScale(crop, header))
    }
    var g = Augmentation.generator(seed: seed, epoch: epoch, index: index)
    let crop = ImageCrops.training(width: w, height: h, imageSize: imageSize, generator: &g)
    let flip = augment == .cropFlip && g.next() >> 63 == 1
    return Draw(crop: crop, flip: flip, scaleEighths: decodeScale(crop, header))
  }

  /// The smallest of `decodeScales` at which `crop` is still at least S pixels wide and high
  /// (8, full size, when none is, and always for PNG).
  func decodeScale(_ crop: PixelRect, _ header: ImageHeader) -> Int {
    guard header.format == .jpeg else { return 8 }
    for n in Self.decodeScales where n < 8 {
      let (sw, sh) = ImageDecoder.scaledSize(width: header.width, height: header.height, scaleEighths: n)
      let fx = Double(sw) / Double(header.width)
      let fy = Double(sh) / Double(header.height)
      if Double(crop.width) * fx >= Double(imageSize) && Double(crop.height) * fy >= Double(imageSize) { return n }
    }
    return 8
  }

  /// `value · scale + bias` per channel: the normalization of resampled [0, 255] values.
  var affine: (scale: SIMD4<Float>, bias: SIMD4<Float>) {
    var scale = SIMD4<Float>(repeating: 0)
    var bias = SIMD4<Float>(repeating: 0)
    for c in 0..<3 {
      scale[c] = 1 / (255 * std[c])
      bias[c] = -mean[c] / std[c]
    }
    return (scale, bias)
  }
}

/// Why one sample could not be used: its file could not be read (the job stops: a file
/// system's fault is not the image's), or the image is bad (a decoding error, or the warnings
/// it decoded with: `bad_images` decides).
enum ImageSampleFailure: Error {
  case unreadable(TrainingError)
  case bad(String)
}

/// Turns samples of a `SampleIndex` into model input, one image at a time: read the bytes,
/// read the header, draw the crop, decode the crop's rows and columns at the chosen DCT scale,
/// resample, flip, normalize. One per thread: its byte, pixel and filter buffers are reused.
final class ImageSampleReader {
  private let decoder = ImageDecoder()
  private let resampler = ImageResampler()
  private var bytes: [UInt8] = []

  /// Writes sample `i` of `index` as S × S × 3 floats to `out`, its crop and flip drawn as
  /// sample `drawIndex`'s. Throws when the file cannot be read, or the image does not decode
  /// cleanly (an error, or a libjpeg warning such as a premature end of data).
  func load(
    _ i: Int, from index: SampleIndex, preprocessing p: ImagePreprocessing, training: Bool, seed: UInt64, epoch: Int,
    drawIndex: Int, into out: UnsafeMutablePointer<Float>
  ) throws(ImageSampleFailure) {
    do { try index.read(i, into: &bytes) } catch { throw .unreadable(error) }
    let failure = bytes.withUnsafeBytes { raw -> ImageDecodeError? in
      do throws(ImageDecodeError) {
        try decode(raw, preprocessing: p, training: training, seed: seed, epoch: epoch, drawIndex: drawIndex, into: out)
        return nil
      } catch { return error }
    }
    if let failure { throw .bad(failure.description) }
  }

  private func decode(
    _ raw: UnsafeRawBufferPointer, preprocessing p: ImagePreprocessing, training: Bool, seed: UInt64, epoch: Int,
    drawIndex: Int, into out: UnsafeMutablePointer<Float>
  ) throws(ImageDecodeError) {
    let header = try ImageDecoder.header(raw)
    let d = p.draw(header, training: training, seed: seed, epoch: epoch, index: drawIndex)
    let (sw, sh) = ImageDecoder.scaledSize(width: header.width, height: header.height, scaleEighths: d.scaleEighths)
    let fx = Double(sw) / Double(header.width)
    let fy = Double(sh) / Double(header.height)
    let x0 = Double(d.crop.x) * fx
    let x1 = Double(d.crop.x + d.crop.width) * fx
    let y0 = Double(d.crop.y) * fy
    let y1 = Double(d.crop.y + d.crop.height) * fy
    let lo = (x: Int(x0.rounded(.down)), y: Int(y0.rounded(.down)))
    let want = PixelRect(
      x: lo.x, y: lo.y, width: min(sw, Int(x1.rounded(.up))) - lo.x, height: min(sh, Int(y1.rounded(.up))) - lo.y)
    let region = try decoder.decode(raw, scaleEighths: d.scaleEighths, rect: want)
    if let problem = region.warningProblem { throw .corrupt(problem) }
    let (scale, bias) = p.affine
    let r = region.rect
    resampler.resample(
      decoder.pixels.baseAddress!, width: r.width, height: r.height, rowBytes: r.width * 3,
      window: (x0 - Double(r.x), y0 - Double(r.y), x1 - Double(r.x), y1 - Double(r.y)), size: p.imageSize,
      flip: d.flip, scale: scale, bias: bias, into: out)
  }
}
