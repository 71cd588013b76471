import Dispatch
import FlipBNN
import FlipComm
import FlipTensor

/// Every rank all-reduces the gradients and applies the whole update (`--no-shard-optimizer`).
///
/// With buckets (`bucketBytes` > 0) each bucket's `MPI_Iallreduce` starts as soon as backward
/// has finished its layers and overlaps the backward of the layers below, with progress calls
/// between layers; with `bucketBytes` 0, one all-reduce after backward.
final class AllreduceExchange: GradientExchange, ExchangeDiagnostics {
  let store: ParameterStore
  let optimizer: Optimizer
  let communicator: Communicator
  /// Contiguous ranges of the gradient buffer, in the order backward completes them.
  let buckets: [GradientBucket]
  let bucketed: Bool
  private var started = 0
  /// When each bucket's all-reduce started (for the timeline).
  private var startTimes: [UInt64] = []
  var trace: ((String, Int, UInt64, UInt64) -> Void)?
  var willWait: ((StallInspector.Phase) throws -> Void)?
  private var scale: Float = 1
  private var clock = TrainingClock()
  private var timer = StepTimer()

  init(store: ParameterStore, optimizer: Optimizer, communicator: Communicator, bucketBytes: Int) {
    self.store = store
    self.optimizer = optimizer
    self.communicator = communicator
    bucketed = bucketBytes > 0
    buckets = GradientBucket.plan(views: store.views, capBytes: bucketed ? bucketBytes : .max)
  }

  var description: String {
    bucketed ? "bucketed all-reduce (\(buckets.count) buckets)" : "one all-reduce after backward"
  }
  var wireFormat: WireFormat { .fp32 }
  var overlapsBackward: Bool { bucketed }
  var bytesSentPerStep: Int {
    // A ring all-reduce sends 2 (N − 1)/N of the buffer.
    2 * (communicator.size - 1) * store.gradients.count * 4 / communicator.size
  }

  func beginStep(gradientScale: Float, clock: TrainingClock, timer: StepTimer) throws {
    (scale, self.clock, self.timer) = (gradientScale, clock, timer)
    started = 0
  }

  /// Starts the all-reduce of every bucket whose layers are all at or above `index`.
  func layerFinished(_ index: Int) throws {
    let g = store.gradients.pointer
    while started < buckets.count && buckets[started].firstLayer >= index {
      if trace != nil { startTimes.append(DispatchTime.now().uptimeNanoseconds) }
      try communicator.startAllreduceSum(g + buckets[started].range.lowerBound, count: buckets[started].range.count)
      started += 1
    }
    try communicator.progressOutstanding()
  }

  func finishStep() throws {
    try willWait?(.allreduce)
    if bucketed {
      try layerFinished(0)
      try communicator.waitOutstanding()
      if let trace {
        // Completion is known when the wait returns (an upper bound for the early buckets).
        let end = DispatchTime.now().uptimeNanoseconds
        for (b, start) in startTimes.enumerated() { trace("all-reduce bucket \(b)", 100 + b, start, end) }
        startTimes.removeAll(keepingCapacity: true)
      }
    } else {
      try communicator.allreduceSum(store.gradients.pointer, count: store.gradients.count)
    }
    timer.lap(\.communication)
    // Mean over the global batch, optimizer update and weight_clip in one pass.
    optimizer.apply(store: store, clock: clock, gradientScale: scale)
    timer.lap(\.optimizer)
  }

  func gatherState() throws {}

  func replicaChecksum() -> UInt64 { fullChecksum(store: store, optimizer: optimizer) }

  func communicationAlone(repeats: Int) throws -> Double {
    let g = store.gradients
    try communicator.barrier()
    let start = DispatchTime.now().uptimeNanoseconds
    for _ in 0..<repeats {
      if bucketed {
        for b in buckets { try communicator.startAllreduceSum(g.pointer + b.range.lowerBound, count: b.range.count) }
        try communicator.waitOutstanding()
      } else {
        try communicator.allreduceSum(g.pointer, count: g.count)
      }
    }
    return Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6 / Double(repeats)
  }
}
