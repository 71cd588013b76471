import Foundation

// TensorBoard event files, written and read without TensorFlow or a protobuf library.
//
// A file is a sequence of TFRecords, each
//
//     uint64 length (little-endian) | uint32 masked CRC-32C of those 8 bytes
//     length bytes of data          | uint32 masked CRC-32C of the data
//
// whose data is one serialized `tensorboard.Event` (tensorboard/compat/proto/event.proto). The
// field numbers used here, checked against the descriptors of the `tensorboard` package:
//
//     Event          wall_time 1 (double), step 2 (int64), file_version 3 (string), summary 5
//     Summary        value 1 (repeated Summary.Value)
//     Summary.Value  tag 1, simple_value 2 (float), histo 5 (HistogramProto), tensor 8
//                    (TensorProto), metadata 9 (SummaryMetadata)
//     HistogramProto min 1, max 2, num 3, sum 4, sum_squares 5 (doubles), bucket_limit 6 and
//                    bucket 7 (packed repeated doubles)
//     SummaryMetadata plugin_data 1 (PluginData: plugin_name 1, content 2)
//     TensorProto    dtype 1 (enum; DT_STRING = 7), tensor_shape 2 (TensorShapeProto: dim 2),
//                    string_val 8 (repeated bytes)

/// Writes scalars, histograms and text to a TensorBoard event file,
/// `<directory>/events.out.tfevents.<unix seconds, 10 digits>.<host name>` — the name
/// TensorFlow's C++ `EventsWriter` gives its files (`tensorboard --logdir` reads every file whose
/// name contains `tfevents`, in name order).
///
/// Events are encoded into a memory buffer, which goes to the file (one `write`) when it holds
/// `maxBufferedBytes`, when `flushInterval` seconds have passed since the last write, on
/// `flush()` and on `close()`; nothing is synced to disk unless `flush(fsync: true)` asks. A
/// run killed between flushes loses the buffered events and may leave a last record cut short;
/// readers (TensorBoard's and `events(inFile:)`) stop cleanly before it.
///
/// Resuming a run: `truncate(directory:afterStep:)` drops the events after the checkpoint's step
/// from the directory's files, then a new writer starts a new file (named to sort after the
/// existing ones) for the steps that follow, so no step appears twice.
///
/// Not thread-safe: one thread (in a data-parallel job, rank 0) writes.
public final class TensorBoardWriter {
  /// The `file_version` of the first event of every file.
  public static let fileVersion = "brain.Event:2"

  /// The event file being written.
  public let path: String
  /// The buffer size (bytes) that triggers a write to the file.
  public let maxBufferedBytes: Int
  /// Seconds after which an `add…` call writes the buffer to the file even if it is small.
  public let flushInterval: Double

  private var descriptor: Int32
  private var buffer: [UInt8] = []
  /// Bytes of the file written completely (a failed write is cut back to this length).
  private var fileLength = 0
  private var lastWrite: Double
  // Scratch encoders, reused so that adding a scalar allocates nothing.
  private var valueScratch = ProtobufEncoder()
  private var summaryScratch = ProtobufEncoder()
  private var eventScratch = ProtobufEncoder()

  /// Creates `directory` (and its parents) if needed and a new event file in it, starting with
  /// the `file_version` event.
  ///
  /// The file's time stamp is the current time, or one second after the newest event file
  /// already in the directory if that one is not older (a resumed run on a host whose clock is
  /// behind, or two writers in one second): TensorBoard reads a directory's files in name
  /// order, so a later file must sort after the earlier ones.
  ///
  /// - Parameters:
  ///   - directory: the run's TensorBoard directory (`tensorboard --logdir` its parent, or it).
  ///   - hostName: the last part of the file name; the machine's host name by default.
  ///   - maxBufferedBytes: buffer size that triggers a write (default 1 MiB).
  ///   - flushInterval: seconds after which an `add…` call writes the buffer (default 10).
  public init(
    directory: String, hostName: String? = nil, maxBufferedBytes: Int = 1 << 20, flushInterval: Double = 10
  ) throws(TrainingError) {
    do {
      try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    } catch {
      throw .unwritable(path: directory, reason: "cannot create the directory: \(error.localizedDescription)")
    }
    let now = Date().timeIntervalSince1970
    let existing = try Self.eventFiles(inDirectory: directory).compactMap { Self.timeStamp(ofFileName: $0) }
    var seconds = Int(now)
    if let newest = existing.max(), newest >= seconds { seconds = newest + 1 }
    let host = (hostName ?? Self.currentHostName()).map { $0 == "/" || $0 == "\0" ? "_" : $0 }
    let name = "events.out.tfevents." + String(format: "%010lld", Int64(seconds)) + "." + String(host)
    path = (directory as NSString).appendingPathComponent(name)
    descriptor = open(path, O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0o644)
    guard descriptor >= 0 else { throw .unwritable(path: path, reason: String(cString: strerror(errno))) }
    self.maxBufferedBytes = maxBufferedBytes
    self.flushInterval = flushInterval
    lastWrite = now
    buffer.reserveCapacity(min(maxBufferedBytes, 1 << 20) + 4096)
    eventScratch.double(1, now)
    eventScratch.string(3, Self.fileVersion)
    appendRecord(eventScratch.bytes)
    try flush()
  }

  deinit {
    if descriptor >= 0 { try? close() }
  }

  // MARK: Adding summaries

  /// Adds one scalar (stored as TensorBoard's `simple_value`, a 32-bit float).
  ///
  /// - Parameters:
  ///   - wallTime: seconds since 1970; now by default.
  public func addScalar(_ tag: String, _ value: Double, step: Int, wallTime: Double? = nil) throws(TrainingError) {
    try addScalars([(tag, value)], step: step, wallTime: wallTime)
  }

  /// Adds several scalars of one step as a single event (cheaper than one event each).
  public func addScalars(_ values: [(String, Double)], step: Int, wallTime: Double? = nil) throws(TrainingError) {
    summaryScratch.reset()
    for (tag, value) in values {
      valueScratch.reset()
      valueScratch.string(1, tag)
      valueScratch.float(2, Float(value))
      summaryScratch.message(1, valueScratch)
    }
    try addSummary(step: step, wallTime: wallTime)
  }

  /// Adds a histogram of `values` with `bucketCount` equal-width buckets between their minimum
  /// and maximum (TensorFlow 2's `tf.summary.histogram` default is 30 such buckets; TensorFlow
  /// 1's exponential buckets are not used). NaN and infinite values are left out: `count` is
  /// the number of finite ones.
  public func addHistogram(
    _ tag: String, values: UnsafeBufferPointer<Float>, step: Int, bucketCount: Int = 30, wallTime: Double? = nil
  ) throws(TrainingError) {
    let histogram = TensorBoardHistogram(values: values, bucketCount: bucketCount)
    var histo = ProtobufEncoder()
    histo.double(1, histogram.min)
    histo.double(2, histogram.max)
    histo.double(3, histogram.count)
    histo.double(4, histogram.sum)
    histo.double(5, histogram.sumOfSquares)
    histo.packedDoubles(6, histogram.bucketLimits)
    histo.packedDoubles(7, histogram.bucketCounts)
    valueScratch.reset()
    valueScratch.string(1, tag)
    valueScratch.message(5, histo)
    summaryScratch.reset()
    summaryScratch.message(1, valueScratch)
    try addSummary(step: step, wallTime: wallTime)
  }

  /// `addHistogram` of an array.
  public func addHistogram(
    _ tag: String, values: [Float], step: Int, bucketCount: Int = 30, wallTime: Double? = nil
  ) throws(TrainingError) {
    try values.withUnsafeBufferPointer { (v) throws(TrainingError) in
      try addHistogram(tag, values: v, step: step, bucketCount: bucketCount, wallTime: wallTime)
    }
  }

  /// Adds a text (Markdown, as TensorBoard's text plugin shows it): a scalar string tensor
  /// marked with the `text` plugin, as `tf.summary.text` writes it.
  public func addText(_ tag: String, _ text: String, step: Int, wallTime: Double? = nil) throws(TrainingError) {
    let shape = ProtobufEncoder()  // no dims: a scalar
    var tensor = ProtobufEncoder()
    tensor.varintField(1, 7)  // DT_STRING
    tensor.message(2, shape)
    tensor.string(8, text)
    var pluginData = ProtobufEncoder()
    pluginData.string(1, "text")  // content: TextPluginData(version: 0), empty when serialized
    var metadata = ProtobufEncoder()
    metadata.message(1, pluginData)
    valueScratch.reset()
    valueScratch.string(1, tag)
    valueScratch.message(8, tensor)
    valueScratch.message(9, metadata)
    summaryScratch.reset()
    summaryScratch.message(1, valueScratch)
    try addSummary(step: step, wallTime: wallTime)
  }

  // MARK: Writing

  /// Writes the buffered events to the file; with `fsync`, also waits until they are on disk.
  public func flush(fsync sync: Bool = false) throws(TrainingError) {
    guard descriptor >= 0 else { throw .unwritable(path: path, reason: "the TensorBoard writer is closed") }
    if !buffer.isEmpty {
      let failure: String? = buffer.withUnsafeBytes { raw in
        var at = 0
        while at < raw.count {
          let n = write(descriptor, raw.baseAddress! + at, raw.count - at)
          if n < 0 && errno == EINTR { continue }
          guard n > 0 else { return n == 0 ? "write returned 0" : String(cString: strerror(errno)) }
          at += n
        }
        return nil
      }
      if let failure {
        // Cut off a partly written record, so later records stay readable, and drop the buffer.
        let lost = buffer.count
        buffer.removeAll(keepingCapacity: true)
        _ = ftruncate(descriptor, off_t(fileLength))
        throw .unwritable(path: path, reason: "\(failure) (\(lost) bytes of TensorBoard events lost)")
      }
      fileLength += buffer.count
      buffer.removeAll(keepingCapacity: true)
    }
    lastWrite = Date().timeIntervalSince1970
    if sync, fsync(descriptor) != 0 {
      throw .unwritable(path: path, reason: "fsync failed: \(String(cString: strerror(errno)))")
    }
  }

  /// Writes the buffered events and closes the file. Further calls throw.
  public func close() throws(TrainingError) {
    guard descriptor >= 0 else { return }
    defer {
      _ = Foundation.close(descriptor)
      descriptor = -1
    }
    try flush()
  }

  /// Frames `summaryScratch` as the summary of an event and buffers it; writes the buffer when
  /// it is full or old.
  private func addSummary(step: Int, wallTime: Double?) throws(TrainingError) {
    guard descriptor >= 0 else { throw .unwritable(path: path, reason: "the TensorBoard writer is closed") }
    let now = Date().timeIntervalSince1970
    eventScratch.reset()
    eventScratch.double(1, wallTime ?? now)
    if step != 0 { eventScratch.varintField(2, UInt64(bitPattern: Int64(step))) }
    eventScratch.message(5, summaryScratch)
    appendRecord(eventScratch.bytes)
    if buffer.count >= maxBufferedBytes || now - lastWrite >= flushInterval { try flush() }
  }

  /// Appends one TFRecord holding `data` to the buffer.
  private func appendRecord(_ data: [UInt8]) {
    withUnsafeBytes(of: UInt64(data.count).littleEndian) { length in
      buffer.append(contentsOf: length)
      appendLittleEndian(CRC32C.masked(CRC32C.checksum(length)))
    }
    buffer.append(contentsOf: data)
    appendLittleEndian(CRC32C.masked(data.withUnsafeBytes { CRC32C.checksum($0) }))
  }

  private func appendLittleEndian(_ v: UInt32) {
    withUnsafeBytes(of: v.littleEndian) { buffer.append(contentsOf: $0) }
  }

  /// The machine's host name (`gethostname`), as TensorFlow names its event files.
  static func currentHostName() -> String {
    var name = [CChar](repeating: 0, count: 256)
    guard gethostname(&name, name.count - 1) == 0 else { return "localhost" }
    let host = String(cString: name)
    return host.isEmpty ? "localhost" : host
  }

  /// The `<unix seconds>` of `events.out.tfevents.<unix seconds>.<host>` (a path or a name).
  static func timeStamp(ofFileName name: String) -> Int? {
    let base = (name as NSString).lastPathComponent
    guard let range = base.range(of: "tfevents.") else { return nil }
    return Int(base[range.upperBound...].prefix { $0.isASCII && $0.isNumber })
  }
}

// MARK: - Reading

/// One event of an event file, as `TensorBoardWriter.events(inFile:)` decodes it.
public struct TensorBoardEvent: Equatable, Sendable {
  /// Seconds since 1970.
  public var wallTime: Double
  public var step: Int
  /// `brain.Event:2` in the first event of a file; nil in the others.
  public var fileVersion: String?
  /// The summary's values (none for an event without a summary).
  public var values: [Value]

  /// One tagged value of a summary.
  public struct Value: Equatable, Sendable {
    public var tag: String
    public var content: Content
  }

  /// What a value holds: the kinds `TensorBoardWriter` writes, or `other`.
  public enum Content: Equatable, Sendable {
    case scalar(Float)
    case histogram(TensorBoardHistogram)
    /// The strings of a `DT_STRING` tensor (a text summary: one string).
    case text([String])
    /// Anything else (images, audio, other tensors).
    case other
  }
}

/// A histogram in TensorBoard's `HistogramProto` form. Bucket `i` counts the values in
/// `(bucketLimits[i - 1], bucketLimits[i]]` (the first from `min`); counts are doubles, as in
/// the proto.
public struct TensorBoardHistogram: Equatable, Sendable {
  public var min: Double
  public var max: Double
  /// The number of values (`num` in the proto).
  public var count: Double
  public var sum: Double
  public var sumOfSquares: Double
  public var bucketLimits: [Double]
  public var bucketCounts: [Double]

  public init(
    min: Double, max: Double, count: Double, sum: Double, sumOfSquares: Double, bucketLimits: [Double],
    bucketCounts: [Double]
  ) {
    (self.min, self.max, self.count, self.sum, self.sumOfSquares) = (min, max, count, sum, sumOfSquares)
    (self.bucketLimits, self.bucketCounts) = (bucketLimits, bucketCounts)
  }

  /// The histogram of the finite elements of `values` in `bucketCount` (at least 1) equal-width
  /// buckets from their minimum to their maximum; one bucket when they are all equal, none when
  /// there are no finite values. Sums are accumulated in double precision.
  public init(values: UnsafeBufferPointer<Float>, bucketCount: Int = 30) {
    var lo = Float.infinity
    var hi = -Float.infinity
    var n = 0
    var sum = 0.0
    var squares = 0.0
    for x in values where x.isFinite {
      lo = Swift.min(lo, x)
      hi = Swift.max(hi, x)
      let d = Double(x)
      sum += d
      squares += d * d
      n += 1
    }
    guard n > 0 else {
      self.init(min: 0, max: 0, count: 0, sum: 0, sumOfSquares: 0, bucketLimits: [], bucketCounts: [])
      return
    }
    let (low, high) = (Double(lo), Double(hi))
    let buckets = high > low ? Swift.max(1, bucketCount) : 1
    var counts = [Int](repeating: 0, count: buckets)
    if buckets == 1 {
      counts[0] = n
    } else {
      let scale = Double(buckets) / (high - low)
      counts.withUnsafeMutableBufferPointer { c in
        for x in values where x.isFinite {
          let i = Int((Double(x) - low) * scale)
          c[i < buckets ? i : buckets - 1] += 1
        }
      }
    }
    let width = (high - low) / Double(buckets)
    var limits = (1..<buckets).map { low + Double($0) * width }
    limits.append(high)
    self.init(
      min: low, max: high, count: Double(n), sum: sum, sumOfSquares: squares, bucketLimits: limits,
      bucketCounts: counts.map(Double.init))
  }
}

extension TensorBoardWriter {
  /// The event files of `directory` (names containing `tfevents`, as TensorBoard selects
  /// them), as paths in name order — the order TensorBoard reads them. None if the directory
  /// does not exist.
  public static func eventFiles(inDirectory directory: String) throws(TrainingError) -> [String] {
    var isDirectory: ObjCBool = false
    guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory) else { return [] }
    guard isDirectory.boolValue else { throw .unreadable(path: directory, reason: "not a directory") }
    let names: [String]
    do { names = try FileManager.default.contentsOfDirectory(atPath: directory) } catch {
      throw .unreadable(path: directory, reason: error.localizedDescription)
    }
    return names.filter { $0.contains("tfevents") && !$0.contains(".tmp-") }.sorted()
      .map { (directory as NSString).appendingPathComponent($0) }
  }

  /// The events of the file at `path`, checking both CRCs of every record. A last record cut
  /// short (a writer killed mid-write) ends the list without an error; a checksum mismatch or
  /// an undecodable event throws, naming the file and the record's offset.
  public static func events(inFile path: String) throws(TrainingError) -> [TensorBoardEvent] {
    try events(inFile: path, detail: .everything)
  }

  /// `events(inFile:)`, decoding only what `detail` asks for.
  static func events(inFile path: String, detail: ProtobufDecoder.Detail) throws(TrainingError) -> [TensorBoardEvent] {
    try withFileBytes(path) { (raw) throws(TrainingError) in
      try TFRecords.scan(raw, path: path).records.map { (r) throws(TrainingError) in
        try decodeEvent(
          UnsafeRawBufferPointer(rebasing: raw[r.data]), path: path, offset: r.whole.lowerBound, detail: detail)
      }
    }
  }

  /// The `(tag, step)` of every summary value in the file at `path`, in file order — what a
  /// resumed run checks so that it does not write a step twice. Validates as `events(inFile:)`.
  public static func steps(inFile path: String) throws(TrainingError) -> [(tag: String, step: Int)] {
    try events(inFile: path, detail: .tags).flatMap { e in e.values.map { (tag: $0.tag, step: e.step) } }
  }

  /// Drops, from every event file of `directory`, the events of steps after `step` (written by
  /// a run killed after its last checkpoint) and any last record cut short, so that a resumed
  /// run's events (in a new file) follow on without duplicates. Each changed file is rewritten
  /// atomically, its kept records byte for byte; unchanged files are not touched. Call it
  /// before creating the resumed run's writer. Returns the number of events dropped.
  ///
  /// TensorBoard itself would not remove the stale steps: its event accumulator purges only at
  /// a `SessionLog.START` event in files of version 2, and the data server only replaces the
  /// steps of a series that is written again.
  @discardableResult
  public static func truncate(directory: String, afterStep step: Int) throws(TrainingError) -> Int {
    var dropped = 0
    for path in try eventFiles(inDirectory: directory) {
      let data = try readFile(path)
      let pieces: [Range<Int>]? = try withBytes(of: data) { (raw) throws(TrainingError) in
        let scan = try TFRecords.scan(raw, path: path)
        var kept: [Range<Int>] = []
        var droppedHere = 0
        for r in scan.records {
          let event = try decodeEvent(
            UnsafeRawBufferPointer(rebasing: raw[r.data]), path: path, offset: r.whole.lowerBound, detail: .step)
          if event.step > step && event.fileVersion == nil {
            droppedHere += 1
          } else if let last = kept.last, last.upperBound == r.whole.lowerBound {
            kept[kept.count - 1] = last.lowerBound..<r.whole.upperBound
          } else {
            kept.append(r.whole)
          }
        }
        dropped += droppedHere
        return droppedHere == 0 && scan.incompleteTail == 0 ? nil : kept
      }
      guard let pieces else { continue }
      do {
        try data.withUnsafeBytes { raw in
          try ModelFile.writeAtomically(pieces: pieces.map { UnsafeRawBufferPointer(rebasing: raw[$0]) }, to: path)
        }
      } catch let error as TrainingError {
        throw error
      } catch {
        throw .unwritable(path: path, reason: error.localizedDescription)
      }
    }
    return dropped
  }

  /// `body` of the bytes of the file at `path`.
  private static func withFileBytes<R>(
    _ path: String, _ body: (UnsafeRawBufferPointer) throws(TrainingError) -> R
  ) throws(TrainingError) -> R {
    try withBytes(of: try readFile(path), body)
  }

  /// `data.withUnsafeBytes(body)`, keeping the error's type.
  private static func withBytes<R>(
    of data: Data, _ body: (UnsafeRawBufferPointer) throws(TrainingError) -> R
  ) throws(TrainingError) -> R {
    let result: Result<R, TrainingError> = data.withUnsafeBytes { raw in
      do throws(TrainingError) { return .success(try body(raw)) } catch { return .failure(error) }
    }
    return try result.get()
  }

  private static func readFile(_ path: String) throws(TrainingError) -> Data {
    do {
      return try Data(contentsOf: URL(fileURLWithPath: path), options: .mappedIfSafe)
    } catch {
      if !FileManager.default.fileExists(atPath: path) {
        throw .fileNotFound(path: path, hint: "No TensorBoard event file there.")
      }
      throw .unreadable(path: path, reason: error.localizedDescription)
    }
  }

  /// Decodes one serialized `Event`.
  static func decodeEvent(
    _ bytes: UnsafeRawBufferPointer, path: String, offset: Int, detail: ProtobufDecoder.Detail = .everything
  ) throws(TrainingError) -> TensorBoardEvent {
    do {
      return try ProtobufDecoder.event(bytes, detail: detail)
    } catch {
      throw .corruptData(path: path, reason: "the event in the record at byte \(offset): \(error.reason)")
    }
  }
}

/// TFRecord framing.
enum TFRecords {
  /// A record's bytes in the file, and those of its data.
  struct Record {
    var whole: Range<Int>
    var data: Range<Int>
  }

  /// The complete records of `bytes`, checking both CRCs of each, and the length of an
  /// incomplete last record (0 if none). Throws on a checksum mismatch.
  static func scan(_ bytes: UnsafeRawBufferPointer, path: String) throws(TrainingError) -> (
    records: [Record], incompleteTail: Int
  ) {
    var records: [Record] = []
    var at = 0
    let n = bytes.count
    while at < n {
      guard n - at >= 12 else { return (records, n - at) }
      let lengthBytes = UnsafeRawBufferPointer(rebasing: bytes[at..<at + 8])
      let length = UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: at, as: UInt64.self))
      let lengthCRC = UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: at + 8, as: UInt32.self))
      guard CRC32C.masked(CRC32C.checksum(lengthBytes)) == lengthCRC else {
        let reason = "the record at byte \(at): the checksum of its length does not match (not an event file?)"
        throw .corruptData(path: path, reason: reason)
      }
      guard n - at >= 16, length <= UInt64(n - at - 16) else { return (records, n - at) }
      let start = at + 12
      let end = start + Int(length)
      let dataCRC = UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: end, as: UInt32.self))
      guard CRC32C.masked(CRC32C.checksum(UnsafeRawBufferPointer(rebasing: bytes[start..<end]))) == dataCRC else {
        throw .corruptData(path: path, reason: "the record at byte \(at): the checksum of its data does not match")
      }
      records.append(Record(whole: at..<end + 4, data: start..<end))
      at = end + 4
    }
    return (records, 0)
  }
}

// MARK: - Protocol buffers

/// Appends protocol-buffer fields (wire format) to a byte array.
struct ProtobufEncoder {
  var bytes: [UInt8] = []

  mutating func reset() { bytes.removeAll(keepingCapacity: true) }

  mutating func varint(_ value: UInt64) {
    var v = value
    while v >= 0x80 {
      bytes.append(UInt8(truncatingIfNeeded: v) | 0x80)
      v >>= 7
    }
    bytes.append(UInt8(v))
  }

  /// The key of field `field` with wire type `wireType` (0 varint, 1 fixed64, 2 length-delimited, 5 fixed32).
  mutating func key(_ field: Int, _ wireType: Int) { varint(UInt64(field << 3 | wireType)) }

  mutating func varintField(_ field: Int, _ value: UInt64) {
    key(field, 0)
    varint(value)
  }

  /// A double field; a zero (+0.0) is left out, as proto3 encoders leave out the default of a
  /// field outside a oneof (all the doubles written here are), so the bytes are canonical.
  mutating func double(_ field: Int, _ value: Double) {
    guard value.bitPattern != 0 else { return }
    key(field, 1)
    withUnsafeBytes(of: value.bitPattern.littleEndian) { bytes.append(contentsOf: $0) }
  }

  mutating func float(_ field: Int, _ value: Float) {
    key(field, 5)
    withUnsafeBytes(of: value.bitPattern.littleEndian) { bytes.append(contentsOf: $0) }
  }

  mutating func string(_ field: Int, _ value: String) {
    key(field, 2)
    var value = value
    value.withUTF8 { u in
      varint(UInt64(u.count))
      bytes.append(contentsOf: u)
    }
  }

  mutating func message(_ field: Int, _ message: ProtobufEncoder) {
    key(field, 2)
    varint(UInt64(message.bytes.count))
    bytes.append(contentsOf: message.bytes)
  }

  /// A packed repeated double field (omitted when empty, as encoders do).
  mutating func packedDoubles(_ field: Int, _ values: [Double]) {
    guard !values.isEmpty else { return }
    key(field, 2)
    varint(UInt64(values.count * 8))
    for v in values { withUnsafeBytes(of: v.bitPattern.littleEndian) { bytes.append(contentsOf: $0) } }
  }
}

/// Reads protocol-buffer fields from bytes, never past their end.
struct ProtobufDecoder {
  struct Malformed: Error {
    var reason: String
  }

  let bytes: UnsafeRawBufferPointer
  var at = 0

  init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

  /// The next field's number and wire type, or nil at the end.
  mutating func nextKey() throws(Malformed) -> (field: Int, wireType: Int)? {
    guard at < bytes.count else { return nil }
    let key = try varint()
    guard key >> 3 > 0, key >> 3 <= 0x1FFF_FFFF else { throw Malformed(reason: "field number \(key >> 3)") }
    return (Int(key >> 3), Int(key & 7))
  }

  mutating func varint() throws(Malformed) -> UInt64 {
    var result: UInt64 = 0
    var shift: UInt64 = 0
    while at < bytes.count, shift < 64 {
      let b = bytes[at]
      at += 1
      result |= UInt64(b & 0x7F) << shift
      if b < 0x80 { return result }
      shift += 7
    }
    throw Malformed(reason: "a varint runs past the end")
  }

  mutating func fixed64() throws(Malformed) -> UInt64 {
    guard bytes.count - at >= 8 else { throw Malformed(reason: "a 64-bit field runs past the end") }
    defer { at += 8 }
    return UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: at, as: UInt64.self))
  }

  mutating func fixed32() throws(Malformed) -> UInt32 {
    guard bytes.count - at >= 4 else { throw Malformed(reason: "a 32-bit field runs past the end") }
    defer { at += 4 }
    return UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: at, as: UInt32.self))
  }

  mutating func lengthDelimited() throws(Malformed) -> UnsafeRawBufferPointer {
    let length = try varint()
    guard length <= UInt64(bytes.count - at) else { throw Malformed(reason: "a field's length runs past the end") }
    defer { at += Int(length) }
    return UnsafeRawBufferPointer(rebasing: bytes[at..<at + Int(length)])
  }

  mutating func skip(_ wireType: Int) throws(Malformed) {
    switch wireType {
    case 0: _ = try varint()
    case 1: _ = try fixed64()
    case 2: _ = try lengthDelimited()
    case 5: _ = try fixed32()
    default: throw Malformed(reason: "wire type \(wireType)")
    }
  }

  /// `wireType` must be `expected` for the field to be read as the schema says.
  static func check(_ wireType: Int, _ expected: Int, _ what: String) throws(Malformed) {
    guard wireType == expected else { throw Malformed(reason: "\(what) has wire type \(wireType), not \(expected)") }
  }

  static func string(_ bytes: UnsafeRawBufferPointer) -> String { String(decoding: bytes, as: UTF8.self) }

  // The messages.

  /// How much of an event to decode.
  enum Detail {
    /// Everything `TensorBoardEvent` holds.
    case everything
    /// The wall time, step, file version and the values' tags (contents are `.other`).
    case tags
    /// The wall time, step and file version (no values).
    case step
  }

  static func event(_ bytes: UnsafeRawBufferPointer, detail: Detail = .everything) throws(Malformed)
    -> TensorBoardEvent
  {
    var d = ProtobufDecoder(bytes)
    var event = TensorBoardEvent(wallTime: 0, step: 0, fileVersion: nil, values: [])
    while let (field, wire) = try d.nextKey() {
      switch field {
      case 1:
        try check(wire, 1, "Event.wall_time")
        event.wallTime = Double(bitPattern: try d.fixed64())
      case 2:
        try check(wire, 0, "Event.step")
        event.step = Int(Int64(bitPattern: try d.varint()))
      case 3:
        try check(wire, 2, "Event.file_version")
        event.fileVersion = string(try d.lengthDelimited())
      case 5 where detail != .step:
        try check(wire, 2, "Event.summary")
        var s = ProtobufDecoder(try d.lengthDelimited())
        while let (f, w) = try s.nextKey() {
          if f == 1 {
            try check(w, 2, "Summary.value")
            event.values.append(try value(try s.lengthDelimited(), tagOnly: detail == .tags))
          } else {
            try s.skip(w)
          }
        }
      default: try d.skip(wire)
      }
    }
    return event
  }

  static func value(_ bytes: UnsafeRawBufferPointer, tagOnly: Bool = false) throws(Malformed)
    -> TensorBoardEvent.Value
  {
    var d = ProtobufDecoder(bytes)
    var result = TensorBoardEvent.Value(tag: "", content: .other)
    while let (field, wire) = try d.nextKey() {
      if tagOnly && field != 1 {
        try d.skip(wire)
        continue
      }
      switch field {
      case 1:
        try check(wire, 2, "Summary.Value.tag")
        result.tag = string(try d.lengthDelimited())
      case 2:
        try check(wire, 5, "Summary.Value.simple_value")
        result.content = .scalar(Float(bitPattern: try d.fixed32()))
      case 5:
        try check(wire, 2, "Summary.Value.histo")
        result.content = .histogram(try histogram(try d.lengthDelimited()))
      case 8:
        try check(wire, 2, "Summary.Value.tensor")
        if let strings = try stringTensor(try d.lengthDelimited()) { result.content = .text(strings) }
      default: try d.skip(wire)
      }
    }
    return result
  }

  static func histogram(_ bytes: UnsafeRawBufferPointer) throws(Malformed) -> TensorBoardHistogram {
    var d = ProtobufDecoder(bytes)
    var h = TensorBoardHistogram(
      min: 0, max: 0, count: 0, sum: 0, sumOfSquares: 0, bucketLimits: [], bucketCounts: [])
    func doubles(_ wire: Int, _ d: inout ProtobufDecoder, into list: inout [Double]) throws(Malformed) {
      if wire == 1 {  // one unpacked element
        list.append(Double(bitPattern: try d.fixed64()))
        return
      }
      try check(wire, 2, "a packed double field")
      let packed = try d.lengthDelimited()
      guard packed.count % 8 == 0 else { throw Malformed(reason: "packed doubles of \(packed.count) bytes") }
      for i in stride(from: 0, to: packed.count, by: 8) {
        list.append(Double(bitPattern: UInt64(littleEndian: packed.loadUnaligned(fromByteOffset: i, as: UInt64.self))))
      }
    }
    while let (field, wire) = try d.nextKey() {
      switch field {
      case 1...5:
        try check(wire, 1, "HistogramProto field \(field)")
        let v = Double(bitPattern: try d.fixed64())
        switch field {
        case 1: h.min = v
        case 2: h.max = v
        case 3: h.count = v
        case 4: h.sum = v
        default: h.sumOfSquares = v
        }
      case 6: try doubles(wire, &d, into: &h.bucketLimits)
      case 7: try doubles(wire, &d, into: &h.bucketCounts)
      default: try d.skip(wire)
      }
    }
    return h
  }

  /// The `string_val`s of a `DT_STRING` TensorProto; nil for another dtype.
  static func stringTensor(_ bytes: UnsafeRawBufferPointer) throws(Malformed) -> [String]? {
    var d = ProtobufDecoder(bytes)
    var dtype: UInt64 = 0
    var strings: [String] = []
    while let (field, wire) = try d.nextKey() {
      switch field {
      case 1:
        try check(wire, 0, "TensorProto.dtype")
        dtype = try d.varint()
      case 8:
        try check(wire, 2, "TensorProto.string_val")
        strings.append(string(try d.lengthDelimited()))
      default: try d.skip(wire)
      }
    }
    return dtype == 7 ? strings : nil
  }
}
