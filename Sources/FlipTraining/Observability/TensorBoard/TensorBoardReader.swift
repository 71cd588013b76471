import Foundation

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
