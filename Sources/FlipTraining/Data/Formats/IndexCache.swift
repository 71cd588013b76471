import FlipComm
import Foundation

/// Where the indexes of ImageNet-format data sets are kept between runs, so that 1024
/// TFRecord shards or a million image files are scanned once, not at every start.
///
/// One file per data directory, `<cache>/index/<folder name>-<FNV-1a of its absolute path>.flipindex`,
/// holding an entry per shard (and one per image-folder split). An entry is reused only while
/// every file it was made from has the same path, size and modification time (nanoseconds);
/// anything else is scanned again and the file rewritten. Writes are atomic (a temporary file
/// renamed into place), so ranks on one host may race; a cache that cannot be written, or a
/// file that is damaged or from another version, is silently passed over.
///
/// The file, little-endian: the magic `FLIPIDX\0`, the format version (UInt32), the byte-order
/// mark 0x01020304 (UInt32, as written), the payload's length and FNV-1a (UInt64 each), then
/// the payload: the data directory, the number of entries, and each entry (see `encode`).
public struct IndexCache: Sendable {
  /// The cache folder (the index files are in its `index/` folder).
  public let directory: String

  /// A cache in `directory` (by default `defaultDirectory()`).
  public init(directory: String = IndexCache.defaultDirectory()) {
    self.directory = directory
  }

  /// `$FLIP_CACHE_DIR`, else `$XDG_CACHE_HOME/flip`, else `~/.cache/flip`.
  public static func defaultDirectory(environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
    if let d = environment["FLIP_CACHE_DIR"], !d.isEmpty { return d }
    if let d = environment["XDG_CACHE_HOME"], !d.isEmpty { return DataFiles.join(d, "flip") }
    let home = environment["HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? NSHomeDirectory()
    return DataFiles.join(home, ".cache/flip")
  }

  /// The index file of the data directory `dataDirectory` (an absolute path).
  public func file(forDataDirectory dataDirectory: String) -> String {
    let hash = String(FNV1a.hash(dataDirectory.utf8), radix: 16)
    let base = (dataDirectory as NSString).lastPathComponent.map { $0.isLetter || $0.isNumber ? $0 : "_" }
    let name = "\(String(base).prefix(40))-\(String(repeating: "0", count: 16 - hash.count))\(hash).flipindex"
    return DataFiles.join(DataFiles.join(directory, "index"), name)
  }

  static let magic: [UInt8] = Array("FLIPIDX\0".utf8)
  static let version: UInt32 = 1
  static let byteOrderMark: UInt32 = 0x0102_0304

  /// The index of one shard, or one image-folder split's listing.
  struct Entry {
    /// The shard's or split folder's path.
    var key: String
    /// The files it was made from, as they were then.
    var signatures: [DataFiles.Signature]
    /// An image-folder split's class folders (empty for shards).
    var classNames: [String]
    var index: SampleIndex

    /// Whether every file it was made from is unchanged.
    var isCurrent: Bool { signatures.allSatisfy { DataFiles.Signature(path: $0.path) == $0 } }
  }

  /// The entries saved for `dataDirectory` by their keys, or none if there is no file, or it
  /// cannot be read, is damaged, of another version, or for another directory.
  func load(dataDirectory: String) -> [String: Entry] {
    guard let data = FileManager.default.contents(atPath: file(forDataDirectory: dataDirectory)) else { return [:] }
    return data.withUnsafeBytes { raw in
      var r = Reader(bytes: raw, root: dataDirectory)
      return (try? r.file()) ?? [:]
    }
  }

  /// Writes `entries` as the index of `dataDirectory`; on any failure leaves things as they were.
  func save(_ entries: [Entry], dataDirectory: String) {
    let path = file(forDataDirectory: dataDirectory)
    try? FileManager.default.createDirectory(
      atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
    var w = Writer(root: dataDirectory)
    w.string(dataDirectory)
    w.integer(UInt32(entries.count))
    for e in entries { w.entry(e) }
    var header = Writer(root: dataDirectory)
    header.bytes += Self.magic
    header.integer(Self.version)
    header.integer(Self.byteOrderMark)
    header.integer(UInt64(w.bytes.count))
    header.integer(w.bytes.withUnsafeBytes { FNV1a.hash($0) })
    header.bytes.withUnsafeBytes { h in
      w.bytes.withUnsafeBytes { p in _ = try? ModelFile.writeAtomically(pieces: [h, p], to: path) }
    }
  }

  /// Appends the payload's parts. Paths under the data directory are written relative to it.
  struct Writer {
    var bytes: [UInt8] = []
    let root: String

    mutating func integer<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v) { bytes += $0 } }

    mutating func string(_ s: String) {
      integer(UInt32(s.utf8.count))
      bytes += s.utf8
    }

    mutating func path(_ p: String) { string(p.hasPrefix(root + "/") ? String(p.dropFirst(root.count + 1)) : p) }

    mutating func array<T: FixedWidthInteger>(_ a: [T]) {
      integer(UInt64(a.count))
      a.withUnsafeBytes { bytes += $0 }
    }

    mutating func entry(_ e: Entry) {
      path(e.key)
      string(e.index.layout.rawValue)
      integer(UInt32(e.signatures.count))
      for s in e.signatures {
        path(s.path)
        integer(s.size)
        integer(s.modified)
      }
      integer(UInt32(e.classNames.count))
      for n in e.classNames { string(n) }
      integer(UInt32(e.index.files.count))
      for f in e.index.files { path(f) }
      array(e.index.fileNumbers)
      array(e.index.offsets)
      array(e.index.lengths)
      array(e.index.labels)
      array(e.index.recordOffsets)
      array(e.index.memberNames)
      array(e.index.memberNameEnds)
    }
  }

  /// Reads what `Writer` wrote, checking every length against the bytes left.
  struct Reader {
    struct Damaged: Error {}

    let bytes: UnsafeRawBufferPointer
    let root: String
    var at = 0

    init(bytes: UnsafeRawBufferPointer, root: String) {
      self.bytes = bytes
      self.root = root
    }

    mutating func take(_ n: Int) throws(Damaged) -> UnsafeRawBufferPointer {
      guard n >= 0, n <= bytes.count - at else { throw Damaged() }
      defer { at += n }
      return UnsafeRawBufferPointer(rebasing: bytes[at..<at + n])
    }

    mutating func integer<T: FixedWidthInteger>(_: T.Type = T.self) throws(Damaged) -> T {
      try take(MemoryLayout<T>.size).loadUnaligned(as: T.self)
    }

    mutating func count(_ limit: Int) throws(Damaged) -> Int {
      let n = try integer(UInt32.self)
      guard Int(n) <= limit else { throw Damaged() }
      return Int(n)
    }

    mutating func string() throws(Damaged) -> String {
      String(decoding: try take(Int(try integer(UInt32.self))), as: UTF8.self)
    }

    mutating func path() throws(Damaged) -> String {
      let p = try string()
      return p.hasPrefix("/") ? p : root + "/" + p
    }

    mutating func array<T: FixedWidthInteger>(_: T.Type) throws(Damaged) -> [T] {
      let n = try integer(UInt64.self)
      guard n <= UInt64(bytes.count - at) / UInt64(MemoryLayout<T>.size) else { throw Damaged() }
      let raw = try take(Int(n) * MemoryLayout<T>.size)
      return (0..<Int(n)).map { raw.loadUnaligned(fromByteOffset: $0 * MemoryLayout<T>.size, as: T.self) }
    }

    /// The whole file's entries by key.
    mutating func file() throws(Damaged) -> [String: Entry] {
      guard Array(try take(IndexCache.magic.count)) == IndexCache.magic,
        try integer(UInt32.self) == IndexCache.version,
        try integer(UInt32.self) == IndexCache.byteOrderMark
      else { throw Damaged() }
      let length = try integer(UInt64.self)
      let hash = try integer(UInt64.self)
      guard length == UInt64(bytes.count - at), FNV1a.hash(UnsafeRawBufferPointer(rebasing: bytes[at...])) == hash,
        try string() == root
      else { throw Damaged() }
      var entries: [String: Entry] = [:]
      for _ in 0..<(try count(bytes.count)) {
        let e = try entry()
        entries[e.key] = e
      }
      guard at == bytes.count else { throw Damaged() }
      return entries
    }

    mutating func entry() throws(Damaged) -> Entry {
      let key = try path()
      guard let layout = ImageDataLayout(rawValue: try string()) else { throw Damaged() }
      var signatures: [DataFiles.Signature] = []
      for _ in 0..<(try count(bytes.count)) {
        signatures.append(.init(path: try path(), size: try integer(), modified: try integer()))
      }
      var classNames: [String] = []
      for _ in 0..<(try count(bytes.count)) { classNames.append(try string()) }
      var files: [String] = []
      for _ in 0..<(try count(bytes.count)) { files.append(try path()) }
      let fileNumbers = try array(Int32.self)
      let offsets = try array(Int64.self)
      let lengths = try array(UInt32.self)
      let labels = try array(Int32.self)
      let recordOffsets = try array(Int64.self)
      let memberNames = try array(UInt8.self)
      let memberNameEnds = try array(UInt32.self)
      let n = labels.count
      guard fileNumbers.count == n, offsets.count == n, lengths.count == n,
        recordOffsets.count == (layout == .imageFolder ? 0 : n),
        memberNameEnds.count == (layout == .webDataset ? n : 0),
        fileNumbers.allSatisfy({ $0 >= 0 && Int($0) < files.count }),
        zip(memberNameEnds, memberNameEnds.dropFirst()).allSatisfy({ $0 <= $1 }),
        memberNameEnds.last.map({ Int($0) <= memberNames.count }) ?? true
      else { throw Damaged() }
      let index = SampleIndex(
        layout: layout, files: files, fileNumbers: fileNumbers, offsets: offsets, lengths: lengths, labels: labels,
        recordOffsets: recordOffsets, memberNames: memberNames, memberNameEnds: memberNameEnds)
      return Entry(key: key, signatures: signatures, classNames: classNames, index: index)
    }
  }
}
