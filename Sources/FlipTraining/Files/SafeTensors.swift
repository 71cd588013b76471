import CZlib
import FlipBNN
import FlipTensor
import Foundation

/// The safetensors layout (github.com/huggingface/safetensors): an 8-byte little-endian header
/// length `n`, `n` bytes of JSON (`{"name": {"dtype", "shape", "data_offsets": [begin, end]},
/// "__metadata__": {string: string}}`, padded with spaces to a multiple of 8), then the tensors'
/// little-endian bytes, packed with no gaps. Flip writes tensors in name order; it reads and
/// writes the dtypes `F32` (floats) and `U32` (bit-packed binary kernels).
public enum SafeTensors {
  /// Largest header Flip accepts: a hostile length must not cause a giant allocation.
  public static let maxHeaderBytes = 64 << 20

  public enum DType: String, Sendable {
    case f32 = "F32"
    case u32 = "U32"
  }

  /// One tensor: `values` for F32, `words` for U32 (the other array is empty).
  public struct Tensor: Equatable, Sendable {
    public var dtype: DType
    public var shape: [Int]
    public var values: [Float]
    public var words: [UInt32]
    public init(shape: [Int], values: [Float]) {
      dtype = .f32
      self.shape = shape
      self.values = values
      words = []
    }
    public init(shape: [Int], words: [UInt32]) {
      dtype = .u32
      self.shape = shape
      self.words = words
      values = []
    }
    /// Elements (both dtypes are 4 bytes wide).
    public var count: Int { dtype == .f32 ? values.count : words.count }
  }

  /// Serializes `tensors` and `metadata` (a flat string map).
  public static func encode(_ tensors: [String: Tensor], metadata: [String: String]) throws -> Data {
    try withPacked(tensors) { refs, payload in
      var out = try header(refs, metadata: metadata)
      out.append(payload)
      return out
    }
  }

  /// Packs `tensors` in name order into one little-endian data section and calls `body` with
  /// it and a reference to each tensor's bytes inside it (in the same order).
  public static func withPacked<R>(_ tensors: [String: Tensor], _ body: ([TensorRef], Data) throws -> R) throws -> R {
    let names = tensors.keys.sorted()
    var size = 0
    for name in names {
      let t = tensors[name]!
      guard t.shape.reduce(1, *) == t.count else {
        throw TrainingError.invalidArgument("tensor \(name): shape \(t.shape) does not hold \(t.count) values")
      }
      size += t.count * 4
    }
    var payload = Data(count: size)
    payload.withUnsafeMutableBytes { dst in
      var at = 0
      for name in names {
        let t = tensors[name]!
        let n = t.count * 4
        let target = UnsafeMutableRawBufferPointer(rebasing: dst[at..<(at + n)])
        if t.dtype == .f32 {
          t.values.withUnsafeBytes { target.copyMemory(from: $0) }
        } else {
          t.words.withUnsafeBytes { target.copyMemory(from: $0) }
        }
        #if _endian(big)
          let w = target.bindMemory(to: UInt32.self)
          for i in w.indices { w[i] = w[i].littleEndian }
        #endif
        at += n
      }
    }
    return try payload.withUnsafeBytes { raw in
      var at = 0
      let refs = names.map { name -> TensorRef in
        let t = tensors[name]!
        defer { at += t.count * 4 }
        return TensorRef(
          name: name, dtype: t.dtype, shape: t.shape,
          bytes: UnsafeRawBufferPointer(rebasing: raw[at..<(at + t.count * 4)]))
      }
      return try body(refs, payload)
    }
  }

  /// The result of `decode`: tensors, metadata, each tensor's byte range in the data section,
  /// and the CRC-32 of the data section.
  public struct Contents: Sendable {
    public var tensors: [String: Tensor]
    public var metadata: [String: String]
    public var offsets: [String: Range<Int>]
    public var payloadCRC32: String
  }

  /// Parses and validates a whole file: header bounds, JSON, dtypes, shapes, offsets inside
  /// the data and non-overlapping, no gaps. Errors name `path` and the problem.
  public static func decode(_ data: Data, path: String) throws -> (
    tensors: [String: Tensor], metadata: [String: String]
  ) {
    let c = try decodeContents(data, path: path)
    return (c.tensors, c.metadata)
  }

  /// `decode`, also returning the data section's CRC-32.
  public static func decodeContents(_ data: Data, path: String) throws -> Contents {
    func bad(_ why: String) -> TrainingError { .modelFile(path: path, reason: "not a valid safetensors file: \(why)") }
    let (header, dataStart) = try readHeader(data, bad: bad)
    var metadata: [String: String] = [:]
    if let m = header["__metadata__"] {
      guard case .map(let map) = m else { throw bad("__metadata__ is not an object") }
      for (k, v) in map {
        guard case .string(let text) = v else { throw bad("__metadata__[\(k)] is not a string") }
        metadata[k] = text
      }
    }
    let dataSize = data.count - dataStart
    var entries: [Entry] = []
    for (name, entry) in header where name != "__metadata__" {
      entries.append(try Entry(name: name, entry, dataSize: dataSize, bad: bad))
    }
    // Offsets must tile the data section exactly: sorted, no overlap, no gap, nothing after.
    entries.sort { ($0.range.lowerBound, $0.range.upperBound) < ($1.range.lowerBound, $1.range.upperBound) }
    var end = 0
    for e in entries {
      if e.range.lowerBound < end { throw bad("tensor \(e.name) overlaps the tensor before it") }
      if e.range.lowerBound > end { throw bad("a gap of \(e.range.lowerBound - end) bytes before tensor \(e.name)") }
      end = e.range.upperBound
    }
    if end != dataSize { throw bad("\(dataSize - end) bytes after the last tensor") }
    var tensors: [String: Tensor] = [:]
    var crc = ""
    data.withUnsafeBytes { (raw: UnsafeRawBufferPointer) in
      let payload = UnsafeRawBufferPointer(rebasing: raw[dataStart...])
      crc = crc32Hex(payload)
      for e in entries { tensors[e.name] = e.tensor(in: payload) }
    }
    var offsets: [String: Range<Int>] = [:]
    for e in entries { offsets[e.name] = e.range }
    return Contents(tensors: tensors, metadata: metadata, offsets: offsets, payloadCRC32: crc)
  }

  /// The header's JSON object and where the data section starts.
  static func readHeader(_ data: Data, bad: (String) -> TrainingError) throws -> ([String: ConfigValue], Int) {
    guard data.count >= 8 else { throw bad("\(data.count) bytes is too short for the 8-byte header length") }
    var length: UInt64 = 0
    for i in 0..<8 { length |= UInt64(data[data.startIndex + i]) << (8 * UInt64(i)) }
    guard length <= UInt64(maxHeaderBytes) else {
      throw bad("header length \(length) exceeds the limit of \(maxHeaderBytes) bytes")
    }
    guard 8 + Int(length) <= data.count else {
      throw bad("header length \(length) runs past the end of the file (\(data.count) bytes)")
    }
    let dataStart = 8 + Int(length)
    let headerData = data.subdata(in: (data.startIndex + 8)..<(data.startIndex + dataStart))
    guard case .map(let header)? = try? JSONDecoder().decode(ConfigValue.self, from: headerData) else {
      throw bad("the header is not a JSON object")
    }
    return (header, dataStart)
  }

  /// One tensor's entry in the header, checked against the data section's size.
  struct Entry {
    var name: String
    var dtype: DType
    var shape: [Int]
    var range: Range<Int>

    init(name: String, _ entry: ConfigValue, dataSize: Int, bad: (String) -> TrainingError) throws {
      guard case .map(let e) = entry else { throw bad("entry \(name) is not an object") }
      guard case .string(let dtypeName)? = e["dtype"] else { throw bad("tensor \(name) has no dtype") }
      guard let dtype = DType(rawValue: dtypeName) else {
        throw bad("tensor \(name) has dtype \(dtypeName); Flip reads F32 and U32")
      }
      guard case .list(let shapeAny)? = e["shape"], case .list(let offsetsAny)? = e["data_offsets"], offsetsAny.count == 2
      else {
        throw bad("tensor \(name) needs a shape and two data_offsets")
      }
      guard shapeAny.count <= 8 else { throw bad("tensor \(name) has \(shapeAny.count) dimensions (at most 8)") }
      let shape = try shapeAny.map { v -> Int in
        guard case .int(let n) = v, n >= 0, n < (1 << 40) else {
          throw bad("tensor \(name) has a bad shape \(ConfigValue.list(shapeAny))")
        }
        return n
      }
      let offsets = try offsetsAny.map { v -> Int in
        guard case .int(let n) = v, n >= 0 else { throw bad("tensor \(name) has bad data_offsets \(ConfigValue.list(offsetsAny))") }
        return n
      }
      var count = 1
      for d in shape {
        let (p, o) = count.multipliedReportingOverflow(by: d)
        guard !o, p < (1 << 40) else { throw bad("tensor \(name) shape \(shape) is too large") }
        count = p
      }
      guard offsets[0] <= offsets[1], offsets[1] <= dataSize else {
        throw bad("tensor \(name) data_offsets \(offsets) fall outside the \(dataSize) data bytes")
      }
      guard offsets[1] - offsets[0] == count * 4 else {
        throw bad("tensor \(name) has \(offsets[1] - offsets[0]) bytes but shape \(shape) needs \(count * 4)")
      }
      (self.name, self.dtype, self.shape, self.range) = (name, dtype, shape, offsets[0]..<offsets[1])
    }

    /// The tensor's values, copied out of the data section.
    func tensor(in payload: UnsafeRawBufferPointer) -> Tensor {
      let src = UnsafeRawBufferPointer(rebasing: payload[range])
      let n = range.count / 4
      switch dtype {
      case .f32:
        var values = [Float](repeating: 0, count: n)
        values.withUnsafeMutableBytes { $0.copyMemory(from: src) }
        #if _endian(big)
          values = values.map { Float(bitPattern: UInt32(littleEndian: $0.bitPattern)) }
        #endif
        return Tensor(shape: shape, values: values)
      case .u32:
        var words = [UInt32](repeating: 0, count: n)
        words.withUnsafeMutableBytes { $0.copyMemory(from: src) }
        #if _endian(big)
          words = words.map { UInt32(littleEndian: $0) }
        #endif
        return Tensor(shape: shape, words: words)
      }
    }
  }

  /// A tensor's bytes in place (F32 or U32 elements, little-endian memory), for writing a
  /// file straight from a model's buffers without copying them first.
  public struct TensorRef: @unchecked Sendable {
    public var name: String
    public var dtype: DType
    public var shape: [Int]
    public var bytes: UnsafeRawBufferPointer
    public init(name: String, dtype: DType = .f32, shape: [Int], bytes: UnsafeRawBufferPointer) {
      self.name = name
      self.dtype = dtype
      self.shape = shape
      self.bytes = bytes
    }
    /// `count` floats at `floats`, an F32 tensor of `shape`.
    public init(name: String, shape: [Int], floats: UnsafePointer<Float>, count: Int) {
      self.init(name: name, shape: shape, bytes: UnsafeRawBufferPointer(start: floats, count: count * 4))
    }
  }

  /// The 8-byte length and the padded JSON header for `refs` (sorted by name, packed in that
  /// order) and `metadata`.
  public static func header(_ refs: [TensorRef], metadata: [String: String]) throws -> Data {
    var header = Header(metadata: metadata)
    var offset = 0
    for t in refs {
      guard t.shape.reduce(1, *) * 4 == t.bytes.count else {
        throw TrainingError.invalidArgument(
          "tensor \(t.name): shape \(t.shape) does not hold \(t.bytes.count / 4) values")
      }
      header.tensors[t.name] = Header.Entry(
        dtype: t.dtype.rawValue, shape: t.shape, dataOffsets: [offset, offset + t.bytes.count])
      offset += t.bytes.count
    }
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    var json = try encoder.encode(header)
    while json.count % 8 != 0 { json.append(0x20) }
    var out = Data(capacity: 8 + json.count)
    var n = UInt64(json.count).littleEndian
    withUnsafeBytes(of: &n) { out.append(contentsOf: $0) }
    out.append(json)
    return out
  }

  /// CRC-32 of the concatenated bytes of `refs`, computed in 1 MiB pieces on `compute`'s
  /// threads and combined (`crc32_combine`): the same value as one pass.
  public static func crc32Hex(_ refs: [TensorRef], compute: Compute = .serial) -> String {
    let piece = 1 << 20
    var pieces: [(UnsafeRawBufferPointer)] = []
    for t in refs {
      var at = 0
      while at < t.bytes.count {
        let n = min(piece, t.bytes.count - at)
        pieces.append(UnsafeRawBufferPointer(rebasing: t.bytes[at..<(at + n)]))
        at += n
      }
    }
    var crcs = [UInt](repeating: 0, count: pieces.count)
    crcs.withUnsafeMutableBufferPointer { out in
      func crc(_ r: Range<Int>) {
        for i in r {
          out[i] = CZlib.crc32_z(0, pieces[i].baseAddress!.assumingMemoryBound(to: UInt8.self), pieces[i].count)
        }
      }
      // Off the training thread (a background writer), stay on one core (`.serial`).
      compute.forRanges(count: pieces.count, grain: 1, crc)
    }
    var crc = CZlib.crc32_z(0, nil, 0)
    for (c, p) in zip(crcs, pieces) { crc = CZlib.crc32_combine(crc, c, off_t(p.count)) }
    let hex = String(crc, radix: 16)
    return String(repeating: "0", count: max(0, 8 - hex.count)) + hex
  }

  /// zlib's CRC-32 of `bytes` as 8 lowercase hex digits (Python: `f"{zlib.crc32(b):08x}"`).
  public static func crc32Hex(_ bytes: UnsafeRawBufferPointer) -> String {
    var crc = CZlib.crc32_z(0, nil, 0)
    if let base = bytes.baseAddress, bytes.count > 0 {
      crc = CZlib.crc32_z(crc, base.assumingMemoryBound(to: UInt8.self), bytes.count)
    }
    let hex = String(crc, radix: 16)
    return String(repeating: "0", count: max(0, 8 - hex.count)) + hex
  }

  public static func crc32Hex(_ data: Data) -> String {
    data.withUnsafeBytes { crc32Hex($0) }
  }
}

extension SafeTensors {
  /// The header a file starts with: `__metadata__` beside one entry per tensor.
  struct Header: Encodable {
    struct Entry: Encodable {
      var dtype: String
      var shape: [Int]
      var dataOffsets: [Int]
      enum CodingKeys: String, CodingKey {
        case dtype, shape
        case dataOffsets = "data_offsets"
      }
    }
    var metadata: [String: String]
    var tensors: [String: Entry] = [:]

    func encode(to encoder: Encoder) throws {
      var c = encoder.container(keyedBy: AnyKey.self)
      try c.encode(metadata, forKey: AnyKey("__metadata__"))
      for (name, entry) in tensors { try c.encode(entry, forKey: AnyKey(name)) }
    }
  }
}
