/// Errors a user can cause through a model or optimizer description. Each says what is wrong
/// and, where it helps, what is accepted instead.
public enum BNNError: Error, CustomStringConvertible, Equatable {
  case unknownQuantizer(String)
  case unknownActivation(String)
  case unknownConstraint(String)
  case unknownOptimizer(String)
  case unknownSchedule(String)
  case unknownLayer(String)
  case invalidParameter(owner: String, parameter: String, reason: String)
  case shapeMismatch(layer: String, reason: String)
  case variableClaimedTwice(variable: String, optimizers: [String])
  case variableUnclaimed(variable: String)

  public var description: String {
    switch self {
    case .unknownQuantizer(let n):
      return "unknown quantizer '\(n)'; known: \(QuantizerKind.allCases.map(\.rawValue).joined(separator: ", ")), none"
    case .unknownActivation(let n):
      return "unknown activation '\(n)'; known: \(ActivationKind.allCases.map(\.rawValue).joined(separator: ", "))"
    case .unknownConstraint(let n):
      return "unknown kernel constraint '\(n)'; known: weight_clip, none"
    case .unknownOptimizer(let n):
      return "unknown optimizer '\(n)'; known: adam, sgd, bop, case"
    case .unknownSchedule(let n):
      return "unknown schedule '\(n)'; known: constant, exponential_decay, step_decay, cosine_decay, polynomial_decay, linear_warmup"
    case .unknownLayer(let n):
      return "unknown layer type '\(n)'; known: \(LayerKind.allCases.map(\.rawValue).joined(separator: ", "))"
    case .invalidParameter(let owner, let parameter, let reason):
      return "\(owner): invalid '\(parameter)': \(reason)"
    case .shapeMismatch(let layer, let reason):
      return "layer \(layer): \(reason)"
    case .variableClaimedTwice(let v, let opts):
      return
        "variable \(v) is claimed by more than one optimizer (\(opts.joined(separator: ", "))); each variable needs exactly one"
    case .variableUnclaimed(let v):
      return "variable \(v) is claimed by no optimizer; add a default optimizer to the case optimizer"
    }
  }
}
