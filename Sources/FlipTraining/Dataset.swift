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

  /// Writes the samples `indices` as floats in [−1, 1] into `x` (B, H, W, C) and their labels.
  public func fill(
    _ indices: ArraySlice<Int>, images x: UnsafeMutablePointer<Float>, labels y: UnsafeMutablePointer<Int32>
  ) {
    let size = sampleSize
    let start = indices.startIndex
    images.withUnsafeBufferPointer { px in
      labels.withUnsafeBufferPointer { lb in
        Parallel.forRanges(count: indices.count, grain: 64) { rows in
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

/// The train and test splits of an MNIST-style directory.
public struct DataSplits: Sendable {
  public let train: Dataset
  public let test: Dataset

  public init(train: Dataset, test: Dataset) {
    self.train = train
    self.test = test
  }

  /// Fashion-MNIST as Debian's `dataset-fashion-mnist` installs it.
  public static let defaultDirectory = "/usr/share/datasets/fashion-mnist"

  /// Loads `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte` and
  /// `t10k-labels-idx1-ubyte` (each raw or `.gz`) from `directory`. Images may be (N, H, W) or
  /// (N, H, W, C); the number of classes is the largest training label + 1.
  public static func load(directory: String) throws -> DataSplits {
    var isDirectory: ObjCBool = false
    guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue else {
      throw TrainingError.fileNotFound(
        path: directory,
        hint: directory == defaultDirectory
          ? "Install it with: apt-get install dataset-fashion-mnist (or pass --data DIR)."
          : "--data must be a directory holding the four IDX files.")
    }
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
    return DataSplits(train: train, test: test)
  }
}
