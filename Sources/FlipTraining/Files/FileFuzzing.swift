import FlipBNN
import Foundation

/// What the file reader does with untrusted bytes, in one call: the entry point of the
/// libFuzzer target (`flip-fuzz`) and of the mutation tests. Reading must either throw a
/// `TrainingError` or return validated contents that load into `model`; anything else (a
/// crash, a trap, a hang, a giant allocation) is a bug.
public enum FileFuzzing {
  public enum Outcome: Equatable, Sendable {
    case rejected
    case loaded
  }

  /// Decodes `data` as a Flip file and, if it validates, loads it into `model` (a model,
  /// checkpoint or binary export of that architecture) the two ways Flip does.
  public static func read(_ data: Data, into model: Model?) -> Outcome {
    do {
      let (tensors, metadata) = try ModelFile.decode(data, path: "<fuzz input>")
      if let model {
        try ModelFile.load(tensors, into: model, path: "<fuzz input>", metadata: metadata)
        try initialize(model, from: tensors, path: "<fuzz input>")
      }
      return .loaded
    } catch {
      return .rejected
    }
  }
}
