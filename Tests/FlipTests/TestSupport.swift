import FlipTensor
import Testing

@testable import FlipBNN
@testable import FlipTraining

// Shared helpers of the numeric tests (quantizers, layer gradients, optimizers, summary, tensor).

/// `|a − b| ≤ tol · max(1, |a|, |b|)`: absolute near zero, relative for large values.
func close(_ a: Float, _ b: Float, tol: Float) -> Bool {
  guard a.isFinite, b.isFinite else { return a == b }
  return abs(a - b) <= tol * max(1, abs(a), abs(b))
}

/// The same rule in double precision.
func close(_ a: Double, _ b: Double, tol: Double) -> Bool {
  guard a.isFinite, b.isFinite else { return a == b }
  return abs(a - b) <= tol * max(1, abs(a), abs(b))
}

/// Element-wise `close` of two equally long arrays.
func allClose(_ a: [Float], _ b: [Float], tol: Float) -> Bool {
  a.count == b.count && zip(a, b).allSatisfy { close($0, $1, tol: tol) }
}

/// The largest `|a[i] − b[i]|` (for failure messages).
func maxDifference(_ a: [Float], _ b: [Float]) -> Float {
  precondition(a.count == b.count)
  return zip(a, b).map { abs($0 - $1) }.max() ?? 0
}

/// `n` uniform values in `range`, drawn from Flip's own generator (so tests repeat exactly).
func randomValues(_ n: Int, seed: UInt64, in range: ClosedRange<Float> = -1...1) -> [Float] {
  var g = SplitMix64(seed: seed)
  return (0..<n).map { _ in range.lowerBound + (range.upperBound - range.lowerBound) * g.nextUnitFloat() }
}

/// Runs `q.forward` on an array.
func quantizerForward(_ q: Quantizer, _ x: [Float], channels: Int = 1) -> [Float] {
  var y = [Float](repeating: .nan, count: x.count)
  x.withUnsafeBufferPointer { xp in
    y.withUnsafeMutableBufferPointer { yp in
      q.forward(xp.baseAddress!, yp.baseAddress!, count: x.count, channels: channels)
    }
  }
  return y
}

/// Runs `q.forward` then `q.backward` on an array (quantizers keep statistics from forward);
/// `dy` defaults to all ones, so the result is the pseudo-derivative itself.
func pseudoGradient(_ q: Quantizer, _ x: [Float], dy: [Float]? = nil, channels: Int = 1) -> [Float] {
  _ = quantizerForward(q, x, channels: channels)
  let d = dy ?? [Float](repeating: 1, count: x.count)
  var dx = [Float](repeating: .nan, count: x.count)
  x.withUnsafeBufferPointer { xp in
    d.withUnsafeBufferPointer { dp in
      dx.withUnsafeMutableBufferPointer { dxp in
        q.backward(xp.baseAddress!, dp.baseAddress!, dxp.baseAddress!, count: x.count, channels: channels)
      }
    }
  }
  return dx
}

/// Gives a standalone layer its own parameter store (initialized from `seed`) and binds it.
@discardableResult
func bindStandalone(_ layer: Layer, seed: UInt64 = 1) -> ParameterStore {
  var random = SplitMix64(seed: seed)
  let store = ParameterStore(layerNames: [layer.name], specs: [layer.parameterSpecs], random: &random)
  layer.bind(store: store, views: store.views(ofLayer: 0))
  return store
}

/// A store holding one layer's variables described by `specs` (for optimizer tests).
func makeStore(_ specs: [ParameterSpec], layerName: String = "l", seed: UInt64 = 1) -> ParameterStore {
  var random = SplitMix64(seed: seed)
  return ParameterStore(layerNames: [layerName], specs: [specs], random: &random)
}

/// Copies `count` floats from a pointer into an array.
func copyOut(_ p: UnsafePointer<Float>, _ count: Int) -> [Float] {
  Array(UnsafeBufferPointer(start: p, count: count))
}

extension DataSplits {
  /// The training split of an in-memory data set (IDX, CIFAR-10).
  var memoryTrain: Dataset { train as! Dataset }
  /// The test split of an in-memory data set.
  var memoryTest: Dataset { test as! Dataset }
}
