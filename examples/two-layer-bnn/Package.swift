// swift-tools-version:6.0
import PackageDescription

// An example that uses Flip as a package dependency (here from this repository's root; elsewhere
// `.package(url: "https://…/flip.git", from: "…")`) and its `Flip` library product.
let package = Package(
  name: "two-layer-bnn",
  dependencies: [.package(name: "Flip", path: "../..")],
  targets: [
    .executableTarget(name: "two-layer-bnn", dependencies: [.product(name: "Flip", package: "Flip")])
  ]
)
