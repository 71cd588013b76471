import FlipBNN
import Foundation

/// A run's metrics as TensorBoard scalars, histograms and text, in `<run>/tensorboard/`
/// (rank 0 writes it). Every event's step is the global optimizer step, as in
/// `metrics.jsonl`, so step and epoch curves share one axis:
///
/// - every `--log-every` steps: `step/loss`, `step/accuracy` (running means over the epoch);
/// - every epoch: `epoch/loss`, `epoch/accuracy`, `epoch/test_loss`, `epoch/test_accuracy`,
///   `epoch/images_per_second`, `epoch/<hyperparameter>` for each of the optimizer's (the
///   learning rate and every scheduled one), and `epoch/flip_ratio/<layer>` (Larq's metric);
/// - every epoch: a histogram `kernel/<variable>` of each binary kernel's latent weights;
/// - once: `model/summary` (Larq's table) and `model/config` (the run's YAML) as text.
///
/// A resumed run first drops the events after its checkpoint's step (`resume(afterStep:)`),
/// then appends a new file, so TensorBoard sees every step once.
public final class TensorBoardLog {
  public let directory: String
  let writer: TensorBoardWriter

  /// Opens a new event file in `directory`; `afterStep` (resuming) first removes the events
  /// of steps after it from the files already there.
  public init(directory: String, resumingAfterStep afterStep: Int? = nil) throws {
    self.directory = directory
    if let afterStep, FileManager.default.fileExists(atPath: directory) {
      _ = try TensorBoardWriter.truncate(directory: directory, afterStep: afterStep)
    }
    writer = try TensorBoardWriter(directory: directory)
  }

  /// Text as TensorBoard's text plugin shows it (Markdown); `preformatted` text (tables,
  /// YAML) is indented by four spaces so Markdown keeps its lines and columns.
  public func text(_ tag: String, _ text: String, step: Int, preformatted: Bool = false) throws {
    let body = preformatted ? text.split(separator: "\n", omittingEmptySubsequences: false).map { "    " + $0 }.joined(separator: "\n") : text
    try writer.addText(tag, body, step: step)
    try writer.flush()
  }

  func step(step: Int, loss: Double, accuracy: Double, dataWaitSeconds: Double) throws {
    try writer.addScalars(
      [("step/loss", loss), ("step/accuracy", accuracy), ("step/data_wait_seconds", dataWaitSeconds)], step: step)
  }

  func epoch(_ r: EpochResult, hyperparameters: [String: Double]) throws {
    var values: [(String, Double)] = [
      ("epoch/loss", r.loss), ("epoch/accuracy", r.accuracy), ("epoch/test_loss", r.testLoss),
      ("epoch/test_accuracy", r.testAccuracy), ("epoch/test_top5_accuracy", r.testTop5Accuracy),
      ("epoch/images_per_second", r.imagesPerSecond),
      ("epoch/data_wait_seconds", r.dataWaitSeconds),
    ]
    if let bad = r.badImages { values.append(("epoch/bad_images", Double(bad))) }
    values += hyperparameters.sorted { $0.key < $1.key }.map { ("epoch/\($0.key)", $0.value) }
    values += r.flipRatio.sorted { $0.key < $1.key }.map { ("epoch/flip_ratio/\($0.key)", $0.value) }
    try writer.addScalars(values, step: r.step)
    try writer.flush()
  }

  /// Histograms of the binary kernels' latent weights (variables of precision 1).
  func kernelHistograms(_ store: ParameterStore, step: Int) throws {
    for v in store.views where v.role == .kernel && v.precision == 1 {
      try writer.addHistogram(
        "kernel/\(v.name)", values: UnsafeBufferPointer(start: store.values.pointer + v.offset, count: v.count),
        step: step)
    }
    try writer.flush()
  }

  public func close() throws { try writer.close() }
}
