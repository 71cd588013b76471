import Foundation

/// The safetensors layout (github.com/huggingface/safetensors): an 8-byte little-endian header
/// length `n`, `n` bytes of JSON (`{"name": {"dtype", "shape", "data_offsets": [begin, end]},
/// "__metadata__": {string: string}}`, padded with spaces to a multiple of 8), then the tensors'
/// little-endian bytes, packed with no gaps. Flip writes F32 tensors in name order.
public enum SafeTensors {
  /// Largest header Flip accepts: a hostile length must not cause a giant allocation.
  public static let maxHeaderBytes = 64 << 20

  public struct Tensor: Equatable {
    public var shape: [Int]
    public var values: [Float]
    public init(shape: [Int], values: [Float]) {
      self.shape = shape
      self.values = values
    }
  }

  /// Serializes `tensors` and `metadata` (a flat string map).
  public static func encode(_ tensors: [String: Tensor], metadata: [String: String]) throws -> Data {
    var header: [String: Any] = ["__metadata__": metadata]
    var offset = 0
    let names = tensors.keys.sorted()
    for name in names {
      let t = tensors[name]!
      guard t.shape.reduce(1, *) == t.values.count else {
        throw TrainingError.invalidArgument("tensor \(name): shape \(t.shape) does not hold \(t.values.count) values")
      }
      let bytes = t.values.count * 4
      header[name] = ["dtype": "F32", "shape": t.shape, "data_offsets": [offset, offset + bytes]]
      offset += bytes
    }
    var json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
    while json.count % 8 != 0 { json.append(0x20) }
    var out = Data(capacity: 8 + json.count + offset)
    var n = UInt64(json.count).littleEndian
    withUnsafeBytes(of: &n) { out.append(contentsOf: $0) }
    out.append(json)
    for name in names {
      tensors[name]!.values.withUnsafeBufferPointer { p in
        p.withMemoryRebound(to: UInt32.self) { words in
          let le = words.map { $0.littleEndian }
          le.withUnsafeBytes { out.append(contentsOf: $0) }
        }
      }
    }
    return out
  }

  /// Parses and validates a whole file: header bounds, JSON, dtypes, shapes, offsets inside
  /// the data and non-overlapping, no gaps. Errors name `path` and the problem.
  public static func decode(_ data: Data, path: String) throws -> (
    tensors: [String: Tensor], metadata: [String: String]
  ) {
    func bad(_ why: String) -> TrainingError { .modelFile(path: path, reason: "not a valid safetensors file: \(why)") }
    guard data.count >= 8 else { throw bad("\(data.count) bytes is too short for the 8-byte header length") }
    let bytes = [UInt8](data)
    var length: UInt64 = 0
    for i in 0..<8 { length |= UInt64(bytes[i]) << (8 * UInt64(i)) }
    guard length <= UInt64(maxHeaderBytes) else {
      throw bad("header length \(length) exceeds the limit of \(maxHeaderBytes) bytes")
    }
    guard 8 + Int(length) <= bytes.count else {
      throw bad("header length \(length) runs past the end of the file (\(bytes.count) bytes)")
    }
    let headerData = Data(bytes[8..<(8 + Int(length))])
    guard let object = try? JSONSerialization.jsonObject(with: headerData), let header = object as? [String: Any] else {
      throw bad("the header is not a JSON object")
    }
    var metadata: [String: String] = [:]
    if let m = header["__metadata__"] {
      guard let map = m as? [String: Any] else { throw bad("__metadata__ is not an object") }
      for (k, v) in map {
        guard let s = v as? String else { throw bad("__metadata__[\(k)] is not a string") }
        metadata[k] = s
      }
    }
    let dataStart = 8 + Int(length)
    let dataSize = bytes.count - dataStart
    var ranges: [(Int, Int, String)] = []
    var tensors: [String: Tensor] = [:]
    for (name, entry) in header where name != "__metadata__" {
      guard let e = entry as? [String: Any] else { throw bad("entry \(name) is not an object") }
      guard let dtype = e["dtype"] as? String else { throw bad("tensor \(name) has no dtype") }
      guard dtype == "F32" else { throw bad("tensor \(name) has dtype \(dtype); Flip reads F32") }
      guard let shapeAny = e["shape"] as? [Any], let offsetsAny = e["data_offsets"] as? [Any], offsetsAny.count == 2
      else {
        throw bad("tensor \(name) needs a shape and two data_offsets")
      }
      let shape = try shapeAny.map { v -> Int in
        guard let n = v as? Int, n >= 0, n < (1 << 40) else { throw bad("tensor \(name) has a bad shape \(shapeAny)") }
        return n
      }
      let offsets = try offsetsAny.map { v -> Int in
        guard let n = v as? Int, n >= 0 else { throw bad("tensor \(name) has bad data_offsets \(offsetsAny)") }
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
      ranges.append((offsets[0], offsets[1], name))
      var values = [Float](repeating: 0, count: count)
      values.withUnsafeMutableBytes { dst in
        bytes.withUnsafeBytes { src in
          dst.copyMemory(
            from: UnsafeRawBufferPointer(rebasing: src[(dataStart + offsets[0])..<(dataStart + offsets[1])]))
        }
      }
      #if _endian(big)
        values = values.map { Float(bitPattern: UInt32(littleEndian: $0.bitPattern)) }
      #endif
      tensors[name] = Tensor(shape: shape, values: values)
    }
    ranges.sort { $0.0 < $1.0 }
    var end = 0
    for (lo, hi, name) in ranges {
      if lo < end { throw bad("tensor \(name) overlaps the tensor before it") }
      if lo > end { throw bad("a gap of \(lo - end) bytes before tensor \(name)") }
      end = hi
    }
    if end != dataSize { throw bad("\(dataSize - end) bytes after the last tensor") }
    return (tensors, metadata)
  }
}
