import FlipBNN
import FlipComm
import FlipTensor

/// One process: nothing to exchange. `finishStep` applies the optimizer to the summed
/// gradients, scaled to their mean.
final class LocalExchange: GradientExchange, ExchangeDiagnostics {
  let store: ParameterStore
  let optimizer: Optimizer
  private var scale: Float = 1
  private var clock = TrainingClock()
  private var timer = StepTimer()

  init(store: ParameterStore, optimizer: Optimizer) {
    self.store = store
    self.optimizer = optimizer
  }

  var trace: ((String, Int, UInt64, UInt64) -> Void)?
  var willWait: ((StallInspector.Phase) throws -> Void)?
  var description: String { "one process" }
  var wireFormat: WireFormat { .fp32 }
  var overlapsBackward: Bool { false }
  var bytesSentPerStep: Int { 0 }

  func beginStep(gradientScale: Float, clock: TrainingClock, timer: StepTimer) throws {
    (scale, self.clock, self.timer) = (gradientScale, clock, timer)
  }

  func layerFinished(_ index: Int) throws {}

  func finishStep() throws {
    optimizer.apply(store: store, clock: clock, gradientScale: scale)
    timer.lap(\.optimizer)
  }

  func gatherState() throws {}

  func replicaChecksum() -> UInt64 { fullChecksum(store: store, optimizer: optimizer) }

  func communicationAlone(repeats: Int) throws -> Double { 0 }
}

/// The variables, the optimizer state and the step count: what replicas that all apply the
/// whole update hold alike.
func fullChecksum(store: ParameterStore, optimizer: Optimizer) -> UInt64 {
  var h = fnv1a64(store.values)
  for s in optimizer.stateBuffers { h = fnv1a64(s.buffer, seed: h) }
  return h ^ UInt64(optimizer.iterations)
}
