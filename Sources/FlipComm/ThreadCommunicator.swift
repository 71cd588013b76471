import Foundation

/// N ranks as threads of one process: the communicator of unit tests that exercise the
/// data-parallel exchanges without `mpirun`.
///
/// Every operation is a rendezvous of the group's ranks on one of three channels, kept as MPI
/// keeps them: the world (blocking collectives and started all-reduces), the exchange (started
/// reduce-scatters) and the gathers (started all-gathers). Each rank deposits a copy of its
/// contribution when it starts an operation and computes its own result once every rank has
/// deposited; sums run in `ContributionTree` order, as `MPICommunicator`'s reduce-scatter does. Started
/// operations really are started: a rank may start a gather and go on while another rank is
/// still in a reduction, as the pipelined sharded step does.
public final class ThreadGroup: @unchecked Sendable {
  public let size: Int
  private let condition = NSCondition()
  private var slots: [Key: Slot] = [:]

  enum Channel: Hashable { case world, exchange, gathers }

  struct Key: Hashable {
    var channel: Channel
    var sequence: Int
  }

  struct Slot {
    var contributions: [[UInt8]?]
    var released = 0
  }

  public init(size: Int) {
    precondition(size >= 1, "a group needs at least one rank")
    self.size = size
  }

  /// Runs `body` on one thread per rank, each with its rank's communicator; results in rank order.
  public func run<T>(_ body: @escaping @Sendable (ThreadCommunicator) throws -> T) -> [Result<T, any Error>] {
    let results = UnsafeMutableBufferPointer<Result<T, any Error>?>.allocate(capacity: size)
    defer { results.deallocate() }
    results.initialize(repeating: nil)
    let box = UnsafeSendable(results)
    // A thread per rank (not `concurrentPerform`, which may run the ranks one after another on
    // fewer threads: ranks that wait for each other would never meet).
    let done = DispatchGroup()
    for rank in 0..<size {
      done.enter()
      let thread = Thread {
        let communicator = ThreadCommunicator(group: self, rank: rank)
        box.value[rank] = Result { try body(communicator) }
        done.leave()
      }
      thread.stackSize = 8 << 20
      thread.start()
    }
    done.wait()
    return results.map { $0! }
  }

  func deposit(_ key: Key, rank: Int, _ bytes: [UInt8]) {
    condition.lock()
    var slot = slots[key] ?? Slot(contributions: Array(repeating: nil, count: size))
    precondition(slot.contributions[rank] == nil, "rank \(rank) started operation \(key) twice")
    slot.contributions[rank] = bytes
    slots[key] = slot
    condition.broadcast()
    condition.unlock()
  }

  /// Every rank's contribution once all have deposited (nil without `wait` if some have not).
  func contributions(_ key: Key, wait: Bool) -> [[UInt8]]? {
    condition.lock()
    defer { condition.unlock() }
    while true {
      if let slot = slots[key], slot.contributions.allSatisfy({ $0 != nil }) {
        return slot.contributions.map { $0! }
      }
      if !wait { return nil }
      condition.wait()
    }
  }

  /// A rank is done with the operation; the last one frees it.
  func release(_ key: Key) {
    condition.lock()
    slots[key]!.released += 1
    if slots[key]!.released == size { slots[key] = nil }
    condition.unlock()
  }
}

/// Lets a pointer cross into the ranks' threads (each thread writes its own element).
struct UnsafeSendable<T>: @unchecked Sendable {
  let value: T
  init(_ value: T) { self.value = value }
}

/// One rank of a `ThreadGroup`.
public final class ThreadCommunicator: Communicator {
  public let rank: Int
  public var size: Int { group.size }
  public var localSize: Int { group.size }
  let group: ThreadGroup
  private var sequences: [ThreadGroup.Channel: Int] = [:]
  /// Started operations by request number: their rendezvous and what completes them (nil once done).
  private var started: [(key: ThreadGroup.Key, finish: (([[UInt8]]) -> Void)?)] = []

  init(group: ThreadGroup, rank: Int) {
    self.group = group
    self.rank = rank
  }

  private func next(_ channel: ThreadGroup.Channel) -> ThreadGroup.Key {
    let s = sequences[channel, default: 0]
    sequences[channel] = s + 1
    return ThreadGroup.Key(channel: channel, sequence: s)
  }

  private func bytes<T>(_ p: UnsafePointer<T>, _ count: Int) -> [UInt8] {
    Array(UnsafeRawBufferPointer(start: p, count: count * MemoryLayout<T>.stride))
  }

  /// A blocking collective: deposit, wait for everyone, finish, release.
  private func collective(_ channel: ThreadGroup.Channel, _ contribution: [UInt8], _ finish: ([[UInt8]]) -> Void) {
    let key = next(channel)
    group.deposit(key, rank: rank, contribution)
    finish(group.contributions(key, wait: true)!)
    group.release(key)
  }

  private func start(_ channel: ThreadGroup.Channel, _ contribution: [UInt8], _ finish: @escaping ([[UInt8]]) -> Void)
    -> Int
  {
    let key = next(channel)
    group.deposit(key, rank: rank, contribution)
    started.append((key, finish))
    return started.count - 1
  }

  /// Completes request `i` if everyone has deposited (or, `wait`, once they have).
  @discardableResult
  private func complete(_ i: Int, wait: Bool) -> Bool {
    guard let finish = started[i].finish else { return true }
    guard let all = group.contributions(started[i].key, wait: wait) else { return false }
    finish(all)
    started[i].finish = nil
    group.release(started[i].key)
    return true
  }

  /// `Σ_r block_r` in `ContributionTree` order into `into`, reading element `offset + i` of
  /// every contribution.
  private static func sum<T: FloatingPoint>(
    _ all: [[UInt8]], offset: Int, count: Int, as type: T.Type, into: UnsafeMutablePointer<T>
  ) {
    let stride = MemoryLayout<T>.stride
    for i in 0..<count {
      into[i] = ContributionTree.sum(contributions: all.count) { r in
        all[r].withUnsafeBytes { $0.load(fromByteOffset: (offset + i) * stride, as: T.self) }
      }
    }
  }

  public func allreduceSum(_ buffer: UnsafeMutablePointer<Float>, count: Int) throws {
    collective(.world, bytes(buffer, count)) { Self.sum($0, offset: 0, count: count, as: Float.self, into: buffer) }
  }

  public func allreduceSum(_ buffer: UnsafeMutablePointer<Double>, count: Int) throws {
    collective(.world, bytes(buffer, count)) { Self.sum($0, offset: 0, count: count, as: Double.self, into: buffer) }
  }

  public func broadcast(_ buffer: UnsafeMutablePointer<Float>, count: Int, root: Int) throws {
    try broadcast(bytes: buffer, count: count * 4, root: root)
  }

  public func broadcast(bytes buffer: UnsafeMutableRawPointer, count: Int, root: Int) throws {
    let mine = rank == root ? Array(UnsafeRawBufferPointer(start: buffer, count: count)) : []
    collective(.world, mine) { all in
      all[root].withUnsafeBytes { buffer.copyMemory(from: $0.baseAddress!, byteCount: count) }
    }
  }

  public func startAllreduceSum(_ buffer: UnsafeMutablePointer<Float>, count: Int) throws {
    _ = start(.world, bytes(buffer, count)) { Self.sum($0, offset: 0, count: count, as: Float.self, into: buffer) }
  }

  public func progressOutstanding() throws {
    for i in started.indices { complete(i, wait: false) }
  }

  public func waitOutstanding() throws {
    for i in started.indices { complete(i, wait: true) }
    started.removeAll()
  }

  public func reduceScatterSum(_ buffer: UnsafeMutablePointer<Float>, counts: [Int]) throws {
    let offset = counts[..<rank].reduce(0, +)
    collective(.world, bytes(buffer, counts.reduce(0, +))) {
      Self.sum($0, offset: offset, count: counts[rank], as: Float.self, into: buffer + offset)
    }
  }

  public func startReduceScatterSum(_ buffer: UnsafeMutablePointer<Float>, counts: [Int], wire: GradientWire) throws
    -> Int
  {
    let total = counts.reduce(0, +)
    var contribution = Array(UnsafeBufferPointer(start: buffer, count: total))
    if wire == .bf16 { roundToBFloat16(&contribution, count: total) }
    let offset = counts[..<rank].reduce(0, +)
    let mine = counts[rank]
    return start(.exchange, contribution.withUnsafeBufferPointer { bytes($0.baseAddress!, total) }) {
      Self.sum($0, offset: offset, count: mine, as: Float.self, into: buffer + offset)
    }
  }

  /// An all-gather's contribution (this rank's block) and the copy of every other block into place.
  private func gather<T>(_ buffer: UnsafeMutablePointer<T>, counts: [Int]) -> ([UInt8], ([[UInt8]]) -> Void) {
    let offsets = counts.indices.map { counts[..<$0].reduce(0, +) }
    let rank = rank
    return (
      bytes(buffer + offsets[rank], counts[rank]),
      { all in
        for (r, c) in all.enumerated() where r != rank && !c.isEmpty {
          c.withUnsafeBytes {
            UnsafeMutableRawPointer(buffer + offsets[r]).copyMemory(from: $0.baseAddress!, byteCount: $0.count)
          }
        }
      }
    )
  }

  private func startGather<T>(_ buffer: UnsafeMutablePointer<T>, counts: [Int]) -> Int {
    let (contribution, finish) = gather(buffer, counts: counts)
    return start(.gathers, contribution, finish)
  }

  public func startAllgather(_ buffer: UnsafeMutablePointer<Float>, counts: [Int]) throws -> Int {
    startGather(buffer, counts: counts)
  }

  public func startAllgather(words buffer: UnsafeMutablePointer<UInt32>, counts: [Int]) throws -> Int {
    startGather(buffer, counts: counts)
  }

  public func isComplete(_ request: Int) throws -> Bool {
    request < 0 ? true : complete(request, wait: false)
  }

  public func wait(_ request: Int) throws {
    if request >= 0 { complete(request, wait: true) }
  }

  public func allgather(_ buffer: UnsafeMutablePointer<Float>, counts: [Int]) throws {
    let (contribution, finish) = gather(buffer, counts: counts)
    collective(.world, contribution, finish)
  }

  public func allgather(_ value: UInt64) throws -> [UInt64] {
    var result: [UInt64] = []
    var v = value
    collective(.world, bytes(&v, 1)) { all in
      result = all.map { c in c.withUnsafeBytes { $0.load(as: UInt64.self) } }
    }
    return result
  }

  public func barrier() throws { collective(.world, []) { _ in } }

  public func openProgressBoard() throws -> Bool { false }
  public func publishProgress(_ position: Int64) throws {}
  public func publishedProgress() -> [Int64]? { nil }

  public func abort(code: Int32) -> Never { fatalError("rank \(rank) aborted the group with code \(code)") }

  public func finalize() {}
}
