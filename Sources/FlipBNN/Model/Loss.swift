import FlipTensor
import Foundation

/// Sparse categorical cross-entropy on a model's output, as Keras 2.15 computes it.
///
/// When the model ends in a softmax, Keras takes the logits `z` before it:
/// `loss_i = logΣ_j exp(z_ij) − z_i,label`, `∂loss_i/∂z_i = softmax(z_i) − onehot(label)`.
/// Otherwise it clips the probabilities `p` to `[1e−7, 1 − 1e−7]`: `loss_i = −log p_i,label`.
/// Gradients are of the SUM of the per-sample losses (in training, the sum is combined across
/// ranks and divided by the global sample count).
public final class SparseCategoricalCrossentropy {
  public let classes: Int
  private var maxBatch = 0
  /// (B, K) gradient of the summed loss with respect to the loss's input.
  private var gradient = FloatBuffer(count: 0)

  public init(classes: Int) { self.classes = classes }

  func allocate(maxBatch: Int) {
    guard maxBatch > self.maxBatch else { return }
    self.maxBatch = maxBatch
    gradient = FloatBuffer(count: maxBatch * classes)
  }

  /// Sum of losses, number of correct argmax predictions, number of labels among the five
  /// highest scores, and (if asked) the gradient.
  public struct Result {
    public var lossSum: Double
    public var correct: Int
    /// Keras's `sparse_top_k_categorical_accuracy` with k = 5 (TensorFlow's `in_top_k`): fewer
    /// than 5 classes score strictly higher than the label, so ties at the boundary count.
    public var top5: Int
    public var gradient: UnsafePointer<Float>?
  }

  /// `input` is the logits (`fromLogits`) or the probabilities, (B, K).
  func evaluate(
    _ input: UnsafePointer<Float>, labels: UnsafePointer<Int32>, batch: Int, fromLogits: Bool, withGradient: Bool
  ) -> Result {
    let k = classes
    var lossSum: Double = 0
    var correct = 0
    var top5 = 0
    let g = gradient.pointer
    for i in 0..<batch {
      let row = input + i * k
      let label = Int(labels[i])
      var best = 0
      var higher = 0
      for j in 1..<k where row[j] > row[best] { best = j }
      for j in 0..<k where row[j] > row[label] { higher += 1 }
      if best == label { correct += 1 }
      if higher < 5 { top5 += 1 }
      if fromLogits {
        let m = row[best]
        var s: Double = 0
        for j in 0..<k { s += Double(exp(row[j] - m)) }
        let logSum = Double(m) + log(s)
        lossSum += logSum - Double(row[label])
        if withGradient {
          for j in 0..<k { g[i * k + j] = Float(exp(Double(row[j]) - logSum)) }
          g[i * k + label] -= 1
        }
      } else {
        let eps: Float = 1e-7
        let p = min(max(row[label], eps), 1 - eps)
        lossSum -= Double(log(p))
        if withGradient {
          for j in 0..<k { g[i * k + j] = 0 }
          let inside = row[label] > eps && row[label] < 1 - eps
          g[i * k + label] = inside ? -1 / row[label] : 0
        }
      }
    }
    return Result(lossSum: lossSum, correct: correct, top5: top5, gradient: withGradient ? UnsafePointer(g) : nil)
  }
}

extension Model {
  /// One forward and backward pass on `batch` samples: accumulates the gradient of the summed
  /// loss into the store, and returns the summed loss and the count of correct predictions.
  public func accumulateGradients(
    _ x: UnsafePointer<Float>, labels: UnsafePointer<Int32>, batch: Int, loss: SparseCategoricalCrossentropy,
    observer: BackwardObserver? = nil
  ) throws -> (lossSum: Double, correct: Int) {
    loss.allocate(maxBatch: maxBatch)
    let top = endsInSoftmax ? layers.count - 1 : layers.count
    let out = try forward(x, batch: batch, training: true, through: top)
    let r = loss.evaluate(out, labels: labels, batch: batch, fromLogits: endsInSoftmax, withGradient: true)
    try backward(r.gradient!, batch: batch, from: top, observer: observer)
    return (r.lossSum, r.correct)
  }

  /// Inference on `batch` samples: summed loss, correct predictions, and labels among the
  /// five highest scores.
  public func evaluate(
    _ x: UnsafePointer<Float>, labels: UnsafePointer<Int32>, batch: Int, loss: SparseCategoricalCrossentropy
  ) throws -> (lossSum: Double, correct: Int, top5: Int) {
    loss.allocate(maxBatch: maxBatch)
    let top = endsInSoftmax ? layers.count - 1 : layers.count
    let out = try forward(x, batch: batch, training: false, through: top)
    let r = loss.evaluate(out, labels: labels, batch: batch, fromLogits: endsInSoftmax, withGradient: false)
    return (r.lossSum, r.correct, r.top5)
  }
}
