import FlipTensor
import Foundation

/// The augmentation of training images, by the `augment:` key of a run config (Larq's CIFAR-10
/// examples and Keras' `RandomCrop` + `RandomFlip("horizontal")`):
/// - `none`: the images as stored;
/// - `crop`: pad each side with `padding` black pixels, then crop a random window of the image's
///   size (one of (2·padding + 1)² positions, each equally likely);
/// - `crop-flip`: the same crop, then a horizontal flip with probability 1/2.
public enum AugmentationMode: String, CaseIterable, Sendable, Codable {
  case none
  case crop
  case cropFlip = "crop-flip"

  /// The accepted names, for error messages: `none, crop, crop-flip`.
  public static var names: String { allCases.map(\.rawValue).joined(separator: ", ") }
}

/// Per-channel normalization of pixels: `(x/127.5 − 1 − mean[c]) / std[c]` for a pixel byte `x`
/// of channel `c`, so `mean` and `std` are in Flip's [−1, 1] pixel units (`unitRange` converts
/// the [0, 1] figures that torchvision recipes quote). Applied through a 256-entry table per
/// channel that holds exactly that Float expression.
///
/// A model trained with a normalization must be evaluated with the same one: pass it to the
/// evaluation's `fill(_:images:labels:normalization:)` too.
public struct ChannelNormalization: Sendable, Equatable {
  public let mean: [Float]
  public let std: [Float]
  /// `table[c·256 + x]`: the normalized value of byte `x` in channel `c`.
  let table: [Float]

  public init(mean: [Float], std: [Float]) throws {
    guard !mean.isEmpty, mean.count == std.count else {
      throw TrainingError.invalidArgument(
        "per-channel normalization needs one mean and one std per channel, got \(mean.count) means and \(std.count) stds"
      )
    }
    if let bad = std.firstIndex(where: { !($0 > 0) || !$0.isFinite }) {
      throw TrainingError.invalidArgument(
        "normalization std of channel \(bad) must be positive and finite, got \(std[bad])")
    }
    if let bad = mean.firstIndex(where: { !$0.isFinite }) {
      throw TrainingError.invalidArgument("normalization mean of channel \(bad) must be finite, got \(mean[bad])")
    }
    self.mean = mean
    self.std = std
    var t = [Float](repeating: 0, count: 256 * mean.count)
    for c in mean.indices {
      for x in 0..<256 { t[c * 256 + x] = Self.formula(UInt8(x), mean: mean[c], std: std[c]) }
    }
    table = t
  }

  /// From mean and std of pixels scaled to [0, 1] (`x/255`, as torchvision's `Normalize`
  /// recipes quote them, e.g. CIFAR-10's (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)):
  /// in Flip's units the mean is `2·m − 1` and the std `2·s` (up to x/127.5 vs 2·x/255 rounding).
  public static func unitRange(mean: [Float], std: [Float]) throws -> ChannelNormalization {
    try ChannelNormalization(mean: mean.map { 2 * $0 - 1 }, std: std.map { 2 * $0 })
  }

  /// The mean and (population) std of each channel of `dataset`'s pixels in Flip's units,
  /// computed exactly from byte histograms.
  public static func estimate(from dataset: Dataset) throws -> ChannelNormalization {
    let channels = dataset.sampleShape.last ?? 1
    var histogram = [Int](repeating: 0, count: 256 * channels)
    dataset.images.withUnsafeBufferPointer { px in
      var c = 0
      for v in px {
        histogram[c * 256 + Int(v)] += 1
        c += 1
        if c == channels { c = 0 }
      }
    }
    var mean: [Float] = []
    var std: [Float] = []
    for c in 0..<channels {
      var n = 0.0
      var s = 0.0
      var s2 = 0.0
      for x in 0..<256 {
        let k = Double(histogram[c * 256 + x])
        let v = Double(x) / 127.5 - 1
        n += k
        s += k * v
        s2 += k * v * v
      }
      let m = n > 0 ? s / n : 0
      let variance = n > 0 ? max(0, s2 / n - m * m) : 1
      mean.append(Float(m))
      std.append(variance > 0 ? Float(variance.squareRoot()) : 1)
    }
    return try ChannelNormalization(mean: mean, std: std)
  }

  /// The normalized value of pixel byte `x`: `(x/127.5 − 1 − mean) / std`, in Float.
  @inlinable
  public static func formula(_ x: UInt8, mean: Float, std: Float) -> Float {
    (Float(x) / 127.5 - 1 - mean) / std
  }
}

/// How `Dataset.fill(_:images:labels:augmentation:seed:epoch:)` transforms training images.
///
/// Every random choice for a sample is drawn from `(seed, epoch, sample index)` alone (a
/// counter-based draw: a SplitMix64 generator seeded by a hash of the three), never from a
/// stream shared across samples: the same image comes out whatever the batch, its order, the
/// rank or the number of ranks that fills it, and a resumed run sees the images it would have seen.
public struct Augmentation: Sendable, Equatable {
  public var mode: AugmentationMode
  /// Black pixels added on each side before the random crop (Larq/Keras CIFAR recipes: 4).
  public var padding: Int
  /// Optional per-channel normalization, applied after cropping and flipping (padding pixels
  /// are black: byte 0, i.e. −1 before normalization). Evaluation must use the same one.
  public var normalization: ChannelNormalization?

  public init(mode: AugmentationMode, padding: Int = 4, normalization: ChannelNormalization? = nil) {
    self.mode = mode
    self.padding = padding
    self.normalization = normalization
  }

  /// Whether `fill` with this augmentation equals the plain fill.
  public var isIdentity: Bool { mode == .none && normalization == nil }

  /// Checks that this augmentation applies to samples of `sampleShape` (H, W, C).
  public func validate(sampleShape: [Int]) throws {
    if mode != .none {
      guard sampleShape.count == 3 else {
        throw TrainingError.invalidArgument(
          "augment \(mode.rawValue) needs images of shape (height, width, channels), but the samples are \(sampleShape); use augment: none"
        )
      }
      guard padding >= 0 && padding <= 1024 else {
        throw TrainingError.invalidArgument("augmentation padding must be in 0...1024, got \(padding)")
      }
    }
    if let n = normalization, n.mean.count != (sampleShape.last ?? 0) {
      throw TrainingError.invalidArgument(
        "the normalization has \(n.mean.count) channels but the samples of shape \(sampleShape) have \(sampleShape.last ?? 0)"
      )
    }
  }

  /// The random choices for one sample: the crop window's top-left corner in the padded image
  /// (`top`, `left` in `0...2·padding`; `padding` is the uncropped position) and the flip.
  public struct Draw: Sendable, Equatable, Hashable {
    public var top: Int
    public var left: Int
    public var flip: Bool
    public init(top: Int, left: Int, flip: Bool) {
      self.top = top
      self.left = left
      self.flip = flip
    }
  }

  /// The generator of sample `index` in `epoch`: SplitMix64 seeded by a hash of
  /// `(seed, epoch, index)`; its salt keeps it apart from the sampler's and dropout's streams.
  @inlinable
  public static func generator(seed: UInt64, epoch: Int, index: Int) -> SplitMix64 {
    @inline(__always) func mix(_ x: UInt64) -> UInt64 {
      var g = SplitMix64(seed: x)
      return g.next()
    }
    let h = mix(
      mix(mix(seed ^ 0x6A09_E667_F3BC_C908) ^ UInt64(truncatingIfNeeded: epoch)) ^ UInt64(truncatingIfNeeded: index))
    return SplitMix64(seed: h)
  }

  /// The choices for sample `index` in `epoch`. Drawn in a fixed order (top, left, flip), so
  /// `crop` and `crop-flip` crop alike for the same `(seed, epoch, index)`.
  @inlinable
  public func draw(seed: UInt64, epoch: Int, index: Int) -> Draw {
    guard mode != .none else { return Draw(top: padding, left: padding, flip: false) }
    var g = Self.generator(seed: seed, epoch: epoch, index: index)
    let span = 2 * padding + 1
    let top = g.nextInt(below: span)
    let left = g.nextInt(below: span)
    let flip = mode == .cropFlip && g.next() >> 63 == 1
    return Draw(top: top, left: left, flip: flip)
  }
}

/// Pixel byte → Float `x/127.5 − 1`, the plain scaling, as a table (one channel).
private let plainScaling: [Float] = (0..<256).map { Float($0) / 127.5 - 1 }

extension Dataset {
  /// Writes the samples `indices`, augmented, into `x` (B, H, W, C) and their labels into `y`:
  /// the training fill. Each sample's crop and flip depend on `(seed, epoch, indices[i])` only
  /// (see `Augmentation`). `augmentation` nil, or `none` without normalization, is exactly
  /// `fill(_:images:labels:)`. Allocates nothing; `compute`'s threads over the samples.
  /// Call `augmentation.validate(sampleShape:)` once beforehand (the shape must be (H, W, C)).
  public func fill(
    _ indices: ArraySlice<Int>, images x: UnsafeMutablePointer<Float>, labels y: UnsafeMutablePointer<Int32>,
    augmentation: Augmentation?, seed: UInt64, epoch: Int, compute: Compute = .serial
  ) {
    guard let a = augmentation, !a.isIdentity else {
      fill(indices, images: x, labels: y, compute: compute)
      return
    }
    if a.mode == .none {
      fill(indices, images: x, labels: y, normalization: a.normalization, compute: compute)
      return
    }
    precondition(sampleShape.count == 3, "augmentation needs (H, W, C) samples; call Augmentation.validate first")
    let (h, w, c) = (sampleShape[0], sampleShape[1], sampleShape[2])
    let size = sampleSize
    let start = indices.startIndex
    withScalingTable(a.normalization, channels: c) { table, stride in
      images.withUnsafeBufferPointer { px in
        labels.withUnsafeBufferPointer { lb in
          compute.forRanges(count: indices.count, grain: 32) { rows in
            for row in rows {
              let i = indices[start + row]
              let d = a.draw(seed: seed, epoch: epoch, index: i)
              writeAugmented(
                px.baseAddress! + i * size, into: x + row * size, height: h, width: w, channels: c, padding: a.padding,
                draw: d, table: table, tableStride: stride)
              y[row] = lb[i]
            }
          }
        }
      }
    }
  }

  /// The plain fill with per-channel normalization (nil: exactly `fill(_:images:labels:)`):
  /// evaluation's fill when training normalizes. `compute`'s threads over the samples.
  public func fill(
    _ indices: ArraySlice<Int>, images x: UnsafeMutablePointer<Float>, labels y: UnsafeMutablePointer<Int32>,
    normalization: ChannelNormalization?, compute: Compute = .serial
  ) {
    guard let normalization else {
      fill(indices, images: x, labels: y, compute: compute)
      return
    }
    let c = sampleShape.last ?? 1
    precondition(normalization.mean.count == c, "the normalization's channel count differs from the samples'")
    let size = sampleSize
    let start = indices.startIndex
    normalization.table.withUnsafeBufferPointer { t in
      images.withUnsafeBufferPointer { px in
        labels.withUnsafeBufferPointer { lb in
          compute.forRanges(count: indices.count, grain: 64) { rows in
            for row in rows {
              let i = indices[start + row]
              mapPixels(px.baseAddress! + i * size, x + row * size, pixels: size / c, channels: c, t.baseAddress!, 256)
              y[row] = lb[i]
            }
          }
        }
      }
    }
  }

  private func withScalingTable<R>(
    _ normalization: ChannelNormalization?, channels: Int, _ body: (UnsafePointer<Float>, Int) -> R
  ) -> R {
    if let normalization {
      precondition(normalization.mean.count == channels, "the normalization's channel count differs from the samples'")
      return normalization.table.withUnsafeBufferPointer { body($0.baseAddress!, 256) }
    }
    return plainScaling.withUnsafeBufferPointer { body($0.baseAddress!, 0) }
  }
}

/// `dst[p·C + c] = table[c·stride + src[p·C + c]]` for `pixels` pixels.
@inline(__always)
private func mapPixels(
  _ src: UnsafePointer<UInt8>, _ dst: UnsafeMutablePointer<Float>, pixels: Int, channels: Int,
  _ table: UnsafePointer<Float>, _ stride: Int
) {
  if stride == 0 {
    // The plain scaling: the same expression as `Dataset.fill`, which vectorizes.
    for k in 0..<(pixels * channels) { dst[k] = Float(src[k]) / 127.5 - 1 }
  } else if channels == 1 {
    for k in 0..<pixels { dst[k] = table[Int(src[k])] }
  } else if channels == 3 {
    let t1 = table + stride
    let t2 = table + 2 * stride
    for p in 0..<pixels {
      let k = 3 * p
      dst[k] = table[Int(src[k])]
      dst[k + 1] = t1[Int(src[k + 1])]
      dst[k + 2] = t2[Int(src[k + 2])]
    }
  } else {
    for p in 0..<pixels {
      for c in 0..<channels { dst[p * channels + c] = table[c * stride + Int(src[p * channels + c])] }
    }
  }
}

/// One image cropped from its padded version and maybe flipped: output pixel (r, q) is the
/// padded image's (r + top, q' + left) with q' = q, or W − 1 − q when flipped; the padded
/// image's pixel (u, v) is the source's (u − padding, v − padding), or black (byte 0) outside it.
@inline(__always)
private func writeAugmented(
  _ src: UnsafePointer<UInt8>, into dst: UnsafeMutablePointer<Float>, height h: Int, width w: Int, channels c: Int,
  padding p: Int, draw: Augmentation.Draw, table: UnsafePointer<Float>, tableStride stride: Int
) {
  let dy = draw.top - p
  let dx = draw.left - p
  // Output columns whose (unflipped) source column q + dx lies inside the image.
  let lo = min(w, max(0, -dx))
  let hi = max(lo, min(w, w - dx))
  func black(_ out: UnsafeMutablePointer<Float>, pixels: Int) {
    for q in 0..<pixels {
      for ch in 0..<c { out[q * c + ch] = table[ch * stride] }
    }
  }
  for r in 0..<h {
    let out = dst + r * w * c
    let sr = r + dy
    guard sr >= 0 && sr < h else {
      black(out, pixels: w)
      continue
    }
    let line = src + sr * w * c
    if !draw.flip {
      black(out, pixels: lo)
      mapPixels(line + (lo + dx) * c, out + lo * c, pixels: hi - lo, channels: c, table, stride)
      black(out + hi * c, pixels: w - hi)
    } else {
      // Output column q shows cropped column w − 1 − q: valid for q in [w − hi, w − lo).
      black(out, pixels: w - hi)
      if c == 1 {
        let s = line + (w - 1 + dx)
        for q in (w - hi)..<(w - lo) { out[q] = table[Int(s[-q])] }
      } else if c == 3 {
        let (t0, t1, t2) = (table, table + stride, table + 2 * stride)
        for q in (w - hi)..<(w - lo) {
          let s = line + (w - 1 - q + dx) * 3
          let o = out + q * 3
          o[0] = t0[Int(s[0])]
          o[1] = t1[Int(s[1])]
          o[2] = t2[Int(s[2])]
        }
      } else {
        for q in (w - hi)..<(w - lo) {
          let s = line + (w - 1 - q + dx) * c
          let o = out + q * c
          for ch in 0..<c { o[ch] = table[ch * stride + Int(s[ch])] }
        }
      }
      black(out + (w - lo) * c, pixels: lo)
    }
  }
}
