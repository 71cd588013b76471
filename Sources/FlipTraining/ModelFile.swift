import FlipBNN
import Foundation

/// `model.safetensors`: a trained model's variables in the safetensors layout.
///
/// Tensors are named by the store's views, `layers.<index>.<layer name>.<role>` (e.g.
/// `layers.1.quant_dense.kernel`), in Keras's layouts (Dense `[in, out]`, Conv2D
/// `[kh, kw, cin, cout]`); kernels are the latent (real-valued) weights. Metadata:
/// `format` = `flip-model`, `format_version`, `model` (the preset or `custom`), `config` (the
/// effective run config as YAML), `step`, `epoch`, and `payload_fnv1a64` (a checksum of the data).
public enum ModelFile {
  public static let format = "flip-model"
  public static let formatVersion = "1"

  /// Writes the model to `path` atomically (a temporary file in the same directory, then rename).
  public static func save(_ model: Sequential, to path: String, metadata extra: [String: String]) throws {
    var tensors: [String: SafeTensors.Tensor] = [:]
    for v in model.store.views + model.store.stateViews {
      let p = model.store.pointer(v)
      tensors[v.name] = SafeTensors.Tensor(shape: v.shape, values: Array(UnsafeBufferPointer(start: p, count: v.count)))
    }
    var metadata = extra
    metadata["format"] = format
    metadata["format_version"] = formatVersion
    metadata["payload_fnv1a64"] = checksum(tensors)
    let data = try SafeTensors.encode(tensors, metadata: metadata)
    try writeAtomically(data, to: path)
  }

  /// Reads and validates `path`; returns the tensors and metadata without touching a model.
  public static func read(path: String) throws -> (tensors: [String: SafeTensors.Tensor], metadata: [String: String]) {
    guard FileManager.default.fileExists(atPath: path) else {
      throw TrainingError.fileNotFound(
        path: path, hint: "Train a model first (flip train --out DIR) or check the path.")
    }
    guard let data = FileManager.default.contents(atPath: path) else {
      throw TrainingError.unreadable(path: path, reason: "permission denied or not a regular file")
    }
    let (tensors, metadata) = try SafeTensors.decode(data, path: path)
    guard metadata["format"] == format else {
      throw TrainingError.modelFile(
        path: path, reason: "not a Flip model (metadata format is \(metadata["format"] ?? "missing"))")
    }
    guard metadata["format_version"] == formatVersion else {
      throw TrainingError.modelFile(
        path: path,
        reason:
          "format version \(metadata["format_version"] ?? "missing") is not supported (this Flip reads \(formatVersion))"
      )
    }
    guard metadata["payload_fnv1a64"] == checksum(tensors) else {
      throw TrainingError.modelFile(path: path, reason: "payload checksum mismatch: the file is corrupt")
    }
    return (tensors, metadata)
  }

  /// Copies `tensors` into `model`, checking that names and shapes match exactly.
  public static func load(_ tensors: [String: SafeTensors.Tensor], into model: Sequential, path: String) throws {
    let views = model.store.views + model.store.stateViews
    let expected = Set(views.map(\.name))
    let missing = expected.subtracting(tensors.keys).sorted()
    let extra = Set(tensors.keys).subtracting(expected).sorted()
    if !missing.isEmpty || !extra.isEmpty {
      var parts: [String] = []
      if !missing.isEmpty { parts.append("missing tensors: \(missing.joined(separator: ", "))") }
      if !extra.isEmpty { parts.append("unexpected tensors: \(extra.joined(separator: ", "))") }
      throw TrainingError.modelFile(path: path, reason: "does not match the model (\(parts.joined(separator: "; ")))")
    }
    for v in views {
      let t = tensors[v.name]!
      guard t.shape == v.shape else {
        throw TrainingError.modelFile(
          path: path, reason: "tensor \(v.name) has shape \(t.shape), the model needs \(v.shape)")
      }
      t.values.withUnsafeBufferPointer { model.store.pointer(v).update(from: $0.baseAddress!, count: v.count) }
    }
  }

  /// FNV-1a (64-bit) over the tensors' names and bytes in name order, as hex.
  static func checksum(_ tensors: [String: SafeTensors.Tensor]) -> String {
    var h: UInt64 = 0xCBF2_9CE4_8422_2325
    @inline(__always) func mix(_ b: UInt8) { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01B3 }
    for name in tensors.keys.sorted() {
      for b in name.utf8 { mix(b) }
      tensors[name]!.values.withUnsafeBytes { for b in $0 { mix(b) } }
    }
    return String(h, radix: 16)
  }

  /// Writes to `path.tmp-<pid>`, fsyncs, renames into place, fsyncs the directory.
  public static func writeAtomically(_ data: Data, to path: String) throws {
    let directory = (path as NSString).deletingLastPathComponent
    let temporary = path + ".tmp-\(getpid())"
    guard FileManager.default.createFile(atPath: temporary, contents: nil) else {
      throw TrainingError.unwritable(path: temporary, reason: String(cString: strerror(errno)))
    }
    do {
      let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: temporary))
      try handle.write(contentsOf: data)
      try handle.synchronize()
      try handle.close()
      guard rename(temporary, path) == 0 else {
        throw TrainingError.unwritable(path: path, reason: String(cString: strerror(errno)))
      }
    } catch let e as TrainingError {
      unlink(temporary)
      throw e
    } catch {
      unlink(temporary)
      throw TrainingError.unwritable(path: path, reason: "\(error.localizedDescription)")
    }
    let fd = open(directory.isEmpty ? "." : directory, O_RDONLY)
    if fd >= 0 {
      fsync(fd)
      close(fd)
    }
  }
}
