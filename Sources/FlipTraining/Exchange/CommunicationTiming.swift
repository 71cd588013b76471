import Dispatch
import FlipComm
import FlipTensor

/// `flip mpi-check --timing`: the latency and bandwidth of the collectives the sharded step
/// uses, on this job's ranks and links, as an alpha–beta fit per collective:
/// `t = (N − 1)·α + β·bytes`, where `bytes` is what each rank sends ((N − 1)/N of the buffer).
/// `scripts/scaling-model.py` turns the fits into a predicted step time and efficiency for
/// 2 … 64 nodes.
public struct CommunicationTiming {
  /// One timed size of one collective.
  public struct Point: Sendable {
    public var collective: String
    /// The whole buffer's bytes (what every rank holds after an all-gather, or gives to a
    /// reduce-scatter), and what each rank sends of it.
    public var bufferBytes: Int
    public var sentBytes: Int
    /// Median over the rounds of the mean time per call.
    public var milliseconds: Double
  }

  /// A least-squares line `t = (N − 1)·α + β·sent`.
  public struct Fit: Sendable {
    public var collective: String
    /// Per message, in milliseconds.
    public var alphaMilliseconds: Double
    /// Milliseconds per byte sent.
    public var betaMillisecondsPerByte: Double
    /// 8 / β: the link rate the fit implies, in Gbit/s.
    public var gigabitsPerSecond: Double { betaMillisecondsPerByte > 0 ? 8 / betaMillisecondsPerByte / 1e6 : .infinity }
  }

  /// The collectives of the sharded step, by the name the report uses.
  public static let collectives = ["reduce-scatter fp32", "reduce-scatter bf16", "all-gather"]

  let communicator: Communicator

  public init(communicator: Communicator) { self.communicator = communicator }

  /// Times each collective on buffers of `sizes` bytes: `rounds` rounds of `repeats` calls.
  public func measure(sizes: [Int], repeats: Int = 10, rounds: Int = 3) throws -> [Point] {
    let n = communicator.size
    var points: [Point] = []
    for collective in Self.collectives {
      for bytes in sizes {
        // Elements of the buffer: fp32 (4 bytes) except the bf16 reduce-scatter, whose wire
        // carries 2 bytes an element.
        let elements = max(n, bytes / (collective == "reduce-scatter bf16" ? 2 : 4))
        let buffer = FloatBuffer(count: elements, value: 1)
        let counts = (0..<n).map { r in elements / n + (r < elements % n ? 1 : 0) }
        var times: [Double] = []
        for _ in 0..<rounds {
          try communicator.barrier()
          let start = DispatchTime.now().uptimeNanoseconds
          for _ in 0..<repeats {
            switch collective {
            case "reduce-scatter fp32": try communicator.startReduceScatterSum(buffer.pointer, counts: counts, wire: .fp32)
            case "reduce-scatter bf16": try communicator.startReduceScatterSum(buffer.pointer, counts: counts, wire: .bf16)
            default:
              try buffer.pointer.withMemoryRebound(to: UInt32.self, capacity: elements) {
                _ = try communicator.startAllgather(words: $0, counts: counts)
              }
            }
            try communicator.waitOutstanding()
          }
          times.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6 / Double(repeats))
        }
        // The slowest rank's time is the collective's (a rank may leave early).
        var slowest = [times.sorted()[times.count / 2]]
        try communicator.allreduceMax(&slowest)
        let wireBytes = elements * (collective == "reduce-scatter bf16" ? 2 : 4)
        points.append(
          Point(
            collective: collective, bufferBytes: wireBytes, sentBytes: wireBytes * (n - 1) / n,
            milliseconds: slowest[0]))
      }
    }
    return points
  }

  /// The alpha–beta line of each collective through its points (least squares on `sent`).
  public static func fit(_ points: [Point], ranks: Int) -> [Fit] {
    collectives.compactMap { name in
      let p = points.filter { $0.collective == name }
      guard p.count >= 2 else { return nil }
      let xs = p.map { Double($0.sentBytes) }
      let ys = p.map(\.milliseconds)
      let mx = xs.reduce(0, +) / Double(xs.count)
      let my = ys.reduce(0, +) / Double(ys.count)
      let sxx = zip(xs, xs).map { ($0 - mx) * ($1 - mx) }.reduce(0, +)
      let sxy = zip(xs, ys).map { ($0 - mx) * ($1 - my) }.reduce(0, +)
      let beta = sxx > 0 ? max(0, sxy / sxx) : 0
      let intercept = max(0, my - beta * mx)
      return Fit(
        collective: name, alphaMilliseconds: intercept / Double(max(ranks - 1, 1)), betaMillisecondsPerByte: beta)
    }
  }
}

extension Communicator {
  /// Each element's maximum over the ranks (from every rank's values, all-gathered).
  func allreduceMax(_ values: inout [Double]) throws {
    for i in values.indices {
      let all = try allgather(values[i].bitPattern)
      values[i] = all.map(Double.init(bitPattern:)).max() ?? values[i]
    }
  }
}
