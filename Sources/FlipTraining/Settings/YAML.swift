import FlipBNN
import Foundation
import Yams

/// YAML text to and from `ConfigValue`s: the one place Flip reads and writes YAML (config files,
/// config.yaml, and the YAML a model file carries).
public enum YAML {
  /// The most nodes a document may expand to, aliases counted at every use: far above any real
  /// config (a graph of a hundred layers is a few thousand values), and far below what an
  /// alias bomb (`&a [*b, *b, ...]` nested) would need to exhaust time or memory.
  public static let largestExpansion = 100_000

  /// Parses one YAML document (an empty one is `.null`); `source` names it in errors.
  public static func load(_ text: String, source: String) throws -> ConfigValue {
    let root: Node?
    do { root = try Yams.compose(yaml: text) } catch {
      throw ConfigError(file: source, path: "", message: "not valid YAML: \(error)")
    }
    guard let root else { return .null }
    var budget = largestExpansion
    return try value(of: root, path: "", source: source, budget: &budget)
  }

  private static func value(of node: Node, path: String, source: String, budget: inout Int) throws -> ConfigValue {
    budget -= 1
    guard budget >= 0 else {
      throw ConfigError(
        file: source, path: path,
        message:
          "the document expands to more than \(largestExpansion) values (aliases counted at each use); write it out without nested aliases"
      )
    }
    switch node {
    case .scalar(let s): return scalar(s, node: node)
    case .sequence(let seq):
      var items: [ConfigValue] = []
      for (i, item) in seq.enumerated() {
        items.append(try value(of: item, path: path + "[\(i)]", source: source, budget: &budget))
      }
      return .list(items)
    case .mapping(let map):
      var out: [String: ConfigValue] = [:]
      for (k, v) in map {
        guard case .scalar(let key) = k else {
          throw ConfigError(file: source, path: path, message: "keys must be strings, found a \(k)")
        }
        let name = key.string
        let child = path.isEmpty ? name : "\(path).\(name)"
        guard out[name] == nil else {
          throw ConfigError(file: source, path: child, message: "the key is given twice")
        }
        out[name] = try value(of: v, path: child, source: source, budget: &budget)
      }
      return .map(out)
    case .alias:
      throw ConfigError(file: source, path: path, message: "an alias that names no anchor")
    }
  }

  /// A plain scalar as YAML 1.1 resolves it (null, bool, int, float, else text); a quoted one
  /// is text.
  private static func scalar(_ s: Node.Scalar, node: Node) -> ConfigValue {
    guard s.style == .plain || s.style == .any else { return .string(s.string) }
    switch Resolver.default.resolveTag(of: node) {
    case .null: return .null
    case .bool: return node.bool.map(ConfigValue.bool) ?? .string(s.string)
    case .int: return node.int.map(ConfigValue.int) ?? .string(s.string)
    case .float: return node.float.map(ConfigValue.double) ?? .string(s.string)
    default: return .string(s.string)
    }
  }

  // MARK: Writing

  /// `value` as block YAML: mappings one key a line (the keys in `order` first, then `type`,
  /// `name`, `inputs`, then by name), lists of scalars in flow style (`[3, 3]`), numbers as
  /// people write them (`0.9`, `0.001`).
  public static func dump(_ value: ConfigValue, order: [String] = []) -> String {
    var out = ""
    write(value, indent: "", order: order, into: &out)
    return out
  }

  private static let leadingKeys = ["type", "name", "inputs"]

  private static func sortedKeys(_ m: [String: ConfigValue], order: [String]) -> [String] {
    let first = order + leadingKeys
    return m.keys.sorted { a, b in
      let ia = first.firstIndex(of: a) ?? Int.max
      let ib = first.firstIndex(of: b) ?? Int.max
      return ia != ib ? ia < ib : a < b
    }
  }

  private static func write(_ value: ConfigValue, indent: String, order: [String], into out: inout String) {
    switch value {
    case .map(let m) where !m.isEmpty:
      for key in sortedKeys(m, order: order) {
        out += indent + plainOrQuoted(key) + ":"
        writeNested(m[key]!, indent: indent, into: &out)
      }
    case .list(let l) where !l.isEmpty && !isFlow(value):
      for item in l {
        out += indent + "-"
        if case .map(let m) = item, !m.isEmpty {
          // The item's first key on the dash's line, the rest under it.
          var body = ""
          write(item, indent: indent + "  ", order: [], into: &body)
          out += " " + body.dropFirst(indent.count + 2)
        } else {
          writeNested(item, indent: indent, into: &out)
        }
      }
    default:
      out += indent + inline(value) + "\n"
    }
  }

  private static func writeNested(_ value: ConfigValue, indent: String, into out: inout String) {
    switch value {
    case .map(let m) where !m.isEmpty:
      out += "\n"
      write(value, indent: indent + "  ", order: [], into: &out)
    case .list(let l) where !l.isEmpty && !isFlow(value):
      out += "\n"
      write(value, indent: indent, order: [], into: &out)
    default:
      out += " " + inline(value) + "\n"
    }
  }

  /// Whether a list is written on one line: every item a scalar.
  private static func isFlow(_ value: ConfigValue) -> Bool {
    guard case .list(let l) = value else { return false }
    return l.allSatisfy {
      switch $0 {
      case .list, .map: return false
      default: return true
      }
    }
  }

  private static func inline(_ value: ConfigValue) -> String {
    switch value {
    case .null: return "null"
    case .bool(let b): return b ? "true" : "false"
    case .int(let i): return String(i)
    case .double(let d): return ConfigValue.decimal(d)
    case .string(let s): return plainOrQuoted(s)
    case .list(let l): return "[" + l.map(inline).joined(separator: ", ") + "]"
    case .map: return "{}"
    }
  }

  /// Text as a plain scalar when YAML reads it back as the same text, else single-quoted.
  static func plainOrQuoted(_ s: String) -> String {
    let safe = CharacterSet.alphanumerics.union(CharacterSet(charactersIn: "_-./+"))
    let plain =
      !s.isEmpty && s.unicodeScalars.allSatisfy { safe.contains($0) } && !"-.+".contains(s.first!)
      && Resolver.default.resolveTag(of: Node(s)) == .str
    if plain || (s.hasPrefix("/") && !s.contains(": ") && !s.contains(" #")) { return s }
    if s.contains("\n") || s.unicodeScalars.contains(where: { $0.value < 0x20 }) {
      let data = (try? JSONEncoder().encode(s)) ?? Data()
      return String(decoding: data, as: UTF8.self)
    }
    return "'" + s.replacingOccurrences(of: "'", with: "''") + "'"
  }
}
