import Foundation
import Testing

@testable import FlipTraining

/// `flip train`'s TensorBoard events under mpirun, through a kill and a resume (part of the
/// serialized MPI suite).
extension MPITests {
  /// 2 epochs of 8 steps on 2 ranks, a step row every 2 steps; rank 1 killed at step 11 and the
  /// run resumed from its step-9 checkpoint. Every scalar of metrics.jsonl is in the event files
  /// once, with its step and (as a 32-bit float) its value, read by Flip's reader and, when
  /// FLIP_TENSORBOARD_PYTHON names one, by TensorBoard's own `EventAccumulator`.
  @Test func tensorBoardHasEveryScalarOnceAfterAKillAndResume() throws {
    let dir = try ResumeTests.setUp()
    let args = [
      "train", "--config", dir + "/m.yaml", "--data", dir, "--epochs", "2", "--batch-size", "32", "--threads", "1",
      "--checkpoint-every", "3", "--log-every", "2", "--out", dir + "/run", "--quiet",
    ]
    let killed = try launch(2, args, environment: ["FLIP_TEST_FAULT": "kill:1:11"])
    #expect(killed.status != 0)
    let resumed = try launch(2, ["train", "--resume", dir + "/run", "--threads", "1", "--quiet"])
    #expect(resumed.status == 0, "\(resumed.stderr)")
    // What metrics.jsonl says, by tag: (step, value).
    var want: [String: [Int: Double]] = [:]
    for row in try readMetrics(dir + "/run/metrics.jsonl") {
      let step = row["step"] as! Int
      if row["kind"] as? String == "step" {
        for key in ["loss", "accuracy"] { want["step/" + key, default: [:]][step] = row[key] as? Double }
      } else {
        for key in ["loss", "accuracy", "test_loss", "test_accuracy", "test_top5_accuracy", "images_per_second"] {
          want["epoch/" + key, default: [:]][step] = row[key] as? Double
        }
        for (layer, ratio) in row["flip_ratio"] as! [String: Double] { want["epoch/flip_ratio/" + layer, default: [:]][step] = ratio }
      }
    }
    #expect(want["step/loss"]?.keys.sorted() == [2, 4, 6, 8, 10, 12, 14, 16])
    #expect(want["epoch/test_accuracy"]?.keys.sorted() == [8, 16])
    // Flip's reader: every event file of the directory, in TensorBoard's (name) order.
    var seen: [String: [Int: Double]] = [:]
    var histograms: [String: [Int]] = [:]
    let files = try TensorBoardWriter.eventFiles(inDirectory: dir + "/run/tensorboard")
    #expect(files.count == 2, "one file per launch: \(files)")
    for file in files {
      for event in try TensorBoardWriter.events(inFile: file) {
        for value in event.values {
          switch value.content {
          case .scalar(let v):
            #expect(seen[value.tag]?[event.step] == nil, "\(value.tag) at step \(event.step) twice")
            seen[value.tag, default: [:]][event.step] = Double(v)
          case .histogram: histograms[value.tag, default: []].append(event.step)
          default: break
          }
        }
      }
    }
    for (tag, steps) in want {
      #expect(seen[tag]?.keys.sorted() == steps.keys.sorted(), "\(tag)")
      for (step, value) in steps {
        #expect(seen[tag]?[step] == Double(Float(value)), "\(tag) at step \(step)")
      }
    }
    #expect(seen["epoch/learning_rate"]?.keys.sorted() == [8, 16])
    #expect(histograms["kernel/layers.1.quant_dense.kernel"] == [8, 16], "\(histograms)")
    // TensorBoard's own reader, when there is one.
    guard let python = TensorBoardTests.python else {
      print("TensorBoard's reader not run: \(TensorBoardTests.pythonReason)")
      return
    }
    let read = try runProcess(
      python, [EmulatedCluster.repository + "/scripts/tensorboard-read.py", dir + "/run/tensorboard"])
    #expect(read.status == 0, "\(read.stderr)")
    let json = try #require(try JSONSerialization.jsonObject(with: Data(read.stdout.utf8)) as? [String: Any])
    let scalars = json["scalars"] as! [String: [[Double]]]
    for (tag, steps) in want {
      let points = scalars[tag] ?? []
      #expect(points.map { Int($0[0]) } == steps.keys.sorted(), "TensorBoard's steps of \(tag)")
      // JSON's decimal text rounds the float's double value: compare as 32-bit floats.
      for p in points { #expect(Float(p[1]) == Float(steps[Int(p[0])]!), "TensorBoard's \(tag) at step \(p[0])") }
    }
    let texts = json["texts"] as! [String: Any]
    #expect(texts["model/summary"] != nil && texts["model/config"] != nil)
  }
}
