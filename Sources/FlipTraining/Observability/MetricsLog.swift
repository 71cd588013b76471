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

  /// Appends one row as a line of JSON with sorted keys.
  public func write<Row: Encodable>(_ row: Row) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    var data = try encoder.encode(row)
    data.append(0x0A)
    do { try handle.write(contentsOf: data) } catch {
      throw TrainingError.unwritable(path: path, reason: error.localizedDescription)
    }
  }
}

extension MetricsLog {
  /// Drops the rows of steps after `step` (written by a run that was killed after its last
  /// checkpoint) so a resumed run's rows follow on without duplicates.
  public static func truncate(path: String, afterStep step: Int) throws {
    guard let data = FileManager.default.contents(atPath: path) else { return }
    var kept = Data()
    for line in data.split(separator: 0x0A, omittingEmptySubsequences: true) {
      struct Row: Decodable { var step: Int? }
      guard let row = try? JSONDecoder().decode(Row.self, from: Data(line)) else { continue }  // cut short by the kill
      if let s = row.step, s > step { continue }
      kept.append(Data(line))
      kept.append(0x0A)
    }
    try ModelFile.writeAtomically(kept, to: path)
  }
}
