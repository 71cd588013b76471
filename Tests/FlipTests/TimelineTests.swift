import Foundation
import Testing

@testable import FlipTraining

/// `flip train --timeline` under mpirun (part of the serialized MPI suite).
extension MPITests {
  /// 20 steps of a 2-rank run with small buckets: one valid Chrome trace holding both ranks,
  /// every layer's forward and backward in every step, and every bucket's reduce-scatter and
  /// all-gather, each span inside the window's steps.
  @Test func timelineOfTwentyStepsHasBothRanksEveryLayerAndEveryBucket() throws {
    let dir = temporaryDirectory("flip-timeline")
    writeToyDataset(to: dir, train: 256, test: 32)
    try Self.noBatchNorm.write(toFile: dir + "/tiny.yaml", atomically: true, encoding: .utf8)
    let r = try launch(
      2,
      [
        "train", "--config", dir + "/tiny.yaml", "--data", dir, "--epochs", "3", "--batch-size", "32", "--threads", "1",
        "--bucket-mb", "0.0001", "--timeline", dir + "/trace.json", "--timeline-steps", "5:25", "--out", dir + "/run",
        "--quiet",
      ])
    #expect(r.status == 0, "\(r.stderr)")
    #expect(r.stderr.contains("timeline of steps 5..<25: \(dir)/trace.json"), "\(r.stderr)")
    let data = try #require(FileManager.default.contents(atPath: dir + "/trace.json"))
    let json = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
    let events = try #require(json["traceEvents"] as? [[String: Any]])
    let spans = events.filter { $0["ph"] as? String == "X" }
    let names = events.filter { $0["name"] as? String == "process_name" }.compactMap {
      ($0["args"] as? [String: Any])?["name"] as? String
    }
    #expect(names.count == 2 && names[0].hasPrefix("rank 0") && names[1].hasPrefix("rank 1"), "\(names)")
    for rank in 0..<2 {
      let mine = spans.filter { $0["pid"] as? Int == rank }
      let steps = Set(mine.compactMap { ($0["args"] as? [String: Any])?["step"] as? Int })
      #expect(steps == Set(5..<25), "rank \(rank): steps \(steps.sorted())")
      // The softmax (activation_1) is folded into the loss in training; the first layer,
      // Flatten, has no variables below it and so no backward.
      for layer in ["flatten", "quant_dense", "activation", "dense"] {
        for pass in ["forward", "backward"] {
          let count = mine.filter { $0["name"] as? String == "\(pass) \(layer)" }.count
          let expected = pass == "backward" && layer == "flatten" ? 0 : 20
          #expect(count == expected, "rank \(rank): \(pass) \(layer) \(count) times")
        }
      }
      // Tiny buckets: one per layer with variables (a bias joins its kernel), each
      // reduce-scattered and all-gathered every step.
      for b in 0..<2 {
        for kind in ["reduce-scatter", "all-gather"] {
          let count = mine.filter { $0["name"] as? String == "\(kind) bucket \(b)" }.count
          #expect(count == 20, "rank \(rank): \(kind) bucket \(b) \(count) times")
        }
      }
      #expect(mine.filter { ($0["name"] as? String)?.hasPrefix("step ") == true }.count == 20)
      #expect(mine.allSatisfy { ($0["dur"] as? Double ?? -1) >= 0 })
    }
    #expect(spans.contains { $0["name"] as? String == "evaluation" })
  }
}
