import ArgumentParser
import FlipTraining
import Foundation

/// `flip checkpoint export --binary INPUT OUTPUT`: the binary export of a model or checkpoint.
struct CheckpointExportCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "export",
    abstract: "Write the binary export of a model or checkpoint: ±1 kernels bit-packed, 32 weights per U32 word.",
    discussion: """
      The model is rebuilt from the config in INPUT's metadata. Kernels of ste_sign, approx_sign \
      and swish_sign are packed along the input axis in Larq Compute Engine's OHWI order \
      (metadata binary_kernels); other quantized kernels are stored as their quantized values; \
      optimizer state is dropped. flip evaluate --checkpoint OUTPUT evaluates the export.
      """)

  @Flag(name: .long, help: "Write a binary export (the only kind of export so far).")
  var binary = false
  @Argument(help: "A model or checkpoint file.")
  var input: String
  @Argument(help: "The export to write.")
  var output: String
  @Option(
    name: .long, parsing: .upToNextOption,
    help:
      "Input shape of one sample, after the files (default: the config's input_shape, else its data set's images).")
  var inputShape: [Int] = []

  func validate() throws {
    guard binary else { throw ValidationError("only binary exports exist so far: pass --binary") }
    if !inputShape.isEmpty && !inputShape.allSatisfy({ $0 > 0 }) {
      throw ValidationError("--input-shape must be positive, got \(inputShape)")
    }
    let a = URL(fileURLWithPath: input).standardizedFileURL.resolvingSymlinksInPath().path
    let b = URL(fileURLWithPath: output).standardizedFileURL.resolvingSymlinksInPath().path
    if a == b { throw ValidationError("OUTPUT is INPUT; write the export to another file") }
  }

  func run() throws {
    do {
      let file = try FlipFile(path: input)
      let model = try file.model(inputShape: try resolvedInputShape(file))
      var metadata = file.metadata.filter { [SettingsEntry.key, "config", "model", "step", "epoch"].contains($0.key) }
      metadata["exported_from"] = (input as NSString).lastPathComponent
      let export = try BinaryExport.export(model: model, metadata: metadata)
      try ModelFile.write(export.tensors, metadata: export.metadata, kind: .binaryExport, to: output)
      let before = file.modelTensorBytes
      let after = export.tensors.values.reduce(0) { $0 + $1.count * 4 }
      let packed = try BinaryExport.packedKernels(in: export.metadata, path: output).count
      let fileBytes = (try FileManager.default.attributesOfItem(atPath: output)[.size] as? Int) ?? 0
      print("wrote \(output) (\(fileBytes) bytes): \(packed) bit-packed kernel\(packed == 1 ? "" : "s")")
      print(
        String(
          format: "model tensors: %d bytes in %@ -> %d bytes in the export (%.1fx smaller)", before, input, after,
          Double(before) / Double(max(after, 1))))
    } catch {
      Runtime.report(error, rank: 0)
      throw ExitCode.failure
    }
  }

  /// `--input-shape`, else the config's `input_shape`, else the shape of the images of the
  /// config's data set (the model was trained on them).
  func resolvedInputShape(_ file: FlipFile) throws -> [Int] {
    if !inputShape.isEmpty { return inputShape }
    if let shape = file.config.inputShape { return shape }
    do {
      let images = ImageDataOptions(file.config, computeThreads: 1) { _ in }
      return try DataSplits.load(directory: file.config.data, images: images).test.sampleShape
    } catch {
      throw ValidationError(
        "\(file.path): its config has no input_shape and its data set cannot be read (\(error)); pass --input-shape H W C"
      )
    }
  }
}
