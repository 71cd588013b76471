import Foundation

/// Where every sample of one split lies: its file, the byte range of its encoded image in that
/// file, and its label. Parallel arrays (N = `count`), not an array of structs, so that an
/// index of ImageNet's 1.28 million samples is a few compact allocations; any rank can read any
/// sample with `read(_:into:)`.
///
/// - Image folders: one file per sample, offset 0, the file's length when it was listed.
/// - TFDS TFRecords: the shard, and the `image` bytes inside the serialized `tf.train.Example`
///   (so a reader reads just the JPEG); `recordOffsets` keeps the start of the record.
/// - WebDataset tars: the tar, and the image member's data; `recordOffsets` keeps the start of
///   the member's first header and `memberNames` its name.
public struct SampleIndex: Sendable {
  /// How the samples are stored, for `describe`.
  public let layout: ImageDataLayout
  /// Absolute paths of the files the samples are in.
  public let files: [String]
  /// (N) the position in `files` of each sample's file.
  var fileNumbers: [Int32]
  /// (N) the byte offset of each sample's encoded image in its file.
  var offsets: [Int64]
  /// (N) the byte length of each sample's encoded image.
  var lengths: [UInt32]
  /// (N) each sample's label.
  var labels: [Int32]
  /// (N) for shards: the byte offset of each sample's TFRecord, or of its image member's first
  /// tar header; empty for image folders.
  var recordOffsets: [Int64]
  /// For tars: the image members' names (UTF-8, concatenated); empty otherwise.
  var memberNames: [UInt8]
  /// (N) for tars: where each member name ends in `memberNames`; empty otherwise.
  var memberNameEnds: [UInt32]
  /// Open files for `read`, shared by the copies of this index.
  let handles: FileHandles

  init(
    layout: ImageDataLayout, files: [String], fileNumbers: [Int32], offsets: [Int64], lengths: [UInt32],
    labels: [Int32], recordOffsets: [Int64] = [], memberNames: [UInt8] = [], memberNameEnds: [UInt32] = []
  ) {
    precondition(fileNumbers.count == labels.count && offsets.count == labels.count && lengths.count == labels.count)
    precondition(recordOffsets.isEmpty || recordOffsets.count == labels.count)
    precondition(memberNameEnds.isEmpty || memberNameEnds.count == labels.count)
    self.layout = layout
    self.files = files
    self.fileNumbers = fileNumbers
    self.offsets = offsets
    self.lengths = lengths
    self.labels = labels
    self.recordOffsets = recordOffsets
    self.memberNames = memberNames
    self.memberNameEnds = memberNameEnds
    self.handles = FileHandles(paths: files)
  }

  /// The samples of `parts` one after another (the split's shards in order).
  init(layout: ImageDataLayout, concatenating parts: [SampleIndex]) {
    var files: [String] = []
    var fileNumbers: [Int32] = []
    var offsets: [Int64] = []
    var lengths: [UInt32] = []
    var labels: [Int32] = []
    var recordOffsets: [Int64] = []
    var memberNames: [UInt8] = []
    var memberNameEnds: [UInt32] = []
    let total = parts.reduce(0) { $0 + $1.count }
    fileNumbers.reserveCapacity(total)
    offsets.reserveCapacity(total)
    lengths.reserveCapacity(total)
    labels.reserveCapacity(total)
    for part in parts {
      let firstFile = Int32(files.count)
      files += part.files
      fileNumbers += part.fileNumbers.map { $0 + firstFile }
      offsets += part.offsets
      lengths += part.lengths
      labels += part.labels
      recordOffsets += part.recordOffsets
      let nameBase = UInt32(memberNames.count)
      memberNames += part.memberNames
      memberNameEnds += part.memberNameEnds.map { $0 + nameBase }
    }
    self.init(
      layout: layout, files: files, fileNumbers: fileNumbers, offsets: offsets, lengths: lengths, labels: labels,
      recordOffsets: recordOffsets, memberNames: memberNames, memberNameEnds: memberNameEnds)
  }

  /// This index with every label `l` replaced by `map[l]` (a validation folder's classes as
  /// positions among the training classes).
  func relabeled(_ map: [Int32]) -> SampleIndex {
    var copy = self
    copy.labels = labels.map { map[Int($0)] }
    return copy
  }

  /// The number of samples.
  public var count: Int { labels.count }

  /// The absolute path of the file sample `i` is in.
  public func file(of i: Int) -> String { files[Int(fileNumbers[i])] }

  /// The byte offset of sample `i`'s encoded image in its file.
  public func offset(of i: Int) -> Int { Int(offsets[i]) }

  /// The byte length of sample `i`'s encoded image.
  public func length(of i: Int) -> Int { Int(lengths[i]) }

  /// The label of sample `i`: a position in `ImageDataSet.classNames`.
  public func label(of i: Int) -> Int32 { labels[i] }

  /// The image member's name of tar sample `i` (`KEY.jpg`).
  func memberName(of i: Int) -> String {
    let start = i == 0 ? 0 : Int(memberNameEnds[i - 1])
    return String(decoding: memberNames[start..<Int(memberNameEnds[i])], as: UTF8.self)
  }

  /// Where sample `i` is, for messages: "PATH" for a folder image; "PATH, record at byte N"
  /// or "PATH, member KEY.jpg at byte N" for shards (N: where the record or the member's
  /// first header starts).
  public func describe(_ i: Int) -> String {
    layout == .imageFolder ? file(of: i) : "\(file(of: i)), \(place(of: i))"
  }

  /// Where sample `i` is in its shard: "record at byte N", "member KEY.jpg at byte N"
  /// ("image" for a folder image).
  func place(of i: Int) -> String {
    switch layout {
    case .imageFolder: return "image"
    case .tfrecord: return "record at byte \(recordOffsets[i])"
    case .webDataset: return "member \(memberName(of: i)) at byte \(recordOffsets[i])"
    }
  }

  /// Reads sample `i`'s encoded bytes into `buffer`: afterwards `buffer.count` is the sample's
  /// length (the buffer's capacity is kept, so a buffer reused across samples stops
  /// allocating). For a folder image that is the file's length now, so an image rewritten since
  /// it was indexed is still read whole.
  ///
  /// Safe to call from several threads at once, each with its own buffer: files are read with
  /// `pread` on descriptors shared through a small cache (at most `FileHandles.capacity` open).
  public func read(_ i: Int, into buffer: inout [UInt8]) throws(TrainingError) {
    let path = file(of: i)
    let handle = try handles.handle(Int(fileNumbers[i]))
    var length = Int(lengths[i])
    if layout == .imageFolder {
      var s = stat()
      guard fstat(handle.descriptor, &s) == 0 else {
        throw .unreadable(path: path, reason: String(cString: strerror(errno)))
      }
      length = Int(s.st_size)
    }
    if buffer.count > length {
      buffer.removeLast(buffer.count - length)
    } else if buffer.count < length {
      buffer.append(contentsOf: repeatElement(0, count: length - buffer.count))
    }
    let offset = Int(offsets[i])
    let got = buffer.withUnsafeMutableBytes { raw -> Int in
      var at = 0
      while at < length {
        let n = pread(handle.descriptor, raw.baseAddress! + at, length - at, off_t(offset + at))
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else { return n < 0 ? -1 : at }
        at += n
      }
      return at
    }
    guard got == length else {
      let reason =
        got < 0
        ? String(cString: strerror(errno))
        : "the file ends \(length - got) bytes before the end of \(describe(i)) (\(length) bytes at byte \(offset)); was it changed after it was indexed?"
      throw .unreadable(path: path, reason: reason)
    }
  }
}

/// Read-only descriptors of an index's files, opened on first use and kept in a small cache.
/// A reader holds its `Handle` while it reads, so a descriptor evicted by another thread is
/// closed only when that read is done (by `Handle.deinit`).
///
/// `@unchecked Sendable`: `open` and `order` are read and written only under `lock` (a lock
/// rather than `Mutex`, which needs macOS 15 and the package supports macOS 13).
final class FileHandles: @unchecked Sendable {
  /// One open descriptor, closed when the last reader and the cache let go of it.
  final class Handle: Sendable {
    let descriptor: Int32
    init(_ descriptor: Int32) { self.descriptor = descriptor }
    deinit { close(descriptor) }
  }

  /// The most descriptors kept open (well under the usual limit of 1024 per process).
  static let capacity = 128

  let paths: [String]
  private let lock = NSLock()
  private var open: [Int: Handle] = [:]
  /// The files in `open`, oldest first (evicted in this order).
  private var order: [Int] = []

  init(paths: [String]) { self.paths = paths }

  /// The handle of file `number`, opening it if it is not open.
  func handle(_ number: Int) throws(TrainingError) -> Handle {
    lock.lock()
    if let h = open[number] {
      lock.unlock()
      return h
    }
    lock.unlock()
    let fd = Foundation.open(paths[number], O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else {
      if errno == ENOENT { throw .fileNotFound(path: paths[number], hint: "It was there when the data was indexed.") }
      throw .unreadable(path: paths[number], reason: String(cString: strerror(errno)))
    }
    let h = Handle(fd)
    lock.lock()
    defer { lock.unlock() }
    if let other = open[number] { return other }  // another thread opened it meanwhile; ours closes
    if order.count >= Self.capacity { open[order.removeFirst()] = nil }
    open[number] = h
    order.append(number)
    return h
  }
}
