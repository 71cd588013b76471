import CDNNL

/// Splits elementwise work over the compute threads.
///
/// The work runs on libgomp's thread team (through `GOMP_parallel`), the same threads that
/// run oneDNN's kernels, so Flip's loops never compete with OpenMP workers spinning between
/// GEMMs. Work is cut into fixed-size chunks that do not depend on the thread count, so a
/// reduction that combines per-chunk partial results in chunk order gives the same bits on 1
/// thread as on 2. Under `mpirun` with one thread per rank everything runs inline.
public enum Parallel {
  /// Threads to use; `OneDNN.setThreads` keeps it equal to oneDNN's OpenMP thread count.
  nonisolated(unsafe) public static var threads = 1

  /// Calls `body` with consecutive ranges of at most `grain` elements that cover `0..<count`.
  public static func forRanges(count: Int, grain: Int, _ body: (Range<Int>) -> Void) {
    let chunks = (count + grain - 1) / grain
    if threads <= 1 || chunks <= 1 {
      var start = 0
      while start < count {
        body(start..<min(start + grain, count))
        start += grain
      }
      return
    }
    let workers = min(threads, chunks)
    withoutActuallyEscaping(body) { body in
      // Contiguous blocks of chunks per worker keep each worker's memory together.
      let work = Work { worker, team in
        let lo = worker * chunks / team
        let hi = (worker + 1) * chunks / team
        for c in lo..<hi { body((c * grain)..<min((c + 1) * grain, count)) }
      }
      let context = Unmanaged.passUnretained(work).toOpaque()
      let status = flip_parallel(
        { context, thread, threads in
          Unmanaged<Work>.fromOpaque(context!).takeUnretainedValue().run(Int(thread), Int(threads))
        }, context, Int32(workers))
      if status != 0 { work.run(0, 1) }
    }
  }

  /// Number of chunks `forRanges` makes.
  @inlinable public static func chunkCount(count: Int, grain: Int) -> Int { (count + grain - 1) / grain }

  /// Elementwise work over `count` elements in chunks of 64 Ki elements.
  @inlinable
  public static func forEach(count: Int, _ body: (Range<Int>) -> Void) {
    forRanges(count: count, grain: 1 << 16, body)
  }

  /// The closure each thread of the team runs with (its index, the team size).
  final class Work {
    let run: (Int, Int) -> Void
    init(_ run: @escaping (Int, Int) -> Void) { self.run = run }
  }
}
