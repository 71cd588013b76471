import FlipTensor
import Foundation

/// An image classification data set held in memory as bytes: `images` (N, H, W, C) and
/// `labels` (N). Pixels become floats in [−1, 1] (`x/127.5 − 1`) only when a batch is filled.
public struct Dataset: Sendable {
  public let images: [UInt8]
  public let labels: [Int32]
  /// (H, W, C) of one image.
  public let sampleShape: [Int]
  public let classes: Int

  public var count: Int { labels.count }
  public var sampleSize: Int { sampleShape.reduce(1, *) }

  public init(images: [UInt8], labels: [Int32], sampleShape: [Int], classes: Int) throws {
    let size = sampleShape.reduce(1, *)
    guard size > 0, images.count == labels.count * size else {
      throw TrainingError.datasetMismatch(
        "\(images.count) pixel bytes do not make \(labels.count) images of shape \(sampleShape)")
    }
    guard classes >= 2 else {
      throw TrainingError.datasetMismatch("a classifier needs at least 2 classes, found \(classes)")
    }
    if let bad = labels.first(where: { $0 < 0 || Int($0) >= classes }) {
      throw TrainingError.datasetMismatch("label \(bad) is outside 0..<\(classes)")
    }
    self.images = images
    self.labels = labels
    self.sampleShape = sampleShape
    self.classes = classes
  }

  /// Writes the samples `indices` as floats in [−1, 1] into `x` (B, H, W, C) and their labels,
  /// `compute`'s threads over the samples.
  public func fill(
    _ indices: ArraySlice<Int>, images x: UnsafeMutablePointer<Float>, labels y: UnsafeMutablePointer<Int32>,
    compute: Compute = .serial
  ) {
    let size = sampleSize
    let start = indices.startIndex
    images.withUnsafeBufferPointer { px in
      labels.withUnsafeBufferPointer { lb in
        compute.forRanges(count: indices.count, grain: 64) { rows in
          for row in rows {
            let i = indices[start + row]
            let src = px.baseAddress! + i * size
            let dst = x + row * size
            for j in 0..<size { dst[j] = Float(src[j]) / 127.5 - 1 }
            y[row] = lb[i]
          }
        }
      }
    }
  }
}

/// The file formats `DataSplits.load(directory:)` reads.
public enum DataFormat: String, Sendable, Equatable {
  /// The MNIST family's four IDX files (raw or .gz).
  case idx = "IDX"
  /// CIFAR-10's binary batches (`data_batch_N.bin`, `test_batch.bin`).
  case cifar10 = "CIFAR-10 binary"
  /// ImageNet-format data: image folders, TFDS TFRecords or WebDataset tar shards.
  case imageFolder = "image folder"
  case tfrecord = "TFDS TFRecords"
  case webDataset = "WebDataset tar shards"

  /// Whether samples are decoded from image files as they are needed (not held in memory).
  public var isStreamed: Bool { self != .idx && self != .cifar10 }
}

/// The train and test splits of a data directory: in memory (IDX, CIFAR-10 binary) or
/// streamed from image files (`StreamedImages`).
public struct DataSplits: Sendable {
  public let train: any SampleSet
  public let test: any SampleSet
  /// The format it was read from (nil: made in memory).
  public let format: DataFormat?
  /// The class names the directory lists, if it does (CIFAR-10's `batches.meta.txt`, the
  /// image layouts' folder names or `label.labels.txt`).
  public let classNames: [String]?

  public init(train: any SampleSet, test: any SampleSet, format: DataFormat? = nil, classNames: [String]? = nil) {
    self.train = train
    self.test = test
    self.format = format
    self.classNames = classNames
  }

  /// Fashion-MNIST as Debian's `dataset-fashion-mnist` installs it.
  public static let defaultDirectory = "/usr/share/datasets/fashion-mnist"

  /// The IDX files of an MNIST-style directory, each raw or `.gz`.
  public static let idxFiles = [
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
  ]

  /// Loads the data set in `directory`, recognizing its format by its files (`detectFormat`):
  /// IDX and CIFAR-10 binary into memory (see `loadIDX(directory:)` and `CIFAR10`), the
  /// ImageNet-format layouts as an index of their image files, decoded as batches need them
  /// with `images`' preprocessing and threads (`loadImages`).
  public static func load(directory: String, images: ImageDataOptions = ImageDataOptions()) throws -> DataSplits {
    switch try detectFormat(directory: directory) {
    case .idx: return try loadIDX(directory: directory)
    case .cifar10: return try CIFAR10.load(directory: directory)
    case .imageFolder, .tfrecord, .webDataset: return try loadImages(directory: directory, options: images)
    }
  }

  /// Throws unless `directory` is a directory: where the default is missing, how to install
  /// it; otherwise what `--data` must hold.
  private static func requireDirectory(_ directory: String, holding: String) throws {
    var isDirectory: ObjCBool = false
    guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue else {
      throw TrainingError.fileNotFound(
        path: directory,
        hint: directory == defaultDirectory
          ? "Install it with: apt-get install dataset-fashion-mnist (or pass --data DIR)."
          : "--data must be a directory holding \(holding).")
    }
  }

  /// The format of the data set in `directory`, by the names of its files.
  public static func detectFormat(directory: String) throws -> DataFormat {
    try requireDirectory(directory, holding: "the four IDX files, CIFAR-10's binary batches or ImageNet-format images")
    let names: [String]
    do { names = try FileManager.default.contentsOfDirectory(atPath: directory) } catch {
      throw TrainingError.unreadable(
        path: directory, reason: "cannot list the directory: \(error.localizedDescription)")
    }
    let idx = names.contains { name in idxFiles.contains { name == $0 || name == $0 + ".gz" } }
    let cifar = CIFAR10.isPresent(in: names)
    switch (idx, cifar) {
    case (true, false): return .idx
    case (false, true): return .cifar10
    case (true, true):
      throw TrainingError.invalidArgument(
        "\(directory) holds both IDX files and CIFAR-10 batches; pass a directory that holds one data set")
    case (false, false):
      if let layout = ImageDataSet.detect(directory: directory) { return DataFormat(layout) }
      let shown = names.sorted().prefix(12)
      let found =
        names.isEmpty
        ? "it is empty"
        : "it holds \(shown.joined(separator: ", "))\(names.count > shown.count ? " and \(names.count - shown.count) more" : "")"
      var hint = ""
      if names.contains("cifar-10-batches-bin") {
        hint = " Did you mean \((directory as NSString).appendingPathComponent("cifar-10-batches-bin"))?"
      } else if names.contains("cifar-10-binary.tar.gz") {
        hint = " Extract cifar-10-binary.tar.gz first (tar xzf) and pass its cifar-10-batches-bin directory."
      }
      throw TrainingError.invalidArgument(
        "\(directory): no data set found (\(found)). Flip reads IDX (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, each raw or .gz) or CIFAR-10 binary (data_batch_1.bin … data_batch_5.bin and test_batch.bin), or ImageNet-format images: an image folder (train/<class>/*.JPEG and val/<class>/*), TFDS TFRecords (<name>/<version>/<name>-train.tfrecord-00000-of-01024 …) or WebDataset tar shards (train/*.tar and val/*.tar).\(hint)"
      )
    }
  }

  /// Loads `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte` and
  /// `t10k-labels-idx1-ubyte` (each raw or `.gz`) from `directory`. Images may be (N, H, W) or
  /// (N, H, W, C); the number of classes is the largest training label + 1.
  public static func loadIDX(directory: String) throws -> DataSplits {
    try requireDirectory(directory, holding: "the four IDX files")
    func find(_ base: String) throws -> String {
      for name in [base, base + ".gz"] {
        let p = (directory as NSString).appendingPathComponent(name)
        if FileManager.default.fileExists(atPath: p) { return p }
      }
      throw TrainingError.fileNotFound(
        path: (directory as NSString).appendingPathComponent(base + "[.gz]"),
        hint:
          "An MNIST-style directory holds train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (raw or .gz)."
      )
    }
    func pair(_ imagesBase: String, _ labelsBase: String, classes: Int?) throws -> (IDXFile, IDXFile, String, String) {
      let ip = try find(imagesBase)
      let lp = try find(labelsBase)
      let images = try IDXFile.read(path: ip)
      let labels = try IDXFile.read(path: lp)
      guard images.dimensions.count == 3 || images.dimensions.count == 4 else {
        throw TrainingError.corruptData(
          path: ip, reason: "images need 3 or 4 dimensions (N, H, W[, C]), found \(images.dimensions)")
      }
      guard labels.dimensions.count == 1 else {
        throw TrainingError.corruptData(path: lp, reason: "labels need 1 dimension (N), found \(labels.dimensions)")
      }
      guard images.dimensions[0] == labels.dimensions[0] else {
        throw TrainingError.datasetMismatch(
          "\(ip) has \(images.dimensions[0]) images but \(lp) has \(labels.dimensions[0]) labels")
      }
      return (images, labels, ip, lp)
    }
    let (trainImages, trainLabels, trainPath, _) = try pair(
      "train-images-idx3-ubyte", "train-labels-idx1-ubyte", classes: nil)
    let (testImages, testLabels, testPath, testLabelPath) = try pair(
      "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", classes: nil)
    func shape(_ f: IDXFile) -> [Int] {
      f.dimensions.count == 3 ? Array(f.dimensions[1...]) + [1] : Array(f.dimensions[1...])
    }
    guard shape(trainImages) == shape(testImages) else {
      throw TrainingError.datasetMismatch(
        "training images are \(shape(trainImages)) (\(trainPath)) but test images are \(shape(testImages)) (\(testPath))"
      )
    }
    let classes = Int(trainLabels.data.max() ?? 0) + 1
    if let bad = testLabels.data.first(where: { Int($0) >= classes }) {
      throw TrainingError.datasetMismatch(
        "\(testLabelPath) has label \(bad) but the training labels only go up to \(classes - 1)")
    }
    let train = try Dataset(
      images: trainImages.data, labels: trainLabels.data.map { Int32($0) }, sampleShape: shape(trainImages),
      classes: classes)
    let test = try Dataset(
      images: testImages.data, labels: testLabels.data.map { Int32($0) }, sampleShape: shape(testImages),
      classes: classes)
    return DataSplits(train: train, test: test, format: .idx)
  }
}
