import FlipTensor
import Foundation
import Testing

@testable import FlipTraining

/// TensorBoard event files: CRC-32C, TFRecord framing, the hand-encoded Event protos, reading
/// back (also with TensorBoard's own reader when a Python with `tensorboard` is configured),
/// truncated files and resumed runs.
@Suite("TensorBoard event files")
struct TensorBoardTests {
  /// The package root, found from this file.
  static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().path

  /// The Python of FLIP_TENSORBOARD_PYTHON, if it is set and executable.
  static let python: String? = {
    guard let p = ProcessInfo.processInfo.environment["FLIP_TENSORBOARD_PYTHON"], !p.isEmpty,
      FileManager.default.isExecutableFile(atPath: p)
    else { return nil }
    return p
  }()

  static let pythonReason: Comment = """
    FLIP_TENSORBOARD_PYTHON is not set to an executable Python with the tensorboard package \
    (python3 -m venv ~/.cache/flip-tb-venv && ~/.cache/flip-tb-venv/bin/pip install tensorboard; \
    then FLIP_TENSORBOARD_PYTHON=~/.cache/flip-tb-venv/bin/python); TensorBoard's own reader is not checked
    """

  /// The bytes of the file at `path`.
  static func bytes(_ path: String) -> [UInt8] { [UInt8](FileManager.default.contents(atPath: path) ?? Data()) }

  /// The CRC-32C of `bytes` one byte at a time, straight from the polynomial (no tables).
  static func bitwiseCRC32C(_ bytes: [UInt8]) -> UInt32 {
    var c: UInt32 = 0xFFFF_FFFF
    for b in bytes {
      c ^= UInt32(b)
      for _ in 0..<8 { c = c & 1 != 0 ? (c >> 1) ^ 0x82F6_3B78 : c >> 1 }
    }
    return ~c
  }

  // MARK: CRC-32C

  @Test func crc32cKnownVectors() {
    #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
    #expect(CRC32C.checksum([UInt8]()) == 0)
    // RFC 3720 (iSCSI), B.4.
    #expect(CRC32C.checksum([UInt8](repeating: 0, count: 32)) == 0x8A91_36AA)
    #expect(CRC32C.checksum([UInt8](repeating: 0xFF, count: 32)) == 0x62A8_AB43)
    #expect(CRC32C.checksum((0..<32).map { UInt8($0) }) == 0x46DD_794E)
    #expect(CRC32C.checksum((0..<32).reversed().map { UInt8($0) }) == 0x113F_DB5C)
  }

  /// Slicing-by-8 equals the bitwise definition at every length and alignment, and checksums
  /// continue across pieces.
  @Test func crc32cSlicingMatchesBitwise() {
    var g = SplitMix64(seed: 11)
    let data = (0..<300).map { _ in UInt8(g.nextInt(below: 256)) }
    for start in 0..<9 {
      for end in stride(from: start, through: data.count, by: 7) {
        let piece = Array(data[start..<end])
        #expect(CRC32C.checksum(piece) == Self.bitwiseCRC32C(piece), "bytes \(start)..<\(end)")
      }
    }
    let whole = CRC32C.checksum(data)
    let first = data[..<123].withUnsafeBytes { CRC32C.checksum($0) }
    #expect(data[123...].withUnsafeBytes { CRC32C.checksum($0, continuing: first) } == whole)
  }

  @Test func maskIsTFRecordsAndInvertible() {
    // TensorBoard's masked_crc32c(b"123456789") (tensorboard 2.21.0's pure-Python CRC).
    #expect(CRC32C.masked(0xE306_9283) == 0xC78A_B0E5)
    for crc: UInt32 in [0, 1, 0xE306_9283, 0xFFFF_FFFF, 0xA282_EAD8] {
      #expect(CRC32C.unmasked(CRC32C.masked(crc)) == crc)
    }
  }

  // MARK: Framing and encoding

  /// One scalar event, byte for byte: the record TensorBoard's Python `RecordWriter` writes for
  /// `Event(wall_time=1.5, step=3, summary=Summary(value=[Value(tag="loss",
  /// simple_value=0.25)]))` serialized by the protobuf library (tensorboard 2.21.0,
  /// protobuf 7.36.2).
  @Test func recordFramingByteByByte() throws {
    let dir = temporaryDirectory("flip-tb")
    let writer = try TensorBoardWriter(directory: dir, hostName: "h")
    try writer.addScalar("loss", 0.25, step: 3, wallTime: 1.5)
    try writer.close()
    let file = Self.bytes(writer.path)
    let expected: [UInt8] = [
      0x1a, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // length 26
      0x12, 0x9b, 0xd8, 0x2d,  // masked CRC-32C of the length
      0x09, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xf8, 0x3f,  // wall_time 1.5 (field 1, fixed64)
      0x10, 0x03,  // step 3 (field 2, varint)
      0x2a, 0x0d,  // summary (field 5, 13 bytes)
      0x0a, 0x0b,  // value (field 1, 11 bytes)
      0x0a, 0x04, 0x6c, 0x6f, 0x73, 0x73,  // tag "loss"
      0x15, 0x00, 0x00, 0x80, 0x3e,  // simple_value 0.25 (field 2, fixed32)
      0xd0, 0x54, 0xb2, 0x55,  // masked CRC-32C of the data
    ]
    // The file-version event comes first: 12 + 24 + 4 bytes.
    #expect(file.count == 40 + expected.count)
    #expect(Array(file.suffix(expected.count)) == expected)
    #expect(Array(file[0..<8]) == [24, 0, 0, 0, 0, 0, 0, 0])
    #expect(file[12] == 0x09)  // wall_time, the time of creation
    #expect(Array(file[21..<36]) == [0x1a, 0x0d] + Array("brain.Event:2".utf8))
    let events = try TensorBoardWriter.events(inFile: writer.path)
    #expect(events.count == 2)
    #expect(events[0].fileVersion == "brain.Event:2" && events[0].step == 0 && events[0].values.isEmpty)
    #expect(abs(events[0].wallTime - Date().timeIntervalSince1970) < 60)
  }

  /// A histogram and a text event, byte for byte as the protobuf library serializes the same
  /// messages (tensorboard 2.21.0, protobuf 7.36.2): `HistogramProto(min=0, max=9, num=10,
  /// sum=45, sum_squares=285, bucket_limit=[1.8, 3.6, 5.4, 7.2, 9], bucket=[2]*5)` (min 0 is
  /// left out, as proto3 does), and a `DT_STRING` scalar tensor with `text` plugin metadata.
  @Test func histogramAndTextEventsAreCanonical() throws {
    let dir = temporaryDirectory("flip-tb")
    let writer = try TensorBoardWriter(directory: dir, hostName: "h")
    try writer.addHistogram("k", values: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], step: 2, bucketCount: 5, wallTime: 1.5)
    try writer.addText("note", "hi", step: 7, wallTime: 1.5)
    try writer.close()
    let file = Self.bytes(writer.path)
    let records = file.withUnsafeBytes { try? TFRecords.scan($0, path: writer.path).records } ?? []
    try #require(records.count == 3)
    let histogram: [UInt8] = [
      0x09, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xf8, 0x3f, 0x10, 0x02, 0x2a, 0x7f, 0x0a, 0x7d, 0x0a,
      0x01, 0x6b, 0x2a, 0x78, 0x11, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x22, 0x40, 0x19, 0x00, 0x00,
      0x00, 0x00, 0x00, 0x00, 0x24, 0x40, 0x21, 0x00, 0x00, 0x00, 0x00, 0x00, 0x80, 0x46, 0x40, 0x29,
      0x00, 0x00, 0x00, 0x00, 0x00, 0xd0, 0x71, 0x40, 0x32, 0x28, 0xcd, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc,
      0xfc, 0x3f, 0xcd, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0x0c, 0x40, 0x9a, 0x99, 0x99, 0x99, 0x99, 0x99,
      0x15, 0x40, 0xcd, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0x1c, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
      0x22, 0x40, 0x3a, 0x28, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00,
      0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00,
      0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x40,
    ]
    let text: [UInt8] = [
      0x09, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xf8, 0x3f, 0x10, 0x07, 0x2a, 0x1c, 0x0a, 0x1a, 0x0a,
      0x04, 0x6e, 0x6f, 0x74, 0x65, 0x42, 0x08, 0x08, 0x07, 0x12, 0x00, 0x42, 0x02, 0x68, 0x69, 0x4a,
      0x08, 0x0a, 0x06, 0x0a, 0x04, 0x74, 0x65, 0x78, 0x74,
    ]
    #expect(Array(file[records[1].data]) == histogram)
    #expect(Array(file[records[2].data]) == text)
  }

  @Test func fileNameIsTensorFlows() throws {
    let dir = temporaryDirectory("flip-tb")
    let a = try TensorBoardWriter(directory: dir + "/nested/run", hostName: "node-7.cluster")
    let name = (a.path as NSString).lastPathComponent
    let parts = name.split(separator: ".", maxSplits: 3)
    #expect(parts.count == 4 && parts[0] == "events" && parts[1] == "out" && parts[2] == "tfevents")
    let stamp = String(name.dropFirst("events.out.tfevents.".count).prefix(10))
    #expect(stamp.count == 10 && stamp.allSatisfy(\.isNumber))
    #expect(abs(Double(Int(stamp)!) - Date().timeIntervalSince1970) < 60)
    #expect(name.hasSuffix("." + stamp + ".node-7.cluster"))
    // A second writer in the same second (or after a clock step back) sorts after the first.
    let b = try TensorBoardWriter(directory: dir + "/nested/run", hostName: "a")
    #expect((b.path as NSString).lastPathComponent > name)
    #expect(try TensorBoardWriter.eventFiles(inDirectory: dir + "/nested/run") == [a.path, b.path])
    let defaultHost = try TensorBoardWriter(directory: dir + "/other")
    #expect(defaultHost.path.hasSuffix("." + TensorBoardWriter.currentHostName()))
  }

  // MARK: Reading back

  @Test func roundTripThroughTheReader() throws {
    let dir = temporaryDirectory("flip-tb")
    let writer = try TensorBoardWriter(directory: dir, hostName: "h")
    try writer.addScalar("loss", 0.5, step: 1, wallTime: 100)
    try writer.addScalars([("train/loss", 0.25), ("train/accuracy", 0.875), ("lr", 1e-3)], step: 2)
    let kernel: [Float] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    try writer.addHistogram("layers.1.quant_dense.kernel", values: kernel, step: 2, bucketCount: 5)
    try writer.addText("config", "model: **mlp**\nλ = 1", step: 0)
    try writer.addScalar("big_step", -1, step: 1 << 40)
    try writer.close()

    let events = try TensorBoardWriter.events(inFile: writer.path)
    #expect(events.count == 6)
    #expect(
      events[1] == .init(wallTime: 100, step: 1, fileVersion: nil, values: [.init(tag: "loss", content: .scalar(0.5))]))
    #expect(events[2].step == 2)
    #expect(
      events[2].values == [
        .init(tag: "train/loss", content: .scalar(0.25)), .init(tag: "train/accuracy", content: .scalar(0.875)),
        .init(tag: "lr", content: .scalar(Float(1e-3))),
      ])
    let histogram = TensorBoardHistogram(
      min: 0, max: 9, count: 10, sum: 45, sumOfSquares: 285, bucketLimits: [1.8, 3.6, 5.4, 7.2, 9],
      bucketCounts: [2, 2, 2, 2, 2])
    guard case .histogram(let h) = events[3].values.first?.content else {
      Issue.record("no histogram: \(events[3])")
      return
    }
    #expect(h.min == 0 && h.max == 9 && h.count == 10 && h.sum == 45 && h.sumOfSquares == 285)
    #expect(h.bucketCounts == histogram.bucketCounts)
    #expect(zip(h.bucketLimits, histogram.bucketLimits).allSatisfy { abs($0 - $1) < 1e-12 })
    #expect(events[4].values == [.init(tag: "config", content: .text(["model: **mlp**\nλ = 1"]))])
    #expect(events[5].step == 1 << 40)

    let steps = try TensorBoardWriter.steps(inFile: writer.path)
    #expect(
      steps.map(\.tag) == [
        "loss", "train/loss", "train/accuracy", "lr", "layers.1.quant_dense.kernel", "config", "big_step",
      ])
    #expect(steps.map(\.step) == [1, 2, 2, 2, 2, 0, 1 << 40])
  }

  @Test func histogramBuckets() {
    func histogram(_ v: [Float], _ buckets: Int = 30) -> TensorBoardHistogram {
      v.withUnsafeBufferPointer { TensorBoardHistogram(values: $0, bucketCount: buckets) }
    }
    // Non-finite values are left out.
    let h = histogram([-1, .nan, 1, .infinity, 0.5, -.infinity, 1], 4)
    #expect(h.count == 4 && h.min == -1 && h.max == 1 && h.sum == 1.5 && h.sumOfSquares == 3.25)
    #expect(h.bucketLimits == [-0.5, 0, 0.5, 1] && h.bucketCounts == [1, 0, 0, 3])
    let same = histogram([2, 2, 2])
    #expect(same.bucketLimits == [2] && same.bucketCounts == [3])
    let empty = histogram([.nan])
    #expect(empty.count == 0 && empty.bucketLimits.isEmpty && empty.bucketCounts.isEmpty)
    let many = histogram(randomValues(10_000, seed: 3))
    #expect(many.bucketCounts.count == 30 && many.bucketCounts.reduce(0, +) == 10_000)
    #expect(many.bucketLimits.last == many.max && zip(many.bucketLimits, many.bucketLimits.dropFirst()).allSatisfy(<))
  }

  /// A writer killed mid-record leaves a record cut short: the reader stops before it, at every
  /// possible cut; a changed byte is an error naming the file.
  @Test func truncatedAndCorruptFiles() throws {
    let dir = temporaryDirectory("flip-tb")
    let writer = try TensorBoardWriter(directory: dir, hostName: "h")
    for step in 1...3 { try writer.addScalars([("loss", 1 / Double(step)), ("accuracy", 0.5)], step: step) }
    try writer.close()
    let full = Self.bytes(writer.path)
    // The records' boundaries from the reader, then every cut inside the last record.
    let records = full.withUnsafeBytes { try? TFRecords.scan($0, path: writer.path).records } ?? []
    try #require(records.count == 4)
    let last = records[3].whole
    let cut = dir + "/events.out.tfevents.0000000001.cut"
    for length in last.lowerBound..<last.upperBound {
      _ = FileManager.default.createFile(atPath: cut, contents: Data(full[..<length]))
      let events = try TensorBoardWriter.events(inFile: cut)
      #expect(events.map(\.step) == [0, 1, 2], "cut at \(length) of \(full.count) bytes")
    }
    try FileManager.default.removeItem(atPath: cut)

    // A flipped bit in the data, then in a length.
    for position in [records[2].data.lowerBound + 3, records[2].whole.lowerBound] {
      var bad = full
      bad[position] ^= 0x10
      let path = dir + "/bad"
      _ = FileManager.default.createFile(atPath: path, contents: Data(bad))
      #expect {
        try TensorBoardWriter.events(inFile: path)
      } throws: { error in
        guard case TrainingError.corruptData(let p, let reason) = error else { return false }
        return p == path && reason.contains("byte \(records[2].whole.lowerBound)") && reason.contains("checksum")
      }
    }
    #expect(throws: TrainingError.self) { try TensorBoardWriter.events(inFile: dir + "/missing") }

    // truncate refuses a corrupt file and leaves it as it is.
    var bad = full
    bad[records[1].data.lowerBound] ^= 1
    _ = FileManager.default.createFile(atPath: writer.path, contents: Data(bad))
    #expect(throws: TrainingError.self) { try TensorBoardWriter.truncate(directory: dir, afterStep: 1) }
    #expect(Self.bytes(writer.path) == bad)
  }

  @Test func closedWriterAndUnwritableDirectory() throws {
    let dir = temporaryDirectory("flip-tb")
    let writer = try TensorBoardWriter(directory: dir, hostName: "h")
    try writer.close()
    try writer.close()  // twice is fine
    #expect(throws: TrainingError.unwritable(path: writer.path, reason: "the TensorBoard writer is closed")) {
      try writer.addScalar("loss", 1, step: 1)
    }
    let file = dir + "/plain-file"
    _ = FileManager.default.createFile(atPath: file, contents: Data())
    #expect {
      try TensorBoardWriter(directory: file + "/run", hostName: "h")
    } throws: { error in
      guard case TrainingError.unwritable(let p, _) = error else { return false }
      return p == file + "/run"
    }
  }

  /// Writes reach the file only on flush, when the buffer is full, or after the interval.
  @Test func buffering() throws {
    let dir = temporaryDirectory("flip-tb")
    let writer = try TensorBoardWriter(directory: dir, hostName: "h", maxBufferedBytes: 1000, flushInterval: 3600)
    let created = Self.bytes(writer.path).count
    try writer.addScalar("loss", 1, step: 1)
    #expect(Self.bytes(writer.path).count == created)
    try writer.flush()
    let flushed = Self.bytes(writer.path).count
    #expect(flushed > created)
    for step in 2...40 { try writer.addScalar("loss", 1, step: step) }  // > 1000 bytes
    #expect(Self.bytes(writer.path).count > flushed)
    try writer.flush(fsync: true)
    #expect(try TensorBoardWriter.steps(inFile: writer.path).map(\.step) == Array(1...40))
    let timed = try TensorBoardWriter(directory: dir, hostName: "t", flushInterval: 0)
    try timed.addScalar("loss", 1, step: 1)
    #expect(try TensorBoardWriter.steps(inFile: timed.path).count == 1)
  }

  // MARK: Resumed runs

  /// A run killed after its checkpoint at step 6 (steps 7…10 logged, the last record cut short)
  /// is truncated after step 6 and continues in a new file: every step once.
  @Test func truncateForAResumedRun() throws {
    let dir = temporaryDirectory("flip-tb")
    let first = try Self.writeKilledRun(dir)
    let before = try TensorBoardWriter.events(inFile: first)
    #expect(before.last?.step == 9)  // step 10 cut short
    #expect(try TensorBoardWriter.truncate(directory: dir, afterStep: 6) == 4)  // 7, 8, 9 and the histogram of 8
    #expect(try TensorBoardWriter.steps(inFile: first).map(\.step) == [0, 1, 1, 2, 2, 3, 3, 4, 4, 4, 5, 5, 6, 6])
    #expect(try TensorBoardWriter.truncate(directory: dir, afterStep: 6) == 0)  // nothing left to drop

    let second = try TensorBoardWriter(directory: dir, hostName: "h")
    #expect(second.path > first)
    for step in 7...12 { try second.addScalars([("loss", 2.0 * Double(step)), ("accuracy", 0.5)], step: step) }
    try second.close()
    var seen: [String: [Int]] = [:]
    for file in try TensorBoardWriter.eventFiles(inDirectory: dir) {
      for (tag, step) in try TensorBoardWriter.steps(inFile: file) { seen[tag, default: []].append(step) }
    }
    #expect(seen["loss"] == Array(1...12))
    #expect(seen["accuracy"] == Array(1...12))
    #expect(seen["config"] == [0])
    #expect(seen["kernel"] == [4])
  }

  /// Steps 1…10 of loss and accuracy, a config text at 0, kernel histograms at 4 and 8, the
  /// last record cut short as by a kill. Returns the file's path.
  static func writeKilledRun(_ dir: String) throws -> String {
    let writer = try TensorBoardWriter(directory: dir, hostName: "h")
    try writer.addText("config", "model: tiny", step: 0)
    for step in 1...10 {
      try writer.addScalars([("loss", 1 / Double(step)), ("accuracy", 0.1 * Double(step))], step: step)
      if step % 4 == 0 { try writer.addHistogram("kernel", values: randomValues(1000, seed: UInt64(step)), step: step) }
    }
    try writer.close()
    let bytes = Self.bytes(writer.path)
    _ = FileManager.default.createFile(atPath: writer.path, contents: Data(bytes.dropLast(5)))
    return writer.path
  }

  // MARK: TensorBoard's own reader

  @Test(.enabled(if: python != nil, pythonReason))
  func tensorBoardReadsTheFiles() throws {
    let dir = temporaryDirectory("flip-tb")
    _ = try Self.writeKilledRun(dir)
    try TensorBoardWriter.truncate(directory: dir, afterStep: 6)
    let writer = try TensorBoardWriter(directory: dir, hostName: "h")
    for step in 7...10 { try writer.addScalars([("loss", 2.0 * Double(step)), ("accuracy", 0.5)], step: step) }
    try writer.addHistogram("kernel", values: randomValues(1000, seed: 99), step: 8)
    try writer.addText("note", "resumed at **step 7**", step: 7)
    try writer.close()

    let result = try runProcess(Self.python!, [Self.root + "/scripts/tensorboard-read.py", dir])
    #expect(result.status == 0, "\(result.stderr)")
    print("tensorboard-read.py \(dir):\n\(result.stdout)")
    let json = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
    let scalars = try #require(json["scalars"] as? [String: [[Double]]])
    #expect(Set(scalars.keys) == ["loss", "accuracy"])
    let loss = scalars["loss"] ?? []
    #expect(loss.map { Int($0[0]) } == Array(1...10))
    let expectedLoss = (1...6).map { Float(1 / Double($0)) } + (7...10).map { Float(2.0 * Double($0)) }
    #expect(loss.map { Float($0[1]) } == expectedLoss)
    #expect(scalars["accuracy"]?.map { Int($0[0]) } == Array(1...10))

    let histograms = try #require(json["histograms"] as? [String: [String: Any]])
    let kernel = try #require(histograms["kernel"])
    #expect(kernel["count"] as? Int == 2)
    #expect(kernel["steps"] as? [Int] == [4, 8])
    #expect(kernel["num"] as? [Double] == [1000, 1000])
    #expect(kernel["buckets"] as? [Int] == [30, 30])

    let texts = try #require(json["texts"] as? [String: [[Any]]])
    #expect(texts["config"]?.first?[1] as? String == "model: tiny")
    #expect(texts["note"]?.first?[0] as? Int == 7)
    #expect(texts["note"]?.first?[1] as? String == "resumed at **step 7**")

    let plugins = try #require(json["plugins"] as? [String: [String]])
    #expect(plugins["scalars"] == ["accuracy", "loss"])
    #expect(plugins["histograms"] == ["kernel"])
    #expect(plugins["text"] == ["config", "note"])
  }
}
