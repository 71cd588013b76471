import FlipBNN
import FlipTraining
import Foundation

// The fuzz target of Flip's file reader (safetensors layout, metadata, checksums, model
// matching). Two builds of one file:
//   scripts/fuzz.sh                  libFuzzer (swift build -sanitize=fuzzer -DFLIP_LIBFUZZER)
//   .build/debug/flip-fuzz FILE...   replays inputs (a crash found by the fuzzer, a corpus)

/// The tiny model fuzz inputs are loaded into (the seed corpus is written from it).
let fuzzModel: Model = {
  var dense = LayerSpec(.quantDense)
  dense.units = 3
  dense.kernelQuantizer = QuantizerSpec("ste_sign")
  dense.kernelConstraint = .weightClip(clipValue: 1)
  dense.useBias = false
  var bn = LayerSpec(.batchNormalization)
  bn.momentum = 0.9
  return try! Model(specs: [LayerSpec(.flatten), dense, bn], inputShape: [2, 2, 1], seed: 1)
}()

#if FLIP_LIBFUZZER
  @_silgen_name("LLVMFuzzerRunDriver")
  func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
  ) -> CInt

  /// SwiftPM links an executable's entry point as `<module>_main`; this one hands the process
  /// to libFuzzer's driver.
  @_cdecl("flip_fuzz_main")
  public func fuzzMain(
    _ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?
  ) -> CInt {
    var count = argc
    var arguments = argv
    return LLVMFuzzerRunDriver(&count, &arguments) { bytes, size in
      let data = bytes.map { Data(bytes: $0, count: size) } ?? Data()
      _ = FileFuzzing.read(data, into: fuzzModel)
      return 0
    }
  }
#else
  @main
  enum FuzzReplay {
    static func main() throws {
      let arguments = CommandLine.arguments.dropFirst()
      if arguments.first == "--write-seed" {
        // The seed corpus: a valid model file and checkpoint-like file of the fuzz model.
        for path in arguments.dropFirst() {
          try ModelFile.write(
            ModelFile.tensors(of: fuzzModel), metadata: ["model": "fuzz", "step": "1"], kind: .model, to: path)
        }
        return
      }
      guard !arguments.isEmpty else {
        print("usage: flip-fuzz FILE... (replay inputs)  |  flip-fuzz --write-seed FILE")
        return
      }
      for path in arguments {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        print("\(path): \(FileFuzzing.read(data, into: fuzzModel))")
      }
    }
  }
#endif
