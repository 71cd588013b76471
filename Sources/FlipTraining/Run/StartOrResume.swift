import FlipBNN
import FlipComm
import Foundation

/// One command for every job of a chain (`flip train --resume-or-start DIR`): the first job
/// starts the run, each later one resumes it, and settings that do not match the run are
/// refused rather than silently replaced by the checkpoint's.
extension TrainingRun {
  /// Starts a run of `settings` in `directory` when it holds no checkpoint (replacing the files
  /// of a run stopped before its first checkpoint), else resumes the newest valid checkpoint
  /// with `settings`' resumable keys (`RunSettings.resumableKeys`: epochs, data, compute,
  /// logging, checkpoints, exchange). Every other key must equal the run's own.
  public static func startOrResume(
    _ settings: RunSettings, in directory: String, environment env: RunEnvironment
  ) throws -> TrainingRun {
    let run: TrainingRun
    if try holdsCheckpoint(directory, communicator: env.communicator) {
      var overrides: [RunSettings.CodingKeys: ConfigValue] = [:]
      if case .map(let values) = try settings.config {
        for key in RunSettings.resumableKeys { overrides[key] = values[key.stringValue] }
      }
      run = try resume(directory, overrides: overrides, expected: settings, environment: env)
    } else {
      env.logger.info("\(directory) holds no checkpoint: starting a new run")
      run = try start(settings, in: directory, overwrite: true, environment: env)
    }
    run.continueWith = "the same command (flip train ... --resume-or-start \(directory))"
    return run
  }

  /// Whether rank 0 finds a checkpoint file in `directory` (valid or not: a corrupt one is
  /// reported by the resume, never replaced by a new run). Every rank gets rank 0's answer.
  static func holdsCheckpoint(_ directory: String, communicator: Communicator) throws -> Bool {
    var found = Data([0])
    if communicator.isRoot, FileManager.default.fileExists(atPath: directory) {
      found[0] = try CheckpointFiles.list(directory).isEmpty ? 0 : 1
    }
    return try communicator.broadcast(found, root: 0).first == 1
  }

  /// Throws `runSettingsDiffer` unless `given`, resolved on the run's data as a new run would
  /// be, equals the run's `saved` settings in every key a resume keeps. The optimizer is
  /// resolved with the run's epochs: extending a run (`epochs`) does not count as a change.
  static func requireSameRun(_ given: RunSettings, as saved: RunSettings, data: DataSplits, directory: String) throws {
    var g = given
    g.epochs = saved.epochs
    let resolved = try g.resolved(
      trainSamples: data.train.count, sampleShape: data.train.sampleShape, classes: data.train.classes,
      streamed: data.format?.isStreamed ?? false)
    guard case .map(let mine) = try resolved.config, case .map(let theirs) = try saved.config else { return }
    let differences = RunSettings.CodingKeys.allCases.filter { !RunSettings.resumableKeys.contains($0) }.compactMap {
      key -> String? in
      let (a, b) = (theirs[key.stringValue] ?? .null, mine[key.stringValue] ?? .null)
      return a == b ? nil : "\(key.stringValue): the run's \(abbreviated(a)), given \(abbreviated(b))"
    }
    if !differences.isEmpty { throw TrainingError.runSettingsDiffer(directory: directory, differences: differences) }
  }

  /// A config value in at most 60 characters.
  static func abbreviated(_ value: ConfigValue) -> String {
    let text = "\(value)"
    return text.count <= 60 ? text : text.prefix(57) + "..."
  }
}
