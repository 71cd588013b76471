import FlipTensor
import Foundation

/// `flip data bench DIR`: the images per second of the input pipeline alone (read, decode at
/// the chosen DCT scale, crop, resize, flip, normalize), over the training split in the first
/// epoch's order, through the same feed training uses (background threads, prefetch).
public struct DataBenchResult: Codable, Sendable {
  public var imagesPerSecond: Double
  public var images: Int
  public var seconds: Double
  public var threads: Int
  public var imageSize: Int
  public var layout: String
  public var batch: Int
  enum CodingKeys: String, CodingKey {
    case images, seconds, threads, layout, batch
    case imagesPerSecond = "images_per_second"
    case imageSize = "image_size"
  }

  /// Decodes `images` training images (nil: all; fewer when the split has fewer) in batches of
  /// `batch` with `threads` threads, after one untimed warm-up batch.
  public static func run(
    directory: String, preprocessing: ImagePreprocessing, threads: Int, images requested: Int?, batch: Int = 64,
    seed: UInt64 = 0, cache: IndexCache? = IndexCache()
  ) throws -> DataBenchResult {
    try preprocessing.validate()
    guard threads >= 1, batch >= 1 else {
      throw TrainingError.invalidArgument("data bench needs at least 1 thread and a batch of at least 1")
    }
    let set = try ImageDataSet.open(directory: directory, cache: cache)
    let images = StreamedImages(
      index: set.train, preprocessing: preprocessing, classes: set.classes, threads: threads,
      report: { FileHandle.standardError.write(Data("bad image \($0)\n".utf8)) })
    let n = min(requested ?? images.count, images.count)
    guard n > batch else {
      throw TrainingError.invalidArgument(
        "data bench needs more than one batch of \(batch) images; \(set.directory) has \(images.count) training images")
    }
    let order = try EpochSampler(datasetSize: images.count, globalBatch: batch, seed: seed).permutation(epoch: 0)
    let batches = stride(from: 0, to: n, by: batch).map { order[$0..<min($0 + batch, n)] }
    let feed = images.makeFeed(batch: batch, training: true, seed: seed, augmentation: nil, compute: .serial)
    try feed.begin(epoch: 0, batches: batches)
    _ = try feed.next()
    let start = DispatchTime.now().uptimeNanoseconds
    var count = 0
    for _ in 1..<batches.count { count += try feed.next().count }
    let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
    return DataBenchResult(
      imagesPerSecond: Double(count) / seconds, images: count, seconds: seconds, threads: threads,
      imageSize: preprocessing.imageSize, layout: set.layout.rawValue, batch: batch)
  }
}
