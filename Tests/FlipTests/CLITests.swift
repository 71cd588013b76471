import Foundation
import Testing

/// End-to-end runs of the built `flip` binary (serialized: each launches processes).
@Suite("flip command line", .serialized)
struct CLITests {
  static let tinyModel = """
    model: tiny
    layers:
      - {type: Flatten}
      - {type: QuantDense, units: 16, kernel_quantizer: ste_sign, kernel_constraint: weight_clip, use_bias: false}
      - {type: BatchNormalization, momentum: 0.9, scale: false}
      - {type: QuantDense, units: 2, input_quantizer: ste_sign, kernel_quantizer: ste_sign, kernel_constraint: weight_clip, use_bias: false}
      - {type: BatchNormalization, momentum: 0.9, scale: false}
      - {type: Activation, activation: softmax}
    optimizer: {type: adam, learning_rate: 0.01}
    """

  /// `--progress`: a bar even into a pipe (`bar`), lines into one (`auto` there, or `lines`),
  /// and a clear error for anything else.
  @Test func progressStyles() throws {
    let dir = temporaryDirectory()
    writeToyDataset(to: dir, train: 200, test: 16)
    try Self.tinyModel.write(toFile: dir + "/tiny.yaml", atomically: true, encoding: .utf8)
    func run(_ style: String) throws -> ProcessResult {
      try runFlip([
        "train", "--config", dir + "/tiny.yaml", "--data", dir, "--epochs", "1", "--batch-size", "8", "--threads", "1",
        "--out", dir + "/run-" + style, "--progress", style,
      ])
    }
    let bar = try run("bar")
    #expect(bar.status == 0, "\(bar.stderr)")
    #expect(bar.stdout.contains("\r") && bar.stdout.contains("ETA:"))
    for style in ["auto", "lines"] {
      let r = try run(style)
      #expect(r.status == 0, "\(r.stderr)")
      #expect(!r.stdout.contains("\r") && r.stdout.contains("  step 20/25"), "\(style): \(r.stdout)")
    }
    let bad = try run("fancy")
    #expect(bad.status != 0)
    #expect(bad.stderr.contains("fancy") && bad.stderr.contains("--progress"), "\(bad.stderr)")
  }

  @Test func trainThenEvaluate() throws {
    let dir = temporaryDirectory()
    try FileManager.default.createDirectory(atPath: dir + "/data", withIntermediateDirectories: true)
    writeToyDataset(to: dir + "/data", gzip: true)
    try Self.tinyModel.write(toFile: dir + "/tiny.yaml", atomically: true, encoding: .utf8)
    let out = dir + "/run"
    let r = try runFlip([
      "train", "--config", dir + "/tiny.yaml", "--data", dir + "/data", "--epochs", "3", "--batch-size", "32",
      "--out", out, "--threads", "1",
    ])
    #expect(r.status == 0, "stderr: \(r.stderr)")
    #expect(r.stderr.contains("ISA") && r.stderr.contains("1 thread"))
    #expect(r.stdout.contains("Epoch 3/3"))
    for f in ["metrics.jsonl", "config.yaml", "model.safetensors"] {
      #expect(FileManager.default.fileExists(atPath: out + "/" + f), "missing \(f)")
    }
    let rows = try readMetrics(out + "/metrics.jsonl").filter { $0["kind"] as? String == "epoch" }
    #expect(rows.count == 3)
    let finalAccuracy = rows.last!["test_accuracy"] as! Double
    #expect(finalAccuracy > 0.85)
    let e = try runFlip(["evaluate", "--run", out, "--threads", "1"])
    #expect(e.status == 0, "stderr: \(e.stderr)")
    #expect(e.stdout.contains(String(format: "test_accuracy: %.4f", finalAccuracy)))
    // A second run into the same directory must not silently replace the first.
    let again = try runFlip([
      "train", "--config", dir + "/tiny.yaml", "--data", dir + "/data", "--epochs", "1", "--out", out,
    ])
    #expect(again.status != 0)
    #expect(again.stderr.contains("already holds a run"))
  }

  @Test func summaryOfAPresetMatchesLarqTotals() throws {
    let r = try runFlip(["summary", "--model", "binarynet-mlp"])
    #expect(r.status == 0)
    #expect(
      r.stdout.contains(
        "| Total                                           2910208      6164  379.33     2107392       802816 |"))
  }

  @Test func badInputsFailWithClearMessages() throws {
    let dir = temporaryDirectory()
    writeToyDataset(to: dir)
    func fails(_ args: [String], mentioning text: String) throws {
      let r = try runFlip(args)
      #expect(r.status != 0, "\(args) should fail")
      #expect(r.stderr.contains(text), "\(args): stderr was \(r.stderr)")
      #expect(!r.stderr.contains("Fatal error"))
    }
    try fails(["train", "--model", "binarynet-mlp", "--batch-size", "0"], mentioning: "batch_size: must be positive, got 0 (--batch-size)")
    try fails(["train", "--model", "binarynet-mlp", "--epochs=-1"], mentioning: "epochs: must be positive, got -1 (--epochs)")
    try fails(["train", "--model", "resnet50"], mentioning: "unknown model preset 'resnet50'")
    try fails(
      ["train", "--model", "binarynet-mlp", "--data", dir + "/missing", "--out", dir + "/r1"], mentioning: "missing")
    try fails(["train", "--config", dir + "/none.yaml"], mentioning: "none.yaml")
    try "layers: [{type: Flatten}, {type: QuantDense, units: 2, kernel_quantizer: ste_sgn}]".write(
      toFile: dir + "/bad.yaml", atomically: true, encoding: .utf8)
    try fails(["train", "--config", dir + "/bad.yaml", "--data", dir], mentioning: "unknown quantizer 'ste_sgn'")
    // A config's output is its own (a preset's follows the data's classes): 3 units for 2 classes.
    try "layers: [{type: Flatten}, {type: Dense, units: 3}, {type: Activation, activation: softmax}]".write(
      toFile: dir + "/three.yaml", atomically: true, encoding: .utf8)
    try fails(["train", "--config", dir + "/three.yaml", "--data", dir, "--out", dir + "/r2"], mentioning: "2 classes")
    _ = FileManager.default.createFile(atPath: dir + "/afile", contents: Data())
    try fails(
      ["train", "--model", "binarynet-mlp", "--data", dir, "--out", dir + "/afile"], mentioning: "not a directory")
    write(idxBytes(dimensions: [3, 6, 6], data: [1, 2, 3]), to: dir + "/t10k-images-idx3-ubyte")
    try fails(["train", "--model", "binarynet-mlp", "--data", dir, "--out", dir + "/r3"], mentioning: "truncated")
    try fails(["evaluate", "--run", dir + "/no-run"], mentioning: "config.yaml")
  }

  @Test func linearScalingAndWarmupDriveTheLearningRate() throws {
    let dir = temporaryDirectory()
    try FileManager.default.createDirectory(atPath: dir + "/data", withIntermediateDirectories: true)
    writeToyDataset(to: dir + "/data", train: 128, test: 32)
    try Self.tinyModel.write(toFile: dir + "/tiny.yaml", atomically: true, encoding: .utf8)
    let r = try runFlip([
      "train", "--config", dir + "/tiny.yaml", "--data", dir + "/data", "--epochs", "3", "--batch-size", "64",
      "--lr-scaling", "linear", "--lr-reference-batch", "32", "--warmup-epochs", "1", "--accumulate", "2",
      "--out", dir + "/run", "--threads", "1",
    ])
    #expect(r.status == 0, "\(r.stderr)")
    let rows = try readMetrics(dir + "/run/metrics.jsonl").filter { $0["kind"] as? String == "epoch" }
    // Epoch 1 starts the warmup at the configured 0.01; from epoch 2 on: 0.01 × 64/32.
    #expect(abs((rows[0]["learning_rate"] as! Double) - 0.01) < 1e-12)
    #expect(abs((rows[1]["learning_rate"] as! Double) - 0.02) < 1e-12)
    #expect(abs((rows[2]["learning_rate"] as! Double) - 0.02) < 1e-12)
    let saved = try String(contentsOfFile: dir + "/run/config.yaml", encoding: .utf8)
    #expect(saved.contains("linear_warmup") && saved.contains("scaled"))
  }
}
