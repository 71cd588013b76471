import Foundation

/// The class names of shard layouts (TFRecords and tars), whose samples carry integer labels:
/// those of a TFDS `label.labels.txt` (one name per line, the line number being the label)
/// when there is one, else the labels' decimal numbers.
struct LabelMap {
  /// The names of `label.labels.txt`, or nil without one.
  var names: [String]?
  /// The file they came from.
  var path: String?

  static let fileName = "label.labels.txt"

  /// The first `label.labels.txt` of `directories`, or an empty map.
  static func find(in directories: [String]) throws(TrainingError) -> LabelMap {
    for directory in directories {
      let path = DataFiles.join(directory, fileName)
      guard DataFiles.isRegularFile(path) else { continue }
      guard let data = FileManager.default.contents(atPath: path) else {
        throw .unreadable(path: path, reason: "cannot read the class names")
      }
      var lines = String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false)
        .map { $0.hasSuffix("\r") ? String($0.dropLast()) : String($0) }
      while lines.last == "" { lines.removeLast() }  // the final newline
      guard !lines.isEmpty else { throw .corruptData(path: path, reason: "it names no classes") }
      return LabelMap(names: lines, path: path)
    }
    return LabelMap(names: nil, path: nil)
  }

  /// Checks every label of `splits` (>= 0, and below the number of names when a file names
  /// them), and returns the class names: the file's, padded with decimal numbers up to the
  /// largest label + 1.
  func classNames(checking splits: [SampleIndex]) throws(TrainingError) -> [String] {
    var largest: Int32 = -1
    for split in splits {
      for i in 0..<split.count {
        let label = split.label(of: i)
        if label < 0 {
          throw .corruptData(path: split.file(of: i), reason: "\(split.place(of: i)): label \(label) is negative")
        }
        if let names, Int(label) >= names.count {
          throw .corruptData(
            path: split.file(of: i),
            reason:
              "\(split.place(of: i)): label \(label) is past the \(names.count) classes that \(path!) names (labels 0...\(names.count - 1))"
          )
        }
        largest = max(largest, label)
      }
    }
    let count = max(Int(largest) + 1, names?.count ?? 0)
    return (names ?? []) + ((names?.count ?? 0)..<count).map(String.init)
  }
}
