import FlipBNN
import FlipTensor
import Foundation
import Testing

@testable import FlipTraining

/// Never trust a file: seeded random mutations of a valid checkpoint, and the named cases of
/// damage. Every input must be rejected with an error or decode to exactly the original.
@Suite("file reader under mutation")
struct FileMutationTests {
  /// A small checkpoint-kind file of a BatchNorm model, with optimizer state and metadata.
  static func original() throws -> (data: Data, model: Model) {
    var dense = LayerSpec(.quantDense)
    dense.units = 4
    dense.kernelQuantizer = QuantizerSpec("ste_sign")
    dense.kernelConstraint = .weightClip(clipValue: 1)
    var bn = LayerSpec(.batchNormalization)
    bn.momentum = 0.9
    let model = try Model(specs: [LayerSpec(.flatten), dense, bn], inputShape: [3, 3, 1], seed: 5)
    var tensors = ModelFile.tensors(of: model)
    tensors["optimizer.adam.m.layers.1.quant_dense.kernel"] = .init(
      shape: [9, 4], values: (0..<36).map { Float($0) / 7 })
    let metadata = [
      "model": "mutation", "step": "24", "epoch": "3", "world_size": "2",
      "position": #"{"epoch":3,"step":24,"step_in_epoch":0}"#, "config": "model: mutation\nlayers: []\n",
    ]
    return (try ModelFile.encode(tensors, metadata: metadata, kind: .checkpoint), model)
  }

  @Test func thousandsOfMutatedFilesNeverCrashTheReader() throws {
    let (good, model) = try Self.original()
    let reference = try ModelFile.decode(good, path: "good")
    #expect(FileFuzzing.read(good, into: model) == .loaded)
    var random = SplitMix64(seed: 2026)
    var rejected = 0
    var harmless = 0
    let headerLength = Int(good[0]) | Int(good[1]) << 8
    for i in 0..<4000 {
      var data = good
      switch i % 8 {
      case 0:  // flip one bit anywhere
        let at = random.nextInt(below: data.count)
        data[at] ^= UInt8(1 << random.nextInt(below: 8))
      case 1:  // random byte in the header
        data[8 + random.nextInt(below: headerLength)] = UInt8(random.nextInt(below: 256))
      case 2:  // truncate
        data = data.prefix(random.nextInt(below: data.count))
      case 3:  // a digit of the header changed (shapes, offsets, step numbers)
        let digits = (8..<(8 + headerLength)).filter { (0x30...0x39).contains(data[$0]) }
        data[digits[random.nextInt(below: digits.count)]] = 0x30 + UInt8(random.nextInt(below: 10))
      case 4:  // a hostile header length
        let n = [UInt64.max, UInt64(data.count), UInt64(headerLength - 1), UInt64(random.next() >> 20)][i / 8 % 4]
        for k in 0..<8 { data[k] = UInt8(truncatingIfNeeded: n >> (8 * UInt64(k))) }
      case 5:  // bytes inserted or appended
        let at = random.nextInt(below: data.count + 1)
        data.insert(
          contentsOf: (0..<(1 + random.nextInt(below: 9))).map { _ in UInt8(random.nextInt(below: 256)) }, at: at)
      case 6:  // a slice of the file repeated (duplicated JSON keys, shifted payload)
        let a = random.nextInt(below: data.count)
        let b = min(data.count, a + 1 + random.nextInt(below: 64))
        data.insert(contentsOf: data[a..<b], at: random.nextInt(below: data.count))
      default:  // several random bytes anywhere
        for _ in 0..<(1 + random.nextInt(below: 6)) {
          data[random.nextInt(below: data.count)] = UInt8(random.nextInt(below: 256))
        }
      }
      if FileFuzzing.read(data, into: model) == .rejected {
        rejected += 1
        continue
      }
      // Accepted: only if nothing that matters changed (e.g. JSON whitespace).
      let decoded = try ModelFile.decode(data, path: "mutated")
      #expect(decoded.metadata == reference.metadata, "mutation \(i) changed the metadata undetected")
      #expect(
        decoded.tensors.mapValues { $0.values.map(\.bitPattern) }
          == reference.tensors.mapValues { $0.values.map(\.bitPattern) },
        "mutation \(i) changed a tensor undetected")
      harmless += 1
    }
    #expect(rejected > 3900, "only \(rejected) of 4000 mutations rejected (\(harmless) harmless)")
  }

  /// `data` with both checksums re-stamped as a writer would stamp them, when its layout
  /// decodes (the header is written again, keys sorted); otherwise `data` unchanged.
  static func restamped(_ data: Data) -> Data {
    guard let c = try? SafeTensors.decodeContents(data, path: "") else { return data }
    let length = (0..<8).reduce(0) { $0 | Int(data[$1]) << (8 * $1) }
    guard var object = try? JSONSerialization.jsonObject(with: data[8..<(8 + length)]) as? [String: Any] else {
      return data
    }
    var covered = c.metadata
    covered[ModelFile.headerChecksumKey] = nil
    covered["payload_crc32"] = nil
    let index = c.tensors.keys.sorted().map { ($0, c.tensors[$0]!.dtype, c.tensors[$0]!.shape, c.offsets[$0]!) }
    var metadata = c.metadata
    metadata[ModelFile.headerChecksumKey] = ModelFile.headerChecksum(metadata: covered, index: index)
    metadata["payload_crc32"] = c.payloadCRC32
    object["__metadata__"] = metadata
    let json = try! JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
    var out = Data((0..<8).map { UInt8(truncatingIfNeeded: json.count >> (8 * $0)) })
    out.append(json)
    out.append(data[(8 + length)...])
    return out
  }

  /// The checks behind the checksums, in CI (scripts/fuzz.sh fuzzes them at length): seeded
  /// mutations of the header (a digit, a byte, one of its JSON strings for another, a span
  /// deleted), each with both checksums then re-stamped, as a file from a buggy writer or
  /// another tool would carry them. Each must load, or be rejected with an error naming the
  /// file — never another error, never a crash — and many must get past the checksums to the
  /// format, version and model checks.
  @Test func mutatedHeadersWithValidChecksumsLoadOrAreRejectedByName() throws {
    let (good, model) = try Self.original()
    let length = Int(good[0]) | Int(good[1]) << 8
    let header = [UInt8](good[8..<(8 + length)])
    let payload = good[(8 + length)...]
    // The header's JSON strings, quotes included (names, keys, dtypes, values).
    var strings: [ArraySlice<UInt8>] = []
    var at = 0
    while let open = header[at...].firstIndex(of: UInt8(ascii: "\"")) {
      var end = open + 1
      while end < header.count && header[end] != UInt8(ascii: "\"") { end += header[end] == UInt8(ascii: "\\") ? 2 : 1 }
      guard end < header.count else { break }
      strings.append(header[open...end])
      at = end + 1
    }
    let digits = header.indices.filter { (0x30...0x39).contains(header[$0]) }
    var random = SplitMix64(seed: 2027)
    var outcomes: [String: Int] = [:]
    for i in 0..<1200 {
      var h = header
      switch i % 4 {
      case 0:  // a digit of a shape, an offset or a value
        h[digits[random.nextInt(below: digits.count)]] = 0x30 + UInt8(random.nextInt(below: 10))
      case 1:  // a printable byte anywhere in the header
        h[random.nextInt(below: h.count)] = UInt8(0x20 + random.nextInt(below: 95))
      case 2:  // one JSON string in place of another (a name, a key, a dtype, a format)
        let target = strings[random.nextInt(below: strings.count)]
        h.replaceSubrange(target.indices, with: strings[random.nextInt(below: strings.count)])
      default:  // a span deleted
        let a = random.nextInt(below: h.count)
        h.removeSubrange(a..<min(h.count, a + 1 + random.nextInt(below: 12)))
      }
      var data = Data((0..<8).map { UInt8(truncatingIfNeeded: h.count >> (8 * $0)) })
      data.append(contentsOf: h)
      data.append(payload)
      data = Self.restamped(data)
      do {
        let (tensors, metadata) = try ModelFile.decode(data, path: "m.safetensors")
        try ModelFile.load(tensors, into: model, path: "m.safetensors", metadata: metadata)
        try initialize(model, from: tensors, path: "m.safetensors")
        outcomes["loaded", default: 0] += 1
      } catch let e as TrainingError {
        let text = "\(e)"
        #expect(text.hasPrefix("m.safetensors: "), "mutation \(i): \(text)")
        let stage =
          text.contains("not a valid safetensors file")
          ? "layout" : text.contains("checksum") ? "checksum" : "format, version or model"
        outcomes[stage, default: 0] += 1
      } catch {
        Issue.record("mutation \(i): \(error) is not a TrainingError")
      }
    }
    #expect(outcomes["format, version or model", default: 0] >= 150, "\(outcomes)")
    #expect(outcomes["loaded", default: 0] >= 100, "\(outcomes)")
  }

  func error(_ data: Data, _ model: Model? = nil) -> String {
    do {
      let (tensors, metadata) = try ModelFile.decode(data, path: "f.safetensors")
      if let model { try ModelFile.load(tensors, into: model, path: "f.safetensors", metadata: metadata) }
      return "accepted"
    } catch { return "\(error)" }
  }

  @Test func namedDamageGivesNamedErrors() throws {
    let (good, model) = try Self.original()
    let headerLength = Int(good[0]) | Int(good[1]) << 8
    #expect(error(Data()).contains("f.safetensors: not a valid safetensors file: 0 bytes is too short"))
    #expect(error(good.prefix(good.count - 1)).contains("fall outside"))
    var header = good
    let at = (8..<(8 + headerLength)).first { header[$0] == UInt8(ascii: "4") && header[$0 - 1] == UInt8(ascii: "2") }!
    header[at] = UInt8(ascii: "5")  // "step": "24" -> "25"
    #expect(error(header).contains("header checksum mismatch"))
    var payload = good
    payload[good.count - 10] ^= 1
    #expect(error(payload).contains("payload checksum mismatch"))
    var longer = good
    longer[3] = 0x01
    #expect(error(longer).contains("runs past the end of the file"))
    // Overlapping offsets and a wrong dtype, written by hand.
    func file(_ header: String, _ payload: [UInt8]) -> Data {
      var d = Data()
      var n = UInt64(header.utf8.count).littleEndian
      withUnsafeBytes(of: &n) { d.append(contentsOf: $0) }
      return d + Data(header.utf8) + Data(payload)
    }
    let overlap =
      #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#
    #expect(error(file(overlap, Array(repeating: 0, count: 8))).contains("overlaps"))
    let wrongType = #"{"a":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}"#
    #expect(error(file(wrongType, Array(repeating: 0, count: 8))).contains("dtype I64"))
    // A checkpoint of another model.
    var other = LayerSpec(.quantDense)
    other.units = 5
    let otherModel = try Model(specs: [LayerSpec(.flatten), other], inputShape: [3, 3, 1], seed: 1)
    let mismatch = error(good, otherModel)
    #expect(
      mismatch.contains("does not match the model")
        && mismatch.contains("unexpected tensors: layers.2.batch_normalization"), "\(mismatch)")
    _ = model
  }

  @Test func streamingWriterWritesTheEncodersBytes() throws {
    let (_, model) = try Self.original()
    let dir = temporaryDirectory("flip-stream")
    // Several MiB, so the checksum is combined from pieces computed in parallel.
    let big = (0..<(3 << 20)).map { Float($0 % 977) - 400 }
    var tensors = ModelFile.tensors(of: model)
    tensors["optimizer.adam.m.big"] = .init(shape: [3, 1 << 20], values: big)
    let metadata = ["model": "stream", "step": "7"]
    try ModelFile.write(tensors, metadata: metadata, kind: .checkpoint, to: dir + "/a.safetensors")
    var keep: [[Float]] = []
    var refs: [SafeTensors.TensorRef] = []
    for (name, t) in tensors {
      keep.append(t.values)
      let p = UnsafeMutablePointer<Float>.allocate(capacity: t.values.count)
      p.update(from: t.values, count: t.values.count)
      refs.append(.init(name: name, shape: t.shape, bytes: UnsafeRawBufferPointer(start: p, count: t.values.count * 4)))
    }
    defer { for r in refs { r.bytes.baseAddress!.deallocate() } }
    let size = try ModelFile.write(refs, metadata: metadata, kind: .checkpoint, to: dir + "/b.safetensors")
    let a = try Data(contentsOf: URL(fileURLWithPath: dir + "/a.safetensors"))
    let b = try Data(contentsOf: URL(fileURLWithPath: dir + "/b.safetensors"))
    #expect(a == b)
    #expect(size == b.count)
    _ = try ModelFile.read(path: dir + "/b.safetensors")
  }
}
