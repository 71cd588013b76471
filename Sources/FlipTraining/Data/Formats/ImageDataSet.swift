import Foundation

/// The on-disk layouts of ImageNet-style data that `ImageDataSet` reads.
public enum ImageDataLayout: String, Sendable, Codable, CaseIterable {
  /// `DIR/train/<class>/<image>`, `DIR/val/<class>/<image>` (torchvision's ImageFolder).
  case imageFolder = "image folder"
  /// `DIR/<name>/<version>/<name>-train.tfrecord-00000-of-01024` … (TensorFlow Datasets).
  case tfrecord = "TFDS TFRecords"
  /// `DIR/train/*.tar`, `DIR/val/*.tar` with members `KEY.jpg` + `KEY.cls` (WebDataset).
  case webDataset = "WebDataset tar shards"

  /// Short examples of the paths of each layout, for messages.
  public var example: String {
    switch self {
    case .imageFolder: return "image folders (DIR/train/<class>/<image>, DIR/val/<class>/<image>)"
    case .tfrecord:
      return
        "TFDS TFRecords (DIR/<name>/<version>/<name>-train.tfrecord-00000-of-01024, <name>-validation.tfrecord-00000-of-00064)"
    case .webDataset: return "WebDataset tar shards (DIR/train/*.tar, DIR/val/*.tar holding KEY.jpg + KEY.cls)"
    }
  }
}

/// An ImageNet-style data set on disk: the train and validation splits' sample indexes (where
/// each sample's encoded image is, and its label) and the class names. Nothing is decoded;
/// `SampleIndex.read` hands out the encoded bytes.
///
/// Labels: an image folder's label is the position of its class folder among the training
/// class folders (byte order of names); a shard's label is the one it stores, and the class
/// names are those of a TFDS `label.labels.txt` (in the TFRecords' version folder or `DIR`;
/// in `DIR` for tars) when there is one, else the labels' decimal numbers. There are
/// max(largest label + 1, names in `label.labels.txt`) classes.
public struct ImageDataSet: Sendable, CustomStringConvertible {
  public let layout: ImageDataLayout
  /// The data directory, absolute (for TFRecords: the version folder read).
  public let directory: String
  public let train: SampleIndex
  public let validation: SampleIndex
  public let classNames: [String]
  public var classes: Int { classNames.count }
  /// The shards and image-folder splits scanned by `open` (the others came from the cache).
  public let scanned: [String]
  /// How many shards and image-folder splits `open` took from the cache.
  public let reused: Int
  /// One line: the layout, where, the sizes, and any choice made (the TFDS version read).
  public let description: String

  /// Whether `directory` looks like one of the layouts (which the first that fits), or nil if
  /// it does not: `train/` holding `.tar` files (WebDataset) or folders (image folders), or
  /// TFDS shards of a train split in `directory`, in one of its folders, or one of theirs.
  /// Only names are looked at; `open` checks the rest.
  public static func detect(directory: String) -> ImageDataLayout? {
    let train = DataFiles.join(directory, "train")
    if DataFiles.isDirectory(train) {
      let names = DataFiles.visibleNamesIfAny(in: train)
      if names.contains(where: { $0.lowercased().hasSuffix(".tar") }) { return .webDataset }
      if names.contains(where: { DataFiles.isDirectory(DataFiles.join(train, $0)) }) { return .imageFolder }
    }
    return TFRecordShards.locations(directory).isEmpty ? nil : .tfrecord
  }

  /// The message for a `--data` directory that holds none of the layouts.
  public static func noLayoutMessage(directory: String) -> String {
    let layouts = ImageDataLayout.allCases.map(\.example).joined(separator: "; ")
    return "\(directory): no ImageNet-format data found. Flip reads \(layouts)"
  }

  /// Indexes the data set in `directory` (see `detect`), reusing and updating the index in
  /// `cache` when one is given. Throws if the directory holds none of the layouts, or on any
  /// damaged or inconsistent file, naming it (and for shards the byte offset).
  public static func open(directory: String, cache: IndexCache?) throws(TrainingError) -> ImageDataSet {
    let root = absolutePath(directory)
    guard DataFiles.isDirectory(root) else {
      throw .fileNotFound(
        path: root,
        hint:
          "--data must be a directory holding \(ImageDataLayout.allCases.map(\.example).joined(separator: ", or ")).")
    }
    guard let layout = detect(directory: root) else { throw .invalidArgument(noLayoutMessage(directory: root)) }
    var indexer = Indexer(root: root, cached: cache?.load(dataDirectory: root) ?? [:])
    let data: ImageDataSet
    switch layout {
    case .imageFolder: data = try openImageFolders(root, &indexer)
    case .tfrecord: data = try openTFRecords(root, &indexer)
    case .webDataset: data = try openTars(root, &indexer)
    }
    if let cache, indexer.changed { cache.save(indexer.entries, dataDirectory: root) }
    return data
  }

  private init(
    layout: ImageDataLayout, directory: String, train: SampleIndex, validation: SampleIndex, classNames: [String],
    indexer: Indexer, note: String
  ) {
    self.layout = layout
    self.directory = directory
    self.train = train
    self.validation = validation
    self.classNames = classNames
    self.scanned = indexer.scanned
    self.reused = indexer.reused
    self.description =
      "\(layout.rawValue) in \(directory)\(note): \(train.count) training samples (\(train.files.count) files), \(validation.count) validation samples (\(validation.files.count) files), \(classNames.count) classes"
  }

  // MARK: The layouts

  private static func openImageFolders(_ root: String, _ indexer: inout Indexer) throws(TrainingError) -> ImageDataSet {
    let (trainFolder, validationFolder) = try splitFolders(root)
    let listings = try [trainFolder, validationFolder].map { (folder) throws(TrainingError) -> ImageFolder.Listing in
      let entry = try indexer.entries(for: [folder]) { (folder) throws(TrainingError) -> IndexCache.Entry in
        let listing = try ImageFolder.list(folder)
        return IndexCache.Entry(
          key: folder, signatures: listing.signatures, classNames: listing.classNames, index: listing.index)
      }[0]
      return ImageFolder.Listing(classNames: entry.classNames, index: entry.index, signatures: entry.signatures)
    }
    let (classNames, train, validation) = try ImageFolder.combine(train: listings[0], validation: listings[1])
    return ImageDataSet(
      layout: .imageFolder, directory: root, train: train, validation: validation, classNames: classNames,
      indexer: indexer, note: "")
  }

  private static func openTFRecords(_ root: String, _ indexer: inout Indexer) throws(TrainingError) -> ImageDataSet {
    let location = try TFRecordShards.locate(root)
    var splits: [SampleIndex] = []
    for split in ["train", "validation"] {
      let shards = try TFRecordShards.shards(of: split, in: location)
      let entries = try indexer.entries(for: shards) { (path) throws(TrainingError) -> IndexCache.Entry in
        let signature = try signatureBeforeScan(path)
        return IndexCache.Entry(
          key: path, signatures: [signature], classNames: [], index: try TFRecordShards.scan(path))
      }
      let index = SampleIndex(layout: .tfrecord, concatenating: entries.map(\.index))
      guard index.count > 0 else {
        let pattern = DataFiles.join(location.versionDirectory, "\(location.name)-\(split).tfrecord-*")
        throw .corruptData(path: pattern, reason: "the \(split) split has no samples (its shards hold no records)")
      }
      splits.append(index)
    }
    let labels = try LabelMap.find(in: [location.versionDirectory, root])
    let classNames = try labels.classNames(checking: splits)
    var note = " (\(location.name)"
    if let version = location.version {
      note += " version \(version)"
      if location.versions.count > 1 {
        note += ", the highest of versions \(location.versions.joined(separator: ", "))"
      }
    }
    note += labels.path.map { ", class names from \(($0 as NSString).lastPathComponent))" } ?? ")"
    return ImageDataSet(
      layout: .tfrecord, directory: location.versionDirectory, train: splits[0], validation: splits[1],
      classNames: classNames, indexer: indexer, note: note)
  }

  private static func openTars(_ root: String, _ indexer: inout Indexer) throws(TrainingError) -> ImageDataSet {
    let (trainFolder, validationFolder) = try splitFolders(root)
    var splits: [SampleIndex] = []
    for folder in [trainFolder, validationFolder] {
      let shards = try TarShards.shards(in: folder)
      let entries = try indexer.entries(for: shards) { (path) throws(TrainingError) -> IndexCache.Entry in
        let signature = try signatureBeforeScan(path)
        return IndexCache.Entry(key: path, signatures: [signature], classNames: [], index: try TarShards.scan(path))
      }
      let index = SampleIndex(layout: .webDataset, concatenating: entries.map(\.index))
      guard index.count > 0 else {
        let what = shards.isEmpty ? "no .tar files" : "its .tar files (\(shards.count)) hold none"
        throw .corruptData(path: folder, reason: "the split has no samples (\(what))")
      }
      splits.append(index)
    }
    let labels = try LabelMap.find(in: [root])
    let classNames = try labels.classNames(checking: splits)
    let note = labels.path.map { " (class names from \(($0 as NSString).lastPathComponent))" } ?? ""
    return ImageDataSet(
      layout: .webDataset, directory: root, train: splits[0], validation: splits[1], classNames: classNames,
      indexer: indexer, note: note)
  }

  // MARK: Helpers

  /// `DIR/train` and `DIR/val` (or `DIR/validation`).
  private static func splitFolders(_ root: String) throws(TrainingError) -> (String, String) {
    let train = DataFiles.join(root, "train")
    let val = DataFiles.join(root, "val")
    let validation = DataFiles.join(root, "validation")
    switch (DataFiles.isDirectory(val), DataFiles.isDirectory(validation)) {
    case (true, false): return (train, val)
    case (false, true): return (train, validation)
    case (true, true):
      throw .invalidArgument("\(root) holds both val/ and validation/; keep the validation split in one of them")
    case (false, false):
      throw .fileNotFound(path: val, hint: "The validation split goes in val/ (or validation/) beside train/.")
    }
  }

  /// The signature of `path` before it is scanned (a file changed during the scan is then
  /// scanned again next time).
  private static func signatureBeforeScan(_ path: String) throws(TrainingError) -> DataFiles.Signature {
    guard let s = DataFiles.Signature(path: path) else {
      throw .unreadable(path: path, reason: String(cString: strerror(errno)))
    }
    return s
  }

  /// `path` made absolute (from the working directory), with `.`, `..` and a trailing `/` removed.
  static func absolutePath(_ path: String) -> String {
    let absolute = path.hasPrefix("/") ? path : DataFiles.join(FileManager.default.currentDirectoryPath, path)
    let standard = URL(fileURLWithPath: absolute).standardized.path
    return standard.count > 1 && standard.hasSuffix("/") ? String(standard.dropLast()) : standard
  }
}

/// Takes each shard's (or split's) index from the cache while its files are unchanged, and
/// scans the rest, one shard per core; remembers what it did for the cache and for tests.
struct Indexer {
  let root: String
  let cached: [String: IndexCache.Entry]
  /// The entries of this data set, to save.
  private(set) var entries: [IndexCache.Entry] = []
  private(set) var scanned: [String] = []
  private(set) var reused = 0

  init(root: String, cached: [String: IndexCache.Entry]) {
    self.root = root
    self.cached = cached
  }

  /// Whether the cache should be rewritten: something was scanned, or it holds entries no
  /// longer used.
  var changed: Bool { !scanned.isEmpty || cached.count != entries.count }

  /// The entries of `keys` in order: cached ones still current, the others from `scan`.
  /// Throws the first error (in key order) of the scans.
  mutating func entries(
    for keys: [String], scan: (String) throws(TrainingError) -> IndexCache.Entry
  ) throws(TrainingError) -> [IndexCache.Entry] {
    var result = keys.map { key -> IndexCache.Entry? in
      guard let entry = cached[key], entry.isCurrent else { return nil }
      return entry
    }
    let missing = result.indices.filter { result[$0] == nil }
    let scans = parallelMap(missing.count) { (j: Int) -> Result<IndexCache.Entry, TrainingError> in
      do throws(TrainingError) { return .success(try scan(keys[missing[j]])) } catch { return .failure(error) }
    }
    for (j, i) in missing.enumerated() { result[i] = try scans[j].get() }
    reused += keys.count - missing.count
    scanned += missing.map { keys[$0] }
    let found = result.map { $0! }
    entries += found
    return found
  }
}
