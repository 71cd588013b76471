import Foundation

/// A value of a config file or a settings entry: what YAML and JSON have in common. Run
/// settings travel as these between YAML text, JSON checkpoint entries and the typed specs
/// (`LayerSpec`, `OptimizerSpec`), which parse them strictly with `ConfigMap`.
public enum ConfigValue: Sendable, Equatable, Codable, CustomStringConvertible {
  case null
  case bool(Bool)
  case int(Int)
  case double(Double)
  case string(String)
  case list([ConfigValue])
  case map([String: ConfigValue])

  public init(from decoder: Decoder) throws {
    let c = try decoder.singleValueContainer()
    if c.decodeNil() {
      self = .null
    } else if let b = try? c.decode(Bool.self) {
      self = .bool(b)
    } else if let i = try? c.decode(Int.self) {
      self = .int(i)
    } else if let d = try? c.decode(Double.self) {
      self = .double(d)
    } else if let s = try? c.decode(String.self) {
      self = .string(s)
    } else if let l = try? c.decode([ConfigValue].self) {
      self = .list(l)
    } else {
      self = .map(try c.decode([String: ConfigValue].self))
    }
  }

  public func encode(to encoder: Encoder) throws {
    var c = encoder.singleValueContainer()
    switch self {
    case .null: try c.encodeNil()
    case .bool(let b): try c.encode(b)
    case .int(let i): try c.encode(i)
    case .double(let d): try c.encode(d)
    case .string(let s): try c.encode(s)
    case .list(let l): try c.encode(l)
    case .map(let m): try c.encode(m)
    }
  }

  /// The value as a message shows it: `'text'`, `3`, `[...]`, `{...}`.
  public var description: String {
    switch self {
    case .null: return "null"
    case .bool(let b): return "\(b)"
    case .int(let i): return "\(i)"
    case .double(let d): return ConfigValue.decimal(d)
    case .string(let s): return "'\(s)'"
    case .list(let l): return "[" + l.map(\.description).joined(separator: ", ") + "]"
    case .map(let m): return "{" + m.keys.sorted().map { "\($0): \(m[$0]!)" }.joined(separator: ", ") + "}"
    }
  }

  /// A double as people write it: `0.9`, `0.001`, `1.0e-07`, `256.0` (Swift's shortest text
  /// that reads back to the same bits, with a `.0` before an exponent so YAML 1.1 reads it
  /// as a float).
  public static func decimal(_ d: Double) -> String {
    guard d.isFinite else { return d.isNaN ? ".nan" : (d < 0 ? "-.inf" : ".inf") }
    var text = d.description
    if let e = text.firstIndex(where: { $0 == "e" || $0 == "E" }), !text[..<e].contains(".") {
      text.insert(contentsOf: ".0", at: e)
    }
    return text
  }

  /// A Float as the double with the same shortest decimal text (0.9, not 0.899999976…), so
  /// written settings read as they were written and parse back to the same Float.
  public static func float(_ f: Float) -> ConfigValue { .double(Double(f.description) ?? Double(f)) }

  /// A list of integers.
  public static func ints(_ v: [Int]) -> ConfigValue { .list(v.map { .int($0) }) }
}
