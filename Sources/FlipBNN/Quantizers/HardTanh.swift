/// `hard_tanh` as an input "quantizer": not one of Larq's quantizers, but what Larq's guide
/// puts in place of a sign on the inputs when pretraining the real-valued variant of a BNN.
///
/// forward `q(x) = clip(x, −1, 1)`; gradient `dx = dy · 1[|x| ≤ 1]` (TensorFlow's gradient of
/// `clip_by_value`, which passes the boundaries). Real-valued: `precision` is nil, so the summary
/// prints `-` for the input and counts its MACs at 32 bits.
public final class HardTanh: Quantizer {
  public let name = "hard_tanh"
  public let precision: Int? = nil
  public init() {}
  public var straightThroughBound: Float? { 1 }

  public func forward(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int, channels: Int) {
    for i in 0..<count { y[i] = min(max(x[i], -1), 1) }
  }
  public func backward(
    _ x: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>,
    count: Int, channels: Int
  ) {
    clippedGradient(x, dy, dx, count: count, clip: 1)
  }
}
