import Foundation

/// Keras-style progress on rank 0: a redrawn bar on a terminal
/// (`118/118 [======] - 5s 42ms/step - loss: 0.7499 - accuracy: 0.8224`), or plain lines every
/// `every` steps when the output is not a terminal (logs, CI).
public final class ProgressReporter {
  /// How progress is shown: `auto` draws the bar when the output is a terminal. Open MPI gives
  /// every rank a pseudo-terminal even when `mpirun`'s own output goes to a file (a batch
  /// job's log), so jobs that log to files under `mpirun` choose `lines`.
  public enum Style: String, CaseIterable, Sendable {
    case auto, bar, lines
  }

  public let enabled: Bool
  public let isTerminal: Bool
  public let every: Int
  private let output: FileHandle
  private var lastLength = 0

  public init(enabled: Bool, style: Style = .auto, every: Int = 20, output: FileHandle = .standardOutput) {
    self.enabled = enabled
    self.every = max(1, every)
    self.output = output
    switch style {
    case .auto: isTerminal = isatty(output.fileDescriptor) != 0
    case .bar: isTerminal = true
    case .lines: isTerminal = false
    }
  }

  private func emit(_ s: String) { output.write(Data(s.utf8)) }

  public func epochStarted(_ epoch: Int, of total: Int) {
    guard enabled else { return }
    emit("Epoch \(epoch)/\(total)\n")
  }

  public func step(_ step: Int, of total: Int, seconds: Double, loss: Double, accuracy: Double) {
    guard enabled else { return }
    let stats = String(format: "loss: %.4f - accuracy: %.4f", loss, accuracy)
    if isTerminal {
      let width = 30
      let done = total > 0 ? min(width, step * width / total) : width
      let bar =
        String(repeating: "=", count: max(0, done - 1)) + (done < width ? ">" : "=")
        + String(repeating: ".", count: width - done)
      let eta = step > 0 ? seconds / Double(step) * Double(total - step) : 0
      let line = String(format: "%\(String(total).count)d/%d [%@] - ETA: %.0fs - %@", step, total, bar, eta, stats)
      emit("\r" + line + String(repeating: " ", count: max(0, lastLength - line.count)))
      lastLength = line.count
    } else if step % every == 0 && step < total {
      emit("  step \(step)/\(total) - \(String(format: "%.1fs", seconds)) - \(stats)\n")
    }
  }

  public func epochFinished(steps: Int, seconds: Double, summary: String) {
    guard enabled else { return }
    let perStep = steps > 0 ? seconds / Double(steps) * 1000 : 0
    let head = "\(steps)/\(steps) [" + String(repeating: "=", count: 30) + "]"
    let line = String(format: "%@ - %.0fs %.0fms/step - %@", head, seconds, perStep, summary)
    if isTerminal {
      emit("\r" + line + String(repeating: " ", count: max(0, lastLength - line.count)) + "\n")
    } else {
      emit(line + "\n")
    }
    lastLength = 0
  }
}
