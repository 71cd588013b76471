import FlipBNN
import FlipComm
import FlipTensor
import Foundation

/// Flip's files in the safetensors layout — trained models (`model.safetensors`), training
/// checkpoints (`ckpt-NNNNNN.safetensors`) and binary exports — written and read by one
/// writer and one validating reader.
///
/// Tensors are named by the store's views, `layers.<index>.<layer name>.<role>` (e.g.
/// `layers.1.quant_dense.kernel`), in Keras's layouts (Dense `[in, out]`, Conv2D
/// `[kh, kw, cin, cout]`); kernels are the latent (real-valued) weights. Checkpoints add the
/// optimizer state as `optimizer.<state>.<variable>` (e.g. `optimizer.adam.m.layers.1.quant_dense.kernel`).
/// Metadata: `format` (the kind), `format_version`, `model` (the preset or `custom`), `config`
/// (the effective run config as YAML), `step`, `epoch`, and `payload_crc32` (zlib's CRC-32 of
/// the data section, as Python's `zlib.crc32`) and `header_crc32` (of the metadata and the tensor
/// index; see `headerChecksum`).
public enum ModelFile {
  public enum Kind: String, Sendable, CaseIterable {
    case model = "flip-model"
    case checkpoint = "flip-checkpoint"
    case binaryExport = "flip-binary"
  }

  public static let formatVersion = "2"
  /// Prefix of optimizer-state tensors in checkpoints.
  public static let optimizerPrefix = "optimizer."

  /// The model's variables (trainable and state) as tensors.
  public static func tensors(of model: Model) -> [String: SafeTensors.Tensor] {
    var tensors: [String: SafeTensors.Tensor] = [:]
    for v in model.store.views + model.store.stateViews {
      let p = model.store.pointer(v)
      tensors[v.name] = SafeTensors.Tensor(shape: v.shape, values: Array(UnsafeBufferPointer(start: p, count: v.count)))
    }
    return tensors
  }

  /// The model's variables (trainable and state) in place, for writing without a copy.
  public static func refs(of model: Model) -> [SafeTensors.TensorRef] {
    (model.store.views + model.store.stateViews).map { v in
      SafeTensors.TensorRef(name: v.name, shape: v.shape, floats: model.store.pointer(v), count: v.count)
    }
  }

  /// Writes the model to `path` atomically (a temporary file in the same directory, then rename).
  public static func save(_ model: Model, to path: String, metadata extra: [String: String]) throws {
    try write(refs(of: model), metadata: extra, kind: .model, to: path, compute: model.compute)
  }

  /// Encodes `tensors` with Flip's metadata (kind, version, checksums).
  public static func encode(_ tensors: [String: SafeTensors.Tensor], metadata extra: [String: String], kind: Kind)
    throws -> Data
  {
    try SafeTensors.withPacked(tensors) { refs, payload in
      var out = try SafeTensors.header(refs, metadata: stamp(refs, metadata: extra, kind: kind, compute: .serial))
      out.append(payload)
      return out
    }
  }

  /// `extra` plus Flip's keys for the tensors `refs` (in file order): the kind, the format
  /// version, and the header and payload checksums.
  static func stamp(_ refs: [SafeTensors.TensorRef], metadata extra: [String: String], kind: Kind, compute: Compute)
    -> [String: String]
  {
    var metadata = extra
    metadata["format"] = kind.rawValue
    metadata["format_version"] = formatVersion
    metadata[headerChecksumKey] = nil
    metadata["payload_crc32"] = nil
    var at = 0
    let index = refs.map { t -> (String, SafeTensors.DType, [Int], Range<Int>) in
      defer { at += t.bytes.count }
      return (t.name, t.dtype, t.shape, at..<(at + t.bytes.count))
    }
    metadata[headerChecksumKey] = headerChecksum(metadata: metadata, index: index)
    metadata["payload_crc32"] = SafeTensors.crc32Hex(refs, compute: compute)
    return metadata
  }

  /// `encode`, then an atomic write to `path`.
  public static func write(
    _ tensors: [String: SafeTensors.Tensor], metadata: [String: String], kind: Kind, to path: String
  ) throws {
    try writeAtomically(try encode(tensors, metadata: metadata, kind: kind), to: path)
  }

  /// Reads and validates `path`; returns the tensors and metadata without touching a model.
  public static func read(path: String) throws -> (tensors: [String: SafeTensors.Tensor], metadata: [String: String]) {
    try decode(try readBytes(path: path), path: path)
  }

  /// The bytes of `path`, with clear errors for a missing or unreadable file or a directory.
  public static func readBytes(path: String) throws -> Data {
    var isDirectory: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
      throw TrainingError.fileNotFound(
        path: path, hint: "Train a model first (flip train --out DIR) or check the path.")
    }
    guard !isDirectory.boolValue else {
      throw TrainingError.unreadable(path: path, reason: "it is a directory, not a Flip file")
    }
    guard let data = FileManager.default.contents(atPath: path) else {
      throw TrainingError.unreadable(path: path, reason: "permission denied or not a regular file")
    }
    return data
  }

  /// Validates a whole file's bytes: the safetensors layout, Flip's format and version, and
  /// the payload checksum. Never crashes on hostile input; every failure names `path`.
  public static func decode(_ data: Data, path: String) throws -> (
    tensors: [String: SafeTensors.Tensor], metadata: [String: String]
  ) {
    let c = try SafeTensors.decodeContents(data, path: path)
    let metadata = c.metadata
    guard let format = metadata["format"], Kind(rawValue: format) != nil else {
      throw TrainingError.modelFile(
        path: path, reason: "not a Flip file (metadata format is \(metadata["format"] ?? "missing"))")
    }
    switch metadata["format_version"] {
    case formatVersion:
      guard let expected = metadata["payload_crc32"] else {
        throw TrainingError.modelFile(path: path, reason: "the metadata has no payload_crc32 checksum")
      }
      guard expected == c.payloadCRC32 else {
        throw TrainingError.modelFile(
          path: path,
          reason: "payload checksum mismatch (crc32 \(c.payloadCRC32), expected \(expected)): the file is corrupt")
      }
      let header = headerChecksum(of: c)
      guard metadata[headerChecksumKey] == header else {
        throw TrainingError.modelFile(
          path: path,
          reason:
            "header checksum mismatch (crc32 \(header), expected \(metadata[headerChecksumKey] ?? "none")): the metadata or tensor index is corrupt"
        )
      }
    case "1":  // Flip's first model files: FNV-1a over names and bytes.
      guard metadata["payload_fnv1a64"] == fnv1a64Checksum(c.tensors) else {
        throw TrainingError.modelFile(path: path, reason: "payload checksum mismatch: the file is corrupt")
      }
    default:
      throw TrainingError.modelFile(
        path: path,
        reason:
          "format version \(metadata["format_version"] ?? "missing") is not supported (this Flip reads 1 and \(formatVersion))"
      )
    }
    return (c.tensors, metadata)
  }

  /// Metadata key of the header checksum: zlib's CRC-32 of the metadata (without the two
  /// checksums) and the tensor index, in the canonical text form of `headerChecksum`.
  public static let headerChecksumKey = "header_crc32"

  /// The header checksum a decoded file should carry: `headerChecksum(metadata:index:)` of
  /// its metadata without the two checksums and of its tensor index.
  public static func headerChecksum(of c: SafeTensors.Contents) -> String {
    var covered = c.metadata
    covered[headerChecksumKey] = nil
    covered["payload_crc32"] = nil
    return headerChecksum(
      metadata: covered,
      index: c.tensors.keys.sorted().map { ($0, c.tensors[$0]!.dtype, c.tensors[$0]!.shape, c.offsets[$0]!) })
  }

  /// CRC-32 of `key=value` lines of the metadata in key order, then `name dtype [shape]
  /// begin end` lines of the tensors in name order: a flipped byte anywhere in the header that
  /// still parses (a digit of a step, a shape, an offset) is caught.
  static func headerChecksum(
    metadata: [String: String], index: [(name: String, dtype: SafeTensors.DType, shape: [Int], range: Range<Int>)]
  ) -> String {
    var text = ""
    for key in metadata.keys.sorted() { text += "\(key)=\(metadata[key]!)\n" }
    for t in index { text += "\(t.name) \(t.dtype.rawValue) \(t.shape) \(t.range.lowerBound) \(t.range.upperBound)\n" }
    return SafeTensors.crc32Hex(Data(text.utf8))
  }

  /// Writes a Flip file straight from tensors in memory (a checkpoint from the model's and
  /// the optimizer's buffers): checksums computed in place, header and tensors written with
  /// no intermediate copy, atomically as `writeAtomically`; the payload's checksum on
  /// `compute`'s threads. Returns the file's size.
  @discardableResult
  public static func write(
    _ unsorted: [SafeTensors.TensorRef], metadata extra: [String: String], kind: Kind, to path: String,
    compute: Compute = .serial
  ) throws -> Int {
    let refs = unsorted.sorted { $0.name < $1.name }
    let header = try SafeTensors.header(refs, metadata: stamp(refs, metadata: extra, kind: kind, compute: compute))
    #if _endian(big)
      // Memory is not the file's byte order: go through the converting encoder.
      var tensors: [String: SafeTensors.Tensor] = [:]
      for t in refs { tensors[t.name] = .init(shape: t.shape, values: Array(t.bytes.bindMemory(to: Float.self))) }
      try writeAtomically(try encode(tensors, metadata: extra, kind: kind), to: path)
    #else
      try header.withUnsafeBytes { h in try writeAtomically(pieces: [h] + refs.map(\.bytes), to: path) }
    #endif
    return header.count + refs.reduce(0) { $0 + $1.bytes.count }
  }

  /// The kind of a decoded file.
  public static func kind(_ metadata: [String: String]) -> Kind? { metadata["format"].flatMap(Kind.init) }

  /// Copies the model tensors among `tensors` (optimizer state is skipped) into `model`,
  /// checking that names, dtypes and shapes match exactly. Bit-packed U32 kernels of a binary
  /// export are unpacked to ±1 when `metadata`'s `binary_kernels` lists them. Nothing is
  /// copied unless every tensor checks out.
  public static func load(
    _ all: [String: SafeTensors.Tensor], into model: Model, path: String, metadata: [String: String] = [:]
  ) throws {
    let views = model.store.views + model.store.stateViews
    let packed = try BinaryExport.packedKernels(in: metadata, path: path)
    let values = try self.values(for: views, from: all, packedKernels: packed, path: path)
    for (v, x) in zip(views, values) {
      x.withUnsafeBufferPointer { model.store.pointer(v).update(from: $0.baseAddress!, count: v.count) }
    }
  }

  /// Each view's values from `all` (optimizer state aside): the names must match the views
  /// exactly (all missing and unexpected names in one error), each tensor must be F32 of the
  /// view's shape, or a U32 kernel packed as `BinaryExport` packs it. With `packedKernels`,
  /// a U32 tensor must be listed there and agree with the view; with nil, the view's shape
  /// alone says how to unpack it.
  static func values(
    for views: [ParameterView], from all: [String: SafeTensors.Tensor],
    packedKernels: [String: BinaryExport.PackedKernel]?, path: String
  ) throws -> [[Float]] {
    let tensors = all.filter { !$0.key.hasPrefix(optimizerPrefix) }
    let expected = Set(views.map(\.name))
    let missing = expected.subtracting(tensors.keys).sorted()
    let extra = Set(tensors.keys).subtracting(expected).sorted()
    if !missing.isEmpty || !extra.isEmpty {
      let parts = [("missing", missing), ("unexpected", extra)].filter { !$0.1.isEmpty }
        .map { "\($0.0) tensors: \($0.1.joined(separator: ", "))" }
      throw TrainingError.modelFile(path: path, reason: "does not match the model (\(parts.joined(separator: "; ")))")
    }
    var mismatches: [String] = []
    var result: [[Float]] = []
    for v in views {
      let t = tensors[v.name]!
      switch t.dtype {
      case .f32:
        if t.shape == v.shape {
          result.append(t.values)
        } else {
          mismatches.append("tensor \(v.name) has shape \(t.shape), the model needs \(v.shape)")
        }
      case .u32:
        guard v.role == .kernel else {
          throw TrainingError.modelFile(
            path: path, reason: "tensor \(v.name) has dtype U32; only kernels can be bit-packed, expected F32")
        }
        if let packedKernels {
          guard let entry = packedKernels[v.name] else {
            throw TrainingError.modelFile(
              path: path,
              reason:
                "tensor \(v.name) is U32 (bit-packed) but the metadata's \(BinaryExport.binaryKernelsKey) does not list it"
            )
          }
          let length = v.shape[v.shape.count - 2]
          guard entry.kerasShape == v.shape, entry.axisLength == length else {
            mismatches.append(
              "packed kernel \(v.name) unpacks to shape \(entry.kerasShape) (packed axis \(entry.axisLength)), the model needs \(v.shape) (packed axis \(length))"
            )
            continue
          }
        }
        result.append(try BinaryExport.unpack(t, kerasShape: v.shape, name: v.name, path: path))
      }
    }
    for name in (packedKernels ?? [:]).keys.sorted() where tensors[name]?.dtype != .u32 {
      throw TrainingError.modelFile(
        path: path,
        reason:
          "the metadata's \(BinaryExport.binaryKernelsKey) lists \(name), but the file has no U32 tensor of that name")
    }
    if !mismatches.isEmpty {
      throw TrainingError.modelFile(
        path: path, reason: "does not match the model: \(mismatches.joined(separator: "; "))")
    }
    return result
  }

  /// Format version 1's checksum: FNV-1a (64-bit) over the tensors' names and bytes in name order.
  public static func fnv1a64Checksum(_ tensors: [String: SafeTensors.Tensor]) -> String {
    var h = FNV1a.offsetBasis
    for name in tensors.keys.sorted() {
      h = FNV1a.hash(name.utf8, seed: h)
      let t = tensors[name]!
      if t.dtype == .f32 {
        t.values.withUnsafeBytes { h = FNV1a.hash($0, seed: h) }
      } else {
        t.words.withUnsafeBytes { h = FNV1a.hash($0, seed: h) }
      }
    }
    return String(h, radix: 16)
  }

  /// Writes to `path.tmp-<pid>` in the same directory, fsyncs it, renames it into place and
  /// fsyncs the directory. On failure the temporary file is removed and `path` is untouched.
  public static func writeAtomically(_ data: Data, to path: String) throws {
    try data.withUnsafeBytes { try writeAtomically(pieces: [$0], to: path) }
  }

  /// `writeAtomically` of the concatenation of `pieces`.
  public static func writeAtomically(pieces: [UnsafeRawBufferPointer], to path: String) throws {
    let directory = (path as NSString).deletingLastPathComponent
    let temporary = path + ".tmp-\(getpid())"
    let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    guard fd >= 0 else {
      throw TrainingError.unwritable(path: temporary, reason: String(cString: strerror(errno)))
    }
    func fail(_ what: String) -> TrainingError {
      let reason = "\(what): \(String(cString: strerror(errno)))"
      close(fd)
      unlink(temporary)
      return TrainingError.unwritable(path: path, reason: reason)
    }
    let ok = pieces.allSatisfy { raw -> Bool in
      var at = 0
      while at < raw.count {
        let n = Foundation.write(fd, raw.baseAddress! + at, min(raw.count - at, 1 << 30))
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else { return false }
        at += n
      }
      return true
    }
    guard ok else { throw fail("write failed") }
    guard fsync(fd) == 0 else { throw fail("fsync failed") }
    guard close(fd) == 0 else {
      unlink(temporary)
      throw TrainingError.unwritable(path: path, reason: "close failed: \(String(cString: strerror(errno)))")
    }
    guard rename(temporary, path) == 0 else {
      let reason = String(cString: strerror(errno))
      unlink(temporary)
      throw TrainingError.unwritable(path: path, reason: "rename failed: \(reason)")
    }
    let dfd = open(directory.isEmpty ? "." : directory, O_RDONLY | O_CLOEXEC)
    if dfd >= 0 {
      fsync(dfd)
      close(dfd)
    }
  }
}
