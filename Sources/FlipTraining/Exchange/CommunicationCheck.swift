import FlipBNN
import FlipComm
import FlipTensor

/// Runs every collective that training uses on known patterns whose sums are exact in float,
/// at the sizes that break implementations: empty, one element, odd sizes, a bucket cap smaller
/// than a tensor, one bucket for everything, more than one message's worth. `flip mpi-check`
/// runs it on a job's ranks (the same hostfile and transport as training) before a long run.
///
/// Every rank r contributes `(r + 1) · level(i)` at element i, with `level(i) = i mod 7 + 1`, so
/// every sum is `N(N + 1)/2 · level(i)`: small integers, exact whatever the summation order.
public struct CommunicationCheck {
  /// One mismatch: the check's name, the first wrong element, what it held and should hold.
  public struct Failure: Error, CustomStringConvertible, Equatable {
    public var check: String
    public var index: Int
    public var found: String
    public var expected: String
    init(check: String, index: Int, found: some CustomStringConvertible, expected: some CustomStringConvertible) {
      self.check = check
      self.index = index
      self.found = found.description
      self.expected = expected.description
    }
    public var description: String {
      "\(check): element \(index) is \(found), expected \(expected) (a broken transport, or ranks that disagree)"
    }
  }

  let communicator: Communicator
  /// Names of the checks run so far.
  public private(set) var passed: [String] = []

  public init(communicator: Communicator) {
    self.communicator = communicator
  }

  /// The tensor shapes of a small model whose sizes are all odd (and one of 1 element), as
  /// the gradient buckets lay them out.
  static let shapes: [[Int]] = [[7, 13], [1], [1025], [3, 3, 5], [33]]

  static func level(_ i: Int) -> Float { Float(i % 7 + 1) }

  var rankFactor: Float { Float(communicator.rank + 1) }
  var sumFactor: Float { Float(communicator.size * (communicator.size + 1) / 2) }

  /// Runs all checks; throws the first failure (on the rank that saw it).
  public mutating func run() throws {
    for n in [0, 1, 17, 1000, (1 << 20) + 3] { try blockingAllreduce(count: n) }
    try doublesAllreduce()
    let views = Self.views()
    let total = views.map(\.count).reduce(0, +)
    // A cap below every tensor (a bucket per tensor), a middle one, one bucket for all.
    for cap in [4, 4096, total * 4] {
      let buckets = GradientBucket.plan(views: views, capBytes: cap)
      try bucketedAllreduce(buckets, total: total, cap: cap)
      let layout = ShardLayout(buckets: buckets, ranks: communicator.size, rank: communicator.rank)
      try shardedStep(layout, cap: cap)
      try shardedStep(layout, cap: cap, wire: .bf16)
    }
    // An empty gradient: no bucket at all, and a bucket of no elements.
    try shardedStep(ShardLayout(buckets: [], ranks: communicator.size, rank: communicator.rank), cap: 0)
    let empty = [GradientBucket(range: 0..<0, firstLayer: 0)]
    try shardedStep(ShardLayout(buckets: empty, ranks: communicator.size, rank: communicator.rank), cap: 0)
    try bucketedAllreduce(empty, total: 0, cap: 0)
    try blockingReduceScatterAndGather(count: total)
    try broadcasts()
    try checksums()
  }

  static func views() -> [ParameterView] {
    var random = SplitMix64(seed: 1)
    let specs = shapes.map { [ParameterSpec(role: .kernel, shape: $0, initializer: .zeros)] }
    return ParameterStore(layerNames: shapes.indices.map { "t\($0)" }, specs: specs, random: &random).views
  }

  /// Rank r's values. On the bf16 wire the rank factor is `r mod 8 + 1`, so every value has at
  /// most 6 significant bits and travels exactly.
  func pattern(_ count: Int, wire: GradientWire = .fp32) -> FloatBuffer {
    let b = FloatBuffer(count: count)
    let factor = wire == .bf16 ? Float(communicator.rank % 8 + 1) : rankFactor
    for i in 0..<count { b.pointer[i] = factor * Self.level(i) }
    return b
  }

  func expectSums(_ b: FloatBuffer, _ range: Range<Int>, _ check: String, wire: GradientWire = .fp32) throws {
    let sum = wire == .bf16 ? Float((0..<communicator.size).reduce(0) { $0 + $1 % 8 + 1 }) : sumFactor
    for i in range where b.pointer[i] != sum * Self.level(i) {
      throw Failure(check: check, index: i, found: b.pointer[i], expected: sum * Self.level(i))
    }
  }

  mutating func blockingAllreduce(count: Int) throws {
    let b = pattern(count)
    try communicator.allreduceSum(b.pointer, count: count)
    try expectSums(b, 0..<count, "allreduce of \(count) floats")
    passed.append("allreduce of \(count) floats")
  }

  mutating func doublesAllreduce() throws {
    var values = (0..<5).map { Double(communicator.rank + 1) * Double($0 + 1) }
    try communicator.allreduceSum(&values)
    for (i, v) in values.enumerated() where v != Double(sumFactor) * Double(i + 1) {
      throw Failure(check: "allreduce of doubles", index: i, found: v, expected: Double(sumFactor) * Double(i + 1))
    }
    passed.append("allreduce of doubles")
  }

  /// The unsharded step's path: a started all-reduce per bucket, progressed, then waited for.
  mutating func bucketedAllreduce(_ buckets: [GradientBucket], total: Int, cap: Int) throws {
    let b = pattern(total)
    for bucket in buckets {
      try communicator.startAllreduceSum(b.pointer + bucket.range.lowerBound, count: bucket.range.count)
      try communicator.progressOutstanding()
    }
    try communicator.waitOutstanding()
    let name = "bucketed allreduce (\(buckets.count) buckets, cap \(cap) bytes)"
    try expectSums(b, 0..<total, name)
    passed.append(name)
  }

  /// The sharded step's path: a started reduce-scatter per bucket; each bucket, in order,
  /// completed (polled with `isComplete`, then waited for) and this rank's part checked and
  /// overwritten with a value only this rank knows; an all-gather started per bucket; then
  /// every rank must see every rank's values. With the bf16 wire (the compact wire's
  /// gradients) the parts are gathered as 32-bit words, as the compact wire sends variables.
  mutating func shardedStep(_ shards: ShardLayout, cap: Int, wire: GradientWire = .fp32) throws {
    let total = shards.buckets.map(\.range.upperBound).max() ?? 0
    let b = pattern(total, wire: wire)
    var requests: [Int] = []
    for (bucket, counts) in zip(shards.buckets, shards.counts) {
      requests.append(
        try communicator.startReduceScatterSum(b.pointer + bucket.range.lowerBound, counts: counts, wire: wire))
      try communicator.progressOutstanding()
    }
    let name =
      "sharded reduce-scatter and all-gather (\(shards.buckets.count) buckets, cap \(cap) bytes\(wire == .bf16 ? ", bf16 gradients, words gathered" : ""))"
    for (k, request) in requests.enumerated() {
      var polls = 0
      while try !communicator.isComplete(request) && polls < 100 { polls += 1 }
      try communicator.wait(request)
      try expectSums(b, shards.mine[k], name + ", this rank's part", wire: wire)
      for i in shards.mine[k] { b.pointer[i] = -Float(i) }
      let start = b.pointer + shards.buckets[k].range.lowerBound
      if wire == .bf16 {
        try start.withMemoryRebound(to: UInt32.self, capacity: shards.buckets[k].range.count) {
          _ = try communicator.startAllgather(words: $0, counts: shards.counts[k])
        }
      } else {
        try communicator.startAllgather(start, counts: shards.counts[k])
      }
    }
    try communicator.waitOutstanding()
    for i in 0..<total where b.pointer[i] != -Float(i) {
      throw Failure(check: name, index: i, found: b.pointer[i], expected: -Float(i))
    }
    passed.append(name)
  }

  /// Checkpoints gather the sharded optimizer state with the blocking calls.
  mutating func blockingReduceScatterAndGather(count: Int) throws {
    let b = pattern(count)
    let n = communicator.size
    let counts = (0..<n).map { r in count / n + (r < count % n ? 1 : 0) }
    try communicator.reduceScatterSum(b.pointer, counts: counts)
    let start = counts[..<communicator.rank].reduce(0, +)
    let mine = start..<(start + counts[communicator.rank])
    try expectSums(b, mine, "blocking reduce-scatter")
    for i in mine { b.pointer[i] = -Float(i) }
    try communicator.allgather(b.pointer, counts: counts)
    for i in 0..<count where b.pointer[i] != -Float(i) {
      throw Failure(check: "blocking all-gather", index: i, found: b.pointer[i], expected: -Float(i))
    }
    passed.append("blocking reduce-scatter and all-gather")
  }

  /// Parameters and checkpoints are broadcast from rank 0 (and from any root).
  mutating func broadcasts() throws {
    // In the same order on every rank (a Set's order differs between processes).
    for root in communicator.size > 1 ? [0, communicator.size - 1] : [0] {
      let b = FloatBuffer(count: 1001)
      for i in 0..<1001 { b.pointer[i] = communicator.rank == root ? Self.level(i) * 3 : -1 }
      try communicator.broadcast(b.pointer, count: 1001, root: root)
      for i in 0..<1001 where b.pointer[i] != Self.level(i) * 3 {
        throw Failure(check: "broadcast from rank \(root)", index: i, found: b.pointer[i], expected: Self.level(i) * 3)
      }
      passed.append("broadcast from rank \(root)")
    }
  }

  /// The replica checksum's all-gather of one 64-bit value per rank.
  mutating func checksums() throws {
    let all = try communicator.allgather(UInt64(communicator.rank) &* 0x9E37_79B9_7F4A_7C15)
    for (r, v) in all.enumerated() where v != UInt64(r) &* 0x9E37_79B9_7F4A_7C15 {
      throw Failure(check: "all-gather of checksums", index: r, found: v, expected: UInt64(r) &* 0x9E37_79B9_7F4A_7C15)
    }
    passed.append("all-gather of checksums")
  }
}
