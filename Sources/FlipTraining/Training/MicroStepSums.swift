import FlipBNN
import FlipComm
import FlipTensor

// Legend: P parameters, K micro-steps of a rank.

/// A rank's micro-steps (`TrainingOptions.accumulate`) add their gradients in
/// `ContributionTree` order, as ranks do: each micro-step's backward starts from zero, and the
/// sums of earlier micro-steps wait here until they can join the tree. So R ranks of K
/// micro-steps (K a power of two) reach the same summed gradient, bit for bit, as one rank of
/// R·K, and as R·K ranks of one.
///
/// The earlier micro-steps are kept as a binary counter keeps its bits: a stack of subtree sums
/// of 2ʲ micro-steps each, largest at the bottom (at most log₂ K + 1 buffers of P floats; one
/// for K = 2). The last micro-step's gradients join them a layer at a time, as backward makes
/// them final, before the exchange hears of them: the stack's sums added from the top down
/// (c₀ + (c₁ + (… + last))).
final class MicroStepSums: BackwardObserver {
  private let store: ParameterStore
  /// Subtree sums of earlier micro-steps, bottom to top, with how many micro-steps each holds.
  private var stack: [(sum: FloatBuffer, microSteps: Int)] = []
  private var spare: [FloatBuffer] = []
  /// The first gradient element of layer `i` and every layer after it (`P` past the last).
  private let suffixStart: [Int]
  /// During the last micro-step: elements `combinedFrom..<P` hold their final sums, and so
  /// do `combinedRows` (the rows of a kernel computed in row blocks).
  private var combinedFrom = 0
  private var combinedRows = 0..<0
  /// Whether the last micro-step's backward is being observed, and who hears of final
  /// gradients next (the exchange), if anyone.
  private var observed = false
  private var downstream: BackwardObserver?

  init(store: ParameterStore, layerCount: Int) {
    self.store = store
    let p = store.gradients.count
    suffixStart = (0...layerCount).map { i in store.views.first { $0.layerIndex >= i }?.offset ?? p }
  }

  /// Whether earlier micro-steps' sums wait to be added to the current gradients.
  var isHolding: Bool { !stack.isEmpty }

  /// After a micro-step that is not the step's last: takes its gradients into the stack and
  /// zeroes them for the next.
  func push() {
    let g = store.gradients
    if let top = stack.last, top.microSteps == 1 {
      add(g.pointer, into: top.sum, range: 0..<g.count)
      stack[stack.count - 1].microSteps = 2
      while stack.count >= 2, stack[stack.count - 1].microSteps == stack[stack.count - 2].microSteps {
        let upper = stack.removeLast()
        add(upper.sum.pointer, into: stack[stack.count - 1].sum, range: 0..<g.count)
        stack[stack.count - 1].microSteps += upper.microSteps
        spare.append(upper.sum)
      }
    } else {
      let sum = spare.popLast() ?? FloatBuffer(count: g.count)
      store.compute.forEach(count: g.count) { r in
        (sum.pointer + r.lowerBound).update(from: g.pointer + r.lowerBound, count: r.count)
      }
      stack.append((sum, 1))
    }
    store.zeroGradients()
  }

  /// The observer for the step's last micro-step: adds the stack to each layer's gradients as
  /// backward makes them final, then tells `downstream`.
  func observing(for downstream: BackwardObserver?) -> BackwardObserver? {
    guard isHolding else { return downstream }
    (observed, self.downstream) = (true, downstream)
    combinedFrom = store.gradients.count
    combinedRows = 0..<0
    return self
  }

  func layerFinished(_ index: Int) throws {
    combine(suffixStart[index]..<combinedFrom)
    combinedFrom = min(combinedFrom, suffixStart[index])
    try downstream?.layerFinished(index)
  }

  func kernelRowsFinished(layer index: Int, rows: Int) throws {
    guard let kernel = store.views.first(where: { $0.layerIndex == index && $0.role == .kernel }) else { return }
    let end = kernel.offset + rows * (kernel.count / kernel.shape[0])
    let start = combinedRows.isEmpty ? kernel.offset : combinedRows.upperBound
    combine(start..<end)
    combinedRows = kernel.offset..<end
    try downstream?.kernelRowsFinished(layer: index, rows: rows)
  }

  /// After the last micro-step's backward: adds the stack to whatever the observer has not
  /// (all of it, without one), and empties the stack.
  func finish() {
    guard isHolding else { return }
    if !observed { (combinedFrom, combinedRows) = (store.gradients.count, 0..<0) }
    combine(0..<combinedFrom)
    while let top = stack.popLast() { spare.append(top.sum) }
    (observed, downstream) = (false, nil)
  }

  /// `gradients[range] = s₀ + (s₁ + (… + gradients[range]))` over the stack, skipping the
  /// rows already combined.
  private func combine(_ range: Range<Int>) {
    guard !range.isEmpty else { return }
    let rows = combinedRows.clamped(to: range)
    let parts = rows.isEmpty ? [range] : [range.lowerBound..<rows.lowerBound, rows.upperBound..<range.upperBound]
    for part in parts where !part.isEmpty {
      for entry in stack.reversed() { add(entry.sum.pointer, into: store.gradients, range: part) }
    }
  }

  private func add(_ x: UnsafePointer<Float>, into y: FloatBuffer, range: Range<Int>) {
    let (x, y) = (x + range.lowerBound, y.pointer + range.lowerBound)
    store.compute.forEach(count: range.count) { r in
      ContributionTree.add(x + r.lowerBound, into: y + r.lowerBound, count: r.count)
    }
  }
}
