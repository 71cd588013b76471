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
