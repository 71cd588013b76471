import Foundation

/// A run directory's files: checked before a run starts, cleared only once it has validated.
public enum RunDirectory {
  /// The files of a run besides its checkpoints.
  public static let runFiles = ["metrics.jsonl", "config.yaml", "model.safetensors"]

  /// Checks, without changing anything, that `path` can hold a new run: a directory (or
  /// creatable) that is writable and holds no earlier run unless `overwrite`.
  public static func check(_ path: String, overwrite: Bool) throws {
    let fm = FileManager.default
    var isDirectory: ObjCBool = false
    guard fm.fileExists(atPath: path, isDirectory: &isDirectory) else {
      try checkWritable(file: path + "/", creatingDirectories: true)
      return
    }
    guard isDirectory.boolValue else {
      throw TrainingError.unwritable(path: path, reason: "it is a file, not a directory")
    }
    let existing = earlierRun(in: path)
    if !existing.isEmpty && !overwrite {
      throw TrainingError.unwritable(
        path: path,
        reason:
          "it already holds a run (\(existing.prefix(4).joined(separator: ", "))\(existing.count > 4 ? ", ..." : "")); continue it with --resume \(path), choose another --out, or pass --overwrite"
      )
    }
    guard access(path, W_OK | X_OK) == 0 else {
      throw TrainingError.unwritable(path: path, reason: "the directory is not writable")
    }
  }

  /// The names of an earlier run's files in `path`.
  static func earlierRun(in path: String) -> [String] {
    let fm = FileManager.default
    let checkpoints = (try? CheckpointFiles.list(path)) ?? []
    var names = runFiles.filter { fm.fileExists(atPath: path + "/" + $0) }
    names += checkpoints.map { ($0.path as NSString).lastPathComponent }
    if fm.fileExists(atPath: path + "/tensorboard") { names.append("tensorboard") }
    return names
  }

  /// Checks that `file` can be created: its directory exists (or, `creatingDirectories`, the
  /// nearest existing one above it) and is writable.
  public static func checkWritable(file: String, creatingDirectories: Bool = false) throws {
    var directory = (file as NSString).deletingLastPathComponent
    if directory.isEmpty { directory = "." }
    var existing = directory
    while creatingDirectories && !FileManager.default.fileExists(atPath: existing) && existing != "/" && !existing.isEmpty {
      existing = (existing as NSString).deletingLastPathComponent
    }
    if existing.isEmpty { existing = "." }
    var isDirectory: ObjCBool = false
    guard FileManager.default.fileExists(atPath: existing, isDirectory: &isDirectory), isDirectory.boolValue else {
      throw TrainingError.unwritable(path: file, reason: "\(existing) is not a directory (it must exist)")
    }
    guard access(existing, W_OK | X_OK) == 0 else {
      throw TrainingError.unwritable(path: file, reason: "\(existing) is not writable")
    }
  }

  /// Makes `path` ready for a new run (after `check` and after the run has validated its
  /// settings, model and data): creates it, and with `overwrite` removes every file of an
  /// earlier run (metrics, config, model, checkpoints, TensorBoard events), so nothing of it
  /// is left beside the new run's files.
  public static func prepare(_ path: String, overwrite: Bool) throws {
    let fm = FileManager.default
    try check(path, overwrite: overwrite)
    do { try fm.createDirectory(atPath: path, withIntermediateDirectories: true) } catch {
      throw TrainingError.unwritable(path: path, reason: "cannot create the directory: \(error.localizedDescription)")
    }
    for name in earlierRun(in: path) {
      do { try fm.removeItem(atPath: path + "/" + name) } catch {
        throw TrainingError.unwritable(
          path: path + "/" + name, reason: "cannot remove the earlier run's file: \(error.localizedDescription)")
      }
    }
  }

  static func writeText(_ text: String, to path: String) throws {
    try ModelFile.writeAtomically(Data(text.utf8), to: path)
  }
}
