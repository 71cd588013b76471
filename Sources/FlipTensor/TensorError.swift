/// Errors of the tensor core. Each names the failing call so a user can report it.
public enum TensorError: Error, CustomStringConvertible, Equatable {
  /// A oneDNN call returned a status other than success.
  case onednn(function: String, status: Int)
  /// Operand sizes that cannot be multiplied or convolved.
  case shapeMismatch(String)
  /// A precision that this build has no kernel for.
  case unsupportedPrecision(String)

  public var description: String {
    switch self {
    case .onednn(let function, let status):
      return "oneDNN \(function) failed with status \(status) (\(OneDNN.statusName(status)))"
    case .shapeMismatch(let what): return "shape mismatch: \(what)"
    case .unsupportedPrecision(let what): return "unsupported precision: \(what)"
    }
  }
}
