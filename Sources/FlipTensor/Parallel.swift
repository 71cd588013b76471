import CDNNL
import Foundation

/// How compute work runs: the number of threads of Flip's own loops and of oneDNN's kernels,
/// and what records the work (a `GEMMProfiler` for `flip bench`, a `ThreadLog` for tests).
///
/// A value that travels with the work, never a process-wide setting: a `Model` holds the one
/// it was built with and hands it to its layers and its parameter store, which pass it to every
/// kernel they call. Two models (or two tests running at the same time) with different thread
/// counts therefore never change each other's.
///
/// Loops run on libgomp's thread team (through `GOMP_parallel`), the same threads that run
/// oneDNN's kernels, so Flip's loops never compete with OpenMP workers spinning between GEMMs.
/// Work is cut into fixed-size chunks that do not depend on the thread count, so a reduction
/// that combines per-chunk partial results in chunk order gives the same bits on 1 thread as
/// on 2. With one thread (as under `mpirun` with one thread per rank) everything runs inline.
///
/// oneDNN takes its thread count from OpenMP's `nthreads-var`, which belongs to the calling
/// thread: every oneDNN call Flip makes (GEMMs, and the creation and execution of primitives)
/// first sets it to `oneDNNThreads` (normally `threads`) on the calling thread
/// (`applyToOneDNN()`, a store into libgomp's per-thread state), so oneDNN follows this value
/// on whatever thread the work runs.
public struct Compute: Sendable {
  /// Threads per parallel loop (at least 1).
  public let threads: Int
  /// Threads per oneDNN call (at least 1): `threads`, unless a test pins it to compare Flip's
  /// loops alone across thread counts (oneDNN's convolutions and GEMMs need not give the same
  /// bits on 1 thread as on 2).
  public let oneDNNThreads: Int
  /// Accounts the time and arithmetic of every GEMM and XNOR product while enabled.
  public var profiler: GEMMProfiler?
  /// Records the thread counts the work actually ran with.
  public var threadLog: ThreadLog?

  /// - Parameters:
  ///   - threads: values below 1 mean 1.
  ///   - oneDNNThreads: nil for `threads`; values below 1 mean 1.
  public init(
    threads: Int, oneDNNThreads: Int? = nil, profiler: GEMMProfiler? = nil, threadLog: ThreadLog? = nil
  ) {
    self.threads = max(1, threads)
    self.oneDNNThreads = max(1, oneDNNThreads ?? threads)
    self.profiler = profiler
    self.threadLog = threadLog
  }

  /// One thread, nothing recorded.
  public static let serial = Compute(threads: 1)

  /// Calls `body` with consecutive ranges of at most `grain` elements that cover `0..<count`,
  /// split over up to `threads` threads. The number of threads that ran them (1 when the work
  /// runs inline: one thread, or a single chunk) goes to `threadLog`.
  ///
  /// `body` runs on several threads at once, each with its own ranges: it must only write
  /// what belongs to its range (it is not `@Sendable` because the loops of Flip's kernels
  /// capture the raw pointers of the buffers they split, which are not `Sendable`).
  public func forRanges(count: Int, grain: Int, _ body: (Range<Int>) -> Void) {
    let chunks = Parallel.chunkCount(count: count, grain: grain)
    let team: Int
    if threads <= 1 || chunks <= 1 {
      var start = 0
      while start < count {
        body(start..<min(start + grain, count))
        start += grain
      }
      team = 1
    } else {
      team = Parallel.run(workers: min(threads, chunks)) { worker, team in
        // Contiguous blocks of chunks per worker keep each worker's memory together.
        let lo = worker * chunks / team
        let hi = (worker + 1) * chunks / team
        for c in lo..<hi { body((c * grain)..<min((c + 1) * grain, count)) }
      }
    }
    threadLog?.recordLoop(team: team)
  }

  /// Elementwise work over `count` elements in chunks of 64 Ki elements.
  @inlinable
  public func forEach(count: Int, _ body: (Range<Int>) -> Void) {
    forRanges(count: count, grain: 1 << 16, body)
  }

  /// Sets OpenMP's thread count of the calling thread to `oneDNNThreads`: the count with which
  /// oneDNN creates the primitives and runs the calls that this thread makes next. Every oneDNN
  /// call in FlipTensor does it first; it costs one store (libgomp's per-thread ICV).
  public func applyToOneDNN() {
    guard let set = OpenMP.setNumThreads else { return }
    set(Int32(clamping: oneDNNThreads))
    if let threadLog { threadLog.recordOneDNN(threads: OneDNN.threads) }
  }
}

/// The thread counts a `Compute` ran its work with: tests that compare results across thread
/// counts assert that each run really used the count it asked for.
///
/// `@unchecked Sendable`: its two sets are read and written only under `lock` (a lock rather
/// than `Mutex`, which needs macOS 15 and the package supports macOS 13).
public final class ThreadLog: @unchecked Sendable {
  private let lock = NSLock()
  private var loops: Set<Int> = []
  private var oneDNN: Set<Int> = []

  public init() {}

  /// The team sizes of the parallel loops that ran (1 for a loop that ran inline).
  public var loopTeams: Set<Int> { lock.withLock { loops } }
  /// OpenMP's thread count on the calling thread just before each oneDNN call (-1 without OpenMP).
  public var oneDNNThreads: Set<Int> { lock.withLock { oneDNN } }

  func recordLoop(team: Int) { _ = lock.withLock { loops.insert(team) } }
  func recordOneDNN(threads: Int) { _ = lock.withLock { oneDNN.insert(threads) } }
}

/// The fixed-size chunking of the parallel loops, and the call into libgomp's team.
public enum Parallel {
  /// Number of chunks `Compute.forRanges` makes (it does not depend on the thread count).
  @inlinable public static func chunkCount(count: Int, grain: Int) -> Int { (count + grain - 1) / grain }

  /// Runs `body(worker, team)` on each thread of a team of up to `workers` threads; returns the
  /// team's size (1, with `body(0, 1)` run inline, when no OpenMP runtime is loaded).
  static func run(workers: Int, _ body: (Int, Int) -> Void) -> Int {
    withoutActuallyEscaping(body) { body in
      let work = Work(body)
      let context = Unmanaged.passUnretained(work).toOpaque()
      let status = flip_parallel(
        { context, thread, threads in
          let work = Unmanaged<Work>.fromOpaque(context!).takeUnretainedValue()
          // Read after `GOMP_parallel` returns, which joins the team (so no race with it).
          if thread == 0 { work.team = Int(threads) }
          work.run(Int(thread), Int(threads))
        }, context, Int32(workers))
      if status != 0 {
        work.run(0, 1)
        return 1
      }
      return work.team
    }
  }

  /// The closure each thread of the team runs with (its index, the team size). Reaches the
  /// team's threads through a raw pointer that `GOMP_parallel` passes, which outlives none of
  /// them (the call returns after the team joins).
  final class Work {
    let run: (Int, Int) -> Void
    var team = 1
    init(_ run: @escaping (Int, Int) -> Void) { self.run = run }
  }
}

/// libgomp's `omp_set_num_threads`, looked up once in the libgomp that libdnnl loaded.
enum OpenMP {
  typealias SetNumThreads = @convention(c) (Int32) -> Void
  /// nil when no OpenMP runtime is loaded.
  static let setNumThreads: SetNumThreads? = {
    // A null handle is RTLD_DEFAULT: every object loaded (as `flip_omp_set_num_threads` does).
    guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "omp_set_num_threads") else { return nil }
    return unsafeBitCast(symbol, to: SetNumThreads.self)
  }()
}
