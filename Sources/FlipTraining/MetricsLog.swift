import Foundation

/// `metrics.jsonl`: one JSON object per line, each with a `"kind"` (`"epoch"` or `"step"`).
/// Only rank 0 writes it. Lines are flushed as they are written, so a killed run keeps them.
public final class MetricsLog {
  public let path: String
  private let handle: FileHandle

  public init(path: String, append: Bool = false) throws {
    if !append || !FileManager.default.fileExists(atPath: path) {
      guard FileManager.default.createFile(atPath: path, contents: nil) else {
        throw TrainingError.unwritable(path: path, reason: String(cString: strerror(errno)))
      }
    }
    do {
      handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
      try handle.seekToEnd()
    } catch {
      throw TrainingError.unwritable(path: path, reason: error.localizedDescription)
    }
    self.path = path
  }

  deinit { try? handle.close() }

  /// Appends one row. Values must be JSON-representable (numbers, strings, maps of them).
  public func write(_ row: [String: Any]) throws {
    let cleaned = row.mapValues(Self.finite)
    var data = try JSONSerialization.data(withJSONObject: cleaned, options: [.sortedKeys])
    data.append(0x0A)
    do { try handle.write(contentsOf: data) } catch {
      throw TrainingError.unwritable(path: path, reason: error.localizedDescription)
    }
  }

  /// JSON has no NaN or infinity: such values are written as null.
  static func finite(_ v: Any) -> Any {
    if let d = v as? Double, !d.isFinite { return NSNull() }
    if let m = v as? [String: Any] { return m.mapValues(finite) }
    return v
  }
}

extension MetricsLog {
  /// Drops the rows of steps after `step` (written by a run that was killed after its last
  /// checkpoint) so a resumed run's rows follow on without duplicates.
  public static func truncate(path: String, afterStep step: Int) throws {
    guard let data = FileManager.default.contents(atPath: path) else { return }
    var kept = Data()
    for line in data.split(separator: 0x0A, omittingEmptySubsequences: true) {
      let row = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any]
      if let s = row?["step"] as? Int, s > step { continue }
      guard row != nil else { continue }  // a line cut short by the kill
      kept.append(Data(line))
      kept.append(0x0A)
    }
    try ModelFile.writeAtomically(kept, to: path)
  }
}
