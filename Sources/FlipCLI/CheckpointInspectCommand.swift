import ArgumentParser
import FlipTraining
import Foundation

/// `flip checkpoint inspect FILE`: validates a Flip file and prints its metadata and tensors.
struct CheckpointInspectCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "inspect",
    abstract: "Validate a model, checkpoint or binary-export file and list its metadata and tensors.")

  @Argument(help: "The file (e.g. runs/mlp/model.safetensors).")
  var file: String

  func run() throws {
    do {
      let (tensors, metadata) = try ModelFile.read(path: file)
      print(Self.report(path: file, tensors: tensors, metadata: metadata), terminator: "")
    } catch {
      Runtime.report(error, rank: 0)
      throw ExitCode.failure
    }
  }

  /// Keys printed on their own line (in this order) or in the checksum line.
  static let headline: [(key: String, label: String)] = [
    ("format", "kind"), ("format_version", "format version"), ("model", "model"), ("step", "step"),
    ("epoch", "epoch"), ("world_size", "world size"),
  ]
  static let checksums = [("payload_crc32", "crc32"), ("payload_fnv1a64", "fnv1a64")]

  /// The text `inspect` prints for a file that `ModelFile.read` validated.
  static func report(path: String, tensors: [String: SafeTensors.Tensor], metadata: [String: String]) -> String {
    var out = "file: \(path)\n"
    for (key, label) in headline {
      if let v = metadata[key] { out += "\(label): \(v)\n" }
    }
    let known = Set(headline.map(\.key) + checksums.map(\.0))
    let others = metadata.keys.filter { !known.contains($0) }.sorted()
    if !others.isEmpty {
      out += "metadata:\n"
      for key in others { out += "  \(key): \(brief(metadata[key]!))\n" }
    }
    let names = tensors.keys.sorted()
    out += "tensors:\n"
    var rows = [["tensor", "dtype", "shape", "bytes"]]
    for name in names {
      let t = tensors[name]!
      rows.append([
        name, t.dtype.rawValue, "[" + t.shape.map(String.init).joined(separator: ", ") + "]", String(t.count * 4),
      ])
    }
    let widths = (0..<4).map { c in rows.map { $0[c].count }.max()! }
    for row in rows {
      let cells = row.enumerated().map { c, s in
        let pad = String(repeating: " ", count: widths[c] - s.count)
        return c == 3 ? pad + s : s + pad
      }
      out += "  " + cells.joined(separator: "  ") + "\n"
    }
    let elements = tensors.values.reduce(0) { $0 + $1.count }
    let optimizer = names.filter { $0.hasPrefix(ModelFile.optimizerPrefix) }
    let optimizerBytes = optimizer.reduce(0) { $0 + tensors[$1]!.count * 4 }
    out += "total: \(names.count) tensors, \(elements) elements, \(elements * 4) bytes"
    out += optimizer.isEmpty ? "\n" : " (optimizer state: \(optimizer.count) tensors, \(optimizerBytes) bytes)\n"
    for (key, label) in checksums {
      if let v = metadata[key] {
        out += "valid: checksum \(label) \(v) matches\n"
        break
      }
    }
    return out
  }

  /// A metadata value on one line: short ones as they are; multi-line or long ones (the YAML
  /// config, JSON maps) as their size and the start of their first line.
  static func brief(_ value: String) -> String {
    let firstLine = value.split(separator: "\n", omittingEmptySubsequences: false).first.map(String.init) ?? ""
    guard value.contains("\n") || value.count > 72 else { return value }
    let start = firstLine.count > 48 ? String(firstLine.prefix(48)) + "…" : firstLine
    return "\(value.utf8.count) bytes, first line: \(start)"
  }
}
