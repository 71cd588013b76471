import Foundation
import Testing

@testable import FlipTraining

/// ImageNet-format data on disk: image folders, TFDS TFRecords and WebDataset tars are built
/// here in a temporary directory (the "images" are short strings: nothing is decoded), then
/// indexed; every sample's bytes are read back, and each damaged file gives an error naming
/// the file and the byte offset.
@Suite("ImageNet-format data: layouts and the sample index")
struct ImageDataFormatTests {
  // MARK: Writers

  /// Writes `bytes` to `path`, creating its folder.
  static func write(_ bytes: [UInt8], to path: String) {
    try! FileManager.default.createDirectory(
      atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
    #expect(FileManager.default.createFile(atPath: path, contents: Data(bytes)), "\(path)")
  }

  static func write(_ text: String, to path: String) { write(Array(text.utf8), to: path) }

  static func image(_ n: Int) -> [UInt8] { Array("JPEG-\(n)".utf8) }

  /// A serialized `tf.train.Example` with the features `image`, `label` (packed or not) and
  /// `file_name`; nil leaves a feature out.
  static func example(image: [UInt8]?, label: Int64?, packed: Bool = true, fileName: String = "x.JPEG") -> [UInt8] {
    func bytesField(_ e: inout ProtobufEncoder, _ field: Int, _ b: [UInt8]) {
      e.key(field, 2)
      e.varint(UInt64(b.count))
      e.bytes += b
    }
    func feature(_ key: String, _ value: ProtobufEncoder) -> ProtobufEncoder {
      var entry = ProtobufEncoder()
      entry.string(1, key)
      entry.message(2, value)
      return entry
    }
    var features = ProtobufEncoder()
    var names = ProtobufEncoder()
    var nameList = ProtobufEncoder()
    bytesField(&nameList, 1, Array(fileName.utf8))
    names.message(1, nameList)
    features.message(1, feature("file_name", names))
    if let image {
      var list = ProtobufEncoder()
      bytesField(&list, 1, image)
      var f = ProtobufEncoder()
      f.message(1, list)
      features.message(1, feature("image", f))
    }
    if let label {
      var list = ProtobufEncoder()
      if packed {
        var values = ProtobufEncoder()
        values.varint(UInt64(bitPattern: label))
        list.message(1, values)
      } else {
        list.varintField(1, UInt64(bitPattern: label))
      }
      var f = ProtobufEncoder()
      f.message(3, list)
      features.message(1, feature("label", f))
    }
    var example = ProtobufEncoder()
    example.message(1, features)
    return example.bytes
  }

  /// TFRecord framing of `records`, and where each record starts.
  static func tfrecords(_ records: [[UInt8]]) -> (bytes: [UInt8], offsets: [Int]) {
    var out: [UInt8] = []
    var offsets: [Int] = []
    for data in records {
      offsets.append(out.count)
      let length = withUnsafeBytes(of: UInt64(data.count).littleEndian) { Array($0) }
      out += length
      withUnsafeBytes(of: CRC32C.masked(CRC32C.checksum(length)).littleEndian) { out += $0 }
      out += data
      withUnsafeBytes(of: CRC32C.masked(CRC32C.checksum(data)).littleEndian) { out += $0 }
    }
    return (out, offsets)
  }

  /// A tar archive in the making: ustar headers, GNU long names, pax paths.
  struct Tar {
    var bytes: [UInt8] = []

    static func octal(_ v: Int, _ digits: Int) -> [UInt8] {
      let s = String(v, radix: 8)
      return Array((String(repeating: "0", count: max(0, digits - s.count)) + s).utf8)
    }

    mutating func header(_ name: String, size: Int, type: Character = "0", prefix: String = "") {
      var h = [UInt8](repeating: 0, count: 512)
      func put(_ b: [UInt8], _ at: Int) { for (i, x) in b.enumerated() { h[at + i] = x } }
      put(Array(name.utf8.prefix(100)), 0)
      put(Self.octal(0o644, 7) + [0], 100)
      put(Self.octal(0, 7) + [0], 108)
      put(Self.octal(0, 7) + [0], 116)
      put(Self.octal(size, 11) + [0], 124)
      put(Self.octal(0, 11) + [0], 136)
      h[156] = type.asciiValue!
      put(Array("ustar\0".utf8), 257)
      put(Array("00".utf8), 263)
      put(Array(prefix.utf8), 345)
      put([UInt8](repeating: UInt8(ascii: " "), count: 8), 148)
      let sum = h.reduce(0) { $0 + Int($1) }
      put(Self.octal(sum, 6) + [0, UInt8(ascii: " ")], 148)
      bytes += h
    }

    mutating func data(_ d: [UInt8]) {
      bytes += d
      bytes += [UInt8](repeating: 0, count: (512 - d.count % 512) % 512)
    }

    /// Adds a regular member (a GNU long-name header first if `name` has more than 100 bytes,
    /// or a pax `path` header if `pax`); returns where its first header starts.
    @discardableResult
    mutating func file(_ name: String, _ content: [UInt8], pax: Bool = false, prefix: String = "") -> Int {
      let start = bytes.count
      if pax {
        var record = " path=\(name)\n"
        var length = record.utf8.count
        while String(length).count + record.utf8.count != length { length = String(length).count + record.utf8.count }
        record = String(length) + record
        header("PaxHeaders/x", size: record.utf8.count, type: "x")
        data(Array(record.utf8))
        header("truncated-by-pax", size: content.count)
      } else if name.utf8.count > 100 {
        header("././@LongLink", size: name.utf8.count + 1, type: "L")
        data(Array(name.utf8) + [0])
        header(String(name.prefix(100)), size: content.count)
      } else {
        header(name, size: content.count, prefix: prefix)
      }
      data(content)
      return start
    }

    mutating func directory(_ name: String) { header(name, size: 0, type: "5") }

    mutating func end() { bytes += [UInt8](repeating: 0, count: 1024) }
  }

  /// The bytes of every sample of `index` read back, with `label`s.
  static func contents(_ index: SampleIndex) throws -> [(bytes: String, label: Int32)] {
    var buffer: [UInt8] = []
    return try (0..<index.count).map { i in
      try index.read(i, into: &buffer)
      #expect(buffer.count == index.length(of: i))
      return (String(decoding: buffer, as: UTF8.self), index.label(of: i))
    }
  }

  /// The message of the `TrainingError` that `body` throws ("" if none).
  static func message(_ body: () throws -> Void) -> String {
    do {
      try body()
      Issue.record("no error")
      return ""
    } catch {
      #expect(error is TrainingError)
      return "\(error)"
    }
  }

  /// A fresh cache folder inside `dir`.
  static func cache(_ dir: String) -> IndexCache { IndexCache(directory: dir + "/cache") }

  // MARK: Image folders

  /// Class folders in byte order ("B" < "Z" < "a"), images in byte order, hidden names
  /// skipped, `validation/` for the validation split, its classes a subset of training's.
  @Test func imageFolders() throws {
    let dir = temporaryDirectory("imagefolder")
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let train = ["a": ["2.jpg", "10.jpg"], "B": ["x.png"], "Z": ["b.JPEG", "B.JPEG"]]
    var n = 0
    var written: [String: String] = [:]
    for (c, files) in train {
      for f in files {
        n += 1
        Self.write(Self.image(n), to: "\(dir)/data/train/\(c)/\(f)")
        written["train/\(c)/\(f)"] = "JPEG-\(n)"
      }
    }
    Self.write("hidden", to: "\(dir)/data/train/a/.DS_Store")
    Self.write("hidden", to: "\(dir)/data/train/.cache/y.jpg")
    Self.write("not a class", to: "\(dir)/data/train/README.txt")
    Self.write("v1", to: "\(dir)/data/validation/Z/v1.jpg")
    Self.write("v2", to: "\(dir)/data/validation/a/v2.jpg")
    Self.write("readme", to: "\(dir)/data/README")

    #expect(ImageDataSet.detect(directory: "\(dir)/data") == .imageFolder)
    let data = try ImageDataSet.open(directory: "\(dir)/data", cache: nil)
    #expect(data.layout == .imageFolder)
    #expect(data.classNames == ["B", "Z", "a"])
    #expect(data.classes == 3)
    let files = (0..<data.train.count).map { data.train.file(of: $0) }
    #expect(
      files.map { $0.replacingOccurrences(of: "\(dir)/data/", with: "") } == [
        "train/B/x.png", "train/Z/B.JPEG", "train/Z/b.JPEG", "train/a/10.jpg", "train/a/2.jpg",
      ])
    let got = try Self.contents(data.train)
    #expect(got.map(\.label) == [0, 1, 1, 2, 2])
    for (i, f) in files.enumerated() {
      #expect(got[i].bytes == written[f.replacingOccurrences(of: "\(dir)/data/", with: "")])
      #expect(data.train.offset(of: i) == 0)
      #expect(data.train.describe(i) == f)
    }
    // Validation: Z and a are training classes 1 and 2.
    #expect(try Self.contents(data.validation).map(\.label) == [1, 2])
    #expect(try Self.contents(data.validation).map(\.bytes) == ["v1", "v2"])
    #expect(data.directory == "\(dir)/data")
    #expect(data.description.contains("5 training samples"))
  }

  @Test func imageFolderErrors() throws {
    let dir = temporaryDirectory("imagefolder-errors")
    defer { try? FileManager.default.removeItem(atPath: dir) }
    Self.write("1", to: "\(dir)/d/train/cat/1.jpg")
    Self.write("2", to: "\(dir)/d/val/dog/2.jpg")
    var m = Self.message { _ = try ImageDataSet.open(directory: "\(dir)/d", cache: nil) }
    #expect(m.contains("\(dir)/d/val/dog") && m.contains("dog is not a training class"), "\(m)")

    try FileManager.default.removeItem(atPath: "\(dir)/d/val/dog")
    Self.write("2", to: "\(dir)/d/val/cat/2.jpg")
    try FileManager.default.createDirectory(atPath: "\(dir)/d/train/empty", withIntermediateDirectories: true)
    Self.write("hidden", to: "\(dir)/d/train/empty/.hidden")
    m = Self.message { _ = try ImageDataSet.open(directory: "\(dir)/d", cache: nil) }
    #expect(m.contains("\(dir)/d/train/empty") && m.contains("holds no images"), "\(m)")

    try FileManager.default.removeItem(atPath: "\(dir)/d/val")
    try FileManager.default.removeItem(atPath: "\(dir)/d/train/empty")
    m = Self.message { _ = try ImageDataSet.open(directory: "\(dir)/d", cache: nil) }
    #expect(m.contains("\(dir)/d/val") && m.contains("validation"), "\(m)")
  }

  // MARK: TFDS TFRecords

  /// Writes `<name>-<split>.tfrecord-0000k-of-0000n` shards of `examples` (one list per
  /// shard) into `folder`; returns their paths and the records' offsets.
  @discardableResult
  static func writeShards(_ shards: [[[UInt8]]], name: String = "toy", split: String, in folder: String) -> [(
    path: String, offsets: [Int]
  )] {
    shards.enumerated().map { k, records in
      let path = "\(folder)/\(name)-\(split).tfrecord-0000\(k)-of-0000\(shards.count)"
      let (bytes, offsets) = tfrecords(records)
      write(bytes, to: path)
      return (path, offsets)
    }
  }

  @Test func tfrecords() throws {
    let dir = temporaryDirectory("tfrecords")
    defer { try? FileManager.default.removeItem(atPath: dir) }
    // Versions 9.0.0 and 10.0.0: 10.0.0 is higher in numeric order (not in text order).
    let old = "\(dir)/data/toy/9.0.0"
    Self.writeShards([[Self.example(image: Self.image(99), label: 0)]], split: "train", in: old)
    Self.writeShards([[Self.example(image: Self.image(98), label: 0)]], split: "validation", in: old)
    let version = "\(dir)/data/toy/10.0.0"
    let train = Self.writeShards(
      [
        [Self.example(image: Self.image(0), label: 2), Self.example(image: Self.image(1), label: 0, packed: false)],
        [Self.example(image: Self.image(2), label: 1)],
      ], split: "train", in: version)
    Self.writeShards([[Self.example(image: Self.image(3), label: 2)]], split: "validation", in: version)
    Self.writeShards([[Self.example(image: Self.image(4), label: -1)]], split: "test", in: version)
    Self.write("tench\ngoldfish\nwhite shark\nextra\n", to: "\(version)/label.labels.txt")
    Self.write("{}", to: "\(version)/dataset_info.json")
    Self.write("unrelated", to: "\(dir)/data/downloads/x.txt")

    for d in ["\(dir)/data", "\(dir)/data/toy", version] {
      #expect(ImageDataSet.detect(directory: d) == .tfrecord, "\(d)")
      let data = try ImageDataSet.open(directory: d, cache: nil)
      #expect(data.layout == .tfrecord)
      #expect(data.directory == version)
      #expect(data.classNames == ["tench", "goldfish", "white shark", "extra"])
      #expect(try Self.contents(data.train).map(\.bytes) == ["JPEG-0", "JPEG-1", "JPEG-2"])
      #expect(try Self.contents(data.train).map(\.label) == [2, 0, 1])
      #expect(try Self.contents(data.validation).map(\.bytes) == ["JPEG-3"])
      #expect(data.train.files == train.map(\.path))
      #expect(data.train.describe(1) == "\(train[0].path), record at byte \(train[0].offsets[1])")
      // The image bytes sit where the index says, inside the record.
      let shard = [UInt8](FileManager.default.contents(atPath: train[0].path)!)
      let o = data.train.offset(of: 1)
      #expect(Array(shard[o..<o + data.train.length(of: 1)]) == Self.image(1))
      if d != version {
        #expect(data.description.contains("10.0.0") && data.description.contains("highest"), "\(data.description)")
      }
    }

    // Without label.labels.txt the names are the labels' numbers.
    try FileManager.default.removeItem(atPath: "\(version)/label.labels.txt")
    let data = try ImageDataSet.open(directory: version, cache: nil)
    #expect(data.classNames == ["0", "1", "2"])
    // label.labels.txt in DIR counts too.
    Self.write("a\nb\nc\n", to: "\(version)/../../label.labels.txt")
    #expect(try ImageDataSet.open(directory: "\(dir)/data", cache: nil).classNames == ["a", "b", "c"])
  }

  @Test func tfrecordErrors() throws {
    let dir = temporaryDirectory("tfrecord-errors")
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let v = "\(dir)/d"
    let good = [Self.example(image: Self.image(0), label: 0), Self.example(image: Self.image(1), label: 1)]
    func reset(train: [[UInt8]] = good) -> (path: String, offsets: [Int]) {
      try? FileManager.default.removeItem(atPath: v)
      Self.writeShards([good], split: "validation", in: v)
      return Self.writeShards([train], split: "train", in: v)[0]
    }
    func open() -> String { Self.message { _ = try ImageDataSet.open(directory: v, cache: nil) } }

    // A truncated shard: the last record cut short.
    var shard = reset()
    var bytes = [UInt8](FileManager.default.contents(atPath: shard.path)!)
    Self.write(Array(bytes.dropLast(5)), to: shard.path)
    var m = open()
    #expect(m.contains(shard.path) && m.contains("byte \(shard.offsets[1])") && m.contains("truncated"), "\(m)")

    // A CRC mismatch in the second record's data.
    shard = reset()
    bytes = [UInt8](FileManager.default.contents(atPath: shard.path)!)
    bytes[shard.offsets[1] + 14] ^= 0x20
    Self.write(bytes, to: shard.path)
    m = open()
    #expect(m.contains(shard.path) && m.contains("byte \(shard.offsets[1])") && m.contains("checksum"), "\(m)")

    // Records without an image, or without a label.
    shard = reset(train: [good[0], Self.example(image: nil, label: 3)])
    m = open()
    #expect(m.contains(shard.path) && m.contains("byte \(shard.offsets[1])") && m.contains("no image"), "\(m)")
    shard = reset(train: [Self.example(image: Self.image(0), label: nil)])
    m = open()
    #expect(m.contains(shard.path) && m.contains("byte 0") && m.contains("no label"), "\(m)")

    // Labels outside the classes: negative, or past label.labels.txt.
    shard = reset(train: [good[0], Self.example(image: Self.image(1), label: -1)])
    m = open()
    #expect(
      m.contains(shard.path) && m.contains("byte \(shard.offsets[1])") && m.contains("label -1 is negative"), "\(m)")
    shard = reset(train: [good[0], Self.example(image: Self.image(1), label: 2)])
    Self.write("a\nb\n", to: "\(v)/label.labels.txt")
    m = open()
    #expect(m.contains(shard.path) && m.contains("byte \(shard.offsets[1])") && m.contains("label 2"), "\(m)")

    // A missing shard of -of-00002, and a validation split with no records.
    _ = reset()
    try FileManager.default.removeItem(atPath: "\(v)/toy-train.tfrecord-00000-of-00001")
    Self.writeShards([good, good], split: "train", in: v)
    try FileManager.default.removeItem(atPath: "\(v)/toy-train.tfrecord-00001-of-00002")
    m = open()
    #expect(m.contains("\(v)/toy-train.tfrecord-00001-of-00002") && m.contains("missing"), "\(m)")
    _ = reset()
    Self.writeShards([[]], split: "validation", in: v)
    m = open()
    #expect(m.contains("\(v)/toy-validation.tfrecord") && m.contains("no samples"), "\(m)")
  }

  // MARK: WebDataset tars

  @Test func tars() throws {
    let dir = temporaryDirectory("tars")
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let long = String(repeating: "long-class-folder/", count: 6) + "n01440764_10026"
    #expect(long.utf8.count > 100)
    var t0 = Tar()
    t0.directory("n01/")
    let first = t0.file("n01/a_1.jpg", Self.image(0))
    t0.file("n01/a_1.cls", Array(" 2\n".utf8))
    t0.file("n01/a_1.json", Array("{}".utf8))
    let longAt = t0.file(long + ".JPEG", Self.image(1))
    t0.file(long + ".cls", Array("0".utf8))
    t0.end()
    var t1 = Tar()
    let paxName = "pax/" + String(repeating: "p", count: 120)
    t1.file(paxName + ".cls", Array("1".utf8), pax: true)
    let paxAt = t1.file(paxName + ".png", Self.image(2), pax: true)
    let prefixed = t1.file("x_3.jpeg", Self.image(3), prefix: "in/a/prefix")
    t1.file("in/a/prefix/x_3.cls", Array("3".utf8))
    t1.end()
    Self.write(t0.bytes, to: "\(dir)/d/train/shard-000.tar")
    Self.write(t1.bytes, to: "\(dir)/d/train/shard-001.tar")
    var v = Tar()
    v.file("v_0.jpg", Self.image(9))
    v.file("v_0.cls", Array("1".utf8))
    Self.write(v.bytes + [UInt8](repeating: 0, count: 1024), to: "\(dir)/d/val/val-000.tar")
    Self.write("tench\ngoldfish\nshark\nhen\nostrich\n", to: "\(dir)/d/label.labels.txt")

    #expect(ImageDataSet.detect(directory: "\(dir)/d") == .webDataset)
    let data = try ImageDataSet.open(directory: "\(dir)/d", cache: nil)
    #expect(data.layout == .webDataset)
    let got = try Self.contents(data.train)
    #expect(got.map(\.bytes) == ["JPEG-0", "JPEG-1", "JPEG-2", "JPEG-3"])
    #expect(got.map(\.label) == [2, 0, 1, 3])
    #expect(data.classNames == ["tench", "goldfish", "shark", "hen", "ostrich"])
    #expect(try Self.contents(data.validation).map(\.label) == [1])
    let shard0 = "\(dir)/d/train/shard-000.tar"
    let shard1 = "\(dir)/d/train/shard-001.tar"
    #expect(data.train.describe(0) == "\(shard0), member n01/a_1.jpg at byte \(first)")
    #expect(data.train.describe(1) == "\(shard0), member \(long).JPEG at byte \(longAt)")
    #expect(data.train.describe(2) == "\(shard1), member \(paxName).png at byte \(paxAt)")
    #expect(data.train.describe(3) == "\(shard1), member in/a/prefix/x_3.jpeg at byte \(prefixed)")
    #expect(data.train.file(of: 2) == shard1)

    // Without label.labels.txt: decimal names up to the largest label + 1.
    try FileManager.default.removeItem(atPath: "\(dir)/d/label.labels.txt")
    #expect(try ImageDataSet.open(directory: "\(dir)/d", cache: nil).classNames == ["0", "1", "2", "3"])
  }

  @Test func tarErrors() throws {
    let dir = temporaryDirectory("tar-errors")
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let path = "\(dir)/d/train/s.tar"
    var val = Tar()
    val.file("v.jpg", Self.image(0))
    val.file("v.cls", Array("0".utf8))
    val.end()
    Self.write(val.bytes, to: "\(dir)/d/val/v.tar")
    func open(_ tar: [UInt8]) -> String {
      Self.write(tar, to: path)
      return Self.message { _ = try ImageDataSet.open(directory: "\(dir)/d", cache: nil) }
    }

    // A header with a bad checksum.
    var t = Tar()
    t.file("a.jpg", Self.image(0))
    t.file("a.cls", Array("0".utf8))
    let third = t.bytes.count
    t.file("b.jpg", Self.image(1))
    t.file("b.cls", Array("1".utf8))
    t.end()
    var bytes = t.bytes
    bytes[third] ^= 1
    var m = open(bytes)
    #expect(m.contains(path) && m.contains("byte \(third)") && m.contains("checksum"), "\(m)")

    // A member running past the end of the file.
    m = open(Array(t.bytes[..<(third + 512 + 3)]))
    #expect(m.contains(path) && m.contains("b.jpg at byte \(third)") && m.contains("truncated"), "\(m)")

    // An image without a label, a label without an image.
    t = Tar()
    t.file("a.jpg", Self.image(0))
    t.file("a.cls", Array("0".utf8))
    let lonely = t.file("b.png", Self.image(1))
    t.file("c.jpg", Self.image(2))
    t.file("c.cls", Array("0".utf8))
    t.end()
    m = open(t.bytes)
    #expect(m.contains(path) && m.contains("b.png at byte \(lonely)") && m.contains("no b.cls"), "\(m)")
    t = Tar()
    let orphan = t.file("b.cls", Array("1".utf8))
    t.file("b.txt", Array("caption".utf8))
    t.end()
    m = open(t.bytes)
    #expect(m.contains(path) && m.contains("b.cls at byte \(orphan)") && m.contains("no image"), "\(m)")

    // A key again after another key: the first sample is incomplete, or the key repeats.
    t = Tar()
    t.file("a.jpg", Self.image(0))
    t.file("b.jpg", Self.image(1))
    t.file("b.cls", Array("1".utf8))
    t.file("a.cls", Array("0".utf8))
    t.end()
    m = open(t.bytes)
    #expect(m.contains(path) && m.contains("a.jpg at byte 0") && m.contains("no a.cls"), "\(m)")
    t = Tar()
    t.file("a.jpg", Self.image(0))
    t.file("a.cls", Array("0".utf8))
    t.file("b.jpg", Self.image(1))
    t.file("b.cls", Array("1".utf8))
    let repeated = t.file("a.jpg", Self.image(2))
    t.file("a.cls", Array("0".utf8))
    t.end()
    m = open(t.bytes)
    #expect(m.contains(path) && m.contains("byte \(repeated)") && m.contains("repeats"), "\(m)")

    // A label out of label.labels.txt's range; a label that is not a number.
    t = Tar()
    t.file("a.jpg", Self.image(0))
    t.file("a.cls", Array("0".utf8))
    let b = t.file("b.jpg", Self.image(1))
    t.file("b.cls", Array("5".utf8))
    t.end()
    Self.write("x\ny\n", to: "\(dir)/d/label.labels.txt")
    m = open(t.bytes)
    #expect(m.contains(path) && m.contains("b.jpg at byte \(b)") && m.contains("label 5"), "\(m)")
    try FileManager.default.removeItem(atPath: "\(dir)/d/label.labels.txt")
    t = Tar()
    t.file("a.jpg", Self.image(0))
    let cls = t.file("a.cls", Array("cat".utf8))
    t.end()
    m = open(t.bytes)
    #expect(m.contains(path) && m.contains("byte \(cls)") && m.contains("not a decimal integer"), "\(m)")

    // A split with no samples.
    t = Tar()
    t.file("meta.json", Array("{}".utf8))
    t.end()
    m = open(t.bytes)
    #expect(m.contains("\(dir)/d/train") && m.contains("no samples"), "\(m)")
  }

  // MARK: Detection

  @Test func detection() throws {
    let dir = temporaryDirectory("detect")
    defer { try? FileManager.default.removeItem(atPath: dir) }
    try FileManager.default.createDirectory(atPath: "\(dir)/empty", withIntermediateDirectories: true)
    #expect(ImageDataSet.detect(directory: "\(dir)/empty") == nil)
    Self.write(idxBytes(dimensions: [1, 2, 2], data: [0, 1, 2, 3]), to: "\(dir)/idx/train-images-idx3-ubyte")
    Self.write(idxBytes(dimensions: [1], data: [0]), to: "\(dir)/idx/train-labels-idx1-ubyte")
    #expect(ImageDataSet.detect(directory: "\(dir)/idx") == nil)
    #expect(ImageDataSet.detect(directory: "\(dir)/missing") == nil)
    let m = Self.message { _ = try ImageDataSet.open(directory: "\(dir)/idx", cache: nil) }
    #expect(m.contains("\(dir)/idx") && m.contains("DIR/train/<class>/<image>") && m.contains("-train.tfrecord-"))
    #expect(m.contains("DIR/train/*.tar"))
    Self.write("x", to: "\(dir)/tars/train/a.tar")
    #expect(ImageDataSet.detect(directory: "\(dir)/tars") == .webDataset)
    Self.write("x", to: "\(dir)/folders/train/cat/1.jpg")
    #expect(ImageDataSet.detect(directory: "\(dir)/folders") == .imageFolder)
    Self.write("x", to: "\(dir)/tfds/mnist/3.0.1/mnist-train.tfrecord-00000-of-00001")
    #expect(ImageDataSet.detect(directory: "\(dir)/tfds") == .tfrecord)
  }

  // MARK: The index cache

  @Test func indexCache() throws {
    let dir = temporaryDirectory("index-cache")
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let v = "\(dir)/data"
    let shards = Self.writeShards(
      (0..<3).map { k in [Self.example(image: Self.image(k), label: Int64(k))] }, split: "train", in: v)
    let validation = Self.writeShards([[Self.example(image: Self.image(7), label: 1)]], split: "validation", in: v)
    let cache = Self.cache(dir)

    var data = try ImageDataSet.open(directory: v, cache: cache)
    #expect(data.scanned == shards.map(\.path) + validation.map(\.path))
    #expect(data.reused == 0)
    let file = cache.file(forDataDirectory: v)
    #expect(file.hasPrefix("\(dir)/cache/index/data-") && FileManager.default.fileExists(atPath: file))

    // Again: everything from the cache, and the same index.
    data = try ImageDataSet.open(directory: v, cache: cache)
    #expect(data.scanned.isEmpty && data.reused == 4)
    #expect(try Self.contents(data.train).map(\.bytes) == ["JPEG-0", "JPEG-1", "JPEG-2"])
    #expect(data.train.describe(1) == "\(shards[1].path), record at byte 0")

    // A changed shard (new contents, new modification time) is scanned again, alone.
    let (bytes, _) = Self.tfrecords([Self.example(image: Self.image(50), label: 2)])
    Self.write(bytes, to: shards[1].path)
    try FileManager.default.setAttributes(
      [.modificationDate: Date(timeIntervalSinceNow: 5)], ofItemAtPath: shards[1].path)
    data = try ImageDataSet.open(directory: v, cache: cache)
    #expect(data.scanned == [shards[1].path] && data.reused == 3)
    #expect(try Self.contents(data.train).map(\.bytes) == ["JPEG-0", "JPEG-50", "JPEG-2"])

    // A damaged cache file is passed over (everything scanned) and rewritten.
    var cached = [UInt8](FileManager.default.contents(atPath: file)!)
    cached[cached.count / 2] ^= 0xFF
    Self.write(cached, to: file)
    data = try ImageDataSet.open(directory: v, cache: cache)
    #expect(data.scanned.count == 4)
    Self.write(Array(cached.prefix(20)), to: file)
    data = try ImageDataSet.open(directory: v, cache: cache)
    #expect(data.scanned.count == 4)
    data = try ImageDataSet.open(directory: v, cache: cache)
    #expect(data.scanned.isEmpty)

    // A cache that cannot be written is no error.
    Self.write("a file, not a folder", to: "\(dir)/blocked")
    data = try ImageDataSet.open(directory: v, cache: IndexCache(directory: "\(dir)/blocked"))
    #expect(data.scanned.count == 4 && data.train.count == 3)
  }

  /// Image folders cache their listings: a new image in a class folder lists that split again.
  @Test func imageFolderCache() throws {
    let dir = temporaryDirectory("folder-cache")
    defer { try? FileManager.default.removeItem(atPath: dir) }
    Self.write("1", to: "\(dir)/d/train/cat/1.jpg")
    Self.write("2", to: "\(dir)/d/train/dog/2.jpg")
    Self.write("3", to: "\(dir)/d/val/dog/3.jpg")
    let cache = Self.cache(dir)
    var data = try ImageDataSet.open(directory: "\(dir)/d", cache: cache)
    #expect(data.scanned == ["\(dir)/d/train", "\(dir)/d/val"])
    data = try ImageDataSet.open(directory: "\(dir)/d", cache: cache)
    #expect(data.scanned.isEmpty && data.reused == 2)
    #expect(try Self.contents(data.validation).map(\.label) == [1])
    #expect(data.train.describe(1) == "\(dir)/d/train/dog/2.jpg")
    Self.write("4", to: "\(dir)/d/train/cat/4.jpg")
    try FileManager.default.setAttributes(
      [.modificationDate: Date(timeIntervalSinceNow: 5)], ofItemAtPath: "\(dir)/d/train/cat")
    data = try ImageDataSet.open(directory: "\(dir)/d", cache: cache)
    #expect(data.scanned == ["\(dir)/d/train"])
    #expect(try Self.contents(data.train).map(\.bytes) == ["1", "4", "2"])
  }

  /// `read` from several threads at once, each with its own buffer.
  @Test func concurrentReads() throws {
    let dir = temporaryDirectory("concurrent-reads")
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let records = (0..<200).map { Self.example(image: Self.image($0), label: Int64($0 % 4)) }
    Self.writeShards([Array(records[..<100]), Array(records[100...])], split: "train", in: "\(dir)/d")
    Self.writeShards([[records[0]]], split: "validation", in: "\(dir)/d")
    let train = try ImageDataSet.open(directory: "\(dir)/d", cache: nil).train
    let failures = Failures()
    DispatchQueue.concurrentPerform(iterations: 4) { worker in
      var buffer: [UInt8] = []
      for round in 0..<5 {
        for i in stride(from: (worker + round) % 4, to: train.count, by: 4) {
          do {
            try train.read(i, into: &buffer)
            if buffer != Self.image(i) { failures.add(i) }
          } catch {
            failures.add(i)
          }
        }
      }
    }
    #expect(failures.list.isEmpty)
  }

  /// The samples that failed, from several threads.
  final class Failures: @unchecked Sendable {
    private let lock = NSLock()
    private var failed: [Int] = []
    func add(_ i: Int) { lock.withLock { failed.append(i) } }
    var list: [Int] { lock.withLock { failed } }
  }
}
