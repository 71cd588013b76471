import FlipTraining
import Foundation
import Testing

/// `flip checkpoint inspect|export` and `flip evaluate --checkpoint` on a freshly trained tiny
/// model (serialized: each test launches processes).
@Suite("flip checkpoint", .serialized)
struct CheckpointCommandTests {
  /// Trains the CLI tests' tiny model for one epoch; returns the temp directory (data in
  /// `data/`, run in `run/`).
  static func trainedRun() throws -> String {
    let dir = temporaryDirectory()
    try FileManager.default.createDirectory(atPath: dir + "/data", withIntermediateDirectories: true)
    writeToyDataset(to: dir + "/data", train: 128, test: 64)
    try CLITests.tinyModel.write(toFile: dir + "/tiny.yaml", atomically: true, encoding: .utf8)
    let r = try runFlip([
      "train", "--config", dir + "/tiny.yaml", "--data", dir + "/data", "--epochs", "1", "--batch-size", "32",
      "--out", dir + "/run", "--threads", "1", "--seed", "3",
    ])
    try #require(r.status == 0, "stderr: \(r.stderr)")
    return dir
  }

  /// The `test_loss: … - test_accuracy: …` line of `flip evaluate`.
  static func evaluation(_ arguments: [String]) throws -> String {
    let r = try runFlip(["evaluate"] + arguments + ["--threads", "1"])
    #expect(r.status == 0, "\(arguments): \(r.stderr)")
    return r.stdout.split(separator: "\n").first { $0.hasPrefix("test_loss: ") }.map(String.init) ?? "none"
  }

  @Test func inspectExportAndEvaluateAgree() throws {
    let dir = try Self.trainedRun()
    let model = dir + "/run/model.safetensors"
    let i = try runFlip(["checkpoint", "inspect", model])
    #expect(i.status == 0, "\(i.stderr)")
    for line in [
      "kind: flip-model", "format version: 2", "model: tiny", "step: 4", "epoch: 1",
      "  layers.1.quant_dense.kernel                     F32    [36, 16]   2304",
      "total: 8 tensors, 662 elements, 2648 bytes",
    ] {
      #expect(i.stdout.contains(line + "\n"), "missing '\(line)' in\n\(i.stdout)")
    }
    let crc = try #require(try ModelFile.read(path: model).metadata["payload_crc32"])
    #expect(i.stdout.contains("valid: checksum crc32 \(crc) matches"))
    #expect(
      i.stdout.range(of: #"  settings: \d+ bytes, first line: \{"format":"flip-run-settings""#, options: .regularExpression)
        != nil, "\(i.stdout)")

    let exported = dir + "/binary.safetensors"
    let e = try runFlip(["checkpoint", "export", "--binary", model, exported])
    #expect(e.status == 0, "\(e.stderr)")
    // Kernels [36, 16] → [16, 2] words and [16, 2] → [2, 1]; the BatchNorm tensors stay F32 (88 bytes).
    #expect(e.stdout.contains("2 bit-packed kernels"))
    #expect(e.stdout.contains("model tensors: 2648 bytes in \(model) -> 352 bytes in the export (7.5x smaller)"))
    let (tensors, metadata) = try ModelFile.read(path: exported)
    #expect(ModelFile.kind(metadata) == .binaryExport)
    #expect(tensors["layers.1.quant_dense.kernel"]?.shape == [16, 2])
    #expect(metadata["exported_from"] == "model.safetensors")
    let ie = try runFlip(["checkpoint", "inspect", exported])
    #expect(ie.stdout.contains("kind: flip-binary\n"))
    #expect(
      ie.stdout.contains("  layers.3.quant_dense_1.kernel                   U32    [2, 1]       8\n"), "\(ie.stdout)")

    let viaRun = try Self.evaluation(["--run", dir + "/run"])
    #expect(viaRun.contains("test_accuracy: ") && viaRun.contains("(64 images from \(dir)/data)"))
    #expect(try Self.evaluation(["--checkpoint", model]) == viaRun)
    #expect(try Self.evaluation(["--checkpoint", exported]) == viaRun)
  }

  @Test func checkpointsShowWorldSizeAndOptimizerStateAndExport() throws {
    let dir = try Self.trainedRun()
    var (tensors, metadata) = try ModelFile.read(path: dir + "/run/model.safetensors")
    tensors["optimizer.adam.m.layers.1.quant_dense.kernel"] = .init(
      shape: [36, 16], values: [Float](repeating: 0.5, count: 576))
    metadata["world_size"] = "2"
    let checkpoint = dir + "/ckpt-000004.safetensors"
    try ModelFile.write(tensors, metadata: metadata, kind: .checkpoint, to: checkpoint)
    let i = try runFlip(["checkpoint", "inspect", checkpoint])
    #expect(i.status == 0, "\(i.stderr)")
    #expect(i.stdout.contains("kind: flip-checkpoint\n") && i.stdout.contains("world size: 2\n"))
    #expect(
      i.stdout.contains("total: 9 tensors, 1238 elements, 4952 bytes (optimizer state: 1 tensors, 2304 bytes)\n"))
    let exported = dir + "/from-checkpoint.safetensors"
    let e = try runFlip(["checkpoint", "export", "--binary", checkpoint, exported])
    #expect(e.status == 0, "\(e.stderr)")
    #expect(e.stdout.contains("2648 bytes in \(checkpoint) -> 352 bytes"))
    #expect(try ModelFile.read(path: exported).tensors.keys.allSatisfy { !$0.hasPrefix("optimizer.") })
    #expect(
      try Self.evaluation(["--checkpoint", exported]) == (try Self.evaluation(["--checkpoint", checkpoint])))
  }

  @Test func badFilesAndArgumentsFailNamingTheProblem() throws {
    let dir = try Self.trainedRun()
    let model = dir + "/run/model.safetensors"
    var data = try #require(FileManager.default.contents(atPath: model))
    data[data.count - 3] ^= 0x10
    let corrupt = dir + "/corrupt.safetensors"
    _ = FileManager.default.createFile(atPath: corrupt, contents: data)
    func fails(_ args: [String], mentioning texts: [String]) throws {
      let r = try runFlip(args)
      #expect(r.status != 0, "\(args) should fail")
      for t in texts { #expect(r.stderr.contains(t), "\(args): stderr was \(r.stderr)") }
      #expect(!r.stderr.contains("Fatal error"))
    }
    try fails(["checkpoint", "inspect", corrupt], mentioning: [corrupt, "checksum mismatch"])
    try fails(
      ["checkpoint", "inspect", dir + "/none.safetensors"], mentioning: [dir + "/none.safetensors", "no such file"])
    try fails(
      ["checkpoint", "inspect", dir + "/tiny.yaml"], mentioning: ["tiny.yaml", "not a valid safetensors file"])
    try fails(
      ["checkpoint", "export", model, dir + "/x.safetensors"], mentioning: ["only binary exports", "--binary"])
    try fails(["checkpoint", "export", "--binary", model, model], mentioning: ["OUTPUT is INPUT"])
    try fails(["checkpoint", "export", "--binary", corrupt, dir + "/x.safetensors"], mentioning: ["checksum mismatch"])
    #expect(!FileManager.default.fileExists(atPath: dir + "/x.safetensors"))
    // The run's config records its input shape: no data set is needed to export.
    try FileManager.default.moveItem(atPath: dir + "/data", toPath: dir + "/moved")
    let withoutData = try runFlip(["checkpoint", "export", "--binary", model, dir + "/y.safetensors"])
    #expect(withoutData.status == 0, "\(withoutData.stderr)")
    let withShape = try runFlip([
      "checkpoint", "export", "--binary", model, dir + "/x.safetensors", "--input-shape", "6", "6", "1",
    ])
    #expect(withShape.status == 0, "\(withShape.stderr)")
    try fails(["evaluate", "--checkpoint", corrupt], mentioning: [corrupt, "checksum mismatch"])
    try fails(["evaluate", "--run", dir + "/run", "--checkpoint", model], mentioning: ["exactly one"])
    try fails(["evaluate"], mentioning: ["exactly one"])
  }
}
