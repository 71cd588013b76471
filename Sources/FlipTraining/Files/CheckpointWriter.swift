import Foundation
import Logging

/// Rank 0's checkpoint writer. `submit` copies the tensors into the writer's own buffer —
/// the only part the training loop waits for — and a background thread checksums, writes,
/// fsyncs, renames and prunes while training continues. One write is in flight at most; a
/// failure is kept until `poll` or `wait` hands it over.
final class CheckpointWriter: @unchecked Sendable {
  /// A write that failed: which checkpoint, and why.
  struct Failure: Error {
    var step: Int
    var path: String
    var error: Error
  }

  private let queue = DispatchQueue(label: "flip.checkpoint-writer")
  private let group = DispatchGroup()
  private let lock = NSLock()
  private var failure: Failure?
  private var snapshot: UnsafeMutableRawPointer?
  private var capacity = 0
  private let logger: Logger

  init(logger: Logger) { self.logger = logger }

  deinit {
    group.wait()
    snapshot?.deallocate()
  }

  /// Copies `refs` and starts writing them to `path` in the background, then prunes
  /// `directory` to the newest `keep`. Waits for the previous write first.
  func submit(
    _ refs: [SafeTensors.TensorRef], metadata: [String: String], step: Int, path: String, directory: String, keep: Int
  ) -> (bytes: Int, copySeconds: Double) {
    group.wait()
    let start = DispatchTime.now().uptimeNanoseconds
    let total = refs.reduce(0) { $0 + $1.bytes.count }
    if total > capacity {
      snapshot?.deallocate()
      snapshot = .allocate(byteCount: max(total, 1), alignment: 64)
      capacity = total
    }
    var copies: [SafeTensors.TensorRef] = []
    var at = 0
    for var r in refs {
      let destination = UnsafeMutableRawBufferPointer(start: snapshot! + at, count: r.bytes.count)
      destination.copyMemory(from: r.bytes)
      r.bytes = UnsafeRawBufferPointer(destination)
      copies.append(r)
      at += r.bytes.count
    }
    let copySeconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
    let logger = logger
    let frozen = copies
    queue.async(group: group) {
      let writeStart = DispatchTime.now().uptimeNanoseconds
      do {
        let bytes = try ModelFile.write(frozen, metadata: metadata, kind: .checkpoint, to: path)
        try CheckpointFiles.prune(directory, keep: keep)
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - writeStart) / 1e9
        logger.debug("checkpoint \(path): \(bytes) bytes written in \(String(format: "%.3f", seconds)) s (background)")
      } catch {
        self.lock.withLock { self.failure = Failure(step: step, path: path, error: error) }
      }
    }
    return (total, copySeconds)
  }

  /// The failure of a finished write, if any (never blocks).
  func poll() -> Failure? {
    lock.withLock {
      defer { failure = nil }
      return failure
    }
  }

  /// Waits for the write in flight; returns its failure, if any.
  func wait() -> Failure? {
    group.wait()
    return poll()
  }
}
