import Dispatch
import FlipBNN
import FlipComm
import FlipTensor

/// How the ranks turn their gradients into one optimizer step that leaves every rank with the
/// same forward weights: Horovod's `DistributedOptimizer` for Flip. The trainer's step is
/// data → forward/backward → exchange; how many ranks there are, how gradients are bucketed
/// and sharded, and how bytes travel is the exchange's business alone, and an optimizer never
/// learns the rank count.
///
/// Strategies (`makeGradientExchange`): one process (`LocalExchange`), bucketed all-reduce
/// (`AllreduceExchange`), and the sharded ZeRO-1 step (`ShardedExchange`) on the fp32 or the
/// compact wire.
public protocol GradientExchange: BackwardObserver {
  /// Whether it acts during backward (the trainer then makes it backward's observer on the
  /// step's last micro-step: `layerFinished`, `kernelRowsFinished`).
  var overlapsBackward: Bool { get }
  /// Before the step's backward passes: the factor that turns summed gradients into means
  /// (1 / the step's global sample count), the step's clock, and the step's timer.
  func beginStep(gradientScale: Float, clock: TrainingClock, timer: StepTimer) throws
  /// After backward: the rest of the exchange, the update and its constraints, and the
  /// optimizer's step count. Afterwards every rank holds the same forward weights.
  func finishStep() throws
  /// Makes every rank hold all of the latent variables and the optimizer state (before a
  /// checkpoint or a model file; a sharded step keeps each rank's own slices only).
  func gatherState() throws
  /// A fingerprint of what every rank must hold alike (`Trainer.checkReplicas` compares it).
  func replicaChecksum() -> UInt64
}

/// What an exchange tells about itself for logs, benchmarks and traces (apart from the
/// algorithm, `GradientExchange`).
public protocol ExchangeDiagnostics: AnyObject {
  /// What it is, for logs: `one process`, `bucketed all-reduce`, `sharded, compact wire`, ...
  var description: String { get }
  /// How its bytes travel (fp32 except for the sharded step's compact wire).
  var wireFormat: WireFormat { get }
  /// Called with each bucket's communication span (name, start, end) for the timeline; the
  /// track tells reductions from gathers.
  var trace: ((_ name: String, _ track: Int, _ start: UInt64, _ end: UInt64) -> Void)? { get set }
  /// Called before each blocking wait of the step (the stall inspector's phases).
  var willWait: ((StallInspector.Phase) throws -> Void)? { get set }
  /// Payload bytes this rank sends per step.
  var bytesSentPerStep: Int { get }
  /// Milliseconds per step of the step's communication run alone, back to back.
  func communicationAlone(repeats: Int) throws -> Double
}

/// How the sharded step's bytes travel.
public enum WireFormat: String, Sendable, CaseIterable {
  /// Gradients and variables as fp32.
  case fp32
  /// Gradients as bfloat16 (summed in fp32 by their owner); binary kernels as their signs,
  /// 32 weights per word, with per-channel sums of `|w|` for `magnitude_aware_sign`
  /// (`Model.signKernels`); other variables as fp32.
  case compact
}

/// `--wire`: a format, or `auto` (fp32 when every rank runs on one host, where bytes are memory
/// copies; compact across hosts, where the network is the bottleneck).
public enum WirePolicy: String, Sendable, CaseIterable {
  case auto, fp32, compact
}

/// The exchange for `options` on `communicator`: one process, or the sharded or all-reduce
/// step. The only place that picks a strategy by the number of ranks.
public func makeGradientExchange(
  model: Model, optimizer: Optimizer, communicator: Communicator, options: TrainingOptions
) throws -> any GradientExchange & ExchangeDiagnostics {
  guard communicator.size > 1 else { return LocalExchange(store: model.store, optimizer: optimizer) }
  guard options.shardOptimizer else {
    return AllreduceExchange(
      store: model.store, optimizer: optimizer, communicator: communicator, bucketBytes: options.bucketBytes)
  }
  let wire: WireFormat
  switch options.wire {
  case .fp32: wire = .fp32
  case .compact: wire = .compact
  case .auto: wire = try communicator.hostCount() > 1 ? .compact : .fp32
  }
  return try ShardedExchange(
    model: model, optimizer: optimizer, communicator: communicator, bucketBytes: options.bucketBytes, wire: wire)
}

/// Splits a step's wall time into `StepTiming` phases: each `lap` adds the time since the
/// previous lap to one phase.
public final class StepTimer {
  public var timing = StepTiming()
  private var mark = DispatchTime.now().uptimeNanoseconds

  public init() {}

  /// Starts timing from now (the previous lap's time is not counted).
  public func restart() { mark = DispatchTime.now().uptimeNanoseconds }

  /// Called with each lap's phase and span (the timeline's phase track).
  public var trace: ((_ phase: String, _ start: UInt64, _ end: UInt64) -> Void)?

  public func lap(_ phase: WritableKeyPath<StepTiming, UInt64>) {
    let now = DispatchTime.now().uptimeNanoseconds
    timing[keyPath: phase] += now - mark
    if let trace { trace(StepTiming.name(of: phase), mark, now) }
    mark = now
  }
}

/// FNV-1a of a whole buffer's floats (a fast, order-sensitive fingerprint).
func fnv1a64(_ buffer: FloatBuffer, seed: UInt64 = FNV1a.offsetBasis) -> UInt64 {
  FNV1a.hash(floats: buffer.pointer, count: buffer.count, seed: seed)
}
