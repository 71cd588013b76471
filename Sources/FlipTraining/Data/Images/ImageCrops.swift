import FlipTensor

/// The crop windows of Larq Zoo's ImageNet preprocessing (`larq_zoo/training/data.py`, itself
/// the EfficientNet/ResNet TPU recipe), in full-resolution pixels of the encoded image.
public enum ImageCrops {
  /// Larq Zoo's `CROP_PADDING`: evaluation keeps `S / (S + 32)` of the shorter side
  /// (0.875 at S = 224).
  public static let cropPadding = 32

  /// The evaluation crop (`_decode_and_center_crop`): a square of side
  /// `Int(Float(S) / Float(S + 32) · Float(min(height, width)))` (float32, truncated, as
  /// TensorFlow casts it), offset by `(side − size + 1) / 2` on each axis.
  public static func central(width: Int, height: Int, imageSize: Int) -> PixelRect {
    let fraction = Float(imageSize) / Float(imageSize + cropPadding)
    let size = max(1, Int(fraction * Float(min(width, height))))
    return PixelRect(x: (width - size + 1) / 2, y: (height - size + 1) / 2, width: size, height: size)
  }

  /// The training crop (`_decode_and_random_crop`): `sampleDistorted` with Larq Zoo's
  /// arguments; when its 10 attempts fail (it then returns the whole image, which Larq Zoo
  /// detects by the shape) the evaluation crop instead.
  public static func training(width: Int, height: Int, imageSize: Int, generator g: inout SplitMix64) -> PixelRect {
    let crop = sampleDistorted(width: width, height: height, generator: &g)
    if crop.width == width && crop.height == height {
      return central(width: width, height: height, imageSize: imageSize)
    }
    return crop
  }

  /// TensorFlow's `sample_distorted_bounding_box` for one bounding box covering the whole
  /// image (`[0, 0, 1, 1]`), as `_decode_and_random_crop` calls it: aspect ratio
  /// (width/height) uniform in [3/4, 4/3], relative area in [0.08, 1], `min_object_covered`
  /// 0.1, 10 attempts, then the whole image. Each attempt follows `GenerateRandomCrop` of
  /// `sample_distorted_bounding_box_op.cc`: the height uniform over the integers whose
  /// `round(height · ratio) × height` area lies within the bounds (`lrintf`: half to even),
  /// then the corner uniform over `[0, H − h)` × `[0, W − w)` (TensorFlow's `Uniform(n)` is
  /// exclusive of n), and the crop must cover 0.1 of the image. The draws come from `g`
  /// (Flip's generator, not TensorFlow's Philox), so the distribution is TensorFlow's, the
  /// numbers are Flip's own.
  public static func sampleDistorted(
    width: Int, height: Int, generator g: inout SplitMix64,
    aspectRatioRange: ClosedRange<Float> = Float(3.0 / 4.0)...Float(4.0 / 3.0),
    areaRange: ClosedRange<Float> = 0.08...1, minObjectCovered: Float = 0.1, maxAttempts: Int = 10
  ) -> PixelRect {
    let whole = PixelRect(x: 0, y: 0, width: width, height: height)
    guard width > 0, height > 0 else { return whole }
    for _ in 0..<maxAttempts {
      let span = aspectRatioRange.upperBound - aspectRatioRange.lowerBound
      let ratio = g.nextUnitFloat() * span + aspectRatioRange.lowerBound
      guard
        let crop = randomCrop(
          width: width, height: height, minArea: areaRange.lowerBound, maxArea: areaRange.upperBound, ratio: ratio,
          generator: &g)
      else { continue }
      if covers(crop, width: width, height: height, fraction: minObjectCovered) { return crop }
    }
    return whole
  }

  /// `lrintf`: to the nearest integer, ties to even.
  @inline(__always)
  static func lrint(_ x: Float) -> Int { Int(x.rounded(.toNearestOrEven)) }

  /// One attempt of `GenerateRandomCrop`; nil when the rounded area misses the bounds.
  static func randomCrop(
    width: Int, height: Int, minArea minRelative: Float, maxArea maxRelative: Float, ratio: Float,
    generator g: inout SplitMix64
  ) -> PixelRect? {
    guard maxRelative > 0, ratio > 0, minRelative <= maxRelative else { return nil }
    let minArea = minRelative * Float(width) * Float(height)
    let maxArea = maxRelative * Float(width) * Float(height)
    var h = lrint((minArea / ratio).squareRoot())
    var maxH = lrint((maxArea / ratio).squareRoot())
    if lrint(Float(maxH) * ratio) > width {
      // The largest height whose rounded width still fits.
      let eps: Float = 0.0000001
      maxH = Int(((Float(width) + 0.5 - eps) / ratio).rounded(.down))
      if lrint(Float(maxH) * ratio) > width { maxH -= 1 }
    }
    maxH = min(maxH, height)
    h = min(h, maxH)
    if h < maxH { h += g.nextInt(below: maxH - h + 1) }
    var w = lrint(Float(h) * ratio)
    var area = Float(w * h)
    if area < minArea {
      h += 1
      w = lrint(Float(h) * ratio)
      area = Float(w * h)
    }
    if area > maxArea {
      h -= 1
      w = lrint(Float(h) * ratio)
      area = Float(w * h)
    }
    guard area >= minArea, area <= maxArea, w <= width, h <= height, w > 0, h > 0 else { return nil }
    let y = h < height ? g.nextInt(below: height - h) : 0
    let x = w < width ? g.nextInt(below: width - w) : 0
    return PixelRect(x: x, y: y, width: w, height: h)
  }

  /// `SatisfiesOverlapConstraints` for the whole-image box: the crop covers at least
  /// `fraction` of the image (TensorFlow's draws of 48 × 64 images never go below 0.1 of
  /// W·H: Fixtures/crop-reference.json).
  static func covers(_ crop: PixelRect, width: Int, height: Int, fraction: Float) -> Bool {
    let ix = max(0, min(crop.x + crop.width, width) - max(crop.x, 0))
    let iy = max(0, min(crop.y + crop.height, height) - max(crop.y, 0))
    return Float(ix * iy) / Float(width * height) >= fraction
  }
}
