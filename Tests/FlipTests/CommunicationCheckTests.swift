import FlipComm
import Foundation
import Testing

@testable import FlipTraining

/// One process whose float all-reduce corrupts one element of buffers of `corruptCount`.
final class CorruptingCommunicator: Communicator {
  let corruptCount: Int
  init(corruptCount: Int) { self.corruptCount = corruptCount }
  var rank: Int { 0 }
  var size: Int { 1 }
  var localSize: Int { 1 }
  func allreduceSum(_ buffer: UnsafeMutablePointer<Float>, count: Int) throws {
    if count == corruptCount { buffer[count / 2] += 1 }
  }
  func allreduceSum(_ buffer: UnsafeMutablePointer<Double>, count: Int) throws {}
  func broadcast(_ buffer: UnsafeMutablePointer<Float>, count: Int, root: Int) throws {}
  func broadcast(bytes buffer: UnsafeMutableRawPointer, count: Int, root: Int) throws {}
  func startAllreduceSum(_ buffer: UnsafeMutablePointer<Float>, count: Int) throws {}
  func progressOutstanding() throws {}
  func waitOutstanding() throws {}
  func reduceScatterSum(_ buffer: UnsafeMutablePointer<Float>, counts: [Int]) throws {}
  func startReduceScatterSum(_ buffer: UnsafeMutablePointer<Float>, counts: [Int], wire: GradientWire) throws -> Int {
    -1
  }
  func startAllgather(_ buffer: UnsafeMutablePointer<Float>, counts: [Int]) throws -> Int { -1 }
  func startAllgather(words buffer: UnsafeMutablePointer<UInt32>, counts: [Int]) throws -> Int { -1 }
  func isComplete(_ request: Int) throws -> Bool { true }
  func wait(_ request: Int) throws {}
  func allgather(_ buffer: UnsafeMutablePointer<Float>, counts: [Int]) throws {}
  func allgather(_ value: UInt64) throws -> [UInt64] { [value] }
  func barrier() throws {}
  func openProgressBoard() throws -> Bool { false }
  func publishProgress(_ position: Int64) throws {}
  func publishedProgress() -> [Int64]? { nil }
  func abort(code: Int32) -> Never { exit(code) }
  func finalize() {}
}

@Suite("Communication check")
struct CommunicationCheckTests {
  @Test func passesOnOneProcess() throws {
    var check = CommunicationCheck(communicator: SingleProcessCommunicator())
    try check.run()
    #expect(check.passed.count == 21)
    #expect(check.passed.contains("sharded reduce-scatter and all-gather (5 buckets, cap 4 bytes, bf16 gradients, words gathered)"))
    #expect(check.passed.contains("sharded reduce-scatter and all-gather (1 buckets, cap 0 bytes)"))
  }

  @Test func namesTheCheckAndTheElementThatIsWrong() throws {
    var check = CommunicationCheck(communicator: CorruptingCommunicator(corruptCount: 1000))
    #expect(
      throws: CommunicationCheck.Failure(check: "allreduce of 1000 floats", index: 500, found: 5.0, expected: 4.0)
    ) { try check.run() }
    #expect(check.passed == ["allreduce of 0 floats", "allreduce of 1 floats", "allreduce of 17 floats"])
  }
}
