import Foundation
import Testing

@testable import FlipTraining

/// ImageNet-format data under `mpirun` (part of the serialized MPI suite).
extension MPITests {
  /// A small CNN on 16 × 16 crops of an image folder.
  static let imageModel = """
    model: tiny-image-cnn
    layers:
      - {type: QuantConv2D, filters: 8, kernel_size: 3, strides: 2, kernel_quantizer: ste_sign, kernel_constraint: weight_clip, use_bias: false}
      - {type: BatchNormalization, momentum: 0.9}
      - {type: Flatten}
      - {type: QuantDense, units: 3, input_quantizer: ste_sign, kernel_quantizer: ste_sign, kernel_constraint: weight_clip, use_bias: false}
      - {type: BatchNormalization, momentum: 0.9}
      - {type: Activation, activation: softmax}
    optimizer: {type: adam, learning_rate: 0.01}
    """

  /// Two ranks train on an image folder (decoded in background threads, crop-flip) with rank
  /// 1 killed mid-epoch; resumed from the step-9 checkpoint, the run ends with the same bits
  /// as the one never killed. The label map is in the run directory and the checkpoints, and
  /// resuming on a data set whose classes differ is an error naming them.
  @Test func imageFolderRunKilledAndResumedIsBitIdentical() throws {
    let dir = temporaryDirectory("flip-image-resume")
    try writeImageFolder(dir, classes: 3, perClass: 84, valPerClass: 4, width: 24, height: 20)
    try Self.imageModel.write(toFile: dir + "/m.yaml", atomically: true, encoding: .utf8)
    let env = ["FLIP_CACHE_DIR": dir + "/cache"]
    let args = { (out: String) in
      [
        "train", "--config", dir + "/m.yaml", "--data", dir, "--image-size", "16", "--epochs", "3", "--batch-size",
        "32", "--threads", "1", "--data-threads", "2", "--checkpoint-every", "3", "--out", out, "--quiet",
      ]
    }
    let whole = try launch(2, args(dir + "/whole"), environment: env)
    #expect(whole.status == 0, "\(whole.stderr)")
    #expect(try String(contentsOfFile: dir + "/whole/labels.txt", encoding: .utf8) == "class0\nclass1\nclass2\n")
    let config = try String(contentsOfFile: dir + "/whole/config.yaml", encoding: .utf8)
    #expect(config.contains("augment: crop-flip\n") && config.contains("image_size: 16\n"), "\(config)")
    let rows = try readMetrics(dir + "/whole/metrics.jsonl").filter { $0["kind"] as? String == "epoch" }
    #expect(rows.count == 3 && rows.allSatisfy { $0["bad_images"] as? Int == 0 && $0["data_wait_seconds"] != nil })
    // flip evaluate reads the run's image size and evaluation transform from its config.
    let evaluated = try runFlip(["evaluate", "--run", dir + "/whole", "--threads", "1"], environment: env)
    let accuracy = rows.last?["test_accuracy"] as? Double ?? -1
    #expect(
      evaluated.status == 0 && evaluated.stdout.contains(String(format: "test_accuracy: %.4f", accuracy)),
      "\(evaluated.stdout) \(evaluated.stderr)")
    let killed = try launch(
      2, args(dir + "/run"), environment: env.merging(["FLIP_TEST_FAULT": "kill:1:11"]) { a, _ in a })
    #expect(killed.status != 0)
    let resumed = try launch(2, ["train", "--resume", dir + "/run", "--threads", "1", "--quiet"], environment: env)
    #expect(resumed.status == 0, "\(resumed.stderr)")
    try ResumeTests.expectBitIdentical(dir + "/whole/ckpt-000024.safetensors", dir + "/run/ckpt-000024.safetensors")
    try ResumeTests.expectBitIdentical(dir + "/whole/model.safetensors", dir + "/run/model.safetensors")
    // Another label map: class1 renamed.
    try FileManager.default.moveItem(atPath: dir + "/train/class1", toPath: dir + "/train/class1b")
    try FileManager.default.moveItem(atPath: dir + "/val/class1", toPath: dir + "/val/class1b")
    let other = try launch(
      1, ["train", "--resume", dir + "/run", "--epochs", "4", "--threads", "1", "--quiet"], environment: env)
    #expect(
      other.status != 0 && other.stderr.contains("class 1 is 'class1' in the run but 'class1b'"), "\(other.stderr)")
  }
}
