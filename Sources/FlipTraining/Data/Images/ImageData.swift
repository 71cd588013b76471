import Foundation

/// How ImageNet-format data is read: the preprocessing, the decoding threads and prefetch of
/// each rank, what a bad file does, where it is reported, and where indices are cached.
public struct ImageDataOptions: Sendable {
  public var preprocessing = ImagePreprocessing()
  /// Decoding threads per rank (each feed: training and evaluation).
  public var threads = 2
  /// Batches decoded ahead of the one in use.
  public var prefetch = 2
  public var badImages = BadImagePolicy.replace
  /// Where a bad file is reported, once per file.
  public var report: @Sendable (String) -> Void = { _ in }
  /// Where the indices of TFRecord and tar shards and folder listings are kept between runs
  /// (nil: built each time).
  public var cache: IndexCache? = IndexCache()
  public init() {}

  /// The options `settings` ask for: `image_size`, `augment`, `mean`, `std`,
  /// `data_threads` (by default as many as the rank's compute threads: they sleep while the
  /// prefetch is full) and `bad_images`; bad files reported to `report`.
  public init(_ settings: RunSettings, computeThreads: Int, report: @escaping @Sendable (String) -> Void) {
    preprocessing = ImagePreprocessing(
      imageSize: settings.imageSize ?? ImagePreprocessing.defaultImageSize, augment: settings.augment ?? .cropFlip,
      mean: settings.mean.map(Float.init), std: settings.std.map(Float.init))
    threads = settings.dataThreads ?? max(1, computeThreads)
    badImages = settings.badImages
    self.report = report
  }
}

extension DataFormat {
  init(_ layout: ImageDataLayout) {
    switch layout {
    case .imageFolder: self = .imageFolder
    case .tfrecord: self = .tfrecord
    case .webDataset: self = .webDataset
    }
  }
}

extension DataSplits {
  /// The ImageNet-format data set in `directory` (an image folder, TFDS TFRecords or WebDataset
  /// tar shards): its training and validation splits, indexed (`ImageDataSet.open`), each
  /// decoded on demand: training with `options.preprocessing`, evaluation with its
  /// evaluation transform.
  public static func loadImages(directory: String, options: ImageDataOptions) throws -> DataSplits {
    try options.preprocessing.validate()
    let set = try ImageDataSet.open(directory: directory, cache: options.cache)
    func split(_ index: SampleIndex) -> StreamedImages {
      StreamedImages(
        index: index, preprocessing: options.preprocessing, classes: set.classes, threads: options.threads,
        prefetch: options.prefetch, badImages: options.badImages, report: options.report)
    }
    return DataSplits(
      train: split(set.train), test: split(set.validation), format: DataFormat(set.layout), classNames: set.classNames)
  }
}
