import Foundation

/// WebDataset's layout: `DIR/train/*.tar` and `DIR/val/*.tar` (or `DIR/validation/*.tar`). A
/// sample is the members of a tar that share a key, the member's path up to the first dot of
/// its last component (`n01440764/n01440764_10026.jpg` and `….cls`: key
/// `n01440764/n01440764_10026`); its members are adjacent. The image is the member ending
/// `.jpg`, `.jpeg` or `.png` (any case), the label the `.cls` member (a decimal integer);
/// other members are ignored, and so are members whose name starts with '.'.
///
/// Tar itself (POSIX ustar, with GNU and pax extensions): 512-byte header blocks, octal sizes
/// (or GNU base-256), the ustar `prefix` field, GNU long names (type 'L', the name in the data),
/// pax extended headers (type 'x': `path=` and `size=` records for the next member; type 'g'
/// ignored); directories, links and other types are skipped; two zero blocks end the archive.
enum TarShards {
  static let block = 512
  static let imageExtensions: Set<String> = ["jpg", "jpeg", "png"]

  /// The `.tar` files of the split folder `directory`, in byte order of their names.
  static func shards(in directory: String) throws(TrainingError) -> [String] {
    try DataFiles.visibleNames(in: directory).filter { $0.lowercased().hasSuffix(".tar") }.map {
      DataFiles.join(directory, $0)
    }
  }

  /// One regular member: its name and where its first header and its data are.
  struct Member {
    var name: String
    var headerOffset: Int
    var data: Range<Int>
  }

  /// The `path` and `size` records of the pax header at byte `at`.
  static func paxPathAndSize(_ data: UnsafeRawBufferPointer, path: String, at: Int) throws(TrainingError) -> (
    path: String?, size: Int?
  ) {
    let records = try paxRecords(data, path: path, at: at)
    guard let s = records["size"] else { return (records["path"], nil) }
    guard let v = Int(s), v >= 0 else {
      throw .corruptData(path: path, reason: "the pax header at byte \(at) has size \(s)")
    }
    return (records["path"], v)
  }

  /// The regular members of the tar `bytes`, in order, passed to `body`. Throws (naming `path`
  /// and the byte offset) on a header whose checksum does not match, a member running past the
  /// end of the file, or a header cut short.
  static func members(
    _ bytes: UnsafeRawBufferPointer, path: String, _ body: (Member) throws(TrainingError) -> Void
  ) throws(TrainingError) {
    let n = bytes.count
    var at = 0
    var longName: String?
    var paxPath: String?
    var paxSize: Int?
    var firstHeader: Int?
    while at < n {
      guard n - at >= block else {
        throw .corruptData(
          path: path, reason: "the header at byte \(at) is cut short (\(n - at) of 512 bytes): a truncated tar")
      }
      let header = UnsafeRawBufferPointer(rebasing: bytes[at..<at + block])
      if header.allSatisfy({ $0 == 0 }) {
        let next = at + block
        if next >= n || UnsafeRawBufferPointer(rebasing: bytes[next..<min(next + block, n)]).allSatisfy({ $0 == 0 }) {
          return  // the end-of-archive marker
        }
        at = next
        continue
      }
      try checkChecksum(header, path: path, at: at)
      let typeFlag = header[156]
      guard var size = number(UnsafeRawBufferPointer(rebasing: header[124..<136])) else {
        throw .corruptData(path: path, reason: "the header at byte \(at) has an unreadable size field")
      }
      if let s = paxSize, typeFlag != UInt8(ascii: "x"), typeFlag != UInt8(ascii: "g") { size = s }
      let name = longName ?? paxPath ?? headerName(header)
      let dataStart = at + block
      guard size <= n - dataStart else {
        throw .corruptData(
          path: path,
          reason:
            "member \(name) at byte \(at) runs past the end of the file (\(size) bytes of data from byte \(dataStart), the file has \(n)): a truncated tar"
        )
      }
      let data = dataStart..<dataStart + size
      let memberData = UnsafeRawBufferPointer(rebasing: bytes[data])
      if typeFlag != UInt8(ascii: "g") { firstHeader = firstHeader ?? at }
      switch typeFlag {
      case UInt8(ascii: "L"):
        longName = String(decoding: memberData.prefix { $0 != 0 }, as: UTF8.self)
      case UInt8(ascii: "x"):
        let pax = try paxPathAndSize(memberData, path: path, at: at)
        paxPath = pax.path ?? paxPath
        paxSize = pax.size ?? paxSize
      case UInt8(ascii: "g"), UInt8(ascii: "K"):
        break  // global pax records, GNU long link names: nothing a sample needs
      default:
        // "0", NUL (old tars) and "7" (contiguous) are regular files; the rest is skipped.
        if typeFlag == UInt8(ascii: "0") || typeFlag == 0 || typeFlag == UInt8(ascii: "7") {
          try body(Member(name: name, headerOffset: firstHeader!, data: data))
        }
        (longName, paxPath, paxSize, firstHeader) = (nil, nil, nil, nil)
      }
      at = dataStart + (size + block - 1) / block * block
    }
  }

  /// Checks a header's checksum: the sum of its bytes with the checksum field taken as spaces
  /// (unsigned, or signed as some old tars wrote it).
  private static func checkChecksum(_ header: UnsafeRawBufferPointer, path: String, at: Int) throws(TrainingError) {
    var unsigned = 0
    var signed = 0
    for i in 0..<block {
      let b = (148..<156).contains(i) ? UInt8(ascii: " ") : header[i]
      unsigned += Int(b)
      signed += Int(Int8(bitPattern: b))
    }
    let stored = number(UnsafeRawBufferPointer(rebasing: header[148..<156]))
    guard stored == unsigned || stored == signed else {
      throw .corruptData(
        path: path,
        reason:
          "the header at byte \(at) has a bad checksum (stored \(stored.map(String.init) ?? "unreadable"), computed \(unsigned)): not a tar file, or a damaged one"
      )
    }
  }

  /// A numeric header field: octal digits (space- or NUL-terminated, leading spaces allowed),
  /// or GNU's base-256 (first byte's high bit set) for values too large for octal.
  static func number(_ field: UnsafeRawBufferPointer) -> Int? {
    if let first = field.first, first & 0x80 != 0 {
      guard first & 0x40 == 0 else { return nil }  // negative
      var v = Int(first & 0x3F)
      for b in field.dropFirst() {
        guard v < Int.max >> 8 else { return nil }
        v = v << 8 | Int(b)
      }
      return v
    }
    var v = 0
    var digits = 0
    for b in field {
      if b == 0 || (b == UInt8(ascii: " ") && digits > 0) { break }
      if b == UInt8(ascii: " ") { continue }
      guard b >= UInt8(ascii: "0"), b <= UInt8(ascii: "7"), v < Int.max >> 3 else { return nil }
      v = v << 3 | Int(b - UInt8(ascii: "0"))
      digits += 1
    }
    return v
  }

  /// The header's name: ustar's `prefix/name` (POSIX magic "ustar\0"), else `name` alone (GNU
  /// tars use the prefix field for other things).
  private static func headerName(_ header: UnsafeRawBufferPointer) -> String {
    func text(_ r: Range<Int>) -> String {
      String(decoding: UnsafeRawBufferPointer(rebasing: header[r]).prefix { $0 != 0 }, as: UTF8.self)
    }
    let name = text(0..<100)
    let posix = header[257..<263].elementsEqual("ustar\0".utf8)
    let prefix = posix ? text(345..<500) : ""
    return prefix.isEmpty ? name : prefix + "/" + name
  }

  /// The records of a pax extended header: `"<length> <key>=<value>\n"`, each `length` bytes.
  private static func paxRecords(_ data: UnsafeRawBufferPointer, path: String, at: Int) throws(TrainingError)
    -> [String: String]
  {
    var records: [String: String] = [:]
    var i = 0
    while i < data.count, data[i] != 0 {
      var length = 0
      var j = i
      while j < data.count, data[j] >= UInt8(ascii: "0"), data[j] <= UInt8(ascii: "9"), length < 1 << 30 {
        length = length * 10 + Int(data[j] - UInt8(ascii: "0"))
        j += 1
      }
      guard j < data.count, data[j] == UInt8(ascii: " "), length > j - i + 1, i + length <= data.count,
        data[i + length - 1] == UInt8(ascii: "\n")
      else {
        throw .corruptData(path: path, reason: "the pax header at byte \(at) has a malformed record at \(i)")
      }
      let record = UnsafeRawBufferPointer(rebasing: data[(j + 1)..<(i + length - 1)])
      if let eq = record.firstIndex(of: UInt8(ascii: "=")) {
        let key = String(decoding: record[..<eq], as: UTF8.self)
        records[key] = String(decoding: record[(eq + 1)...], as: UTF8.self)
      }
      i += length
    }
    return records
  }

  /// A member name's key and extension: up to and after the first dot of its last component
  /// (nil for a name whose last component starts with a dot or has none).
  static func keyAndExtension(_ name: String) -> (key: String, extension: String)? {
    let slash = name.lastIndex(of: "/").map { name.index(after: $0) } ?? name.startIndex
    guard let dot = name[slash...].firstIndex(of: "."), dot > slash else { return nil }
    return (String(name[..<dot]), String(name[name.index(after: dot)...]))
  }

  /// The samples of the tar at `path`. Throws, naming the member and its byte offset, on a
  /// sample with an image but no `.cls` member or the reverse, two images or labels for one
  /// key, a key whose members are not adjacent (a duplicate key), or an unreadable label.
  static func scan(_ path: String) throws(TrainingError) -> SampleIndex {
    var samples = SampleCollector(path: path)
    try DataFiles.withMappedFile(path) { (bytes) throws(TrainingError) in
      try members(bytes, path: path) { (member) throws(TrainingError) in try samples.add(member, in: bytes) }
      try samples.finish()
    }
    return SampleIndex(
      layout: .webDataset, files: [path], fileNumbers: [Int32](repeating: 0, count: samples.labels.count),
      offsets: samples.offsets, lengths: samples.lengths, labels: samples.labels, recordOffsets: samples.recordOffsets,
      memberNames: samples.names, memberNameEnds: samples.nameEnds)
  }

  /// Groups a tar's members into samples by key, as `scan` reads them.
  struct SampleCollector {
    let path: String
    var offsets: [Int64] = []
    var lengths: [UInt32] = []
    var labels: [Int32] = []
    var recordOffsets: [Int64] = []
    var names: [UInt8] = []
    var nameEnds: [UInt32] = []
    /// The members of the sample being collected.
    var key: String?
    var image: Member?
    var label: (value: Int32, member: Member)?
    /// Key → where its sample's first member starts.
    var finished: [String: Int] = [:]

    init(path: String) { self.path = path }

    /// Adds `member` of the tar `bytes` to its sample (finishing the one before at a new key).
    mutating func add(_ member: Member, in bytes: UnsafeRawBufferPointer) throws(TrainingError) {
      guard let (memberKey, ext) = keyAndExtension(member.name) else { return }
      let place = "member \(member.name) at byte \(member.headerOffset)"
      if memberKey != key {
        try finish()
        if let earlier = finished[memberKey] {
          throw .corruptData(
            path: path,
            reason:
              "\(place): the key \(memberKey) repeats (a sample with this key starts at byte \(earlier)); keys must be unique and a sample's members adjacent"
          )
        }
        finished[memberKey] = member.headerOffset
        key = memberKey
      }
      let kind = ext.lowercased()
      if imageExtensions.contains(kind) {
        if let other = image {
          throw .corruptData(
            path: path, reason: "\(place): the sample \(memberKey) has a second image (\(other.name) is the first)")
        }
        guard member.data.count <= Int(UInt32.max) else {
          throw .corruptData(path: path, reason: "\(place): \(member.data.count) bytes is too large for an image")
        }
        image = member
      } else if kind == "cls" {
        if label != nil {
          throw .corruptData(path: path, reason: "\(place): the sample \(memberKey) has a second label")
        }
        let text = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[member.data]), as: UTF8.self)
          .trimmingCharacters(in: .whitespacesAndNewlines)
        guard let value = Int32(text) else {
          throw .corruptData(path: path, reason: "\(place): the label \"\(text.prefix(40))\" is not a decimal integer")
        }
        label = (value, member)
      }
    }

    /// Ends the sample being collected: recorded when it has an image and a label, an error
    /// when it has one of them only.
    mutating func finish() throws(TrainingError) {
      defer { (key, image, label) = (nil, nil, nil) }
      guard let key else { return }
      switch (image, label) {
      case (let image?, let label?):
        offsets.append(Int64(image.data.lowerBound))
        lengths.append(UInt32(image.data.count))
        labels.append(label.value)
        recordOffsets.append(Int64(image.headerOffset))
        names += image.name.utf8
        nameEnds.append(UInt32(names.count))
      case (let image?, nil):
        throw .corruptData(
          path: path,
          reason:
            "member \(image.name) at byte \(image.headerOffset): the sample \(key) has an image but no \(key).cls label"
        )
      case (nil, let label?):
        throw .corruptData(
          path: path,
          reason:
            "member \(label.member.name) at byte \(label.member.headerOffset): the sample \(key) has a label but no image (\(key).jpg, .jpeg or .png)"
        )
      case (nil, nil): break  // other members only (metadata): not a sample
      }
    }
  }
}
