// swift-tools-version:6.0
import PackageDescription

// Flip: a trainer for binary neural networks, data-parallel over MPI.
// Targets follow the parts in DESIGN.md: C shims -> tensor core -> BNN library,
// communication -> training -> the `flip` executable.

let optimize: [SwiftSetting] = [.unsafeFlags(["-Ounchecked", "-wmo"], .when(configuration: .release))]

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

    // Tensor core: buffers, GEMM and convolution through oneDNN, im2col.
    .target(name: "FlipTensor", dependencies: ["CDNNL"], swiftSettings: optimize),
    // BNN library: quantizers, layers, constraints, models, optimizers, schedules, summary.
    .target(name: "FlipBNN", dependencies: ["FlipTensor"], swiftSettings: optimize),
    // Communication: the Communicator protocol and its implementations.
    .target(name: "FlipComm", dependencies: ["CMPI"], swiftSettings: optimize),
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
      dependencies: ["FlipCLI", "FlipTraining", "FlipBNN", "FlipTensor", "FlipComm"]),
  ],
  swiftLanguageModes: [.v5]
)
