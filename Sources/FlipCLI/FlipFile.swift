import FlipBNN
import FlipTraining
import Foundation

/// A validated Flip file (model, checkpoint or binary export) and the run config stored in
/// its `config` metadata, from which the commands rebuild its model.
struct FlipFile {
  let path: String
  let tensors: [String: SafeTensors.Tensor]
  let metadata: [String: String]
  let config: RunConfig

  /// Reads and validates `path`, then parses its `config` metadata.
  init(path: String) throws {
    (tensors, metadata) = try ModelFile.read(path: path)
    guard let text = metadata["config"] else {
      throw TrainingError.modelFile(
        path: path, reason: "has no config metadata, so Flip cannot rebuild its model (was it written by flip train?)")
    }
    config = try RunConfig.parse(yaml: text, file: path + " (config metadata)")
    self.path = path
  }

  /// The file's model for samples of `inputShape`, with the file's tensors loaded.
  func model(inputShape: [Int]) throws -> Model {
    let model = try Model(specs: config.layers, inputShape: inputShape, seed: config.seed)
    try ModelFile.load(tensors, into: model, path: path, metadata: metadata)
    return model
  }

  /// Bytes of the model's tensors (optimizer state aside).
  var modelTensorBytes: Int {
    tensors.filter { !$0.key.hasPrefix(ModelFile.optimizerPrefix) }.values.reduce(0) { $0 + $1.count * 4 }
  }
}
