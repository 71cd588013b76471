import Foundation

/// TFRecord framing: each record is its length (UInt64, little-endian), the masked CRC-32C of
/// those 8 bytes, the data, and the masked CRC-32C of the data. TensorBoard event files and
/// TFDS data shards are both sequences of records.
enum TFRecords {
  /// A record's bytes in the file, and those of its data.
  struct Record {
    var whole: Range<Int>
    var data: Range<Int>
  }

  /// The complete records of `bytes`, checking both CRCs of each, and the length of an
  /// incomplete last record (0 if none). Throws on a checksum mismatch.
  static func scan(_ bytes: UnsafeRawBufferPointer, path: String) throws(TrainingError) -> (
    records: [Record], incompleteTail: Int
  ) {
    var records: [Record] = []
    var at = 0
    let n = bytes.count
    while at < n {
      guard n - at >= 12 else { return (records, n - at) }
      let lengthBytes = UnsafeRawBufferPointer(rebasing: bytes[at..<at + 8])
      let length = UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: at, as: UInt64.self))
      let lengthCRC = UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: at + 8, as: UInt32.self))
      guard CRC32C.masked(CRC32C.checksum(lengthBytes)) == lengthCRC else {
        let reason = "the record at byte \(at): the checksum of its length does not match (not a TFRecord file?)"
        throw .corruptData(path: path, reason: reason)
      }
      guard n - at >= 16, length <= UInt64(n - at - 16) else { return (records, n - at) }
      let start = at + 12
      let end = start + Int(length)
      let dataCRC = UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: end, as: UInt32.self))
      guard CRC32C.masked(CRC32C.checksum(UnsafeRawBufferPointer(rebasing: bytes[start..<end]))) == dataCRC else {
        throw .corruptData(path: path, reason: "the record at byte \(at): the checksum of its data does not match")
      }
      records.append(Record(whole: at..<end + 4, data: start..<end))
      at = end + 4
    }
    return (records, 0)
  }
}
