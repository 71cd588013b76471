import FlipTraining
import Foundation

/// Re-stamps a Flip file's checksums after a mutation, so the mutation reaches the checks
/// behind them (format, version, binary_kernels, tensor names, dtypes and shapes against the
/// model) instead of stopping at a CRC mismatch.
///
/// The reader computes `payload_crc32` over the data section and `header_crc32` over the
/// other metadata and the tensor index (`ModelFile.headerChecksum`); a version 1 file carries
/// `payload_fnv1a64` over names and bytes instead. `restamp` decodes the layout the way the
/// reader does (`SafeTensors.decodeContents`), computes what the reader will expect, and
/// writes it into the value of every occurrence of those keys in the raw JSON, leaving every
/// other byte as the mutation made it (whitespace, key order, number spellings, duplicate
/// keys); only the 8-byte header length changes when a value's length did.
enum Restamp {
  static let payloadKey = "payload_crc32"
  static let headerKey = ModelFile.headerChecksumKey
  static let fnvKey = "payload_fnv1a64"

  /// `bytes` with its checksums re-stamped, or nil when its layout does not decode (the
  /// reader rejects it before any checksum) or it carries none of the keys.
  static func restamp(_ bytes: Data) -> Data? {
    guard let c = try? SafeTensors.decodeContents(bytes, path: "") else { return nil }
    var values: [String: String] = [:]
    if c.metadata[payloadKey] != nil { values[payloadKey] = c.payloadCRC32 }
    if c.metadata[headerKey] != nil { values[headerKey] = ModelFile.headerChecksum(of: c) }
    if c.metadata[fnvKey] != nil { values[fnvKey] = ModelFile.fnv1a64Checksum(c.tensors) }
    if values.isEmpty { return nil }
    return replacingHeader(of: bytes, with: replacingValues(of: values, in: header(of: bytes)))
  }

  /// The JSON header of a file whose layout decodes (its length is inside the file).
  static func header(of bytes: Data) -> [UInt8] {
    let length = bytes.prefix(8).enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
    return [UInt8](bytes.dropFirst(8).prefix(length))
  }

  /// `bytes` with its header replaced by `header` (and the 8-byte length updated).
  static func replacingHeader(of bytes: Data, with header: [UInt8]) -> Data {
    let payload = bytes.dropFirst(8 + Self.header(of: bytes).count)
    var out = Data(capacity: 8 + header.count + payload.count)
    for i in 0..<8 { out.append(UInt8(truncatingIfNeeded: header.count >> (8 * i))) }
    out.append(contentsOf: header)
    out.append(payload)
    return out
  }

  /// `header` with the string value of every `"key": "..."` pair whose key is in `values`
  /// replaced by its new value. Occurrences that are not a key followed by a string value
  /// (an escaped quote inside another string, a tensor of that name, a value) are left alone.
  static func replacingValues(of values: [String: String], in header: [UInt8]) -> [UInt8] {
    let quote = UInt8(ascii: "\""), backslash = UInt8(ascii: "\\"), colon = UInt8(ascii: ":")
    func isSpace(_ b: UInt8) -> Bool { b == 0x20 || b == 0x09 || b == 0x0A || b == 0x0D }
    var edits: [(range: Range<Int>, value: [UInt8])] = []
    for (key, value) in values {
      let pattern = Array("\"\(key)\"".utf8)
      var at = 0
      while at + pattern.count <= header.count {
        defer { at += 1 }
        guard header[at] == quote, header[at..<(at + pattern.count)].elementsEqual(pattern) else { continue }
        if at > 0 && header[at - 1] == backslash { continue }
        var j = at + pattern.count
        while j < header.count && isSpace(header[j]) { j += 1 }
        guard j < header.count, header[j] == colon else { continue }
        j += 1
        while j < header.count && isSpace(header[j]) { j += 1 }
        guard j < header.count, header[j] == quote else { continue }
        let begin = j + 1
        j = begin
        while j < header.count && header[j] != quote { j += header[j] == backslash ? 2 : 1 }
        guard j < header.count else { continue }
        edits.append((begin..<j, Array(value.utf8)))
      }
    }
    var out = header
    for e in edits.sorted(by: { $0.range.lowerBound > $1.range.lowerBound }) {
      out.replaceSubrange(e.range, with: e.value)
    }
    return out
  }

  /// Checks that re-stamping a seed whose checksums were replaced by "0" gives back the
  /// writer's bytes, i.e. that `restamp` computes exactly what `ModelFile` stamps and reads.
  /// Returns the problem, if any.
  static func selfCheck(_ seeds: [(name: String, data: Data)]) -> String? {
    for (name, data) in seeds {
      guard FileFuzzing.read(data, into: fuzzModel) == .loaded else { return "seed \(name) does not load" }
      guard let c = try? SafeTensors.decodeContents(data, path: name) else { return "seed \(name) does not decode" }
      let keys = [payloadKey, headerKey, fnvKey].filter { c.metadata[$0] != nil }
      guard !keys.isEmpty else { return "seed \(name) has no checksum" }
      let zeros = Dictionary(uniqueKeysWithValues: keys.map { ($0, "0") })
      let broken = replacingHeader(of: data, with: replacingValues(of: zeros, in: header(of: data)))
      guard FileFuzzing.read(broken, into: fuzzModel) == .rejected else {
        return "seed \(name) with zeroed checksums still loads"
      }
      guard let fixed = restamp(broken), fixed == data else {
        return "seed \(name): re-stamping does not give back the writer's bytes"
      }
    }
    return nil
  }
}
