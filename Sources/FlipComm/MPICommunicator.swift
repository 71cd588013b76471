import CMPI
import Foundation

/// An MPI handle made usable across Swift's concurrency checks; MPI itself is used from one
/// thread (`MPI_THREAD_FUNNELED`).
struct MPIHandle<T>: @unchecked Sendable {
  let value: T
}

/// The communicator of a job started by `mpirun`: Open MPI's `MPI_COMM_WORLD`.
///
/// MPI is initialized once, by the first `MPICommunicator`, and finalized by `finalize()`
/// (called on every normal exit path by the CLI); `abort(code:)` ends every rank at once, so a
/// rank that fails never leaves the others waiting in a collective. Errors are returned, not
/// fatal (`MPI_ERRORS_RETURN`), and thrown as `CommunicationError` naming the call.
public final class MPICommunicator: Communicator {
  public let rank: Int
  public let size: Int
  public let localSize: Int
  private let world: MPIHandle<MPI_Comm>
  /// A duplicate of the world for started all-gathers: collectives must start in the same
  /// order on every rank per communicator, and a rank starts a bucket's gather when it sees
  /// the bucket's reduction complete, which need not happen at the same point on every rank.
  private let gathers: MPIHandle<MPI_Comm>
  /// A duplicate of the world for the point-to-point exchange of started reduce-scatters.
  private let exchange: MPIHandle<MPI_Comm>
  /// The MPI requests of every outstanding non-blocking operation (for `MPI_Testall`).
  private var requests: [MPI_Request?] = []
  /// Started operations, numbered by index: their requests (a range of `requests`) and what
  /// completes them once those are done (a reduce-scatter's sum into place; nil once done).
  private var operations: [(requests: Range<Int>, finish: (() -> Void)?)] = []
  /// Count and displacement arrays of started all-gathers, alive until they complete.
  private var argumentArrays: [UnsafeMutablePointer<Int32>] = []
  /// Receive buffer of reduce-scatter (this rank's block), grown as needed.
  private var block: [Float] = []
  /// Receive buffers of started reduce-scatters (reused by position), grown as needed.
  private var scratch: [Staging<Float>] = []
  /// The bf16 wire's buffers of started reduce-scatters: the whole buffer encoded (what is
  /// sent, and this rank's own contribution), and the blocks received.
  private var encoded: [Staging<UInt16>] = []
  private var received16: [Staging<UInt16>] = []
  private var startedReduceScatters = 0
  /// The progress board: an MPI window of one Int64 per rank on rank 0 (passive target,
  /// locked for the whole run), and its memory there.
  private var board: MPI_Win?
  private var boardMemory: UnsafeMutablePointer<Int64>?
  /// Whether MPI was finalized (by any communicator of the process: MPI_Finalize runs once).
  private static let finalized = Once()
  /// With a progress thread: it pokes Open MPI's progress engine while reductions are
  /// outstanding, instead of `MPI_Testall` calls between layers (an experiment; see README).
  private let progress: ProgressThread?

  /// `progressThread`: drive outstanding reductions from a thread of their own (needs
  /// `MPI_THREAD_MULTIPLE`) rather than from `progressOutstanding()` calls.
  public init(progressThread: Bool = false) throws {
    var provided: Int32 = 0
    var initialized: Int32 = 0
    MPI_Initialized(&initialized)
    if initialized == 0 {
      // One-sided windows (the stall inspector's progress board): Open MPI 4.1 picks its
      // rdma component first, which cannot make a window over TCP between hosts, and then
      // fails rather than fall back. Shared memory on one node, point-to-point emulation
      // elsewhere; a user's own choice (OMPI_MCA_osc, --mca osc) stays.
      setenv("OMPI_MCA_osc", "sm,pt2pt", 0)
      let level = progressThread ? flip_mpi_thread_multiple() : flip_mpi_thread_funneled()
      let status = MPI_Init_thread(nil, nil, level, &provided)
      guard status == flip_mpi_success() else {
        throw CommunicationError.mpi(function: "MPI_Init_thread", code: status, message: "could not start MPI")
      }
      if progressThread && provided < flip_mpi_thread_multiple() {
        throw CommunicationError.mpi(
          function: "MPI_Init_thread", code: provided, message: "this MPI does not support MPI_THREAD_MULTIPLE")
      }
    }
    let world = flip_mpi_comm_world()!
    MPI_Comm_set_errhandler(world, flip_mpi_errors_return())
    self.world = MPIHandle(value: world)
    gathers = try Self.duplicate(world)
    exchange = try Self.duplicate(world)
    progress = progressThread ? ProgressThread(world: MPIHandle(value: world)) : nil
    var r: Int32 = 0
    var n: Int32 = 0
    MPI_Comm_rank(world, &r)
    MPI_Comm_size(world, &n)
    rank = Int(r)
    size = Int(n)
    // Ranks on this node: the size of the shared-memory sub-communicator.
    var node: MPI_Comm? = nil
    var local: Int32 = 1
    if MPI_Comm_split_type(world, Int32(MPI_COMM_TYPE_SHARED), r, flip_mpi_info_null(), &node)
      == flip_mpi_success(), let node
    {
      MPI_Comm_size(node, &local)
      var n2: MPI_Comm? = node
      MPI_Comm_free(&n2)
    }
    localSize = Int(local)
  }

  /// A communicator over the same ranks with its own message space (`MPI_Comm_dup`, a
  /// collective call), returning errors like the world.
  private static func duplicate(_ world: MPI_Comm) throws -> MPIHandle<MPI_Comm> {
    var copy: MPI_Comm? = nil
    let status = MPI_Comm_dup(world, &copy)
    guard status == flip_mpi_success(), let copy else {
      throw CommunicationError.mpi(function: "MPI_Comm_dup", code: status, message: message(status))
    }
    MPI_Comm_set_errhandler(copy, flip_mpi_errors_return())
    return MPIHandle(value: copy)
  }

  /// The MPI library's error string for `code`.
  static func message(_ code: Int32) -> String {
    var chars = [CChar](repeating: 0, count: 1024)
    var length: Int32 = 0
    MPI_Error_string(code, &chars, &length)
    return String(decoding: chars.prefix(Int(length)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
  }

  @inline(__always)
  func check(_ status: Int32, _ function: String) throws {
    if status != flip_mpi_success() {
      throw CommunicationError.mpi(function: function, code: status, message: Self.message(status))
    }
  }

  public func allreduceSum(_ buffer: UnsafeMutablePointer<Float>, count: Int) throws {
    try chunked(count) { offset, n in
      try check(
        MPI_Allreduce(flip_mpi_in_place(), buffer + offset, n, flip_mpi_float(), flip_mpi_sum(), world.value),
        "MPI_Allreduce")
    }
  }

  public func allreduceSum(_ buffer: UnsafeMutablePointer<Double>, count: Int) throws {
    try chunked(count) { offset, n in
      try check(
        MPI_Allreduce(flip_mpi_in_place(), buffer + offset, n, flip_mpi_double(), flip_mpi_sum(), world.value),
        "MPI_Allreduce")
    }
  }

  public func broadcast(_ buffer: UnsafeMutablePointer<Float>, count: Int, root: Int) throws {
    try chunked(count) { offset, n in
      try check(MPI_Bcast(buffer + offset, n, flip_mpi_float(), Int32(root), world.value), "MPI_Bcast")
    }
  }

  public func broadcast(bytes buffer: UnsafeMutableRawPointer, count: Int, root: Int) throws {
    try chunked(count) { offset, n in
      try check(MPI_Bcast(buffer + offset, n, flip_mpi_byte(), Int32(root), world.value), "MPI_Bcast")
    }
  }

  public func startAllreduceSum(_ buffer: UnsafeMutablePointer<Float>, count: Int) throws {
    try chunked(count) { offset, n in
      var request: MPI_Request? = flip_mpi_request_null()
      try check(
        MPI_Iallreduce(
          flip_mpi_in_place(), buffer + offset, n, flip_mpi_float(), flip_mpi_sum(), world.value, &request),
        "MPI_Iallreduce")
      requests.append(request)
      operations.append((requests.count - 1..<requests.count, nil))
    }
    progress?.resume()
  }

  public func progressOutstanding() throws {
    guard !requests.isEmpty, progress == nil else { return }
    var done: Int32 = 0
    try check(MPI_Testall(Int32(requests.count), &requests, &done, flip_mpi_statuses_ignore()), "MPI_Testall")
  }

  public func waitOutstanding() throws {
    guard !operations.isEmpty else { return }
    defer {
      requests.removeAll(keepingCapacity: true)
      operations.removeAll(keepingCapacity: true)
      for a in argumentArrays { a.deallocate() }
      argumentArrays.removeAll(keepingCapacity: true)
      startedReduceScatters = 0
    }
    if !requests.isEmpty {
      try check(MPI_Waitall(Int32(requests.count), &requests, flip_mpi_statuses_ignore()), "MPI_Waitall")
    }
    progress?.pause()
    for o in operations.indices { finish(o) }
  }

  public func isComplete(_ operation: Int) throws -> Bool {
    guard operation >= 0 else { return true }
    let range = operations[operation].requests
    guard !range.isEmpty else {
      finish(operation)
      return true
    }
    var flag: Int32 = 0
    try requests.withUnsafeMutableBufferPointer { r in
      try check(
        MPI_Testall(Int32(range.count), r.baseAddress! + range.lowerBound, &flag, flip_mpi_statuses_ignore()),
        "MPI_Testall")
    }
    if flag != 0 { finish(operation) }
    return flag != 0
  }

  public func wait(_ operation: Int) throws {
    guard operation >= 0 else { return }
    let range = operations[operation].requests
    guard !range.isEmpty else { return finish(operation) }
    try requests.withUnsafeMutableBufferPointer { r in
      try check(
        MPI_Waitall(Int32(range.count), r.baseAddress! + range.lowerBound, flip_mpi_statuses_ignore()), "MPI_Waitall")
    }
    finish(operation)
  }

  private func finish(_ operation: Int) {
    guard let f = operations[operation].finish else { return }
    operations[operation].finish = nil
    f()
  }

  /// `counts` as Int32 followed by their running sums (displacements), in an array that lives
  /// until the started collective completes.
  private func countsAndDisplacements(_ counts: [Int]) -> UnsafeMutablePointer<Int32> {
    let n = counts.count
    let a = UnsafeMutablePointer<Int32>.allocate(capacity: 2 * n)
    var offset: Int32 = 0
    for (i, c) in counts.enumerated() {
      a[i] = Int32(c)
      a[n + i] = offset
      offset += Int32(c)
    }
    argumentArrays.append(a)
    return a
  }

  /// A direct exchange rather than `MPI_Ireduce_scatter`: Open MPI 4.1's non-blocking
  /// reduce-scatter (libnbc) reduces the whole buffer to rank 0 and then scatters it, so rank 0
  /// receives N − 1 whole buffers and does all the adding while the others wait. Here each rank
  /// sends every other rank that rank's block and sums the N copies of its own block in
  /// `ContributionTree` order (the same on every rank, whatever order the messages arrive in): balanced, and
  /// (N − 1)/N of the buffer sent and received per rank, as a ring would.
  public func startReduceScatterSum(_ buffer: UnsafeMutablePointer<Float>, counts: [Int], wire: GradientWire) throws
    -> Int
  {
    precondition(counts.count == size, "one count per rank")
    let total = counts.reduce(0, +)
    guard total <= Int(Int32.max) else {
      // Larger than one MPI call takes: reduce it now.
      if wire == .bf16 { roundToBFloat16(buffer, count: total) }
      try reduceScatterSum(buffer, counts: counts)
      return -1
    }
    let mine = counts[rank]
    var offsets = [Int](repeating: 0, count: size)
    for r in 1..<max(size, 1) { offsets[r] = offsets[r - 1] + counts[r - 1] }
    let index = startedReduceScatters
    startedReduceScatters += 1
    let own = buffer + offsets[rank]
    let first = requests.count
    switch wire {
    case .fp32:
      let received = Staging<Float>.take(&scratch, index, count: (size - 1) * mine)
      var sources: [UnsafePointer<Float>] = []
      var slot = 0
      for r in 0..<size {
        if r == rank {
          sources.append(UnsafePointer(own))
          continue
        }
        let into = received + slot * mine
        slot += 1
        sources.append(UnsafePointer(into))
        try exchangeBlocks(
          receive: into, count: mine, send: buffer + offsets[r], sendCount: counts[r], type: flip_mpi_float(), peer: r)
      }
      operations.append((first..<requests.count, { ContributionTree.sum(sources, into: own, count: mine) }))
    case .bf16:
      let sent = Staging<UInt16>.take(&encoded, index, count: total)
      let received = Staging<UInt16>.take(&received16, index, count: (size - 1) * mine)
      encodeBFloat16(buffer, sent, count: total)
      var sources: [UnsafePointer<UInt16>] = []
      var slot = 0
      for r in 0..<size {
        if r == rank {
          sources.append(UnsafePointer(sent + offsets[rank]))
          continue
        }
        let into = received + slot * mine
        slot += 1
        sources.append(UnsafePointer(into))
        try exchangeBlocks(
          receive: into, count: mine, send: sent + offsets[r], sendCount: counts[r], type: flip_mpi_uint16(), peer: r)
      }
      operations.append((first..<requests.count, { ContributionTree.sum(bfloat16: sources, into: own, count: mine) }))
    }
    progress?.resume()
    return operations.count - 1
  }

  /// Posts the receive of this rank's block from `peer` and the send of `peer`'s block to it
  /// (on the exchange communicator; their requests join the outstanding ones).
  private func exchangeBlocks<T>(
    receive: UnsafeMutablePointer<T>, count: Int, send: UnsafeMutablePointer<T>, sendCount: Int,
    type: MPI_Datatype?, peer: Int
  ) throws {
    var receiveRequest: MPI_Request? = flip_mpi_request_null()
    try check(MPI_Irecv(receive, Int32(count), type, Int32(peer), 0, exchange.value, &receiveRequest), "MPI_Irecv")
    requests.append(receiveRequest)
    var sendRequest: MPI_Request? = flip_mpi_request_null()
    try check(MPI_Isend(send, Int32(sendCount), type, Int32(peer), 0, exchange.value, &sendRequest), "MPI_Isend")
    requests.append(sendRequest)
  }

  public func startAllgather(_ buffer: UnsafeMutablePointer<Float>, counts: [Int]) throws -> Int {
    precondition(counts.count == size, "one count per rank")
    guard counts.reduce(0, +) <= Int(Int32.max) else {
      try allgather(buffer, counts: counts)
      return -1
    }
    return try startAllgatherv(buffer, counts: counts, type: flip_mpi_float())
  }

  public func startAllgather(words buffer: UnsafeMutablePointer<UInt32>, counts: [Int]) throws -> Int {
    precondition(counts.count == size, "one count per rank")
    precondition(counts.reduce(0, +) <= Int(Int32.max), "an all-gather of words larger than one MPI call")
    return try startAllgatherv(buffer, counts: counts, type: flip_mpi_uint32())
  }

  /// Starts the in-place `MPI_Iallgatherv` of `counts` elements of `type` per rank on the
  /// gathers' communicator; returns the operation's index.
  private func startAllgatherv<T>(_ buffer: UnsafeMutablePointer<T>, counts: [Int], type: MPI_Datatype?) throws -> Int {
    let arrays = countsAndDisplacements(counts)
    var request: MPI_Request? = flip_mpi_request_null()
    try check(
      MPI_Iallgatherv(flip_mpi_in_place(), 0, type, buffer, arrays, arrays + size, type, gathers.value, &request),
      "MPI_Iallgatherv")
    requests.append(request)
    operations.append((requests.count - 1..<requests.count, nil))
    progress?.resume()
    return operations.count - 1
  }

  public func reduceScatterSum(_ buffer: UnsafeMutablePointer<Float>, counts: [Int]) throws {
    precondition(counts.count == size, "one count per rank")
    let mine = counts[rank]
    let offset = counts[..<rank].reduce(0, +)
    if block.count < mine { block = [Float](repeating: 0, count: mine) }
    var recvcounts = counts.map { Int32($0) }
    try block.withUnsafeMutableBufferPointer { b in
      try check(
        MPI_Reduce_scatter(buffer, b.baseAddress, &recvcounts, flip_mpi_float(), flip_mpi_sum(), world.value),
        "MPI_Reduce_scatter")
      (buffer + offset).update(from: b.baseAddress!, count: mine)
    }
  }

  public func allgather(_ buffer: UnsafeMutablePointer<Float>, counts: [Int]) throws {
    precondition(counts.count == size, "one count per rank")
    var recvcounts = counts.map { Int32($0) }
    var displacements = [Int32](repeating: 0, count: size)
    for r in 1..<max(size, 1) { displacements[r] = displacements[r - 1] + recvcounts[r - 1] }
    try check(
      MPI_Allgatherv(
        flip_mpi_in_place(), 0, flip_mpi_float(), buffer, &recvcounts, &displacements, flip_mpi_float(), world.value),
      "MPI_Allgatherv")
  }

  public func allgather(_ value: UInt64) throws -> [UInt64] {
    var mine = value
    var all = [UInt64](repeating: 0, count: size)
    try check(MPI_Allgather(&mine, 1, flip_mpi_uint64(), &all, 1, flip_mpi_uint64(), world.value), "MPI_Allgather")
    return all
  }

  public func barrier() throws { try check(MPI_Barrier(world.value), "MPI_Barrier") }

  /// An `MPI_Win_allocate` of one Int64 per rank on rank 0 (nothing elsewhere), locked with
  /// `MPI_Win_lock_all` for the whole run: each rank `MPI_Put`s its position and flushes it.
  public func openProgressBoard() throws -> Bool {
    guard board == nil else { return true }
    var memory: UnsafeMutableRawPointer?
    var window: MPI_Win?
    let bytes = rank == 0 ? size * 8 : 0
    let status = withUnsafeMutablePointer(to: &memory) { m in
      MPI_Win_allocate(MPI_Aint(bytes), 8, flip_mpi_info_null(), world.value, UnsafeMutableRawPointer(m), &window)
    }
    try check(status, "MPI_Win_allocate")
    if rank == 0, let memory {
      boardMemory = memory.bindMemory(to: Int64.self, capacity: size)
      boardMemory!.initialize(repeating: -1, count: size)
    }
    try check(MPI_Win_lock_all(0, window), "MPI_Win_lock_all")
    board = window
    try barrier()
    return true
  }

  public func publishProgress(_ position: Int64) throws {
    guard let board else { return }
    var value = position
    try check(
      MPI_Put(&value, 1, flip_mpi_int64(), 0, MPI_Aint(rank), 1, flip_mpi_int64(), board), "MPI_Put")
    try check(MPI_Win_flush(0, board), "MPI_Win_flush")
  }

  public func publishedProgress() -> [Int64]? {
    guard let boardMemory else { return nil }
    // Plain loads of the window's memory (unified memory model): another thread may read them
    // while this rank's main thread is inside MPI.
    return (0..<size).map { i in UnsafeRawPointer(boardMemory + i).load(as: Int64.self) }
  }

  /// Ends every rank of the job with `code` (MPI_Abort); never returns.
  public func abort(code: Int32) -> Never {
    MPI_Abort(world.value, code)
    exit(code)
  }

  /// Finalizes MPI (once; later calls do nothing).
  public func finalize() {
    guard Self.finalized.claim() else { return }
    if let window = board {
      var w: MPI_Win? = window
      MPI_Win_unlock_all(window)
      MPI_Win_free(&w)
      board = nil
      boardMemory = nil
    }
    for comm in [gathers.value, exchange.value] {
      var c: MPI_Comm? = comm
      MPI_Comm_free(&c)
    }
    MPI_Finalize()
  }

  /// MPI counts are 32-bit: split larger buffers into pieces of at most 2^28 elements.
  private func chunked(_ count: Int, _ body: (Int, Int32) throws -> Void) throws {
    let piece = 1 << 28
    var offset = 0
    while offset < count {
      let n = min(piece, count - offset)
      try body(offset, Int32(n))
      offset += n
    }
  }
}

/// A flag that is set once: `claim()` returns true to its first caller only, on any thread.
///
/// `@unchecked Sendable`: `claimed` is read and written only under `lock` (a lock rather than
/// `Mutex`, which needs macOS 15 and the package supports macOS 13).
final class Once: @unchecked Sendable {
  private let lock = NSLock()
  private var claimed = false

  func claim() -> Bool {
    lock.withLock {
      defer { claimed = true }
      return !claimed
    }
  }
}

/// A buffer that grows and is reused by position (the buffers of the started operations of a
/// step: the i-th reduce-scatter of every step reuses the i-th buffer).
final class Staging<T> {
  private(set) var pointer: UnsafeMutablePointer<T>
  private(set) var capacity: Int

  init(count: Int) {
    capacity = max(count, 1)
    pointer = .allocate(capacity: capacity)
  }

  deinit { pointer.deallocate() }

  /// The `index`-th buffer of `pool`, with room for at least `count` elements.
  static func take(_ pool: inout [Staging<T>], _ index: Int, count: Int) -> UnsafeMutablePointer<T> {
    if index == pool.count { pool.append(Staging(count: count)) }
    let s = pool[index]
    if s.capacity < count {
      s.pointer.deallocate()
      s.capacity = count
      s.pointer = .allocate(capacity: count)
    }
    return s.pointer
  }
}

/// A thread that enters Open MPI's progress engine (`MPI_Iprobe`) every 50 µs while it is
/// resumed, so started reductions advance while the main thread computes.
final class ProgressThread: @unchecked Sendable {
  private let condition = NSCondition()
  private var active = false
  private let world: MPIHandle<MPI_Comm>

  init(world: MPIHandle<MPI_Comm>) {
    self.world = world
    let thread = Thread { self.run() }
    thread.name = "flip-mpi-progress"
    thread.start()
  }

  func resume() {
    condition.lock()
    active = true
    condition.signal()
    condition.unlock()
  }

  func pause() {
    condition.lock()
    active = false
    condition.unlock()
  }

  private func run() {
    var flag: Int32 = 0
    while true {
      condition.lock()
      while !active { condition.wait() }
      condition.unlock()
      MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, world.value, &flag, flip_mpi_status_ignore())
      usleep(50)
    }
  }
}
