// swift-tools-version:6.0
import PackageDescription

// Flip: a trainer for binary neural networks, data-parallel over MPI.
// Targets follow the parts in DESIGN.md: C shims -> tensor core -> BNN library,
// communication -> training -> the `flip` executable.

// Release builds: -O, with bounds, overflow and precondition checks on, for every target.
// Untrusted bytes reach most of them: FlipTraining reads model files, checkpoints and IDX
// data, FlipCLI YAML run configs, FlipComm other ranks' messages, and the sizes in a config
// or an IDX header reach FlipBNN's and FlipTensor's shape arithmetic (where -Ounchecked let
// `filters: 4611686018427387904` wrap silently; -O traps). Measured against -Ounchecked with
// callgrind on `flip bench --batch-size 256 --steps 4 --warmup 1 --threads 1`: -O costs 0.3 %
// more instructions per step for binarynet-mlp and 1.2 % for larq-cnn, nearly all in FlipBNN's
// MaxPool2D, Adam and ste_sign kernel loops (checks in FlipTraining, FlipCLI and FlipComm
// alone: 0.01 %); wall time is the same within this machine's noise.
let optimize: [SwiftSetting] = [.unsafeFlags(["-O", "-wmo"], .when(configuration: .release))]

// FlipXNOR (the XNOR-popcount product of ±1 matrices) is optimized in every configuration and,
// on x86_64, compiled for Haswell (AVX2, POPCNT): its popcounts become AVX2 byte lookups, about
// 2.4x faster than the baseline x86-64 code. FlipTensor calls it only after checking that the
// CPU has every Haswell extension (CPUID) and oneDNN runs AVX2 (`XNORProduct.isAvailable`), so
// the binary still runs on older CPUs.
#if arch(x86_64)
  let bitKernels: [SwiftSetting] = [.unsafeFlags(["-O", "-target-cpu", "haswell"])]
#else
  let bitKernels: [SwiftSetting] = [.unsafeFlags(["-O"])]
#endif

let package = Package(
  name: "Flip",
  platforms: [.macOS(.v13)],
  products: [
    .executable(name: "flip", targets: ["flip"])
  ],
  dependencies: [
    .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    .package(url: "https://github.com/apple/swift-log", from: "1.16.0"),
    .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
  ],
  targets: [
    // C shims: thin module maps over Debian's libraries.
    .systemLibrary(name: "CMPI", pkgConfig: "ompi-c", providers: [.apt(["libopenmpi-dev"])]),
    .systemLibrary(name: "CDNNL", providers: [.apt(["libdnnl-dev"])]),
    .systemLibrary(name: "CZlib", providers: [.apt(["zlib1g-dev"])]),
    // Stop requests from signals (async-signal-safe handlers, polled at step boundaries).
    .target(name: "CSignals"),

    // CPUID: the x86 features FlipXNOR's Haswell code may use.
    .target(name: "CCPUFeatures"),
    // Packed sign bits and their XNOR-popcount product (called through FlipTensor only).
    .target(name: "FlipXNOR", swiftSettings: bitKernels),
    // Tensor core: buffers, GEMM and convolution through oneDNN, im2col, the XNOR product.
    .target(
      name: "FlipTensor", dependencies: ["CDNNL", "CCPUFeatures", "FlipXNOR"],
      swiftSettings: optimize + [.swiftLanguageMode(.v6)]),
    // BNN library: quantizers, layers, constraints, models, optimizers, schedules, summary.
    .target(name: "FlipBNN", dependencies: ["FlipTensor"], swiftSettings: optimize + [.swiftLanguageMode(.v6)]),
    // Communication: the Communicator protocol and its implementations.
    .target(name: "FlipComm", dependencies: ["CMPI"], swiftSettings: optimize + [.swiftLanguageMode(.v6)]),
    // Training: data sets, sampler, trainer loop, model files, metrics.
    .target(
      name: "FlipTraining",
      dependencies: [
        "FlipBNN", "FlipComm", "CZlib", "CSignals",
        .product(name: "Logging", package: "swift-log"),
      ],
      swiftSettings: optimize),
    // The command line: argument parsing, config files, wiring (a library so tests reach it).
    .target(
      name: "FlipCLI",
      dependencies: [
        "FlipTraining", "CSignals",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "Yams", package: "Yams"),
      ],
      swiftSettings: optimize),
    // The `flip` executable: only calls into FlipCLI.
    .executableTarget(name: "flip", dependencies: ["FlipCLI"]),
    // The file reader's fuzz target: replays inputs; scripts/fuzz.sh builds it with libFuzzer.
    .executableTarget(name: "flip-fuzz", dependencies: ["FlipTraining"]),
    .testTarget(
      name: "FlipTests",
      dependencies: ["FlipCLI", "FlipTraining", "FlipBNN", "FlipTensor", "FlipComm", "FlipXNOR", "CCPUFeatures"]),
  ],
  swiftLanguageModes: [.v5]
)
