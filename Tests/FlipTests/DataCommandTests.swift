import Foundation
import Testing

@testable import FlipTraining

/// `flip data check`, `flip data bench`, and the data-wait warning of `flip train`, run as the
/// built binary.
@Suite("flip data, and waiting for data")
struct DataCommandTests {
  @Test func dataCheckCountsDecodesAndFailsOnABadFile() throws {
    let dir = temporaryDirectory("data-check")
    try writeImageFolder(dir, classes: 3, perClass: 4)
    let env = ["FLIP_CACHE_DIR": dir + "/cache"]
    let good = try runFlip(["data", "check", dir], environment: env)
    #expect(good.status == 0, "\(good.stderr)")
    #expect(good.stdout.contains("image folder, 3 classes") && good.stdout.contains("train: 12 images (4–4 per class)"))
    #expect(good.stdout.contains("decoded 18 images") && good.stdout.contains("none bad"), "\(good.stdout)")
    let file = dir + "/val/class2/img1.JPEG"
    let bytes = try Data(contentsOf: URL(fileURLWithPath: file))
    try bytes.prefix(bytes.count / 3).write(to: URL(fileURLWithPath: file))
    let bad = try runFlip(["data", "check", dir, "--json"], environment: env)
    #expect(bad.status != 0)
    let report = try JSONDecoder().decode(DataCheckReport.self, from: Data(bad.stdout.utf8))
    #expect(
      report.bad.count == 1 && report.bad[0].file.hasSuffix("val/class2/img1.JPEG")
        && report.bad[0].split == "validation")
    #expect(report.splits.map(\.samples) == [12, 6] && report.classNames == ["class0", "class1", "class2"])
    let missing = try runFlip(["data", "check", dir + "/nowhere"], environment: env)
    #expect(missing.status != 0 && missing.stderr.contains("nowhere"), "\(missing.stderr)")
  }

  @Test func dataBenchPrintsOneJSONLine() throws {
    let dir = temporaryDirectory("data-bench")
    try writeImageFolder(dir, classes: 2, perClass: 20)
    let r = try runFlip(["data", "bench", dir, "--image-size", "32", "--threads", "2", "--batch", "8", "--json"])
    #expect(r.status == 0, "\(r.stderr)")
    let lines = r.stdout.split(separator: "\n")
    #expect(lines.count == 1)
    let row = try JSONSerialization.jsonObject(with: Data(lines[0].utf8)) as? [String: Any]
    #expect(
      (row?["images_per_second"] as? Double ?? 0) > 0 && row?["images"] as? Int == 32 && row?["threads"] as? Int == 2)
  }

  /// A model far faster than one thread decodes its 200 × 150 JPEGs: the steps wait for data,
  /// metrics.jsonl says how long, and rank 0 warns once, suggesting more data threads.
  @Test func aStarvedRunWarnsAndRecordsTheDataWait() throws {
    let dir = temporaryDirectory("data-wait")
    try writeImageFolder(dir, classes: 2, perClass: 64, valPerClass: 2, width: 200, height: 150)
    try """
    layers:
      - {type: Flatten}
      - {type: QuantDense, units: 2, kernel_quantizer: ste_sign, kernel_constraint: weight_clip}
      - {type: Activation, activation: softmax}
    """.write(toFile: dir + "/m.yaml", atomically: true, encoding: .utf8)
    let r = try runFlip(
      [
        "train", "--config", dir + "/m.yaml", "--data", dir, "--image-size", "32", "--batch-size", "16", "--epochs",
        "1", "--data-threads", "1", "--threads", "1", "--log-every", "2", "--out", dir + "/run", "--quiet",
      ], environment: ["FLIP_CACHE_DIR": dir + "/cache"])
    #expect(r.status == 0, "\(r.stderr)")
    let warnings = r.stderr.components(separatedBy: "of their time for data")
    #expect(warnings.count == 2 && r.stderr.contains("--data-threads"), "\(r.stderr)")
    let rows = try readMetrics(dir + "/run/metrics.jsonl")
    // Step rows: the wait since the last row; the epoch row: the whole epoch's.
    let steps = rows.filter { $0["kind"] as? String == "step" }.compactMap { $0["data_wait_seconds"] as? Double }
    let epoch = rows.last?["data_wait_seconds"] as? Double ?? 0
    let seconds = rows.last?["seconds"] as? Double ?? 0
    #expect(rows.count == 5 && steps.count == 4, "\(rows)")
    #expect(epoch >= steps.reduce(0, +) - 1e-6 && epoch > 0.1 * seconds, "\(rows)")
  }
}
