import FlipBNN
import FlipTraining
import Foundation

/// A validated Flip file (model, checkpoint or binary export) and the run settings stored in
/// its settings entry, from which the commands rebuild its model.
struct FlipFile {
  let path: String
  let tensors: [String: SafeTensors.Tensor]
  let metadata: [String: String]
  let config: RunSettings

  /// Reads and validates `path`, then its settings entry.
  init(path: String) throws {
    (tensors, metadata) = try ModelFile.read(path: path)
    config = try SettingsEntry.read(metadata, file: path)
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
