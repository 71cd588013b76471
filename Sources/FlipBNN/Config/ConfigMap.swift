import Foundation

/// A config or settings problem, with the path of the offending key (`layers[2].units`).
public struct ConfigError: Error, CustomStringConvertible, Equatable, Sendable {
  /// The file (or checkpoint entry) the value came from; empty until the reader knows it.
  public var file: String
  public var path: String
  public var message: String

  public init(file: String = "", path: String, message: String) {
    self.file = file
    self.path = path
    self.message = message
  }

  public var description: String {
    (file.isEmpty ? "" : "\(file): ") + (path.isEmpty ? "" : "\(path): ") + message
  }

  /// The same error read from `file`.
  public func inFile(_ file: String) -> ConfigError {
    var e = self
    if e.file.isEmpty { e.file = file }
    return e
  }
}

/// Strict access to one mapping of a config: every key must be read, or `finish()` names the
/// unknown ones and lists what is accepted. Numbers may be written as strings (`'1e-3'`).
public final class ConfigMap {
  public let path: String
  public let values: [String: ConfigValue]
  private var used: Set<String> = []

  public init(_ value: ConfigValue, path: String) throws {
    self.path = path
    switch value {
    case .null: values = [:]
    case .map(let m): values = m
    default:
      throw ConfigError(path: path, message: "expected a mapping (key: value), found \(value)")
    }
  }

  /// The path of `key` inside this mapping.
  public func path(of key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

  public func error(_ key: String, _ message: String) -> ConfigError {
    ConfigError(path: path(of: key), message: message)
  }

  /// The value of `key` (nil when missing or null), marked as read.
  public func raw(_ key: String) -> ConfigValue? {
    used.insert(key)
    guard let v = values[key], v != .null else { return nil }
    return v
  }

  public func string(_ key: String) throws -> String? {
    guard let v = raw(key) else { return nil }
    if case .string(let s) = v { return s }
    throw error(key, "expected a string, found \(v)")
  }

  public func double(_ key: String) throws -> Double? {
    guard let v = raw(key) else { return nil }
    switch v {
    case .double(let d): return d
    case .int(let i): return Double(i)
    case .string(let s):
      if let d = Double(s.trimmingCharacters(in: .whitespaces)) { return d }
    default: break
    }
    throw error(key, "expected a number, found \(v)")
  }

  public func int(_ key: String) throws -> Int? {
    guard let v = raw(key) else { return nil }
    switch v {
    case .int(let i): return i
    case .double(let d) where d == d.rounded() && abs(d) < 1e15: return Int(d)
    case .string(let s):
      if let i = Int(s) { return i }
    default: break
    }
    throw error(key, "expected an integer, found \(v)")
  }

  public func bool(_ key: String) throws -> Bool? {
    guard let v = raw(key) else { return nil }
    switch v {
    case .bool(let b): return b
    case .string(let s) where ["true", "false"].contains(s.lowercased()): return s.lowercased() == "true"
    default: throw error(key, "expected true or false, found \(v)")
    }
  }

  public func ints(_ key: String) throws -> [Int]? {
    guard let v = raw(key) else { return nil }
    if case .int(let i) = v { return [i] }
    guard case .list(let list) = v else {
      throw error(key, "expected an integer or a list of integers, found \(v)")
    }
    return try list.map {
      guard case .int(let i) = $0 else { throw error(key, "expected integers, found \($0)") }
      return i
    }
  }

  public func doubles(_ key: String) throws -> [Double]? {
    guard let v = raw(key) else { return nil }
    guard case .list(let list) = v else { throw error(key, "expected a list of numbers, found \(v)") }
    return try list.map {
      switch $0 {
      case .double(let d): return d
      case .int(let i): return Double(i)
      case .string(let s):
        if let d = Double(s) { return d }
      default: break
      }
      throw error(key, "expected numbers, found \($0)")
    }
  }

  public func list(_ key: String) throws -> [ConfigValue]? {
    guard let v = raw(key) else { return nil }
    guard case .list(let l) = v else { throw error(key, "expected a list, found \(v)") }
    return l
  }

  public func map(_ key: String) throws -> ConfigMap? {
    guard let v = raw(key) else { return nil }
    return try ConfigMap(v, path: path(of: key))
  }

  /// Throws for the first key that was never read, listing the accepted ones.
  public func finish(accepted: [String]? = nil) throws {
    let unknown = Set(values.keys).subtracting(used).sorted()
    guard let first = unknown.first else { return }
    let known = (accepted ?? Array(used)).sorted().joined(separator: ", ")
    throw error(first, "unknown key '\(first)' (accepted here: \(known))")
  }
}
