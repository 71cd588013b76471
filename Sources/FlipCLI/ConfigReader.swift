import FlipBNN
import Foundation

/// A config file problem, with the path of the offending key (`layers[2].units`).
public struct ConfigError: Error, CustomStringConvertible, Equatable {
  public var file: String
  public var path: String
  public var message: String
  public var description: String { "\(file): \(path.isEmpty ? "" : "\(path): ")\(message)" }
}

/// Strict access to one YAML mapping: every key must be read, or `finish()` names the unknown
/// ones and lists what is accepted. Numbers may be written as strings (YAML 1.1 reads `1e-3` so).
final class ConfigMap {
  let file: String
  let path: String
  let values: [String: Any]
  private var used: Set<String> = []

  init(_ value: Any?, file: String, path: String) throws {
    self.file = file
    self.path = path
    if value == nil || value is NSNull {
      values = [:]
    } else if let m = value as? [String: Any] {
      values = m
    } else if let m = value as? [AnyHashable: Any] {
      var out: [String: Any] = [:]
      for (k, v) in m {
        guard let s = k as? String else {
          throw ConfigError(file: file, path: path, message: "keys must be strings, found \(k)")
        }
        out[s] = v
      }
      values = out
    } else {
      throw ConfigError(
        file: file, path: path, message: "expected a mapping (key: value), found \(Self.describe(value))")
    }
  }

  func error(_ key: String, _ message: String) -> ConfigError {
    ConfigError(file: file, path: path.isEmpty ? key : "\(path).\(key)", message: message)
  }

  static func describe(_ v: Any?) -> String {
    guard let v else { return "nothing" }
    if v is NSNull { return "null" }
    if let s = v as? String { return "'\(s)'" }
    return "\(v)"
  }

  func has(_ key: String) -> Bool { values[key] != nil }

  func raw(_ key: String) -> Any? {
    used.insert(key)
    guard let v = values[key], !(v is NSNull) else { return nil }
    return v
  }

  func string(_ key: String) throws -> String? {
    guard let v = raw(key) else { return nil }
    if let s = v as? String { return s }
    throw error(key, "expected a string, found \(Self.describe(v))")
  }

  func double(_ key: String) throws -> Double? {
    guard let v = raw(key) else { return nil }
    if let b = v as? Bool { throw error(key, "expected a number, found \(b)") }
    if let d = v as? Double { return d }
    if let i = v as? Int { return Double(i) }
    if let s = v as? String, let d = Double(s.trimmingCharacters(in: .whitespaces)) { return d }
    throw error(key, "expected a number, found \(Self.describe(v))")
  }

  func int(_ key: String) throws -> Int? {
    guard let v = raw(key) else { return nil }
    if let b = v as? Bool { throw error(key, "expected an integer, found \(b)") }
    if let i = v as? Int { return i }
    if let d = v as? Double, d == d.rounded(), abs(d) < 1e15 { return Int(d) }
    if let s = v as? String, let i = Int(s) { return i }
    throw error(key, "expected an integer, found \(Self.describe(v))")
  }

  func bool(_ key: String) throws -> Bool? {
    guard let v = raw(key) else { return nil }
    if let b = v as? Bool { return b }
    if let s = v as? String, ["true", "false"].contains(s.lowercased()) { return s.lowercased() == "true" }
    throw error(key, "expected true or false, found \(Self.describe(v))")
  }

  func ints(_ key: String) throws -> [Int]? {
    guard let v = raw(key) else { return nil }
    if let i = v as? Int { return [i] }
    guard let list = v as? [Any] else {
      throw error(key, "expected an integer or a list of integers, found \(Self.describe(v))")
    }
    return try list.map {
      guard let i = $0 as? Int else { throw error(key, "expected integers, found \(Self.describe($0))") }
      return i
    }
  }

  func doubles(_ key: String) throws -> [Double]? {
    guard let v = raw(key) else { return nil }
    guard let list = v as? [Any] else { throw error(key, "expected a list of numbers, found \(Self.describe(v))") }
    return try list.map {
      if let d = $0 as? Double { return d }
      if let i = $0 as? Int { return Double(i) }
      if let s = $0 as? String, let d = Double(s) { return d }
      throw error(key, "expected numbers, found \(Self.describe($0))")
    }
  }

  func list(_ key: String) throws -> [Any]? {
    guard let v = raw(key) else { return nil }
    guard let l = v as? [Any] else { throw error(key, "expected a list, found \(Self.describe(v))") }
    return l
  }

  func map(_ key: String) throws -> ConfigMap? {
    guard let v = raw(key) else { return nil }
    return try ConfigMap(v, file: file, path: path.isEmpty ? key : "\(path).\(key)")
  }

  /// Throws for every key that was never read.
  func finish(accepted: [String]? = nil) throws {
    let unknown = Set(values.keys).subtracting(used).sorted()
    guard let first = unknown.first else { return }
    let known = (accepted ?? Array(used)).sorted().joined(separator: ", ")
    throw error(first, "unknown key '\(first)' (accepted here: \(known))")
  }
}
