import FlipTensor
import Foundation
import Testing

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

/// Runs `executable` with `arguments` (and extra environment) and waits for it. Both pipes are
/// drained at once, stderr on a thread of its own: a child blocks when a pipe's buffer (64 KiB)
/// is full, so reading one pipe to its end before the other would wait forever for a child
/// that fills the other.
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
  let e = PipeDrain(err.fileHandleForReading)
  let o = out.fileHandleForReading.readDataToEndOfFile()
  let errData = e.wait()
  p.waitUntilExit()
  return ProcessResult(
    status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self),
    stderr: String(decoding: errData, as: UTF8.self))
}

/// Reads a pipe to its end on a thread of its own.
final class PipeDrain: @unchecked Sendable {
  private var data = Data()
  private let done = DispatchSemaphore(value: 0)
  init(_ handle: FileHandle) {
    let thread = Thread { [self] in
      data = handle.readDataToEndOfFile()
      done.signal()
    }
    thread.start()
  }
  /// The pipe's bytes, once its writers have all closed it.
  func wait() -> Data {
    done.wait()
    return data
  }
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

@Suite("test fixtures")
struct FixtureTests {
  /// A child that writes far more than a pipe holds (64 KiB) to stderr before stdout, then
  /// to both interleaved: `runProcess` returns every byte of both and the exit status, in
  /// bounded time (reading stdout to its end first would wait forever).
  @Test func runProcessDrainsBothPipesOfAChattyChild() throws {
    let script = """
      line=0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnop
      i=0; while [ $i -lt 2000 ]; do echo "err $i $line" >&2; i=$((i+1)); done
      i=0; while [ $i -lt 2000 ]; do echo "out $i $line"; echo "mix $i $line" >&2; i=$((i+1)); done
      exit 3
      """
    final class Box: @unchecked Sendable { var result: Result<ProcessResult, Error>? }
    let box = Box()
    let finished = DispatchSemaphore(value: 0)
    Thread {
      box.result = Result { try runProcess("/bin/sh", ["-c", script]) }
      finished.signal()
    }.start()
    try #require(finished.wait(timeout: .now() + 60) == .success, "runProcess did not return within 60 s")
    let r = try #require(box.result).get()
    #expect(r.status == 3)
    let outLines = r.stdout.split(separator: "\n")
    let errLines = r.stderr.split(separator: "\n")
    try #require(outLines.count == 2000 && errLines.count == 4000)
    #expect(r.stderr.utf8.count > 4 * 65536 && r.stdout.utf8.count > 2 * 65536)
    #expect(outLines.last?.hasPrefix("out 1999 ") == true && errLines.last?.hasPrefix("mix 1999 ") == true)
    #expect(errLines[1999].hasPrefix("err 1999 ") && errLines[2000].hasPrefix("mix 0 "))
  }
}
