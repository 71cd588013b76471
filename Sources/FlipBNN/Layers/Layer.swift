import FlipTensor

// Gradient convention (tested): parameter gradients ACCUMULATE into the store's gradient
// buffer (so micro-batches add up), activation gradients are WRITTEN into the layer's input
// gradient buffer (its own, or one its model lends it: `LentInputGradient`). Every stored
// buffer is sized once for `maxBatch` samples; a smaller batch uses a prefix. Neither forward
// nor backward allocates.

/// One layer of a sequential model: explicit forward and backward passes over flat batches.
public protocol Layer: AnyObject {
  /// Keras-style unique name in its model, e.g. `quant_dense_1`.
  var name: String { get set }
  /// The base of `name`, e.g. `quant_dense`.
  var typeName: String { get }
  /// Shape of one sample coming in / going out (no batch axis).
  var inputShape: [Int] { get }
  var outputShape: [Int] { get }
  /// Variables this layer needs, in order; the model lays them out in its store.
  var parameterSpecs: [ParameterSpec] { get }
  /// The threads (and profiler) its loops and kernels run with: the model's (`Model.compute`),
  /// one thread for a layer on its own.
  var compute: Compute { get set }
  /// Receives the views of the variables declared in `parameterSpecs`, in the same order.
  func bind(store: ParameterStore, views: [ParameterView])
  /// Sizes every buffer for batches of up to `maxBatch` samples.
  func allocate(maxBatch: Int)
  /// Computes the output of `batch` samples; the result stays valid until the next forward.
  /// The input must stay valid until `backward` (it is the previous layer's output).
  func forward(_ x: UnsafePointer<Float>, batch: Int, training: Bool) throws -> UnsafePointer<Float>
  /// Accumulates parameter gradients and, if asked, returns the gradient of the input.
  /// Call it once per forward: layers may reuse forward caches as backward scratch.
  func backward(_ dy: UnsafePointer<Float>, batch: Int, needInputGradient: Bool) throws
    -> UnsafePointer<Float>?
  /// The numbers of `larq.models.summary`.
  var profile: LayerProfile { get }
}

extension Layer {
  public var inputSize: Int { inputShape.reduce(1, *) }
  public var outputSize: Int { outputShape.reduce(1, *) }
}

/// A layer whose input gradient may live in a buffer that a model lends it. On its own a layer
/// owns the buffer (`allocate` sizes it); a `Model` instead sets `inputGradientIsLent` before
/// `allocate` and hands the layer a pooled buffer before each backward, taking it back once the
/// gradient has been used, so only the gradients alive at once take memory.
public protocol LentInputGradient: Layer {
  /// Where backward writes the input gradient (at least batch × `inputSize` elements).
  var inputGradient: FloatBuffer { get set }
  /// Whether a model lends `inputGradient` (then `allocate` makes none).
  var inputGradientIsLent: Bool { get set }
}

extension LentInputGradient {
  /// Makes the layer own its input gradient again, for batches of up to `maxBatch`: for a
  /// caller that runs one of a model's layers on its own (the model then lends it nothing).
  public func ownInputGradient(maxBatch: Int) {
    inputGradientIsLent = false
    inputGradient = FloatBuffer(count: maxBatch * inputSize)
  }
}

/// A layer that needs some memory only within one forward or one backward call. A model gives
/// all of them one buffer, as large as the largest need (its layers run one at a time), and
/// sets `scratchIsShared` before `allocate`; a layer on its own makes its own in `allocate`.
public protocol SharedScratchLayer: Layer {
  /// The floats of scratch one forward or backward call needs for batches of up to `maxBatch`.
  func scratchCount(maxBatch: Int) -> Int
  /// The scratch: the model's shared buffer, or the layer's own. Its contents do not outlive
  /// a call.
  var scratch: FloatBuffer { get set }
  /// Whether a model gives `scratch` (then `allocate` makes none).
  var scratchIsShared: Bool { get set }
}

/// A layer whose kernel is quantized: it reports the fraction of kernel values that changed
/// between consecutive training forwards (Larq's `flip_ratio` metric).
public protocol FlipCounting: AnyObject {
  /// Whether the kernel has a quantizer (only then is there a flip ratio).
  var hasQuantizedKernel: Bool { get }
  /// Fraction of quantized kernel values that differ from the previous training forward's,
  /// or nil before the second training forward.
  var lastFlipRatio: Double? { get }
}

/// The weights and MACs of one layer, as `larq.models.summary` counts them.
public struct LayerProfile: Sendable, Equatable {
  public struct Weights: Sendable, Equatable {
    public var role: ParameterRole
    public var count: Int
    public var precision: Int
    public var trainable: Bool
  }
  public enum MACs: Sendable, Equatable {
    case none
    /// Multiply-accumulates of one sample at `precision` bits.
    case count(Int, precision: Int)
    /// Larq cannot count them (`?`), e.g. for activations.
    case unknown
  }
  public var name: String
  /// The input quantizer's precision, nil when the input is not quantized (`-`).
  public var inputPrecision: Int?
  public var outputShape: [Int]
  public var weights: [Weights]
  public var macs: MACs
}

/// The pseudo-gradient of `quantizer` at `x`, applied to `d` in place (identity when nil).
@inline(__always)
func quantizerGradient(
  _ quantizer: Quantizer?, _ x: UnsafePointer<Float>, _ d: UnsafeMutablePointer<Float>, count: Int,
  channels: Int, compute: Compute
) {
  quantizer?.parallelBackward(x, UnsafePointer(d), d, count: count, channels: channels, compute: compute)
}

/// The kernel of a quantized layer: the latent weights, their quantized copy used by the
/// forward GEMM, and the count of values that changed since the previous training forward.
///
/// The quantized kernel is double-buffered: each forward writes the inactive copy and counts
/// where it differs from the active one (Larq's `flip_ratio`), then makes it active.
///
/// When the kernel quantizer's pseudo-gradient is a clipped straight-through estimator and
/// every latent weight lies within its bound (as `weight_clip` keeps them for `ste_sign`),
/// the pseudo-gradient is the identity: backward then accumulates the GEMM's result straight
/// into the latent's gradient, with no scratch copy and no mask pass. Every rank runs this
/// work on the whole kernel each step, so it costs the same however many ranks share the batch.
final class QuantizedKernel {
  let quantizer: Quantizer?
  let rows: Int, channels: Int
  var latent: UnsafeMutablePointer<Float>!
  var gradient: UnsafeMutablePointer<Float>!
  /// 2 × (rows, channels) quantized kernels; allocated only when there is a quantizer.
  private let buffers: [FloatBuffer]
  private var active = 0
  /// (rows, channels) scratch for the gradient of the quantized kernel.
  let quantizedGradient: FloatBuffer?
  private var hasPrevious = false
  private(set) var lastFlipRatio: Double?
  /// Changed values per chunk of 64 Ki (summed in chunk order).
  private var flipCounts: [Int]
  /// Per chunk of 64 Ki: whether every latent weight lies within the straight-through bound.
  private var chunkWithinBound: [Bool]
  /// Whether the pseudo-gradient at the latent weights of the last forward is the identity.
  private(set) var gradientPassesThrough = false

  init(quantizer: Quantizer?, rows: Int, channels: Int) {
    self.quantizer = quantizer
    self.rows = rows
    self.channels = channels
    let chunks = max(1, Parallel.chunkCount(count: rows * channels, grain: Self.grain))
    flipCounts = [Int](repeating: 0, count: chunks)
    chunkWithinBound = [Bool](repeating: false, count: chunks)
    buffers = quantizer == nil ? [] : [FloatBuffer(count: rows * channels), FloatBuffer(count: rows * channels)]
    quantizedGradient = quantizer == nil ? nil : FloatBuffer(count: rows * channels)
  }

  static let grain = 1 << 16

  /// The quantized kernel as int8, written by every forward while `fillsInt8` (for layers
  /// whose forward GEMM runs in exact int8).
  private(set) var int8: UnsafeMutablePointer<Int8>?
  /// Whether each forward writes `int8`: from `makeInt8Copy()` on, until the layer's forward
  /// moves to another kernel.
  var fillsInt8 = false {
    didSet { precondition(!fillsInt8 || int8 != nil, "fillsInt8 without makeInt8Copy()") }
  }

  /// From now on, each forward also writes `int8` (the quantizer must take integer levels, or
  /// be channel-scaled: then `int8` holds the levels).
  func makeInt8Copy() {
    precondition(
      quantizer?.hasIntegerLevels == true || quantizer is ChannelScaledQuantizer, "an int8 kernel needs integer levels")
    if int8 == nil { int8 = .allocate(capacity: max(count, 1)) }
    fillsInt8 = true
  }

  deinit { int8?.deallocate() }

  /// For a `ChannelScaledQuantizer`: (rows, channels) the levels of the last forward as floats,
  /// written by every forward while `fillsLevels` (the fp32 operand of the exact forward).
  private(set) var levels: FloatBuffer?
  var fillsLevels = false {
    didSet {
      precondition(!fillsLevels || quantizer is ChannelScaledQuantizer, "levels need a channel-scaled quantizer")
      if fillsLevels && levels == nil { levels = FloatBuffer(count: count) }
      if !fillsLevels { levels = nil }
    }
  }

  /// The per-channel scales of the last forward, for a `ChannelScaledQuantizer`.
  var channelScales: [Float]? { (quantizer as? ChannelScaledQuantizer)?.scale }

  var count: Int { rows * channels }

  /// The quantized kernel of the last forward (nil without a quantizer).
  var quantized: FloatBuffer? { buffers.isEmpty ? nil : buffers[active] }

  /// The weights the forward GEMM uses: `q(latent)`, recomputed every forward on `compute`'s
  /// threads.
  func forward(training: Bool, compute: Compute) -> UnsafePointer<Float> {
    guard let q = quantizer else { return UnsafePointer(latent) }
    let old = UnsafePointer(buffers[active].pointer)
    let new = buffers[1 - active].pointer
    let countFlips = training && hasPrevious
    let bound = q.straightThroughBound
    let w = UnsafePointer(latent!)
    if q.isElementwise {
      // Quantize a chunk, compare it with the previous kernel, check the latent weights
      // against the bound, and make the int8 copy, while the chunk is in cache.
      let grain = Self.grain
      flipCounts.withUnsafeMutableBufferPointer { c in
        chunkWithinBound.withUnsafeMutableBufferPointer { inside in
          compute.forRanges(count: count, grain: grain) { r in
            let lo = r.lowerBound
            (c[lo / grain], inside[lo / grain]) = q.forwardKernelChunk(
              w + lo, new + lo, previous: countFlips ? old + lo : nil, count: r.count)
            if fillsInt8, let k8 = int8 { convertToInt8Serially(new + lo, k8 + lo, count: r.count) }
          }
        }
      }
      gradientPassesThrough = bound != nil && !chunkWithinBound.contains(false)
    } else {
      if let scaled = q as? ChannelScaledQuantizer {
        scaled.forward(latent, new, count: count, channels: channels, compute: compute)
        let (levels, k8) = (fillsLevels ? levels?.pointer : nil, fillsInt8 ? int8 : nil)
        if levels != nil || k8 != nil {
          compute.forEach(count: count) { r in
            let lo = r.lowerBound
            scaled.writeLevels(w + lo, levels.map { $0 + lo }, int8: k8.map { $0 + lo }, count: r.count)
          }
        }
      } else {
        q.forward(latent, new, count: count, channels: channels)
        if fillsInt8, let k8 = int8 { convertToInt8(new, k8, count: count, compute: compute) }
      }
      // The same chunks as the elementwise pass: flips counted per chunk, the bound checked.
      let grain = Self.grain
      flipCounts.withUnsafeMutableBufferPointer { c in
        chunkWithinBound.withUnsafeMutableBufferPointer { inside in
          compute.forRanges(count: count, grain: grain) { r in
            let (lo, chunk) = (r.lowerBound, r.lowerBound / grain)
            c[chunk] = countFlips ? countDifferences(old + lo, new + lo, count: r.count) : 0
            inside[chunk] = bound.map { allMagnitudes(w + lo, count: r.count, atMost: $0) } ?? false
          }
        }
      }
      gradientPassesThrough = bound != nil && !chunkWithinBound.contains(false)
    }
    if countFlips { lastFlipRatio = Double(flipCounts.reduce(0, +)) / Double(count) }
    if training { hasPrevious = true }
    active = 1 - active
    return UnsafePointer(new)
  }

  /// Where a GEMM writes the gradient of the quantized kernel, and with which beta: straight
  /// into the latent's gradient (accumulating) when there is no quantizer or its
  /// pseudo-gradient is the identity, else into scratch for `finishBackward`.
  var gemmGradientTarget: (UnsafeMutablePointer<Float>, beta: Float) {
    if let g = quantizedGradient, !gradientPassesThrough { return (g.pointer, 0) }
    return (gradient, 1)
  }

  /// After the kernel's gradient was written to `source`: the pseudo-gradient through the
  /// quantizer and the accumulation into the latent's gradient (nothing when `source` is
  /// the latent's gradient itself, which `gemmGradientTarget` accumulated into).
  func finishBackward(from source: UnsafeMutablePointer<Float>, compute: Compute) {
    let dst = gradient!
    guard source != dst else { return }
    let w = UnsafePointer(latent!)
    guard let q = quantizer, !gradientPassesThrough else {
      compute.forEach(count: count) { r in for i in r { dst[i] += source[i] } }
      return
    }
    if q.isElementwise {
      compute.forEach(count: count) { r in
        q.backward(w + r.lowerBound, source + r.lowerBound, source + r.lowerBound, count: r.count, channels: 1)
        for i in r { dst[i] += source[i] }
      }
    } else if q is ChannelScaledQuantizer {
      // Whole rows per chunk: each element's channel is its index in the row.
      let c = channels
      compute.forRanges(count: count / c, grain: max(1, Self.grain / c)) { rows in
        let (lo, n) = (rows.lowerBound * c, rows.count * c)
        q.backward(w + lo, source + lo, source + lo, count: n, channels: c)
        for i in lo..<(lo + n) { dst[i] += source[i] }
      }
    } else {
      q.backward(w, source, source, count: count, channels: channels)
      compute.forEach(count: count) { r in for i in r { dst[i] += source[i] } }
    }
  }
}

/// Column sums of a (rows, columns) matrix, accumulated into `into` (bias gradients).
@inline(__always)
func accumulateColumnSums(
  _ m: UnsafePointer<Float>, rows: Int, columns: Int, into: UnsafeMutablePointer<Float>
) {
  for r in 0..<rows {
    let row = m + r * columns
    for c in 0..<columns { into[c] += row[c] }
  }
}

/// Adds `bias` (columns) to every row of `m`.
@inline(__always)
func addBias(_ m: UnsafeMutablePointer<Float>, rows: Int, columns: Int, bias: UnsafePointer<Float>) {
  for r in 0..<rows {
    let row = m + r * columns
    for c in 0..<columns { row[c] += bias[c] }
  }
}

/// A layer that draws random numbers in training (Dropout): its generator is reset from its
/// seed and a stream number, so draws depend on where in training they happen, not on history.
public protocol StochasticLayer: Layer {
  func reseed(stream: UInt64)
}

/// A layer with a quantized kernel (QuantDense, QuantConv2D, QuantDepthwiseConv2D).
protocol QuantizedKernelLayer: Layer {
  var kernel: QuantizedKernel { get }
  var inputQuantizer: Quantizer? { get }
  var kernelQuantizer: Quantizer? { get }
  var constraint: KernelConstraint? { get }
}

extension QuantDense: QuantizedKernelLayer {}
extension QuantConv2D: QuantizedKernelLayer {}
extension QuantDepthwiseConv2D: QuantizedKernelLayer {
  var kernelQuantizer: Quantizer? { depthwiseQuantizer }
}
