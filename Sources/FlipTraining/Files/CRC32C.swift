/// CRC-32C (Castagnoli: polynomial 0x1EDC6F41, reflected 0x82F63B78, initial and final XOR
/// 0xFFFFFFFF), the checksum of TFRecord framing, computed slicing-by-8 from eight 256-entry
/// tables. `checksum("123456789") == 0xE3069283`.
enum CRC32C {
  /// `tables[k * 256 + b]`: table 0 is the classic byte-at-a-time table; table `k` advances a
  /// byte's contribution by `k` more zero bytes, so eight bytes fold in with eight lookups.
  static let tables: [UInt32] = {
    var t = [UInt32](repeating: 0, count: 8 * 256)
    for b in 0..<256 {
      var c = UInt32(b)
      for _ in 0..<8 { c = c & 1 != 0 ? (c >> 1) ^ 0x82F6_3B78 : c >> 1 }
      t[b] = c
    }
    for k in 1..<8 {
      for b in 0..<256 {
        let previous = t[(k - 1) * 256 + b]
        t[k * 256 + b] = (previous >> 8) ^ t[Int(previous & 0xFF)]
      }
    }
    return t
  }()

  /// The CRC-32C of `bytes`, continuing from `crc` (the checksum of the bytes before them;
  /// 0 to start).
  static func checksum(_ bytes: UnsafeRawBufferPointer, continuing crc: UInt32 = 0) -> UInt32 {
    tables.withUnsafeBufferPointer { t in
      var c = ~crc
      var i = 0
      let n = bytes.count
      if n >= 8, let base = bytes.baseAddress {
        while i + 8 <= n {
          // Two little-endian words; loadUnaligned because records start anywhere.
          let lo = UInt32(littleEndian: base.loadUnaligned(fromByteOffset: i, as: UInt32.self)) ^ c
          let hi = UInt32(littleEndian: base.loadUnaligned(fromByteOffset: i + 4, as: UInt32.self))
          c =
            t[7 * 256 + Int(lo & 0xFF)] ^ t[6 * 256 + Int((lo >> 8) & 0xFF)]
            ^ t[5 * 256 + Int((lo >> 16) & 0xFF)] ^ t[4 * 256 + Int(lo >> 24)]
            ^ t[3 * 256 + Int(hi & 0xFF)] ^ t[2 * 256 + Int((hi >> 8) & 0xFF)]
            ^ t[1 * 256 + Int((hi >> 16) & 0xFF)] ^ t[Int(hi >> 24)]
          i += 8
        }
      }
      while i < n {
        c = (c >> 8) ^ t[Int((c ^ UInt32(bytes[i])) & 0xFF)]
        i += 1
      }
      return ~c
    }
  }

  /// The CRC-32C of `bytes`.
  static func checksum(_ bytes: some Sequence<UInt8>) -> UInt32 {
    if let crc = bytes.withContiguousStorageIfAvailable({ checksum(UnsafeRawBufferPointer($0)) }) { return crc }
    return Array(bytes).withUnsafeBytes { checksum($0) }
  }

  /// TFRecord's masked form of a CRC (a CRC of data that contains CRCs is weak, so the stored
  /// value is rotated right by 15 bits and offset): `((crc >> 15) | (crc << 17)) &+ 0xa282ead8`.
  static func masked(_ crc: UInt32) -> UInt32 {
    ((crc >> 15) | (crc << 17)) &+ 0xA282_EAD8
  }

  /// The inverse of `masked`.
  static func unmasked(_ masked: UInt32) -> UInt32 {
    let rotated = masked &- 0xA282_EAD8
    return (rotated >> 17) | (rotated << 15)
  }
}
