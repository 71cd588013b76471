import CZlib
import Foundation

/// The IDX format of the MNIST family (LeCun et al.): a big-endian header
/// `0x00 0x00 <type> <ndims>`, `ndims` big-endian `UInt32` sizes, then the data.
/// Flip reads unsigned-byte data (type `0x08`), raw or gzip-compressed.
public struct IDXFile: Equatable {
  public var dimensions: [Int]
  public var data: [UInt8]

  /// Reads `path` (gzip is detected from its magic bytes), validating everything.
  public static func read(path: String) throws -> IDXFile {
    guard FileManager.default.fileExists(atPath: path) else {
      throw TrainingError.fileNotFound(
        path: path, hint: "Check --data; it needs the four IDX files of an MNIST-style data set.")
    }
    guard let raw = FileManager.default.contents(atPath: path) else {
      throw TrainingError.unreadable(path: path, reason: "permission denied or not a regular file")
    }
    let bytes = [UInt8](raw)
    let plain = bytes.starts(with: [0x1F, 0x8B]) ? try gunzip(bytes, path: path) : bytes
    return try parse(plain, path: path)
  }

  /// Parses the bytes of an uncompressed IDX file.
  public static func parse(_ b: [UInt8], path: String) throws -> IDXFile {
    guard let (dims, headerSize, expected) = try header(b, path: path) else {
      let reason =
        b.count < 4
        ? "file has \(b.count) bytes, too short for an IDX header"
        : "file has \(b.count) bytes, shorter than its \(b[3])-dimension header (\(4 + 4 * Int(b[3])) bytes)"
      throw TrainingError.corruptData(path: path, reason: reason)
    }
    let available = b.count - headerSize
    guard available == expected else {
      throw TrainingError.corruptData(
        path: path,
        reason: "dimensions \(dims) need \(expected) data bytes but the file has \(available)"
          + (available < expected ? " (truncated?)" : " (trailing bytes)"))
    }
    return IDXFile(dimensions: dims, data: Array(b[headerSize...]))
  }

  /// The header at the start of `b`: its dimensions, its size and the data bytes it declares;
  /// nil while `b` is too short to hold it. Throws when what `b` holds cannot be an IDX header.
  static func header(_ b: [UInt8], path: String) throws -> (dims: [Int], size: Int, dataBytes: Int)? {
    func corrupt(_ why: String) -> TrainingError { .corruptData(path: path, reason: why) }
    guard b.count >= 4 else {
      if b.count >= 2, b[0] != 0 || b[1] != 0 { throw corrupt("bad magic number: an IDX file starts with two zero bytes") }
      return nil
    }
    guard b[0] == 0, b[1] == 0 else {
      throw corrupt(
        String(
          format: "bad magic number 0x%02X%02X%02X%02X: an IDX file starts with two zero bytes", b[0], b[1], b[2], b[3])
      )
    }
    guard b[2] == 0x08 else {
      throw corrupt(String(format: "element type 0x%02X is not supported; Flip reads unsigned bytes (0x08)", b[2]))
    }
    let ndims = Int(b[3])
    guard ndims >= 1 else { throw corrupt("the header declares 0 dimensions") }
    let headerSize = 4 + 4 * ndims
    guard b.count >= headerSize else { return nil }
    var dims: [Int] = []
    for d in 0..<ndims {
      let o = 4 + 4 * d
      let v = Int(b[o]) << 24 | Int(b[o + 1]) << 16 | Int(b[o + 2]) << 8 | Int(b[o + 3])
      guard v > 0 else { throw corrupt("dimension \(d) is 0") }
      dims.append(v)
    }
    var expected = 1
    for d in dims {
      let (p, overflow) = expected.multipliedReportingOverflow(by: d)
      guard !overflow, p <= Int(Int32.max) * 16 else { throw corrupt("dimensions \(dims) are too large") }
      expected = p
    }
    return (dims, headerSize, expected)
  }

  /// Decompresses gzip data with zlib, no further than the size its IDX header declares (so a
  /// small file cannot inflate without bound).
  static func gunzip(_ input: [UInt8], path: String) throws -> [UInt8] {
    var stream = z_stream()
    guard flip_inflate_init2(&stream, 15 + 16) == Z_OK else {
      throw TrainingError.unreadable(path: path, reason: "zlib could not start inflating")
    }
    defer { inflateEnd(&stream) }
    var output = [UInt8]()
    output.reserveCapacity(input.count * 4)
    var chunk = [UInt8](repeating: 0, count: 1 << 20)
    var status: Int32 = Z_OK
    var limit: Int?
    try input.withUnsafeBufferPointer { inBuf in
      stream.next_in = UnsafeMutablePointer(mutating: inBuf.baseAddress!)
      stream.avail_in = uInt(inBuf.count)
      repeat {
        try chunk.withUnsafeMutableBufferPointer { out in
          stream.next_out = out.baseAddress
          stream.avail_out = uInt(out.count)
          status = inflate(&stream, Z_NO_FLUSH)
          guard status == Z_OK || status == Z_STREAM_END else {
            let message = stream.msg.map { String(cString: $0) } ?? "zlib status \(status)"
            throw TrainingError.corruptData(path: path, reason: "gzip data is corrupt: \(message)")
          }
          output.append(contentsOf: out.prefix(out.count - Int(stream.avail_out)))
        }
        if limit == nil, let h = try header(output, path: path) { limit = h.size + h.dataBytes }
        if let limit, output.count > limit {
          throw TrainingError.corruptData(
            path: path, reason: "gzip data decompresses to more than the \(limit) bytes its IDX header declares (trailing bytes)")
        }
        if status == Z_OK && stream.avail_in == 0 && stream.avail_out != 0 {
          throw TrainingError.corruptData(path: path, reason: "gzip data ends early (truncated file?)")
        }
      } while status != Z_STREAM_END
    }
    return output
  }
}
