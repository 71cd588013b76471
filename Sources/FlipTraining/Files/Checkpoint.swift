import Foundation
import Logging

/// Where a run stands besides its tensors: what continuing it bit-for-bit needs. Stored in a
/// checkpoint's metadata as JSON (`position`); doubles as their bit patterns, so the epoch's
/// running metrics continue exactly too. While training, step and epoch live in the
/// trainer's clock and are copied in when a checkpoint is written.
public struct TrainingPosition: Codable, Equatable, Sendable {
  /// Optimizer steps taken.
  public var step = 0
  /// The current epoch (0-based); `epochs` once training has finished.
  public var epoch = 0
  /// Global batches of `epoch` already trained on: the data order continues from the
  /// `(seed, epoch)` permutation at this batch.
  public var stepInEpoch = 0
  /// The epoch's running sums so far: loss, correct, samples (bit patterns of doubles).
  public var epochTotals: [UInt64] = [0, 0, 0]
  /// Per flip-counting layer: the sum of step flip ratios (bit patterns) and their count.
  public var flipSums: [UInt64] = []
  public var flipCounts: [Int] = []
  /// Bad images replaced so far in the run, over all ranks (ImageNet-format data).
  public var badImages = 0

  public init() {}

  enum CodingKeys: String, CodingKey {
    case step, epoch
    case stepInEpoch = "step_in_epoch"
    case epochTotals = "epoch_totals"
    case flipSums = "flip_sums"
    case flipCounts = "flip_counts"
    case badImages = "bad_images"
  }

  public init(from decoder: Decoder) throws {
    let c = try decoder.container(keyedBy: CodingKeys.self)
    step = try c.decode(Int.self, forKey: .step)
    epoch = try c.decode(Int.self, forKey: .epoch)
    stepInEpoch = try c.decode(Int.self, forKey: .stepInEpoch)
    epochTotals = try c.decode([UInt64].self, forKey: .epochTotals)
    flipSums = try c.decode([UInt64].self, forKey: .flipSums)
    flipCounts = try c.decode([Int].self, forKey: .flipCounts)
    // Checkpoints from before bad-image counting have none.
    badImages = try c.decodeIfPresent(Int.self, forKey: .badImages) ?? 0
  }
}

/// When and where checkpoints are written, and what happens when writing fails.
public struct CheckpointPolicy: Sendable {
  /// The run directory: checkpoints are `<directory>/ckpt-<step, 6+ digits>.safetensors`.
  public var directory: String
  /// A checkpoint every this many optimizer steps (0: none by step count).
  public var everySteps = 0
  /// A checkpoint at the end of every this many epochs (0: none by epoch).
  public var everyEpochs = 1
  /// The newest this many checkpoints are kept; older ones are deleted after a successful write.
  public var keep = 3
  /// After a failed write: warn and train on (true), or stop every rank (false, the default).
  public var continueOnError = false
  /// The run's settings, written into every checkpoint as its settings entry.
  public var settings: RunSettings?

  public init(directory: String) { self.directory = directory }
}

/// The checkpoint files of a run directory: naming, listing, choosing, pruning.
public enum CheckpointFiles {
  public static func name(step: Int) -> String { String(format: "ckpt-%06d.safetensors", step) }

  /// The step a checkpoint file name stands for, or nil for other files.
  public static func step(ofName name: String) -> Int? {
    guard name.hasPrefix("ckpt-"), name.hasSuffix(".safetensors") else { return nil }
    let digits = name.dropFirst(5).dropLast(12)
    guard !digits.isEmpty, digits.allSatisfy(\.isASCII), digits.allSatisfy(\.isNumber) else { return nil }
    return Int(digits)
  }

  /// The checkpoints in `directory`, oldest first.
  public static func list(_ directory: String) throws -> [(step: Int, path: String)] {
    var isDirectory: ObjCBool = false
    guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory) else {
      throw TrainingError.fileNotFound(path: directory, hint: "Pass the --out directory of an earlier flip train run.")
    }
    guard isDirectory.boolValue else {
      throw TrainingError.unreadable(path: directory, reason: "it is a file; --resume takes a run directory")
    }
    let names = try FileManager.default.contentsOfDirectory(atPath: directory)
    return names.compactMap { n -> (Int, String)? in
      guard let s = step(ofName: n) else { return nil }
      var isDirectory: ObjCBool = false
      let path = directory + "/" + n
      guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), !isDirectory.boolValue else {
        return nil
      }
      return (s, path)
    }.sorted { $0.0 < $1.0 }
  }

  /// The newest checkpoint of `directory` that validates, with its bytes; each newer one that
  /// does not is reported through `logger` and skipped.
  public static func newestValid(_ directory: String, logger: Logger) throws -> (path: String, data: Data) {
    let all = try list(directory)
    guard !all.isEmpty else {
      throw TrainingError.fileNotFound(
        path: directory + "/ckpt-*.safetensors",
        hint:
          "The directory holds no checkpoints; train with --out \(directory) (checkpoints are written every epoch by default)."
      )
    }
    var problems: [String] = []
    for (_, path) in all.reversed() {
      do {
        let data = try ModelFile.readBytes(path: path)
        let (_, metadata) = try ModelFile.decode(data, path: path)
        guard ModelFile.kind(metadata) == .checkpoint else {
          throw TrainingError.modelFile(
            path: path, reason: "not a training checkpoint (format \(metadata["format"] ?? "?"))")
        }
        return (path, data)
      } catch {
        logger.warning("skipping checkpoint: \(error)")
        problems.append("\(error)")
      }
    }
    throw TrainingError.modelFile(
      path: directory, reason: "no valid checkpoint among \(all.count): \(problems.joined(separator: "; "))")
  }

  /// Deletes all but the newest `keep` checkpoints (and temporary files of failed writes).
  public static func prune(_ directory: String, keep: Int) throws {
    let all = try list(directory)
    for (_, path) in all.dropLast(max(keep, 1)) { unlink(path) }
  }
}
