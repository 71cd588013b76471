import CImageCodec
import Foundation

// JPEG and PNG decoding for ImageNet-format data, over CImageCodec (libjpeg-turbo's libjpeg API
// and libpng's simplified API). Pixels are RGB8, (H, W, 3), rows top-down.

/// An image file format, named as in messages.
public enum ImageFormat: String, Sendable {
  case jpeg = "JPEG"
  case png = "PNG"
}

/// What an image file's header says.
public struct ImageHeader: Sendable, Equatable {
  /// Found by sniffing the bytes (JPEG: FF D8 FF; PNG: its 8-byte signature), not by the name:
  /// ImageNet has a PNG named `.JPEG`.
  public var format: ImageFormat
  public var width: Int
  public var height: Int
  /// The stored components. JPEG: 1 (gray), 3 (YCbCr or RGB) or 4 (CMYK or YCCK); PNG: 1 (gray),
  /// 2 (gray and alpha), 3 (RGB, or a palette) or 4 (RGBA, or a palette with transparency).
  /// Every image decodes to RGB.
  public var components: Int
}

/// A rectangle of pixels.
public struct PixelRect: Sendable, Equatable {
  public var x, y, width, height: Int

  public init(x: Int, y: Int, width: Int, height: Int) {
    self.x = x
    self.y = y
    self.width = width
    self.height = height
  }
}

/// The pixels an ``ImageDecoder`` decoded, and where they are in the scaled image.
public struct DecodedRegion: Sendable, Equatable {
  /// The scale the pixels are at: n/8 of the full image (8 for PNG).
  public var scaleEighths: Int
  /// The decoded pixels' rectangle in the scaled image's coordinates: the rectangle asked for,
  /// clamped to the scaled image. (libjpeg decodes whole iMCU columns; the decoder trims them.)
  public var rect: PixelRect
  /// The scaled image's full size.
  public var scaledWidth: Int, scaledHeight: Int
  /// libjpeg warnings (0 for a clean file, and for PNG) and the first one's text, such as
  /// "Premature end of JPEG file" for a truncated file (whose missing rows are gray).
  public var warnings: Int
  public var firstWarning: String?

  /// Why the region counts as bad though it decoded (its warnings), or nil for a clean decode.
  public var warningProblem: String? {
    guard warnings > 0 else { return nil }
    return "decodes only with \(warnings) libjpeg warning\(warnings == 1 ? "" : "s"): \(firstWarning ?? "")"
  }
}

/// Why bytes did not decode. The messages name the problem, not the file: the caller adds the
/// path.
public enum ImageDecodeError: Error, Equatable, CustomStringConvertible {
  /// The bytes are neither JPEG nor PNG; the message gives the first of them in hex.
  case unrecognized(String)
  /// A JPEG or PNG that libjpeg or libpng cannot decode (truncated before the image data,
  /// damaged markers), or one of more than 2^28 pixels.
  case corrupt(String)

  public var description: String {
    switch self {
    case .unrecognized(let message), .corrupt(let message): return message
    }
  }
}

/// Why pixels did not encode.
public struct ImageEncodeError: Error, Equatable, CustomStringConvertible {
  public var description: String
}

extension flip_image_status {
  /// The C string in `message`: the error, or after success the first warning.
  fileprivate var text: String {
    withUnsafeBytes(of: message) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
  }
}

/// Decodes JPEG and PNG files to RGB8, a region at a time: JPEGs at a DCT scale n/8, reading
/// only the rows down to the region's bottom and running the IDCT only on the iMCU columns it
/// covers. One per thread: it reuses its pixel buffer from image to image (no allocation once
/// the buffer has grown to the largest region).
///
/// JPEG decoding matches TensorFlow's `decode_jpeg` defaults: the fast integer IDCT
/// (JDCT_IFAST, which TensorFlow's default dct_method "" selects), fancy upsampling, grayscale converted to RGB by replication, CMYK and YCCK
/// converted with TensorFlow's formula (Adobe-inverted: R = C·K/255). PNG: gray, palette, 16-bit
/// and alpha images all come out as 8-bit RGB; alpha is dropped (as `decode_png(channels: 3)`).
public final class ImageDecoder {
  /// The last region's pixels, (H, W, 3), at the start; a PNG's whole RGBA image while decoding.
  private var buffer = UnsafeMutableBufferPointer<UInt8>(start: nil, count: 0)
  /// Bytes of `buffer` that are the last region's pixels.
  private var pixelCount = 0
  private var status = flip_image_status()

  public init() {}

  deinit { buffer.deallocate() }

  /// The last decoded region's pixels: RGB8, row stride `region.rect.width * 3`. Valid until
  /// the next `decode`; empty after a failed one.
  public var pixels: UnsafeBufferPointer<UInt8> { UnsafeBufferPointer(rebasing: buffer[..<pixelCount]) }

  /// Sniffs the bytes and reads the header only.
  public static func header(_ bytes: UnsafeRawBufferPointer) throws(ImageDecodeError) -> ImageHeader {
    var header = flip_image_header()
    var status = flip_image_status()
    let code = flip_image_probe(bytes.baseAddress?.assumingMemoryBound(to: UInt8.self), bytes.count, &header, &status)
    try check(code, status)
    return ImageHeader(
      format: header.format == Int32(FLIP_IMAGE_FORMAT_PNG) ? .png : .jpeg, width: Int(header.width),
      height: Int(header.height), components: Int(header.components))
  }

  /// The scaled size libjpeg gives for a full image of width×height at n/8 (ceil(width·n/8),
  /// as jdiv_round_up).
  public static func scaledSize(width: Int, height: Int, scaleEighths: Int) -> (width: Int, height: Int) {
    ((width * scaleEighths + 7) / 8, (height * scaleEighths + 7) / 8)
  }

  /// How much wider than asked libjpeg decodes a JPEG region before it is trimmed: a column each
  /// side (where chroma is upsampled), then the left edge moved to an iMCU boundary, and an iMCU
  /// is at most 4 (horizontal sampling) × 16 (DCT size at 16/8) pixels wide.
  static let maximumWidening = 65

  /// Decodes `rect` (scaled coordinates, clamped to the scaled image) at n/8 into `pixels`
  /// (RGB8, row stride region.rect.width*3). PNG: scale must be 8.
  ///
  /// The scaled image is ``scaledSize(width:height:scaleEighths:)`` of the header's, and the
  /// pixels are those of a full decode at that scale cut to the rectangle (libjpeg decodes
  /// only the iMCU columns and rows down to the rectangle's bottom). libjpeg warnings (a
  /// truncated file, a damaged Huffman code) do not throw: the region reports them, and the
  /// caller decides.
  ///
  /// - Precondition: `scaleEighths` is in 1...16 (8 for a PNG), and `rect` overlaps the scaled
  ///   image.
  public func decode(_ bytes: UnsafeRawBufferPointer, scaleEighths: Int, rect: PixelRect)
    throws(ImageDecodeError) -> DecodedRegion
  {
    precondition((1...16).contains(scaleEighths), "scale \(scaleEighths)/8 is outside 1/8...16/8")
    pixelCount = 0
    let header = try Self.header(bytes)
    precondition(header.format == .jpeg || scaleEighths == 8, "a PNG decodes at 8/8 only, not \(scaleEighths)/8")
    let scaled = Self.scaledSize(width: header.width, height: header.height, scaleEighths: scaleEighths)
    // The header's size is checked; above 8/8 the scaled image can be 4 times larger.
    guard scaled.width * scaled.height <= FLIP_IMAGE_MAX_PIXELS else {
      let size = "\(scaled.width)×\(scaled.height)"
      throw .corrupt("JPEG (scaled): \(size) pixels is more than the \(FLIP_IMAGE_MAX_PIXELS) (2^28) Flip decodes")
    }
    let left = max(rect.x, 0)
    let top = max(rect.y, 0)
    let width = min(rect.x + rect.width, scaled.width) - left
    let height = min(rect.y + rect.height, scaled.height) - top
    precondition(
      width > 0 && height > 0, "the rectangle \(rect) lies outside the \(scaled.width)×\(scaled.height) image")
    let capacity =
      header.format == .jpeg
      ? min(width + Self.maximumWidening, scaled.width) * height * 3 : header.width * header.height * 4
    reserve(capacity)
    let source = bytes.baseAddress?.assumingMemoryBound(to: UInt8.self)
    var size = flip_image_size()
    let code: Int32
    switch header.format {
    case .jpeg:
      code = flip_jpeg_decode_region(
        source, bytes.count, Int32(scaleEighths), Int32(left), Int32(top), Int32(width), Int32(height),
        buffer.baseAddress, buffer.count, &size, &status)
    case .png:
      code = flip_png_decode_region(
        source, bytes.count, Int32(left), Int32(top), Int32(width), Int32(height), buffer.baseAddress,
        buffer.count, &size, &status)
    }
    try Self.check(code, status)
    pixelCount = width * height * 3
    return DecodedRegion(
      scaleEighths: scaleEighths, rect: PixelRect(x: left, y: top, width: width, height: height),
      scaledWidth: Int(size.width), scaledHeight: Int(size.height),
      warnings: Int(status.warnings), firstWarning: status.warnings > 0 ? status.text : nil)
  }

  /// Grows `buffer` to at least `capacity` bytes (by half again at least, so that slowly
  /// growing regions do not reallocate each time).
  private func reserve(_ capacity: Int) {
    guard capacity > buffer.count else { return }
    let grown = max(capacity, buffer.count + buffer.count / 2)
    buffer.deallocate()
    buffer = .allocate(capacity: grown)
  }

  /// Turns a CImageCodec return code into a thrown error. An invalid argument is a bug here,
  /// not in the file.
  private static func check(_ code: Int32, _ status: flip_image_status) throws(ImageDecodeError) {
    switch Int(code) {
    case FLIP_IMAGE_OK: return
    case FLIP_IMAGE_UNRECOGNIZED: throw .unrecognized(status.text)
    case FLIP_IMAGE_CORRUPT: throw .corrupt(status.text)
    default: preconditionFailure("ImageDecoder passed CImageCodec a bad argument: \(status.text)")
    }
  }
}

/// JPEG and PNG encoding of 8-bit pixels, for tests and tools.
public enum ImageEncoder {
  /// How densely a JPEG stores chroma (Cb, Cr) against luma (Y): 4:2:0 halves it both ways
  /// (libjpeg's default), 4:2:2 across, 4:4:0 down, 4:4:4 keeps it all.
  public enum ChromaSubsampling: String, Sendable, CaseIterable {
    case yuv420 = "4:2:0"
    case yuv422 = "4:2:2"
    case yuv440 = "4:4:0"
    case yuv444 = "4:4:4"

    /// Luma's sampling factors (horizontal, vertical) against chroma's 1×1.
    var lumaSampling: (Int32, Int32) {
      switch self {
      case .yuv420: return (2, 2)
      case .yuv422: return (2, 1)
      case .yuv440: return (1, 2)
      case .yuv444: return (1, 1)
      }
    }
  }

  /// A JPEG of `pixels` (height, width, components) at `quality` (1...100, libjpeg's scale).
  /// Components: 1 gray, 3 RGB (stored as YCbCr, chroma subsampled as `subsampling` says), or 4
  /// CMYK with 0 = no ink, written as Photoshop writes CMYK: inverted, with an Adobe marker, so
  /// that ``ImageDecoder`` gives R = (255 − C)(255 − K)/255 (and G from M, B from Y) back.
  /// `progressive`: libjpeg's progressive scans instead of baseline.
  public static func jpeg(
    _ pixels: [UInt8], width: Int, height: Int, components: Int, quality: Int,
    subsampling: ChromaSubsampling = .yuv420, progressive: Bool = false
  ) throws(ImageEncodeError) -> [UInt8] {
    try checkSize(pixels, width: width, height: height, channels: components, format: "JPEG")
    let (lumaH, lumaV) = subsampling.lumaSampling
    return try encoded { out, size, status in
      flip_jpeg_encode(
        pixels, Int32(width), Int32(height), Int32(components), Int32(clamping: quality), lumaH, lumaV,
        progressive ? 1 : 0, out, size, status)
    }
  }

  /// A PNG of `pixels` (height, width, channels); channels: 1 gray, 3 RGB, 4 RGBA.
  public static func png(_ pixels: [UInt8], width: Int, height: Int, channels: Int) throws(ImageEncodeError) -> [UInt8]
  {
    try checkSize(pixels, width: width, height: height, channels: channels, format: "PNG")
    return try encoded { out, size, status in
      flip_png_encode(pixels, Int32(width), Int32(height), Int32(channels), out, size, status)
    }
  }

  private static func checkSize(_ pixels: [UInt8], width: Int, height: Int, channels: Int, format: String)
    throws(ImageEncodeError)
  {
    let limit = Int(Int32.max)
    let area = width.multipliedReportingOverflow(by: height)
    guard (1...limit).contains(width), (1...limit).contains(height), (1...4).contains(channels), !area.overflow,
      area.partialValue.multipliedReportingOverflow(by: channels) == (pixels.count, false)
    else {
      let size = "\(width)×\(height) pixels of \(channels) bytes"
      throw ImageEncodeError(description: "\(format) encoding: \(pixels.count) bytes are not \(size)")
    }
  }

  /// Runs a CImageCodec encoder and moves its malloc'd output into an array.
  private static func encoded(
    _ encode: (
      UnsafeMutablePointer<UnsafeMutablePointer<UInt8>?>, UnsafeMutablePointer<Int>,
      UnsafeMutablePointer<flip_image_status>
    ) -> Int32
  ) throws(ImageEncodeError) -> [UInt8] {
    var out: UnsafeMutablePointer<UInt8>?
    var size = 0
    var status = flip_image_status()
    let code = encode(&out, &size, &status)
    defer { free(out) }
    guard Int(code) == FLIP_IMAGE_OK, let out else { throw ImageEncodeError(description: status.text) }
    return Array(UnsafeBufferPointer(start: out, count: size))
  }
}
