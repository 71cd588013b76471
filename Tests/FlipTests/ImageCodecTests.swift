import FlipTensor
import Foundation
import Testing

@testable import FlipTraining

/// The JPEG and PNG codec of the ImageNet-format data path: round trips through the encoders,
/// gray, CMYK, palette, 16-bit and alpha inputs, regions against full decodes, DCT scaling
/// against box downsampling, and damaged or foreign bytes.
@Suite("Image codec")
struct ImageCodecTests {
  /// A whole image: far larger than any scaled image here, clamped by `decode`.
  static let everything = PixelRect(x: 0, y: 0, width: 1 << 30, height: 1 << 30)

  /// RGB8 (height, width, 3): smooth ramps, red along x, green along y, blue along both.
  static func gradient(width: Int, height: Int) -> [UInt8] {
    var pixels = [UInt8](repeating: 0, count: width * height * 3)
    for y in 0..<height {
      for x in 0..<width {
        let i = (y * width + x) * 3
        pixels[i] = UInt8(x * 255 / (width - 1))
        pixels[i + 1] = UInt8(y * 255 / (height - 1))
        pixels[i + 2] = UInt8((x + y) * 255 / (width + height - 2))
      }
    }
    return pixels
  }

  /// RGB8 (height, width, 3) that compresses like a photo: smooth shading, a disc and a bar with
  /// sharp edges, stripes, and noise.
  static func photo(width: Int, height: Int, seed: UInt64) -> [UInt8] {
    var random = SplitMix64(seed: seed)
    var pixels = [UInt8](repeating: 0, count: width * height * 3)
    for y in 0..<height {
      for x in 0..<width {
        let u = Float(x) / Float(width)
        let v = Float(y) / Float(height)
        var rgb: [Float] = [
          120 + 80 * sin(3 * u + 1) * cos(2 * v), 110 + 60 * cos(4 * v + u), 90 + 70 * sin(5 * (u + v)),
        ]
        let dx = u - 0.6
        let dy = v - 0.45
        if dx * dx + dy * dy < 0.04 { rgb = [rgb[0] * 0.4 + 140, rgb[1] * 0.5, rgb[2] * 0.3 + 20] }
        if (0.1..<0.25).contains(u) && v > 0.3 { rgb = [30, 40 + 100 * v, 200] }
        if u > 0.75 && v > 0.7 && (x / 3) % 2 == 0 { rgb = rgb.map { $0 * 0.3 } }
        for c in 0..<3 {
          let noise = (random.nextUnitFloat() - 0.5) * 72
          pixels[(y * width + x) * 3 + c] = UInt8(max(0, min(255, rgb[c] + noise)))
        }
      }
    }
    return pixels
  }

  /// Decodes the region `rect` at `scale`/8 and copies its pixels out.
  static func decode(
    _ bytes: [UInt8], scale: Int = 8, rect: PixelRect = everything, with decoder: ImageDecoder = .init()
  )
    throws -> (region: DecodedRegion, pixels: [UInt8])
  {
    let region = try bytes.withUnsafeBytes { try decoder.decode($0, scaleEighths: scale, rect: rect) }
    return (region, Array(decoder.pixels))
  }

  /// The error decoding `bytes` throws, or nil.
  static func decodeError(_ bytes: [UInt8]) -> ImageDecodeError? {
    bytes.withUnsafeBytes { (raw) -> ImageDecodeError? in
      do throws(ImageDecodeError) {
        _ = try ImageDecoder().decode(raw, scaleEighths: 8, rect: everything)
        return nil
      } catch {
        return error
      }
    }
  }

  static func header(_ bytes: [UInt8]) throws -> ImageHeader {
    try bytes.withUnsafeBytes { try ImageDecoder.header($0) }
  }

  static func meanAbsoluteError(_ a: [UInt8], _ b: [UInt8]) -> Double {
    precondition(a.count == b.count)
    return Double(zip(a, b).reduce(0) { $0 + abs(Int($1.0) - Int($1.1)) }) / Double(a.count)
  }

  /// The rows y..<y+height, columns x..<x+width of an RGB8 image `width` wide.
  static func cut(_ pixels: [UInt8], width: Int, _ rect: PixelRect) -> [UInt8] {
    var region = [UInt8]()
    for y in rect.y..<rect.y + rect.height {
      let start = (y * width + rect.x) * 3
      region += pixels[start..<start + rect.width * 3]
    }
    return region
  }

  @Test func rgbRoundTrip() throws {
    let pixels = Self.gradient(width: 64, height: 48)
    let jpeg = try ImageEncoder.jpeg(pixels, width: 64, height: 48, components: 3, quality: 95)
    #expect(try Self.header(jpeg) == ImageHeader(format: .jpeg, width: 64, height: 48, components: 3))
    let (region, decoded) = try Self.decode(jpeg)
    #expect(region.rect == PixelRect(x: 0, y: 0, width: 64, height: 48))
    #expect(region.scaledWidth == 64 && region.scaledHeight == 48 && region.scaleEighths == 8)
    #expect(region.warnings == 0 && region.firstWarning == nil)
    #expect(Self.meanAbsoluteError(decoded, pixels) < 1.5)
  }

  @Test func grayscaleJPEGDecodesToEqualChannels() throws {
    let gray: [UInt8] = (0..<(40 * 30)).map { (i: Int) -> UInt8 in UInt8(i % 40 * 5 + i / 40) }
    let jpeg = try ImageEncoder.jpeg(gray, width: 40, height: 30, components: 1, quality: 95)
    #expect(try Self.header(jpeg).components == 1)
    let (_, decoded) = try Self.decode(jpeg)
    #expect(decoded.count == 40 * 30 * 3)
    let red: [UInt8] = stride(from: 0, to: decoded.count, by: 3).map { decoded[$0] }
    let green: [UInt8] = stride(from: 1, to: decoded.count, by: 3).map { decoded[$0] }
    let blue: [UInt8] = stride(from: 2, to: decoded.count, by: 3).map { decoded[$0] }
    #expect(red == green && red == blue)
    #expect(Self.meanAbsoluteError(red, gray) < 1.5)
  }

  /// CMYK as Photoshop stores it (inverted, Adobe marker) decodes with TensorFlow's formula to
  /// the colours it was made from: K = 255 − max(R, G, B), C = 255 − 255·R/max, …
  @Test func cmykJPEGDecodesToItsRGB() throws {
    let colors: [[Int]] = [
      [220, 30, 40], [20, 160, 60], [40, 60, 200], [128, 128, 128], [250, 240, 30], [10, 5, 0],
    ]
    let (width, height) = (16 * colors.count, 16)
    var cmyk = [UInt8](repeating: 0, count: width * height * 4)
    for y in 0..<height {
      for x in 0..<width {
        let rgb = colors[x / 16]
        let top = rgb.max()!
        let ink = rgb.map { top == 0 ? 0 : 255 - ($0 * 255 + top / 2) / top } + [255 - top]
        for c in 0..<4 { cmyk[(y * width + x) * 4 + c] = UInt8(ink[c]) }
      }
    }
    let jpeg = try ImageEncoder.jpeg(cmyk, width: width, height: height, components: 4, quality: 95)
    #expect(try Self.header(jpeg).components == 4)
    let (_, decoded) = try Self.decode(jpeg)
    for (i, rgb) in colors.enumerated() {
      let centre = (8 * width + 16 * i + 8) * 3
      let found = (0..<3).map { Int(decoded[centre + $0]) }
      #expect(zip(found, rgb).allSatisfy { abs($0 - $1) <= 6 }, "colour \(rgb) decoded as \(found)")
    }
  }

  @Test func pngDecodesExactly() throws {
    let (width, height) = (23, 17)
    let rgb = Self.gradient(width: width, height: height)
    let gray: [UInt8] = (0..<(width * height)).map { (i: Int) -> UInt8 in UInt8(truncatingIfNeeded: i * 7) }
    // Alpha from 0 to 255: dropped, not composited, so the colours come back as stored.
    var rgba = [UInt8]()
    for i in 0..<(width * height) { rgba += rgb[(3 * i)..<(3 * i + 3)] + [UInt8(truncatingIfNeeded: i * 3)] }
    let cases: [(pixels: [UInt8], channels: Int, expected: [UInt8])] = [
      (rgb, 3, rgb), (gray, 1, gray.flatMap { [$0, $0, $0] }), (rgba, 4, rgb),
    ]
    for (pixels, channels, expected) in cases {
      let png = try ImageEncoder.png(pixels, width: width, height: height, channels: channels)
      #expect(try Self.header(png) == ImageHeader(format: .png, width: width, height: height, components: channels))
      let (region, decoded) = try Self.decode(png)
      #expect(region.rect == PixelRect(x: 0, y: 0, width: width, height: height) && region.scaleEighths == 8)
      #expect(decoded == expected, "\(channels) channels")
      let rect = PixelRect(x: 5, y: 3, width: 11, height: 9)
      #expect(try Self.decode(png, rect: rect).pixels == Self.cut(expected, width: width, rect), "\(channels) channels")
    }
  }

  /// A PNG chunk: length, type, data, CRC-32 of type and data.
  static func chunk(_ type: String, _ data: [UInt8]) -> [UInt8] {
    let body = Array(type.utf8) + data
    var crc: UInt32 = 0xFFFF_FFFF
    for byte in body {
      crc ^= UInt32(byte)
      for _ in 0..<8 { crc = crc & 1 == 1 ? (crc >> 1) ^ 0xEDB8_8320 : crc >> 1 }
    }
    return bigEndian(UInt32(data.count)) + body + bigEndian(~crc)
  }

  static func bigEndian(_ value: UInt32) -> [UInt8] {
    (0..<4).map { UInt8(truncatingIfNeeded: value >> (24 - 8 * $0)) }
  }

  /// A PNG by hand, for what `ImageEncoder` does not write (16 bits, palettes): `rows` are the
  /// filtered scanlines (filter byte 0 first), stored uncompressed in one zlib block.
  static func handmadePNG(
    width: Int, height: Int, bitDepth: UInt8, colorType: UInt8, rows: [UInt8], extra: [UInt8] = []
  )
    -> [UInt8]
  {
    let header = bigEndian(UInt32(width)) + bigEndian(UInt32(height)) + [bitDepth, colorType, 0, 0, 0]
    var (a, b): (UInt32, UInt32) = (1, 0)
    for byte in rows { (a, b) = ((a + UInt32(byte)) % 65521, (b + (a + UInt32(byte)) % 65521) % 65521) }
    let length = UInt16(rows.count)
    let zlib: [UInt8] =
      [0x78, 0x01, 0x01, UInt8(length & 0xFF), UInt8(length >> 8), UInt8(~length & 0xFF), UInt8(~length >> 8)] + rows
      + bigEndian(b << 16 | a)
    return [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A] + chunk("IHDR", header) + extra + chunk("IDAT", zlib)
      + chunk("IEND", [])
  }

  @Test func sixteenBitAndPalettePNGsDecodeTo8BitRGB() throws {
    // 16-bit RGB without gAMA: v·257 is v in 8 bits (sRGB, not linear light).
    let values: [UInt8] = [0, 1, 2, 60, 61, 62, 127, 128, 129, 253, 254, 255]
    var rows16 = [UInt8]()
    for _ in 0..<2 {
      rows16.append(0)
      for value in values { rows16 += [value, value] }
    }
    let sixteen = Self.handmadePNG(width: 4, height: 2, bitDepth: 16, colorType: 2, rows: rows16)
    #expect(try Self.header(sixteen) == ImageHeader(format: .png, width: 4, height: 2, components: 3))
    #expect(try Self.decode(sixteen).pixels == values + values)
    // A palette with transparency (tRNS): alpha dropped, entries expanded.
    let palette: [UInt8] = [255, 0, 0, 0, 128, 255, 7, 8, 9]
    let paletted = Self.handmadePNG(
      width: 3, height: 2, bitDepth: 8, colorType: 3, rows: [0, 0, 1, 2, 0, 2, 2, 1],
      extra: Self.chunk("PLTE", palette) + Self.chunk("tRNS", [255, 0, 128]))
    #expect(try Self.header(paletted).components == 4)
    let entry = { (i: Int) in Array(palette[(3 * i)..<(3 * i + 3)]) }
    #expect(try Self.decode(paletted).pixels == [0, 1, 2, 2, 2, 1].flatMap(entry))
  }

  /// ImageNet has a PNG named `.JPEG`: the format comes from the bytes, not the name.
  @Test func pngNamedJPEGIsRecognizedBySniffing() throws {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("flip-codec-\(UUID().uuidString).JPEG")
    defer { try? FileManager.default.removeItem(at: url) }
    let pixels = Self.gradient(width: 9, height: 7)
    try Data(try ImageEncoder.png(pixels, width: 9, height: 7, channels: 3)).write(to: url)
    let bytes = [UInt8](try Data(contentsOf: url))
    #expect(try Self.header(bytes).format == .png)
    #expect(try Self.decode(bytes).pixels == pixels)
  }

  /// A region is the same pixels as the same rectangle of a full decode at that scale, for
  /// every chroma subsampling, baseline and progressive, and crops whose left edge is not on an
  /// iMCU boundary (16 pixels at 4:2:0): libjpeg decodes whole iMCU columns, and the decoder
  /// decodes a column more each side where fancy upsampling would otherwise see the crop's edge.
  @Test(arguments: ImageEncoder.ChromaSubsampling.allCases)
  func regionEqualsTheSameRectangleOfAFullDecode(subsampling: ImageEncoder.ChromaSubsampling) throws {
    let (width, height) = (101, 77)
    let photo = Self.photo(width: width, height: height, seed: 3)
    let decoder = ImageDecoder()
    for progressive in [false, true] {
      let jpeg = try ImageEncoder.jpeg(
        photo, width: width, height: height, components: 3, quality: 90, subsampling: subsampling,
        progressive: progressive)
      for scale in [8, 3, 4, 12] {
        let (full, fullPixels) = try Self.decode(jpeg, scale: scale, with: decoder)
        for rect in [
          PixelRect(x: 21, y: 13, width: 40, height: 30), PixelRect(x: 32, y: 0, width: 16, height: 1),
          PixelRect(x: 0, y: 40, width: 101, height: 37), PixelRect(x: 95, y: 70, width: 6, height: 7),
          PixelRect(x: 3, y: 5, width: 7, height: 9),
        ] {
          let scaled = PixelRect(
            x: rect.x * scale / 8, y: rect.y * scale / 8, width: max(1, rect.width * scale / 8),
            height: max(1, rect.height * scale / 8))
          let (region, pixels) = try Self.decode(jpeg, scale: scale, rect: scaled, with: decoder)
          let label = "\(subsampling.rawValue), progressive \(progressive), \(scale)/8, \(scaled)"
          #expect(region.rect == scaled && region.warnings == 0, "\(label)")
          #expect(pixels == Self.cut(fullPixels, width: full.rect.width, scaled), "\(label)")
        }
      }
    }
  }

  /// Gray and CMYK regions (no chroma upsampling) likewise.
  @Test func grayAndCMYKRegionsEqualTheFullDecode() throws {
    let (width, height) = (101, 77)
    let photo = Self.photo(width: width, height: height, seed: 4)
    var gray = [UInt8]()
    var cmyk = [UInt8]()
    for i in 0..<(width * height) {
      gray.append(photo[3 * i])
      cmyk += [255 - photo[3 * i], 255 - photo[3 * i + 1], 255 - photo[3 * i + 2], UInt8(i % 50)]
    }
    let rect = PixelRect(x: 21, y: 13, width: 40, height: 30)
    for (pixels, components) in [(gray, 1), (cmyk, 4)] {
      let jpeg = try ImageEncoder.jpeg(pixels, width: width, height: height, components: components, quality: 90)
      let (_, full) = try Self.decode(jpeg)
      #expect(
        try Self.decode(jpeg, rect: rect).pixels == Self.cut(full, width: width, rect), "\(components) components")
    }
  }

  /// At 4/8 the image is ceil(w/2) × ceil(h/2), close to a 2×2 box average of the full decode.
  @Test func halfScaleIsCloseToABoxDownsampledFullDecode() throws {
    let (width, height) = (96, 72)
    let jpeg = try ImageEncoder.jpeg(
      Self.gradient(width: width, height: height), width: width, height: height, components: 3, quality: 95)
    let (_, full) = try Self.decode(jpeg)
    let (region, half) = try Self.decode(jpeg, scale: 4)
    #expect(region.scaledWidth == 48 && region.scaledHeight == 36 && region.rect.width == 48)
    var box = [UInt8]()
    for y in 0..<36 {
      for x in 0..<48 {
        for c in 0..<3 {
          let sum = [(0, 0), (0, 1), (1, 0), (1, 1)].reduce(0) {
            $0 + Int(full[((2 * y + $1.0) * width + 2 * x + $1.1) * 3 + c])
          }
          box.append(UInt8((sum + 2) / 4))
        }
      }
    }
    #expect(Self.meanAbsoluteError(half, box) < 1.5)
    // Odd sizes round up, as libjpeg's jdiv_round_up.
    #expect(ImageDecoder.scaledSize(width: 101, height: 75, scaleEighths: 4) == (51, 38))
    #expect(ImageDecoder.scaledSize(width: 500, height: 375, scaleEighths: 3) == (188, 141))
    let odd = try ImageEncoder.jpeg(
      Self.gradient(width: 101, height: 75), width: 101, height: 75, components: 3, quality: 90)
    for scale in [1, 3, 4, 7, 12] {
      let region = try Self.decode(odd, scale: scale).region
      let size = ImageDecoder.scaledSize(width: 101, height: 75, scaleEighths: scale)
      #expect(region.scaledWidth == size.width && region.scaledHeight == size.height, "scale \(scale)/8")
      #expect(region.rect == PixelRect(x: 0, y: 0, width: size.width, height: size.height), "scale \(scale)/8")
    }
  }

  @Test func truncatedJPEGDecodesWithAWarning() throws {
    let (width, height) = (64, 64)
    let jpeg = try ImageEncoder.jpeg(
      Self.photo(width: width, height: height, seed: 5), width: width, height: height, components: 3, quality: 90)
    let (region, pixels) = try Self.decode(Array(jpeg.prefix(jpeg.count / 2)))
    #expect(region.warnings > 0)
    #expect(region.firstWarning?.contains("Premature end of JPEG file") == true, "\(region.firstWarning ?? "nil")")
    #expect(pixels.count == width * height * 3)
  }

  @Test func foreignEmptyAndDamagedBytesNameTheProblem() throws {
    let gif = Array("GIF89a".utf8) + [1, 0, 1, 0, 0x80]
    #expect(
      Self.decodeError(gif)
        == .unrecognized(
          "the bytes are neither JPEG nor PNG: the first 8 of 11 are 0x47 0x49 0x46 0x38 0x39 0x61 0x01 0x00"))
    #expect(Self.decodeError([]) == .unrecognized("the bytes are neither JPEG nor PNG: there are none (an empty file)"))
    #expect(
      Self.decodeError([0xFF, 0xD8]) == .unrecognized("the bytes are neither JPEG nor PNG: the 2 bytes are 0xff 0xd8"))
    let jpeg = try ImageEncoder.jpeg(
      Self.gradient(width: 16, height: 16), width: 16, height: 16, components: 3, quality: 90)
    // SOI and the JFIF APP0 segment, then nothing.
    #expect(
      Self.decodeError(Array(jpeg.prefix(20)))
        == .corrupt(
          "JPEG: JPEG datastream contains no image (after 1 warning, the first: Premature end of JPEG file)"))
    // The marker's length is then read from the end-of-image marker libjpeg inserts, FF D9:
    // skipping 65497 bytes warns once for each insertion.
    #expect(
      Self.decodeError(Array(jpeg.prefix(4)))?.description.hasPrefix(
        "JPEG: JPEG datastream contains no image (after 32751 warnings") == true)
    let png = try ImageEncoder.png([0, 0, 0], width: 1, height: 1, channels: 3)
    #expect(Self.decodeError(Array(png.prefix(12)))?.description.hasPrefix("PNG: ") == true)
    // A header of 60000 × 60000 pixels: refused before any allocation.
    var huge = jpeg
    let sof = try #require((0..<huge.count - 1).first { huge[$0] == 0xFF && huge[$0 + 1] == 0xC0 })
    huge.replaceSubrange((sof + 5)..<(sof + 9), with: [0xEA, 0x60, 0xEA, 0x60])
    let expected = ImageDecodeError.corrupt("JPEG: 60000×60000 pixels is more than the 268435456 (2^28) Flip decodes")
    #expect(Self.decodeError(huge) == expected)
    #expect(throws: expected) { try Self.header(huge) }
    // 16000 × 16000 is allowed; at 16/8 it would be 32000 × 32000.
    huge.replaceSubrange((sof + 5)..<(sof + 9), with: [0x3E, 0x80, 0x3E, 0x80])
    #expect(
      throws: ImageDecodeError.corrupt(
        "JPEG (scaled): 32000×32000 pixels is more than the 268435456 (2^28) Flip decodes")
    ) {
      try huge.withUnsafeBytes { try ImageDecoder().decode($0, scaleEighths: 16, rect: Self.everything) }
    }
  }

  @Test func decoderReusesItsBuffer() throws {
    let large = try ImageEncoder.jpeg(
      Self.gradient(width: 64, height: 64), width: 64, height: 64, components: 3, quality: 90)
    let small = try ImageEncoder.jpeg(
      Self.gradient(width: 32, height: 16), width: 32, height: 16, components: 3, quality: 90)
    let decoder = ImageDecoder()
    _ = try Self.decode(large, with: decoder)
    let start = decoder.pixels.baseAddress
    let (region, _) = try Self.decode(small, with: decoder)
    #expect(decoder.pixels.baseAddress == start && decoder.pixels.count == region.rect.width * region.rect.height * 3)
    #expect(throws: ImageDecodeError.self) { try Self.decode([1, 2, 3], with: decoder) }
    #expect(decoder.pixels.isEmpty)
  }

  @Test func encodersRejectMismatchedSizes() {
    #expect(throws: ImageEncodeError(description: "JPEG encoding: 5 bytes are not 2×1 pixels of 3 bytes")) {
      try ImageEncoder.jpeg([1, 2, 3, 4, 5], width: 2, height: 1, components: 3, quality: 90)
    }
    #expect(throws: ImageEncodeError.self) { try ImageEncoder.png([1, 2], width: 1, height: 1, channels: 2) }
    #expect(throws: ImageEncodeError.self) {
      try ImageEncoder.jpeg([1], width: 1, height: 1, components: 1, quality: 0)
    }
  }
}

/// Decode cost at each DCT scale n/8, full image and a 300×300 crop (of the full image's
/// pixels, so ceil(300·n/8) square at n/8), of a 500×375 quality-90 photo-like JPEG on one
/// thread, best of 30. A measurement, not a check: run it with
/// `FLIP_IMAGE_CODEC_BENCH=1 swift test --filter ImageCodecBenchmark` (in a release build for
/// numbers to quote; libjpeg-turbo itself is the system's optimized build either way).
@Suite("Image codec benchmark", .enabled(if: ProcessInfo.processInfo.environment["FLIP_IMAGE_CODEC_BENCH"] != nil))
struct ImageCodecBenchmark {
  @Test func decodeCostPerScale() throws {
    let (width, height) = (500, 375)
    let jpeg = try ImageEncoder.jpeg(
      ImageCodecTests.photo(width: width, height: height, seed: 7), width: width, height: height, components: 3,
      quality: 90)
    let decoder = ImageDecoder()
    func best(_ rect: PixelRect, scale: Int) throws -> Double {
      var fastest = Duration.seconds(1000)
      for _ in 0..<30 {
        let start = ContinuousClock.now
        _ = try jpeg.withUnsafeBytes { try decoder.decode($0, scaleEighths: scale, rect: rect) }
        fastest = min(fastest, ContinuousClock.now - start)
      }
      let (seconds, attoseconds) = fastest.components
      return Double(seconds) * 1e3 + Double(attoseconds) * 1e-15
    }
    var header = Duration.seconds(1000)
    for _ in 0..<30 {
      let start = ContinuousClock.now
      _ = try jpeg.withUnsafeBytes { try ImageDecoder.header($0) }
      header = min(header, ContinuousClock.now - start)
    }
    print("\(width)×\(height) quality 90: \(jpeg.count) bytes; header alone \(header)")
    print("n/8  full size   full ms  crop size  crop ms")
    for scale in 1...8 {
      let size = ImageDecoder.scaledSize(width: width, height: height, scaleEighths: scale)
      let full = try best(ImageCodecTests.everything, scale: scale)
      let side = (300 * scale + 7) / 8
      let crop = PixelRect(x: 100 * scale / 8, y: 37 * scale / 8, width: side, height: side)
      let cropped = try best(crop, scale: scale)
      let columns = [
        "\(scale)/8", "\(size.width)×\(size.height)", String(format: "%.3f", full), "\(side)×\(side)",
        String(format: "%.3f", cropped),
      ]
      print(columns.joined(separator: "  "))
    }
  }
}
