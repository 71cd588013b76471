import Foundation

/// CIFAR-10's binary version (Krizhevsky 2009, `cifar-10-binary.tar.gz`, extracted as
/// `cifar-10-batches-bin/`): training batches `data_batch_1.bin` … `data_batch_5.bin` and
/// `test_batch.bin`, each a sequence of 3,073-byte records: one label byte (0–9), then the
/// 32×32 image channel-major (1,024 red bytes, 1,024 green, 1,024 blue, each plane row-major).
/// Flip stores the images in its NHWC layout, (32, 32, 3). `batches.meta.txt` (the class
/// names, one a line) is optional and only checked.
///
/// The training batches are `data_batch_1.bin` … `data_batch_K.bin` with K the highest number
/// present: the numbers must run from 1 without a gap (a directory of the five standard batches
/// is K = 5; a smaller copy may hold fewer, e.g. batches 1 and 2), so a missing batch between
/// them is an error that names it. Files are read as they are: nothing is downloaded.
public enum CIFAR10 {
  public static let imageShape = [32, 32, 3]
  public static let pixels = 32 * 32
  public static let recordSize = 1 + 3 * 32 * 32
  public static let classes = 10
  public static let testFile = "test_batch.bin"
  public static let metaFile = "batches.meta.txt"
  public static func trainingFile(_ number: Int) -> String { "data_batch_\(number).bin" }

  /// The number `N` of a file named `data_batch_N.bin` (N a positive decimal without leading
  /// zeros), else nil.
  static func trainingBatchNumber(_ name: String) -> Int? {
    guard name.hasPrefix("data_batch_"), name.hasSuffix(".bin") else { return nil }
    let digits = name.dropFirst("data_batch_".count).dropLast(".bin".count)
    guard !digits.isEmpty, digits.count <= 6, digits.first != "0", digits.allSatisfy({ $0.isASCII && $0.isNumber })
    else { return nil }
    return Int(digits)
  }

  /// Whether `names` (a directory's entries) hold any CIFAR-10 batch.
  static func isPresent(in names: [String]) -> Bool {
    names.contains(testFile) || names.contains { trainingBatchNumber($0) != nil }
  }

  /// The training batch files of `directory` (given its entries `names`), in order; throws
  /// naming the first missing one when the numbers do not run 1…K.
  static func trainingFiles(in directory: String, names: [String]) throws -> [String] {
    let numbers = Set(names.compactMap(trainingBatchNumber))
    let k = numbers.max() ?? 0
    if let missing = (1...max(1, k)).first(where: { !numbers.contains($0) }) {
      throw TrainingError.fileNotFound(
        path: (directory as NSString).appendingPathComponent(trainingFile(missing)),
        hint: k == 0
          ? "A CIFAR-10 directory holds the training batches data_batch_1.bin … data_batch_5.bin beside test_batch.bin."
          : "The training batches must be numbered from data_batch_1.bin without a gap; found data_batch_\(numbers.sorted().map(String.init).joined(separator: ",")).bin."
      )
    }
    return (1...k).map { (directory as NSString).appendingPathComponent(trainingFile($0)) }
  }

  /// Decodes the records of one batch file, appending the images (NHWC) and labels.
  public static func decode(_ bytes: UnsafeRawBufferPointer, path: String, images: inout [UInt8], labels: inout [Int32])
    throws
  {
    guard !bytes.isEmpty else {
      throw TrainingError.corruptData(
        path: path, reason: "the file is empty; a CIFAR-10 batch holds 3,073-byte records")
    }
    guard bytes.count % recordSize == 0 else {
      throw TrainingError.corruptData(
        path: path,
        reason:
          "\(bytes.count) bytes are not a whole number of 3,073-byte records (1 label byte + 32×32×3 pixel bytes): \(bytes.count / recordSize) records and \(bytes.count % recordSize) bytes more (truncated?)"
      )
    }
    let n = bytes.count / recordSize
    let src = bytes.bindMemory(to: UInt8.self).baseAddress!
    for r in 0..<n where src[r * recordSize] >= classes {
      throw TrainingError.corruptData(
        path: path, reason: "record \(r) has label \(src[r * recordSize]); CIFAR-10 labels are 0–9")
    }
    let first = images.count
    images.append(contentsOf: repeatElement(0, count: n * 3 * pixels))
    labels.reserveCapacity(labels.count + n)
    images.withUnsafeMutableBufferPointer { out in
      for r in 0..<n {
        let record = src + r * recordSize
        labels.append(Int32(record[0]))
        let planes = record + 1
        let dst = out.baseAddress! + first + r * 3 * pixels
        for p in 0..<pixels {
          dst[3 * p] = planes[p]
          dst[3 * p + 1] = planes[pixels + p]
          dst[3 * p + 2] = planes[2 * pixels + p]
        }
      }
    }
  }

  /// Reads the batch files `paths` into one data set of (32, 32, 3) images and 10 classes.
  public static func read(paths: [String]) throws -> Dataset {
    var images: [UInt8] = []
    var labels: [Int32] = []
    var total = 0
    for path in paths {
      let size = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
      total += size / recordSize
    }
    images.reserveCapacity(total * 3 * pixels)
    labels.reserveCapacity(total)
    for path in paths {
      guard FileManager.default.fileExists(atPath: path) else {
        throw TrainingError.fileNotFound(
          path: path, hint: "A CIFAR-10 directory holds data_batch_1.bin … and test_batch.bin.")
      }
      guard let data = FileManager.default.contents(atPath: path) else {
        throw TrainingError.unreadable(path: path, reason: "permission denied or not a regular file")
      }
      try data.withUnsafeBytes { try decode($0, path: path, images: &images, labels: &labels) }
    }
    return try Dataset(images: images, labels: labels, sampleShape: imageShape, classes: classes)
  }

  /// The class names of `batches.meta.txt`: its non-blank lines, which must be 10.
  public static func readClassNames(path: String) throws -> [String] {
    guard let data = FileManager.default.contents(atPath: path) else {
      throw TrainingError.unreadable(path: path, reason: "permission denied or not a regular file")
    }
    guard let text = String(data: data, encoding: .utf8) else {
      throw TrainingError.corruptData(path: path, reason: "not UTF-8 text (it lists the 10 class names, one a line)")
    }
    let names = text.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }.filter {
      !$0.isEmpty
    }
    guard names.count == classes else {
      throw TrainingError.corruptData(
        path: path, reason: "lists \(names.count) class names, CIFAR-10 has 10 (one a line; or remove the file)")
    }
    return names
  }

  /// Loads the CIFAR-10 batches of `directory`.
  public static func load(directory: String) throws -> DataSplits {
    let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
    let trainPaths = try trainingFiles(in: directory, names: names)
    let testPath = (directory as NSString).appendingPathComponent(testFile)
    guard names.contains(testFile) else {
      throw TrainingError.fileNotFound(
        path: testPath, hint: "A CIFAR-10 directory holds test_batch.bin beside the training batches data_batch_N.bin.")
    }
    var classNames: [String]?
    if names.contains(metaFile) {
      classNames = try readClassNames(path: (directory as NSString).appendingPathComponent(metaFile))
    }
    let train = try read(paths: trainPaths)
    let test = try read(paths: [testPath])
    return DataSplits(train: train, test: test, format: .cifar10, classNames: classNames)
  }
}
