import FlipTensor
import Foundation
import Testing

@testable import FlipTraining

/// Larq Zoo's crops and Flip's resampling of ImageNet-format images.
@Suite("Image crops and resampling")
struct ImagePreprocessingTests {
  @Test func evaluationCropIsLarqZoosCentralCrop() {
    // 224/256 of the shorter side, truncated in float32; offset (side − size + 1) / 2.
    #expect(
      ImageCrops.central(width: 500, height: 375, imageSize: 224) == PixelRect(x: 86, y: 24, width: 328, height: 328))
    #expect(
      ImageCrops.central(width: 333, height: 500, imageSize: 224) == PixelRect(x: 21, y: 105, width: 291, height: 291))
    // Other sizes keep S/(S+32): 128/160 of 100 = 80.
    #expect(
      ImageCrops.central(width: 100, height: 120, imageSize: 128) == PixelRect(x: 10, y: 20, width: 80, height: 80))
    #expect(ImageCrops.central(width: 1, height: 1, imageSize: 224) == PixelRect(x: 0, y: 0, width: 1, height: 1))
  }

  @Test func distortedCropsKeepTheirBoundsAndCoverage() {
    var g = SplitMix64(seed: 7)
    for (w, h) in [(500, 375), (333, 500), (64, 48), (20, 900)] {
      for _ in 0..<2000 {
        let c = ImageCrops.sampleDistorted(width: w, height: h, generator: &g)
        #expect(c.x >= 0 && c.y >= 0 && c.x + c.width <= w && c.y + c.height <= h)
        if c.width == w && c.height == h { continue }  // the fallback
        let area = Float(c.width * c.height) / Float(w * h)
        #expect(area >= 0.08 && area <= 1)
        // The crop covers at least 0.1 of the image.
        #expect(ImageCrops.covers(c, width: w, height: h, fraction: 0.1))
        // The aspect ratio is the drawn one up to rounding the width to whole pixels.
        let ratio = Float(c.width) / Float(c.height)
        #expect(ratio >= 0.75 - 0.5 / Float(c.height) - 1e-6 && ratio <= 4.0 / 3 + 0.5 / Float(c.height) + 1e-6)
        // TensorFlow's Uniform(n) excludes n: the crop never touches the far edges unless full.
        if c.height < h { #expect(c.y + c.height < h) }
        if c.width < w { #expect(c.x + c.width < w) }
      }
    }
  }

  /// TensorFlow's own `sample_distorted_bounding_box` (200,000 draws per image size by
  /// scripts/crop-reference.py, in Fixtures/crop-reference.json): Flip's crops have the same
  /// area and aspect-ratio histograms within sampling noise (0.006 per bin at 50,000 draws),
  /// the same mean area within 0.005, and the same share of whole-image results.
  @Test func cropHistogramsMatchTensorFlows() throws {
    struct Reference: Decodable {
      struct Size: Decodable {
        var height: Int, width: Int
        var wholeImageFraction: Double, areaHist: [Double], aspectHist: [Double], meanArea: Double
        enum CodingKeys: String, CodingKey {
          case height, width
          case wholeImageFraction = "whole_image_fraction"
          case areaHist = "area_hist"
          case aspectHist = "aspect_hist"
          case meanArea = "mean_area"
        }
      }
      var sizes: [Size]
    }
    let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent(
      "Fixtures/crop-reference.json")
    let reference = try JSONDecoder().decode(Reference.self, from: Data(contentsOf: path))
    #expect(reference.sizes.count == 3)
    var g = SplitMix64(seed: 3)
    for r in reference.sizes {
      let draws = 50_000
      var area = [Double](repeating: 0, count: 20)
      var aspect = [Double](repeating: 0, count: 20)
      var whole = 0.0
      var areaSum = 0.0
      for _ in 0..<draws {
        let c = ImageCrops.sampleDistorted(width: r.width, height: r.height, generator: &g)
        if c.width == r.width && c.height == r.height {
          whole += 1
          continue
        }
        let a = Double(c.width * c.height) / Double(r.width * r.height)
        areaSum += a
        area[min(19, Int(a * 20))] += 1
        let q = (Double(c.width) / Double(c.height) - 0.7) / 0.7 * 20
        aspect[max(0, min(19, Int(q)))] += 1
      }
      let kept = Double(draws) - whole
      #expect(abs(whole / Double(draws) - r.wholeImageFraction) < 0.002, "\(r.width)×\(r.height)")
      #expect(abs(areaSum / kept - r.meanArea) < 0.005, "\(r.width)×\(r.height): \(areaSum / kept)")
      for k in 0..<20 {
        #expect(abs(area[k] / kept - r.areaHist[k]) < 0.006, "area bin \(k) of \(r.width)×\(r.height)")
        #expect(abs(aspect[k] / kept - r.aspectHist[k]) < 0.006, "aspect bin \(k) of \(r.width)×\(r.height)")
      }
    }
  }

  @Test func trainingCropFallsBackToTheEvaluationCrop() {
    // A 1-pixel-high image: no crop of area ≥ 0.08 with aspect in [3/4, 4/3] but the whole
    // image, so every draw falls back to the central crop.
    var g = SplitMix64(seed: 1)
    for _ in 0..<50 {
      #expect(
        ImageCrops.training(width: 40, height: 1, imageSize: 224, generator: &g)
          == ImageCrops.central(width: 40, height: 1, imageSize: 224))
    }
  }

  @Test func drawsDependOnSeedEpochAndIndexOnly() {
    let p = ImagePreprocessing(imageSize: 224, augment: .cropFlip)
    let header = ImageHeader(format: .jpeg, width: 500, height: 375, components: 3)
    let a = p.draw(header, training: true, seed: 3, epoch: 2, index: 17)
    #expect(a == p.draw(header, training: true, seed: 3, epoch: 2, index: 17))
    let others = (0..<20).map { p.draw(header, training: true, seed: 3, epoch: 2, index: 18 + $0) }
    #expect(others.contains { $0 != a })
    // crop and crop-flip crop alike; only crop-flip flips, about half the time.
    let crop = ImagePreprocessing(imageSize: 224, augment: .crop)
    var flips = 0
    for i in 0..<400 {
      let d = p.draw(header, training: true, seed: 0, epoch: 0, index: i)
      let e = crop.draw(header, training: true, seed: 0, epoch: 0, index: i)
      #expect(d.crop == e.crop && !e.flip)
      flips += d.flip ? 1 : 0
    }
    #expect(flips > 150 && flips < 250)
    // Evaluation, and training with augment none: the central crop, never flipped.
    let none = ImagePreprocessing(imageSize: 224, augment: .none)
    for q in [p, none] {
      let d = q.draw(header, training: q.augment == .none, seed: 0, epoch: 0, index: 5)
      #expect(d.crop == ImageCrops.central(width: 500, height: 375, imageSize: 224) && !d.flip)
    }
  }

  @Test func decodeScaleKeepsTheCropAtLeastTheImageSize() {
    let p = ImagePreprocessing(imageSize: 224)
    let big = ImageHeader(format: .jpeg, width: 2000, height: 1600, components: 3)
    // 1/8 makes 225 × 187.5 (too low), 2/8 450 × 375.
    #expect(p.decodeScale(PixelRect(x: 0, y: 0, width: 1800, height: 1500), big) == 2)
    #expect(p.decodeScale(PixelRect(x: 0, y: 0, width: 1800, height: 1792), big) == 1)  // 225 × 224 at 1/8
    #expect(p.decodeScale(PixelRect(x: 0, y: 0, width: 460, height: 460), big) == 4)  // 230 at 1/2
    #expect(p.decodeScale(PixelRect(x: 0, y: 0, width: 440, height: 460), big) == 8)  // 220 < 224 at 1/2
    let png = ImageHeader(format: .png, width: 2000, height: 1600, components: 3)
    #expect(p.decodeScale(PixelRect(x: 0, y: 0, width: 1800, height: 1500), png) == 8)
  }

  /// `resample` of an RGB image given as a function of (x, y, channel).
  func resample(
    width: Int, height: Int, window: (Double, Double, Double, Double), size: Int, flip: Bool = false,
    _ pixel: (Int, Int, Int) -> UInt8
  ) -> [Float] {
    var src = [UInt8](repeating: 0, count: width * height * 3)
    for y in 0..<height { for x in 0..<width { for c in 0..<3 { src[(y * width + x) * 3 + c] = pixel(x, y, c) } } }
    var out = [Float](repeating: .nan, count: size * size * 3)
    let r = ImageResampler()
    src.withUnsafeBufferPointer { s in
      out.withUnsafeMutableBufferPointer { o in
        r.resample(
          s.baseAddress!, width: width, height: height, rowBytes: width * 3, window: window, size: size, flip: flip,
          scale: SIMD4(repeating: 1), bias: SIMD4(repeating: 0), into: o.baseAddress!)
      }
    }
    return out
  }

  @Test func resamplingAWindowOfItsOwnSizeCopiesIt() {
    let f: (Int, Int, Int) -> UInt8 = { x, y, c in UInt8((x * 7 + y * 13 + c * 50) % 256) }
    let out = resample(width: 12, height: 10, window: (3, 2, 9, 8), size: 6, f)
    for y in 0..<6 {
      for x in 0..<6 { for c in 0..<3 { #expect(out[(y * 6 + x) * 3 + c] == Float(f(x + 3, y + 2, c))) } }
    }
    let flipped = resample(width: 12, height: 10, window: (3, 2, 9, 8), size: 6, flip: true, f)
    for y in 0..<6 { for x in 0..<6 { #expect(flipped[(y * 6 + x) * 3] == Float(f(3 + 5 - x, y + 2, 0))) } }
  }

  @Test func shrinkingAveragesAndKeepsConstantsAndRamps() {
    // A constant stays exactly constant (weights are normalized), shrinking or enlarging.
    for size in [3, 7, 40] {
      let out = resample(width: 20, height: 16, window: (0, 0, 20, 16), size: size) { _, _, c in UInt8(100 + c) }
      #expect(out.enumerated().allSatisfy { abs($0.element - Float(100 + $0.offset % 3)) < 1e-4 })
    }
    // A horizontal ramp x shrunk 4× (antialiased, support 4): interior outputs are the mean
    // of their 4-pixel cell, 4i + 1.5 (the triangle filter is symmetric about the center).
    let out = resample(width: 64, height: 8, window: (0, 0, 64, 8), size: 16) { x, _, _ in UInt8(x) }
    for i in 2..<14 { #expect(abs(out[(3 * 16 + i) * 3] - (Float(4 * i) + 1.5)) < 1e-3) }
    // A one-pixel checkerboard shrunk 4×: antialiasing averages it to mid-gray (no aliasing).
    let board = resample(width: 64, height: 64, window: (0, 0, 64, 64), size: 16) { x, y, _ in
      (x + y) % 2 == 0 ? 255 : 0
    }
    for i in 2..<14 { #expect(abs(board[(8 * 16 + i) * 3] - 127.5) < 2) }
  }
}
