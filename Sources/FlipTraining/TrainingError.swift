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
    }
  }
}
