import Dispatch
import FlipTensor
import Foundation
import Testing

/// GEMMs of one shape from several threads at once (in-process ranks, or a program that trains
/// two models): each thread must get its own product. The input-gradient GEMM runs on a cached
/// oneDNN matmul primitive shared by every caller of its shape.
struct ConcurrentGEMMTests {
  @Test(arguments: [(12, 40, 40), (64, 96, 200)])
  func sharedMatmulPrimitivesGiveEveryThreadItsOwnProduct(m: Int, n: Int, k: Int) throws {
    let threads = 8
    // Small integers: every product is exact in fp32, so each must equal the reference exactly.
    @Sendable func operands(_ t: Int) -> (a: [Float], b: [Float]) {
      var g = SplitMix64(seed: UInt64(t + 1))
      let a = (0..<(m * k)).map { _ in Float(Int(g.next() % 5) - 2) }
      let b = (0..<(n * k)).map { _ in Float(Int(g.next() % 5) - 2) }
      return (a, b)
    }
    let expected: [[Float]] = (0..<threads).map { t in
      let (a, b) = operands(t)
      return (0..<(m * n)).map { i in
        let (r, c) = (i / n, i % n)
        return (0..<k).reduce(Float(0)) { $0 + a[r * k + $1] * b[c * k + $1] }
      }
    }
    let wrong = Failures()
    DispatchQueue.concurrentPerform(iterations: threads) { t in
      let (a, b) = operands(t)
      var c = [Float](repeating: .nan, count: m * n)
      for _ in 0..<20 {
        do {
          try gemm(.none, .transposed, m: m, n: n, k: k, a: a, lda: k, b: b, ldb: k, c: &c, ldc: n, compute: .serial)
        } catch {
          wrong.add("thread \(t): \(error)")
        }
        if c != expected[t] { wrong.add("thread \(t): \(zip(c, expected[t]).filter { $0 != $1 }.count) wrong values") }
      }
    }
    #expect(wrong.all.isEmpty, "\(wrong.all.prefix(4))")
  }
}

/// Messages collected from several threads.
final class Failures: @unchecked Sendable {
  private let lock = NSLock()
  private var messages: [String] = []
  func add(_ m: String) { lock.withLock { messages.append(m) } }
  var all: [String] { lock.withLock { messages } }
}
