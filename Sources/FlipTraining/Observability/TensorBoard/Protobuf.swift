import Foundation

/// Appends protocol-buffer fields (wire format) to a byte array.
struct ProtobufEncoder {
  var bytes: [UInt8] = []

  mutating func reset() { bytes.removeAll(keepingCapacity: true) }

  mutating func varint(_ value: UInt64) {
    var v = value
    while v >= 0x80 {
      bytes.append(UInt8(truncatingIfNeeded: v) | 0x80)
      v >>= 7
    }
    bytes.append(UInt8(v))
  }

  /// The key of field `field` with wire type `wireType` (0 varint, 1 fixed64, 2 length-delimited, 5 fixed32).
  mutating func key(_ field: Int, _ wireType: Int) { varint(UInt64(field << 3 | wireType)) }

  mutating func varintField(_ field: Int, _ value: UInt64) {
    key(field, 0)
    varint(value)
  }

  /// A double field; a zero (+0.0) is left out, as proto3 encoders leave out the default of a
  /// field outside a oneof (all the doubles written here are), so the bytes are canonical.
  mutating func double(_ field: Int, _ value: Double) {
    guard value.bitPattern != 0 else { return }
    key(field, 1)
    withUnsafeBytes(of: value.bitPattern.littleEndian) { bytes.append(contentsOf: $0) }
  }

  mutating func float(_ field: Int, _ value: Float) {
    key(field, 5)
    withUnsafeBytes(of: value.bitPattern.littleEndian) { bytes.append(contentsOf: $0) }
  }

  mutating func string(_ field: Int, _ value: String) {
    key(field, 2)
    var value = value
    value.withUTF8 { u in
      varint(UInt64(u.count))
      bytes.append(contentsOf: u)
    }
  }

  mutating func message(_ field: Int, _ message: ProtobufEncoder) {
    key(field, 2)
    varint(UInt64(message.bytes.count))
    bytes.append(contentsOf: message.bytes)
  }

  /// A packed repeated double field (omitted when empty, as encoders do).
  mutating func packedDoubles(_ field: Int, _ values: [Double]) {
    guard !values.isEmpty else { return }
    key(field, 2)
    varint(UInt64(values.count * 8))
    for v in values { withUnsafeBytes(of: v.bitPattern.littleEndian) { bytes.append(contentsOf: $0) } }
  }
}

/// Reads protocol-buffer fields from bytes, never past their end.
struct ProtobufDecoder {
  struct Malformed: Error {
    var reason: String
  }

  let bytes: UnsafeRawBufferPointer
  var at = 0

  init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

  /// The next field's number and wire type, or nil at the end.
  mutating func nextKey() throws(Malformed) -> (field: Int, wireType: Int)? {
    guard at < bytes.count else { return nil }
    let key = try varint()
    guard key >> 3 > 0, key >> 3 <= 0x1FFF_FFFF else { throw Malformed(reason: "field number \(key >> 3)") }
    return (Int(key >> 3), Int(key & 7))
  }

  mutating func varint() throws(Malformed) -> UInt64 {
    var result: UInt64 = 0
    var shift: UInt64 = 0
    while at < bytes.count, shift < 64 {
      let b = bytes[at]
      at += 1
      result |= UInt64(b & 0x7F) << shift
      if b < 0x80 { return result }
      shift += 7
    }
    throw Malformed(reason: "a varint runs past the end")
  }

  mutating func fixed64() throws(Malformed) -> UInt64 {
    guard bytes.count - at >= 8 else { throw Malformed(reason: "a 64-bit field runs past the end") }
    defer { at += 8 }
    return UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: at, as: UInt64.self))
  }

  mutating func fixed32() throws(Malformed) -> UInt32 {
    guard bytes.count - at >= 4 else { throw Malformed(reason: "a 32-bit field runs past the end") }
    defer { at += 4 }
    return UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: at, as: UInt32.self))
  }

  mutating func lengthDelimited() throws(Malformed) -> UnsafeRawBufferPointer {
    let length = try varint()
    guard length <= UInt64(bytes.count - at) else { throw Malformed(reason: "a field's length runs past the end") }
    defer { at += Int(length) }
    return UnsafeRawBufferPointer(rebasing: bytes[at..<at + Int(length)])
  }

  mutating func skip(_ wireType: Int) throws(Malformed) {
    switch wireType {
    case 0: _ = try varint()
    case 1: _ = try fixed64()
    case 2: _ = try lengthDelimited()
    case 5: _ = try fixed32()
    default: throw Malformed(reason: "wire type \(wireType)")
    }
  }

  /// `wireType` must be `expected` for the field to be read as the schema says.
  static func check(_ wireType: Int, _ expected: Int, _ what: String) throws(Malformed) {
    guard wireType == expected else { throw Malformed(reason: "\(what) has wire type \(wireType), not \(expected)") }
  }

  static func string(_ bytes: UnsafeRawBufferPointer) -> String { String(decoding: bytes, as: UTF8.self) }

  // The messages.

  /// How much of an event to decode.
  enum Detail {
    /// Everything `TensorBoardEvent` holds.
    case everything
    /// The wall time, step, file version and the values' tags (contents are `.other`).
    case tags
    /// The wall time, step and file version (no values).
    case step
  }

  static func event(_ bytes: UnsafeRawBufferPointer, detail: Detail = .everything) throws(Malformed)
    -> TensorBoardEvent
  {
    var d = ProtobufDecoder(bytes)
    var event = TensorBoardEvent(wallTime: 0, step: 0, fileVersion: nil, values: [])
    while let (field, wire) = try d.nextKey() {
      switch field {
      case 1:
        try check(wire, 1, "Event.wall_time")
        event.wallTime = Double(bitPattern: try d.fixed64())
      case 2:
        try check(wire, 0, "Event.step")
        event.step = Int(Int64(bitPattern: try d.varint()))
      case 3:
        try check(wire, 2, "Event.file_version")
        event.fileVersion = string(try d.lengthDelimited())
      case 5 where detail != .step:
        try check(wire, 2, "Event.summary")
        var s = ProtobufDecoder(try d.lengthDelimited())
        while let (f, w) = try s.nextKey() {
          if f == 1 {
            try check(w, 2, "Summary.value")
            event.values.append(try value(try s.lengthDelimited(), tagOnly: detail == .tags))
          } else {
            try s.skip(w)
          }
        }
      default: try d.skip(wire)
      }
    }
    return event
  }

  static func value(_ bytes: UnsafeRawBufferPointer, tagOnly: Bool = false) throws(Malformed)
    -> TensorBoardEvent.Value
  {
    var d = ProtobufDecoder(bytes)
    var result = TensorBoardEvent.Value(tag: "", content: .other)
    while let (field, wire) = try d.nextKey() {
      if tagOnly && field != 1 {
        try d.skip(wire)
        continue
      }
      switch field {
      case 1:
        try check(wire, 2, "Summary.Value.tag")
        result.tag = string(try d.lengthDelimited())
      case 2:
        try check(wire, 5, "Summary.Value.simple_value")
        result.content = .scalar(Float(bitPattern: try d.fixed32()))
      case 5:
        try check(wire, 2, "Summary.Value.histo")
        result.content = .histogram(try histogram(try d.lengthDelimited()))
      case 8:
        try check(wire, 2, "Summary.Value.tensor")
        if let strings = try stringTensor(try d.lengthDelimited()) { result.content = .text(strings) }
      default: try d.skip(wire)
      }
    }
    return result
  }

  static func histogram(_ bytes: UnsafeRawBufferPointer) throws(Malformed) -> TensorBoardHistogram {
    var d = ProtobufDecoder(bytes)
    var h = TensorBoardHistogram(
      min: 0, max: 0, count: 0, sum: 0, sumOfSquares: 0, bucketLimits: [], bucketCounts: [])
    func doubles(_ wire: Int, _ d: inout ProtobufDecoder, into list: inout [Double]) throws(Malformed) {
      if wire == 1 {  // one unpacked element
        list.append(Double(bitPattern: try d.fixed64()))
        return
      }
      try check(wire, 2, "a packed double field")
      let packed = try d.lengthDelimited()
      guard packed.count % 8 == 0 else { throw Malformed(reason: "packed doubles of \(packed.count) bytes") }
      for i in stride(from: 0, to: packed.count, by: 8) {
        list.append(Double(bitPattern: UInt64(littleEndian: packed.loadUnaligned(fromByteOffset: i, as: UInt64.self))))
      }
    }
    while let (field, wire) = try d.nextKey() {
      switch field {
      case 1...5:
        try check(wire, 1, "HistogramProto field \(field)")
        let v = Double(bitPattern: try d.fixed64())
        switch field {
        case 1: h.min = v
        case 2: h.max = v
        case 3: h.count = v
        case 4: h.sum = v
        default: h.sumOfSquares = v
        }
      case 6: try doubles(wire, &d, into: &h.bucketLimits)
      case 7: try doubles(wire, &d, into: &h.bucketCounts)
      default: try d.skip(wire)
      }
    }
    return h
  }

  /// The `string_val`s of a `DT_STRING` TensorProto; nil for another dtype.
  static func stringTensor(_ bytes: UnsafeRawBufferPointer) throws(Malformed) -> [String]? {
    var d = ProtobufDecoder(bytes)
    var dtype: UInt64 = 0
    var strings: [String] = []
    while let (field, wire) = try d.nextKey() {
      switch field {
      case 1:
        try check(wire, 0, "TensorProto.dtype")
        dtype = try d.varint()
      case 8:
        try check(wire, 2, "TensorProto.string_val")
        strings.append(string(try d.lengthDelimited()))
      default: try d.skip(wire)
      }
    }
    return dtype == 7 ? strings : nil
  }
}
