import FlipBNN
import Foundation
import Testing

@testable import FlipTraining

@Suite("safetensors and model files")
struct ModelFileTests {
  func sample() -> [String: SafeTensors.Tensor] {
    ["a.kernel": .init(shape: [2, 3], values: [1, -2, 3.5, 0, -0.25, 7]), "b": .init(shape: [1], values: [42])]
  }

  @Test func roundTripsTensorsAndMetadata() throws {
    let data = try SafeTensors.encode(sample(), metadata: ["k": "v", "json": "{\"x\":1}"])
    let (tensors, metadata) = try SafeTensors.decode(data, path: "m")
    #expect(tensors == sample())
    #expect(metadata == ["k": "v", "json": "{\"x\":1}"])
    // Layout: 8-byte little-endian length, header padded to 8, data packed in name order.
    let n = data.prefix(8).enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
    #expect(n % 8 == 0)
    #expect(data.count == 8 + n + 7 * 4)
    let firstValue = data[(8 + n)..<(8 + n + 4)].withUnsafeBytes { $0.loadUnaligned(as: Float.self) }
    #expect(firstValue == 1)
  }

  func decodeError(_ data: Data) -> String {
    do {
      _ = try SafeTensors.decode(data, path: "bad.safetensors")
      return "no error"
    } catch { return "\(error)" }
  }

  func file(header: String, payload: [UInt8]) -> Data {
    var d = Data()
    var n = UInt64(header.utf8.count).littleEndian
    withUnsafeBytes(of: &n) { d.append(contentsOf: $0) }
    d.append(Data(header.utf8))
    d.append(contentsOf: payload)
    return d
  }

  @Test func rejectsCorruptFiles() throws {
    let good = try SafeTensors.encode(sample(), metadata: [:])
    #expect(decodeError(Data()).contains("too short"))
    #expect(decodeError(good.prefix(good.count - 3)).contains("bad.safetensors"))
    var huge = good
    huge[7] = 0x7F
    #expect(decodeError(huge).contains("exceeds the limit"))
    var longer = good
    longer[0] = 0xFF
    longer[1] = 0xFF
    #expect(decodeError(longer).contains("past the end"))
    var garbled = good
    garbled[9] = UInt8(ascii: "#")
    #expect(decodeError(garbled).contains("not a JSON object"))
    #expect(
      decodeError(file(header: #"{"a":{"dtype":"F16","shape":[1],"data_offsets":[0,2]}}"#, payload: [0, 0])).contains(
        "dtype F16"))
    #expect(
      decodeError(file(header: #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#, payload: [0, 0, 0, 0]))
        .contains("needs 8"))
    #expect(
      decodeError(file(header: #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,8]}}"#, payload: [0, 0, 0, 0]))
        .contains("outside"))
    let overlap =
      #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#
    #expect(decodeError(file(header: overlap, payload: [UInt8](repeating: 0, count: 8))).contains("overlaps"))
    #expect(
      decodeError(
        file(
          header: #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, payload: [UInt8](repeating: 0, count: 8))
      ).contains("gap"))
    #expect(decodeError(file(header: #"{"__metadata__":{"a":1}}"#, payload: [])).contains("not a string"))
  }

  @Test func flippedPayloadByteFailsTheChecksum() throws {
    let dir = temporaryDirectory()
    let model = try Model(specs: ModelPreset.binarynetMLP.layers, inputShape: [4, 4, 1], seed: 1)
    let path = dir + "/model.safetensors"
    try ModelFile.save(model, to: path, metadata: ["model": "binarynet-mlp"])
    var data = FileManager.default.contents(atPath: path)!
    data[data.count - 5] ^= 0x40
    _ = FileManager.default.createFile(atPath: path, contents: data)
    do {
      _ = try ModelFile.read(path: path)
      Issue.record("expected an error")
    } catch { #expect("\(error)".contains("checksum")) }
  }

  @Test func savesAndLoadsAModelExactly() throws {
    let dir = temporaryDirectory()
    let a = try Model(specs: ModelPreset.larqCNN.layers, inputShape: [28, 28, 1], seed: 1)
    a.store.state.pointer[3] = 0.5
    let path = dir + "/model.safetensors"
    try ModelFile.save(a, to: path, metadata: ["model": "larq-cnn"])
    let (tensors, metadata) = try ModelFile.read(path: path)
    #expect(metadata["model"] == "larq-cnn")
    #expect(tensors["layers.0.quant_conv2d.kernel"]?.shape == [3, 3, 1, 32])
    #expect(tensors["layers.2.batch_normalization.moving_mean"]?.shape == [32])
    let b = try Model(specs: ModelPreset.larqCNN.layers, inputShape: [28, 28, 1], seed: 2)
    #expect(b.store.values.array != a.store.values.array)
    try ModelFile.load(tensors, into: b, path: path)
    #expect(b.store.values.array == a.store.values.array)
    #expect(b.store.state.array == a.store.state.array)
    // A checkpoint of another model is rejected with the differing tensors named.
    let mlp = try Model(specs: ModelPreset.binarynetMLP.layers, inputShape: [28, 28, 1], seed: 0)
    do {
      try ModelFile.load(tensors, into: mlp, path: path)
      Issue.record("expected an error")
    } catch {
      #expect("\(error)".contains("missing tensors") && "\(error)".contains("layers.1.quant_dense.kernel"))
    }
  }
}
