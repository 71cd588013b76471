import FlipBNN
import FlipTraining
import Foundation

// The fuzz target of Flip's file reader (safetensors layout, metadata, checksums, model
// matching). Two builds of one target:
//   scripts/fuzz.sh                   libFuzzer + AddressSanitizer (-sanitize=fuzzer,address
//                                     -DFLIP_LIBFUZZER): a custom mutator re-stamps both
//                                     checksums after each mutation (Restamp.swift)
//   flip-fuzz FILE...                 either build: reads each file as the fuzzer does and
//                                     prints the outcome (libFuzzer's build runs them under ASan)
//   flip-fuzz --write-seed DIR        the seed corpus: a model, a checkpoint, a binary export
//                                     and a version 1 model file of `fuzzModel`
//   flip-fuzz --write-dict FILE       a libFuzzer dictionary of the seeds' JSON tokens

/// The tiny model fuzz inputs are loaded into (the seed corpus is written from it). One model
/// for every input, since libFuzzer's C callback cannot carry one: libFuzzer and the replay loop
/// call it from one thread at a time, which is what makes sharing it safe.
final class FuzzTarget: @unchecked Sendable {
  let model: Model
  init(_ model: Model) { self.model = model }
}

var fuzzModel: Model { fuzzTarget.model }

let fuzzTarget = FuzzTarget({
  var dense = LayerSpec(.quantDense)
  dense.units = 3
  dense.kernelQuantizer = QuantizerSpec("ste_sign")
  dense.kernelConstraint = .weightClip(clipValue: 1)
  dense.useBias = false
  var bn = LayerSpec(.batchNormalization)
  bn.momentum = 0.9
  return try! Model(specs: [LayerSpec(.flatten), dense, bn], inputShape: [2, 2, 1], seed: 1)
}())

/// The seed corpus: one file of each kind the reader accepts, all of `fuzzModel`.
func seedFiles() throws -> [(name: String, data: Data)] {
  let tensors = ModelFile.tensors(of: fuzzModel)
  let model = try ModelFile.encode(tensors, metadata: ["model": "fuzz", "step": "1"], kind: .model)
  // A checkpoint: optimizer state (skipped when loading) and the JSON metadata of a run.
  var state = tensors
  for (name, t) in tensors where name.hasSuffix("kernel") {
    state[ModelFile.optimizerPrefix + "adam.m." + name] = .init(shape: t.shape, values: t.values.map { $0 / 3 })
  }
  let checkpoint = try ModelFile.encode(
    state,
    metadata: [
      "model": "fuzz", "step": "8", "epoch": "2", "world_size": "2",
      "position": #"{"epoch":2,"step":8,"step_in_epoch":0}"#, "optimizer": #"{"iterations":8,"name":"adam"}"#,
    ], kind: .checkpoint)
  // A binary export: the ste_sign kernel bit-packed as U32, described by `binary_kernels`.
  let exported = try BinaryExport.export(model: fuzzModel, metadata: ["model": "fuzz", "step": "1"])
  let binary = try ModelFile.encode(exported.tensors, metadata: exported.metadata, kind: .binaryExport)
  // Format version 1 (still read): no header checksum, an FNV-1a 64 of names and bytes.
  let v1 = try SafeTensors.encode(
    tensors,
    metadata: [
      "format": ModelFile.Kind.model.rawValue, "format_version": "1", "model": "fuzz",
      Restamp.fnvKey: ModelFile.fnv1a64Checksum(tensors),
    ])
  return [("model", model), ("checkpoint", checkpoint), ("binary-export", binary), ("model-v1", v1)]
}

/// A libFuzzer dictionary: the JSON strings of the seeds' headers (keys, tensor names, dtypes,
/// formats; not the checksums, which the mutator re-stamps), the keys and strings of JSON kept
/// inside metadata values (binary_kernels' `keras_shape`, ...) as they appear there, escaped,
/// and dtypes Flip does not read, so mutations can swap one meaningful token for another.
func dictionary(_ seeds: [(name: String, data: Data)]) -> String {
  var tokens: Set<String> = ["\"F32\"", "\"U32\"", "\"F16\"", "\"I64\"", "\"1\"", "\"2\"", "\"3\"", "[]", "null"]
  let checksum = try! NSRegularExpression(pattern: "^\"[0-9a-f]{8,16}\"$")
  func add(_ token: String) {
    let range = NSRange(token.startIndex..., in: token)
    if token.utf8.count <= 64, checksum.firstMatch(in: token, range: range) == nil { tokens.insert(token) }
  }
  func strings(in json: Any) -> [String] {
    guard let data = try? JSONSerialization.data(withJSONObject: json, options: [.fragmentsAllowed]),
      let value = try? JSONDecoder().decode(ConfigValue.self, from: data)
    else { return [] }
    func walk(_ v: ConfigValue) -> [String] {
      switch v {
      case .map(let m): return Array(m.keys) + m.values.flatMap(walk)
      case .list(let l): return l.flatMap(walk)
      case .string(let s): return [s]
      default: return []
      }
    }
    return walk(value)
  }
  for (_, data) in seeds {
    guard let header = try? JSONSerialization.jsonObject(with: Data(Restamp.header(of: data))) else { continue }
    for s in strings(in: header) {
      // As the string appears in the header: quoted, its quotes and backslashes escaped.
      add("\"" + s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\"")
      if let inner = try? JSONSerialization.jsonObject(with: Data(s.utf8)) {
        for t in strings(in: inner) { add("\\\"\(t)\\\"") }
      }
    }
  }
  func escaped(_ s: String) -> String {
    s.unicodeScalars.map { c -> String in
      switch c {
      case "\\": return "\\\\"
      case "\"": return "\\\""
      default: return c.isASCII && c.value >= 0x20 ? String(c) : String(format: "\\x%02X", c.value)
      }
    }.joined()
  }
  return tokens.sorted().map { "\"\(escaped($0))\"\n" }.joined()
}

/// Writes the seeds into `directory`, after checking that re-stamping reproduces them.
func writeSeeds(to directory: String) throws {
  let seeds = try seedFiles()
  if let problem = Restamp.selfCheck(seeds) { throw FuzzSetupError(problem) }
  try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
  for (name, data) in seeds { try data.write(to: URL(fileURLWithPath: directory + "/seed-\(name).safetensors")) }
}

struct FuzzSetupError: Error, CustomStringConvertible {
  var description: String
  init(_ description: String) { self.description = description }
}

/// The work of one input: what the reader does with a file's bytes.
func readOne(_ data: Data) -> FileFuzzing.Outcome { FileFuzzing.read(data, into: fuzzModel) }

/// The commands both builds share; returns false when `arguments` are inputs to replay.
func runCommand(_ arguments: [String]) throws -> Bool {
  switch arguments.first {
  case "--write-seed":
    guard arguments.count == 2 else { throw FuzzSetupError("usage: flip-fuzz --write-seed DIR") }
    try writeSeeds(to: arguments[1])
  case "--write-dict":
    guard arguments.count == 2 else { throw FuzzSetupError("usage: flip-fuzz --write-dict FILE") }
    try dictionary(try seedFiles()).write(toFile: arguments[1], atomically: true, encoding: .utf8)
  default:
    return false
  }
  return true
}

#if FLIP_LIBFUZZER
  @_silgen_name("LLVMFuzzerRunDriver")
  func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
  ) -> CInt

  @_silgen_name("LLVMFuzzerMutate")
  func LLVMFuzzerMutate(_ data: UnsafeMutablePointer<UInt8>, _ size: Int, _ maxSize: Int) -> Int

  /// libFuzzer's mutation, then both checksums re-stamped when the layout still decodes (7
  /// times in 8: the rest keep their stale checksums, so the mismatch errors stay covered).
  /// Re-stamping here rather than in the target keeps the corpus and any crash file real
  /// Flip files that fail the same way in `flip checkpoint inspect`, and the target the
  /// reader itself.
  @_cdecl("LLVMFuzzerCustomMutator")
  public func customMutator(_ data: UnsafeMutablePointer<UInt8>, _ size: Int, _ maxSize: Int, _ seed: UInt32) -> Int {
    let n = LLVMFuzzerMutate(data, size, maxSize)
    guard seed % 8 != 0, let stamped = Restamp.restamp(Data(bytes: data, count: n)), stamped.count <= maxSize else {
      return n
    }
    stamped.copyBytes(to: data, count: stamped.count)
    return stamped.count
  }

  /// SwiftPM links an executable's entry point as `<module>_main`; this one hands the process
  /// to libFuzzer's driver (after the commands above, and a check of the re-stamping).
  @_cdecl("flip_fuzz_main")
  public func fuzzMain(
    _ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?
  ) -> CInt {
    do {
      if try runCommand(Array(CommandLine.arguments.dropFirst())) { return 0 }
      if let problem = Restamp.selfCheck(try seedFiles()) { throw FuzzSetupError(problem) }
    } catch {
      FileHandle.standardError.write(Data("flip-fuzz: \(error)\n".utf8))
      return 1
    }
    var count = argc
    var arguments = argv
    return LLVMFuzzerRunDriver(&count, &arguments) { bytes, size in
      _ = readOne(bytes.map { Data(bytes: $0, count: size) } ?? Data())
      return 0
    }
  }
#else
  @main
  enum FuzzReplay {
    static func main() throws {
      let arguments = Array(CommandLine.arguments.dropFirst())
      if try runCommand(arguments) { return }
      guard !arguments.isEmpty else {
        print("usage: flip-fuzz FILE... (replay inputs) | flip-fuzz --write-seed DIR | flip-fuzz --write-dict FILE")
        return
      }
      for path in arguments {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        print("\(path): \(readOne(data))")
      }
    }
  }
#endif
