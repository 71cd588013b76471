import Foundation

/// Collective communication among the ranks of a data-parallel job.
///
/// Every collective must be called by all ranks in the same order. On one process
/// (`SingleProcessCommunicator`) each collective is the identity, so callers never check the
/// world size.
public protocol Communicator: AnyObject {
  /// This process's rank in `0..<size`.
  var rank: Int { get }
  /// Number of ranks in the job.
  var size: Int { get }
  /// Ranks sharing this node (for the default thread count).
  var localSize: Int { get }
  /// In-place sum over all ranks of `count` floats.
  func allreduceSum(_ buffer: UnsafeMutablePointer<Float>, count: Int) throws
  /// In-place sum over all ranks of `count` doubles (metrics, sample counts).
  func allreduceSum(_ buffer: UnsafeMutablePointer<Double>, count: Int) throws
  /// Copies `count` floats from `root` to every rank.
  func broadcast(_ buffer: UnsafeMutablePointer<Float>, count: Int, root: Int) throws
  /// Copies `count` bytes from `root` to every rank.
  func broadcast(bytes buffer: UnsafeMutableRawPointer, count: Int, root: Int) throws
  /// Starts an in-place sum over all ranks of `count` floats without waiting for it; the
  /// buffer must not be touched until `waitOutstanding()`.
  func startAllreduceSum(_ buffer: UnsafeMutablePointer<Float>, count: Int) throws
  /// Lets the started reductions advance (Open MPI progresses them only inside MPI calls).
  func progressOutstanding() throws
  /// Waits for every started reduction.
  func waitOutstanding() throws
  /// Sums `buffer` over all ranks, split into consecutive blocks of `counts[r]` floats: on
  /// return this rank's block (at offset Σ counts[..<rank]) holds the sum; the other blocks
  /// are left as they were. (The started form below adds in `ContributionTree` order; this one
  /// in MPI's.)
  func reduceScatterSum(_ buffer: UnsafeMutablePointer<Float>, counts: [Int]) throws
  /// `reduceScatterSum` started without waiting: `buffer` must not be touched, and this rank's
  /// block holds the sum only once `isComplete` or `wait` says so for the returned request, or
  /// after `waitOutstanding()`. With the `bf16` wire every rank's contribution travels rounded
  /// to bfloat16 (its own too, so the result does not depend on which rank owns a block) and
  /// the owner sums them in fp32, in `ContributionTree` order over the ranks.
  @discardableResult
  func startReduceScatterSum(_ buffer: UnsafeMutablePointer<Float>, counts: [Int], wire: GradientWire) throws -> Int
  /// `allgather(_:counts:)` started without waiting, on a communicator of its own (so gathers
  /// and reductions each keep their own order, whatever the order of their completions);
  /// `buffer` must not be touched until it completes.
  @discardableResult
  func startAllgather(_ buffer: UnsafeMutablePointer<Float>, counts: [Int]) throws -> Int
  /// The same for 32-bit words (bit-packed signs, or floats mixed with them), on the same
  /// communicator as the float gathers.
  @discardableResult
  func startAllgather(words buffer: UnsafeMutablePointer<UInt32>, counts: [Int]) throws -> Int
  /// Whether a started request has completed (its result then in place); lets it progress.
  func isComplete(_ request: Int) throws -> Bool
  /// Waits for one started request (its result then in place).
  func wait(_ request: Int) throws
  /// The inverse: every rank's block of `buffer` (laid out as in `reduceScatterSum`) is copied
  /// to every rank, in place.
  func allgather(_ buffer: UnsafeMutablePointer<Float>, counts: [Int]) throws
  /// Every rank's `value`, in rank order (cross-rank checksums).
  func allgather(_ value: UInt64) throws -> [UInt64]
  /// Waits until every rank has arrived.
  func barrier() throws
  /// Makes a place on rank 0 where every rank publishes how far it got (collective; for the
  /// stall inspector). False where the transport has none.
  func openProgressBoard() throws -> Bool
  /// Publishes this rank's position (a number that only grows during training) on rank 0's
  /// board.
  func publishProgress(_ position: Int64) throws
  /// Rank 0: every rank's last published position, read without any MPI call (safe from a
  /// thread of its own); nil elsewhere or without a board.
  func publishedProgress() -> [Int64]?
  /// Ends the whole job at once with `code` (a failed rank must not leave the others waiting).
  func abort(code: Int32) -> Never
  /// Shuts the communication layer down; the last call on every normal exit path.
  func finalize()
}

/// How gradient values travel in a reduce-scatter: as fp32, or rounded to bfloat16 (half the
/// bytes; summed in fp32 by the owner, as Horovod's fp16 compression).
public enum GradientWire: String, Sendable, CaseIterable {
  case fp32, bf16
}

extension Communicator {
  public var isRoot: Bool { rank == 0 }

  /// `startReduceScatterSum` with fp32 on the wire.
  @discardableResult
  public func startReduceScatterSum(_ buffer: UnsafeMutablePointer<Float>, counts: [Int]) throws -> Int {
    try startReduceScatterSum(buffer, counts: counts, wire: .fp32)
  }

  /// How many distinct hosts the ranks run on (by host name).
  public func hostCount(hostName: String = ProcessInfo.processInfo.hostName) throws -> Int {
    return Set(try allgather(FNV1a.hash(hostName.utf8))).count
  }

  /// Sums `values` over all ranks.
  public func allreduceSum(_ values: inout [Double]) throws {
    let n = values.count
    try values.withUnsafeMutableBufferPointer { try allreduceSum($0.baseAddress!, count: n) }
  }

  /// `root`'s `data` on every rank (its length first, then its bytes); the argument is ignored
  /// on the other ranks.
  public func broadcast(_ data: Data, root: Int) throws -> Data {
    guard size > 1 else { return data }
    var length = UInt64(rank == root ? data.count : 0)
    try withUnsafeMutableBytes(of: &length) { try broadcast(bytes: $0.baseAddress!, count: 8, root: root) }
    var out = rank == root ? data : Data(count: Int(length))
    if length > 0 {
      try out.withUnsafeMutableBytes { try broadcast(bytes: $0.baseAddress!, count: Int(length), root: root) }
    }
    return out
  }
}

/// Errors of the communication layer.
public enum CommunicationError: Error, CustomStringConvertible {
  case mpi(function: String, code: Int32, message: String)

  public var description: String {
    switch self {
    case .mpi(let f, let code, let message): return "\(f) failed (MPI error \(code)): \(message)"
    }
  }
}

/// The communicator of a job with one process: every collective is the identity, and MPI is
/// never initialized.
public final class SingleProcessCommunicator: Communicator {
  public init() {}
  public var rank: Int { 0 }
  public var size: Int { 1 }
  public var localSize: Int { 1 }
  public func allreduceSum(_ buffer: UnsafeMutablePointer<Float>, count: Int) throws {}
  public func allreduceSum(_ buffer: UnsafeMutablePointer<Double>, count: Int) throws {}
  public func broadcast(_ buffer: UnsafeMutablePointer<Float>, count: Int, root: Int) throws {}
  public func broadcast(bytes buffer: UnsafeMutableRawPointer, count: Int, root: Int) throws {}
  public func startAllreduceSum(_ buffer: UnsafeMutablePointer<Float>, count: Int) throws {}
  public func progressOutstanding() throws {}
  public func waitOutstanding() throws {}
  public func reduceScatterSum(_ buffer: UnsafeMutablePointer<Float>, counts: [Int]) throws {}
  public func startReduceScatterSum(_ buffer: UnsafeMutablePointer<Float>, counts: [Int], wire: GradientWire) throws
    -> Int
  {
    if wire == .bf16 { roundToBFloat16(buffer, count: counts.reduce(0, +)) }
    return -1
  }
  public func startAllgather(_ buffer: UnsafeMutablePointer<Float>, counts: [Int]) throws -> Int { -1 }
  public func startAllgather(words buffer: UnsafeMutablePointer<UInt32>, counts: [Int]) throws -> Int { -1 }
  public func isComplete(_ request: Int) throws -> Bool { true }
  public func wait(_ request: Int) throws {}
  public func allgather(_ buffer: UnsafeMutablePointer<Float>, counts: [Int]) throws {}
  public func allgather(_ value: UInt64) throws -> [UInt64] { [value] }
  public func barrier() throws {}
  public func openProgressBoard() throws -> Bool { false }
  public func publishProgress(_ position: Int64) throws {}
  public func publishedProgress() -> [Int64]? { nil }
  public func abort(code: Int32) -> Never { exit(code) }
  public func finalize() {}
}
