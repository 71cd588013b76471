import FlipBNN
import FlipTensor

/// Errors of data loading, model files and training. Each names the file or value at fault
/// and says what to do.
public enum TrainingError: Error, CustomStringConvertible, Equatable {
  case fileNotFound(path: String, hint: String)
  case unreadable(path: String, reason: String)
  case corruptData(path: String, reason: String)
  case datasetMismatch(String)
  case invalidArgument(String)
  case unwritable(path: String, reason: String)
  case modelFile(path: String, reason: String)
  case nonFinite(String)
  case replicasDiverged(step: Int, ranks: [Int])
  /// `--resume-or-start`: the settings given differ from the run's in keys a resume keeps
  /// (each difference as `key: the run's value, given value`).
  case runSettingsDiffer(directory: String, differences: [String])
  /// Fast kernels that disagree with their references on this rank's CPU (`flip selftest`).
  case kernelCheckFailed(rank: Int, host: String, failures: [KernelCheck])

  public var description: String {
    switch self {
    case .fileNotFound(let p, let hint): return "\(p): no such file. \(hint)"
    case .unreadable(let p, let r): return "\(p): cannot read: \(r)"
    case .corruptData(let p, let r): return "\(p): corrupt data: \(r)"
    case .datasetMismatch(let r): return "data set mismatch: \(r)"
    case .invalidArgument(let r): return r
    case .unwritable(let p, let r): return "\(p): cannot write: \(r)"
    case .modelFile(let p, let r): return "\(p): \(r)"
    case .nonFinite(let r): return "training diverged: \(r)"
    case .replicasDiverged(let step, let ranks):
      return
        "the model replicas differ at step \(step): ranks \(ranks.map(String.init).joined(separator: ", ")) disagree with rank 0 (weights or optimizer state); the job stops rather than train inconsistent copies"
    case .runSettingsDiffer(let directory, let differences):
      return
        "\(directory) holds a run with other settings: \(differences.joined(separator: "; ")). Give the run's own settings (its config.yaml), or another directory for a new run"
    case .kernelCheckFailed(let rank, let host, let failures):
      let list = failures.prefix(3).map {
        "\($0.kernel) of \($0.layer) (\($0.implementation)) is off by \($0.maxError) (tolerance \($0.tolerance))"
      }
      let more = failures.count > 3 ? "; and \(failures.count - 3) more" : ""
      return
        "kernel self-check failed on rank \(rank) (host \(host), oneDNN ISA \(OneDNN.effectiveISA)): \(list.joined(separator: "; "))\(more). This CPU's kernels compute wrong results; run `flip selftest` with the same model on \(host) for the whole table. `--binary-forward fp32` avoids the int8 kernels; `--skip-selftest` skips this check"
    }
  }
}
