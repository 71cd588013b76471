import Foundation
import Testing

@testable import FlipTraining

/// TFRecords written by TensorFlow's own `tf.io.TFRecordWriter` and tar shards written by the
/// `webdataset` package's `TarWriter` (scripts/real-tools-data.py, run by
/// scripts/real-tools-check.sh, which sets FLIP_REAL_TOOLS_DATA to its output and
/// FLIP_REAL_TOOLS_SOURCE to the image folder it came from): Flip reads the same samples, in
/// the order written, with the same labels, class names and bytes, and decodes every image.
@Suite("Data written by TensorFlow and webdataset")
struct RealToolsDataTests {
  struct Expected: Decodable {
    var classes: [String]
    var train: [[Entry]]
    var validation: [[Entry]]
    enum Entry: Decodable {
      case name(String)
      case label(Int)
      init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let n = try? c.decode(Int.self) { self = .label(n) } else { self = .name(try c.decode(String.self)) }
      }
    }
  }

  @Test(
    .enabled(if: ProcessInfo.processInfo.environment["FLIP_REAL_TOOLS_DATA"] != nil, "run scripts/real-tools-check.sh"),
    arguments: ["tfrecord", "webdataset"])
  func flipReadsWhatTheRealToolsWrote(layout: String) throws {
    let env = ProcessInfo.processInfo.environment
    let root = env["FLIP_REAL_TOOLS_DATA"]!
    let source = env["FLIP_REAL_TOOLS_SOURCE"]!
    let expected = try JSONDecoder().decode(
      Expected.self, from: Data(contentsOf: URL(fileURLWithPath: root + "/expected.json")))
    let set = try ImageDataSet.open(directory: root + "/" + layout, cache: nil)
    #expect(set.layout == (layout == "tfrecord" ? .tfrecord : .webDataset))
    #expect(set.classNames == expected.classes)
    for (index, rows, split) in [(set.train, expected.train, "train"), (set.validation, expected.validation, "val")] {
      #expect(index.count == rows.count)
      var bytes: [UInt8] = []
      for (i, row) in rows.enumerated() {
        guard case .name(let name) = row[0], case .label(let label) = row[1] else {
          Issue.record("bad row \(row)")
          return
        }
        #expect(Int(index.label(of: i)) == label, "\(index.describe(i))")
        try index.read(i, into: &bytes)
        let original = try Data(
          contentsOf: URL(fileURLWithPath: "\(source)/\(split)/\(expected.classes[label])/\(name)"))
        #expect(bytes == [UInt8](original), "\(index.describe(i)) is not \(name)")
      }
    }
    let report = try DataCheckReport.check(directory: root + "/" + layout, threads: 2, cache: nil)
    #expect(report.bad.isEmpty, "\(report.bad)")
  }
}
