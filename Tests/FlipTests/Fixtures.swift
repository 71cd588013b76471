import FlipTensor
import Foundation

// Fixtures of the data, training and CLI tests: tiny IDX data sets generated on the fly, temp
// directories, and the built `flip` binary.

/// A fresh empty directory under the system's temporary directory.
func temporaryDirectory(_ label: String = "flip-test") -> String {
  let path = NSTemporaryDirectory() + "\(label)-\(UUID().uuidString.prefix(8))"
  try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
  return path
}

/// The bytes of an IDX file of unsigned bytes.
func idxBytes(dimensions: [Int], data: [UInt8]) -> [UInt8] {
  var b: [UInt8] = [0, 0, 0x08, UInt8(dimensions.count)]
  for d in dimensions { b += [UInt8(d >> 24 & 0xFF), UInt8(d >> 16 & 0xFF), UInt8(d >> 8 & 0xFF), UInt8(d & 0xFF)] }
  return b + data
}

/// Writes `bytes` to `path`, gzip-compressed (with the system's gzip) when `gzip`.
func write(_ bytes: [UInt8], to path: String, gzip: Bool = false) {
  _ = FileManager.default.createFile(atPath: path, contents: Data(bytes))
  if gzip {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/bin/gzip")
    p.arguments = ["-f", "-n", path]
    try! p.run()
    p.waitUntilExit()
  }
}

/// A learnable toy data set of `h×w` images and 2 classes: class 1 images are bright on the
/// left half, class 0 on the right, plus noise. Written as the four standard IDX files.
func writeToyDataset(
  to directory: String, train: Int = 256, test: Int = 128, height: Int = 6, width: Int = 6, gzip: Bool = false,
  seed: UInt64 = 7
) {
  var g = SplitMix64(seed: seed)
  func make(_ n: Int) -> ([UInt8], [UInt8]) {
    var images: [UInt8] = []
    var labels: [UInt8] = []
    for _ in 0..<n {
      let label = UInt8(g.nextInt(below: 2))
      labels.append(label)
      for _ in 0..<height {
        for x in 0..<width {
          let left = x < width / 2
          let bright = (label == 1) == left
          let base = bright ? 170 : 60
          images.append(UInt8(base + g.nextInt(below: 60) - 30))
        }
      }
    }
    return (images, labels)
  }
  let (trainImages, trainLabels) = make(train)
  let (testImages, testLabels) = make(test)
  write(
    idxBytes(dimensions: [train, height, width], data: trainImages), to: directory + "/train-images-idx3-ubyte",
    gzip: gzip)
  write(idxBytes(dimensions: [train], data: trainLabels), to: directory + "/train-labels-idx1-ubyte", gzip: gzip)
  write(
    idxBytes(dimensions: [test, height, width], data: testImages), to: directory + "/t10k-images-idx3-ubyte", gzip: gzip
  )
  write(idxBytes(dimensions: [test], data: testLabels), to: directory + "/t10k-labels-idx1-ubyte", gzip: gzip)
}

/// The `flip` executable built beside the test bundle.
var flipExecutable: String {
  let bundle = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
  for dir in [bundle, bundle.deletingLastPathComponent()] {
    let candidate = dir.appendingPathComponent("flip").path
    if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
  }
  // The test bundle may be a directory (…/FlipPackageTests.xctest/…): walk up to the build dir.
  var dir = bundle
  for _ in 0..<4 {
    let candidate = dir.appendingPathComponent("flip").path
    if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
    dir = dir.deletingLastPathComponent()
  }
  return bundle.appendingPathComponent("flip").path
}

struct ProcessResult {
  var status: Int32
  var stdout: String
  var stderr: String
}

/// Runs `executable` with `arguments` (and extra environment) and waits for it.
func runProcess(_ executable: String, _ arguments: [String], environment: [String: String]? = nil) throws
  -> ProcessResult
{
  let p = Process()
  p.executableURL = URL(fileURLWithPath: executable)
  p.arguments = arguments
  if let environment { p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
  let out = Pipe()
  let err = Pipe()
  p.standardOutput = out
  p.standardError = err
  try p.run()
  let o = out.fileHandleForReading.readDataToEndOfFile()
  let e = err.fileHandleForReading.readDataToEndOfFile()
  p.waitUntilExit()
  return ProcessResult(
    status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self), stderr: String(decoding: e, as: UTF8.self))
}

/// Runs the `flip` binary with `arguments` and waits for it.
func runFlip(_ arguments: [String], environment: [String: String]? = nil) throws -> ProcessResult {
  try runProcess(flipExecutable, arguments, environment: environment)
}

/// The rows of a metrics.jsonl file.
func readMetrics(_ path: String) throws -> [[String: Any]] {
  let text = try String(contentsOfFile: path, encoding: .utf8)
  return try text.split(separator: "\n").map {
    try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any]
  }
}

/// Unblocks the stop signals on the calling thread. Test threads run with signals blocked and
/// a spawned process inherits that mask: `mpirun` could then never see the SIGUSR1 a test sends.
func unblockStopSignalsForChildren() {
  var set = sigset_t()
  sigemptyset(&set)
  for s in [SIGUSR1, SIGTERM, SIGINT] { sigaddset(&set, s) }
  pthread_sigmask(SIG_UNBLOCK, &set, nil)
}
