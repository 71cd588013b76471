// swift-tools-version:6.0
import PackageDescription

// Flip: a trainer for binary neural networks, data-parallel over MPI.
// Targets follow the parts of the design: C shims -> tensor core -> BNN library,
// communication -> training -> the `flip` executable (docs/architecture.md).

// Release builds (`swift build -c release`) compile every Swift target with -O and whole-module
// optimization, and every C target with -O2: SwiftPM's defaults, with nothing in this file
// (a package others use as a versioned dependency may carry no unsafe compiler flags). Check
// with `swift build -c release -v` (swiftc: `-O -whole-module-optimization`; clang: `-O2`).
// That is -O, with bounds, overflow and precondition checks on, for every target: untrusted
// bytes reach most of them. FlipTraining reads model files, checkpoints and IDX data, FlipCLI
// YAML run configs, FlipComm other ranks' messages, and the sizes in a config or an IDX header
// reach FlipBNN's and FlipTensor's shape arithmetic (where -Ounchecked let
// `filters: 4611686018427387904` wrap silently; -O traps). Measured against -Ounchecked with
// callgrind on `flip bench --batch-size 256 --steps 4 --warmup 1 --threads 1`: -O costs 0.3 %
// more instructions per step for binarynet-mlp and 1.2 % for larq-cnn, nearly all in FlipBNN's
// MaxPool2D, Adam and ste_sign kernel loops (checks in FlipTraining, FlipCLI and FlipComm
// alone: 0.01 %); wall time is the same within this machine's noise.
//
// FlipXNOR (the XNOR-popcount product of ±1 matrices) is C: its fast kernels carry
// `__attribute__((target("avx2,bmi2,popcnt")))` on x86_64, so only they use AVX2 and the rest
// of the binary runs on any x86-64. FlipTensor runs them only after checking that the CPU has
// every Haswell extension (CPUID) and oneDNN runs AVX2 (`XNORProduct.isAvailable`); the
// portable C kernels beside them serve other CPUs and the tests.

let package = Package(
  name: "Flip",
  platforms: [.macOS(.v13)],
  products: [
    .executable(name: "flip", targets: ["flip"]),
    // The library: tensor core, BNN layers, quantizers and optimizers, communication, training
    // (examples/two-layer-bnn uses it as a dependency).
    .library(name: "Flip", targets: ["FlipTensor", "FlipBNN", "FlipComm", "FlipTraining"]),
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
    // HDF5 (Keras weight files, `save_weights("w.h5")`): Debian's serial build.
    .systemLibrary(name: "CHDF5", pkgConfig: "hdf5-serial", providers: [.apt(["libhdf5-dev"])]),
    // Stop requests from signals (async-signal-safe handlers, polled at step boundaries).
    .target(name: "CSignals"),
    // JPEG and PNG decoding (ImageNet-format data) over libjpeg-turbo's libjpeg API and libpng's
    // simplified API; libjpeg's setjmp/longjmp error handling stays inside the C.
    .target(name: "CImageCodec", linkerSettings: [.linkedLibrary("jpeg"), .linkedLibrary("png")]),

    // CPUID: the x86 features FlipXNOR's AVX2 code needs (checked as Haswell's whole set).
    .target(name: "CCPUFeatures"),
    // Packed sign bits and their XNOR-popcount product, in C (called through FlipTensor only).
    .target(name: "FlipXNOR"),
    // Winograd F(4×4, 3×3)'s transforms for the backward convolutions, in C (through FlipTensor).
    .target(name: "FlipWinograd"),
    // Tensor core: buffers, GEMM and convolution through oneDNN, im2col, the XNOR product.
    .target(
      name: "FlipTensor", dependencies: ["CDNNL", "CCPUFeatures", "FlipXNOR", "FlipWinograd"]),
    // BNN library: quantizers, layers, constraints, models, optimizers, schedules, summary.
    .target(name: "FlipBNN", dependencies: ["FlipTensor"]),
    // Communication: the Communicator protocol and its implementations.
    .target(name: "FlipComm", dependencies: ["CMPI"]),
    // Training: data sets, sampler, trainer loop, model files, metrics.
    .target(
      name: "FlipTraining",
      dependencies: [
        "FlipBNN", "FlipComm", "CZlib", "CHDF5", "CSignals", "CImageCodec",
        .product(name: "Logging", package: "swift-log"),
        .product(name: "Yams", package: "Yams"),
      ]),
    // The command line: argument parsing, config files, wiring (a library so tests reach it).
    .target(
      name: "FlipCLI",
      dependencies: [
        "FlipTraining", "CSignals",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
        .product(name: "Logging", package: "swift-log"),
      ]),
    // The `flip` executable: only calls into FlipCLI.
    .executableTarget(name: "flip", dependencies: ["FlipCLI"]),
    // The file reader's fuzz target: replays inputs; scripts/fuzz.sh builds it with libFuzzer.
    .executableTarget(name: "flip-fuzz", dependencies: ["FlipTraining"]),
    .testTarget(
      name: "FlipTests",
      dependencies: ["FlipCLI", "FlipTraining", "FlipBNN", "FlipTensor", "FlipComm", "FlipXNOR", "CCPUFeatures", "CHDF5"],
      // Read through #filePath by the tests that use them.
      exclude: ["Fixtures"]),
  ],
  swiftLanguageModes: [.v6]
)
