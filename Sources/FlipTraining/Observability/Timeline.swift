import Dispatch
import FlipComm
import Foundation

/// A Chrome trace of a window of training steps on every rank: the JSON that Perfetto
/// (ui.perfetto.dev) and chrome://tracing open, like Horovod's timeline.
///
/// One process per rank (named `rank r (host)`), and in it one track per kind of work: the
/// step; its phases (data, compute, communication wait, optimizer); each layer's forward and
/// backward; each gradient bucket's reduce-scatter (or all-reduce) and all-gather from start
/// to completion; evaluation and checkpoints. Every span carries its global step. Only steps
/// in `window` (A ≤ step < B) are recorded; at the window's end (or when training ends) every
/// rank sends its events to rank 0, which writes the file. Clocks are aligned by a barrier
/// at the window's start.
public final class Timeline {
  public let path: String
  public let window: Range<Int>
  /// Tracks (Chrome trace thread ids); each bucket's communication gets one of its own.
  enum Track: Int {
    case step = 1, phases, layers, evaluation
    static let reductions = 100
    static let gathers = 200
  }

  struct Event {
    var name: String
    var track: Int
    var start: UInt64
    var end: UInt64
    var step: Int
  }

  private var events: [Event] = []
  private let lock = NSLock()
  private var origin: UInt64 = 0
  private(set) var step = 0
  private(set) var finished = false
  /// Whether the current step is recorded.
  var recording: Bool { !finished && window.contains(step) }

  public init(path: String, window: Range<Int>) {
    self.path = path
    self.window = window
    events.reserveCapacity(4096)
  }

  /// Before global step `step` (collective at the window's first step: a barrier aligns the
  /// ranks' clocks).
  func stepWillStart(_ step: Int, communicator: Communicator) throws {
    self.step = step
    if step == window.lowerBound || (origin == 0 && window.contains(step)) {
      try communicator.barrier()
      origin = DispatchTime.now().uptimeNanoseconds
    }
  }

  /// Records a span of the current step (thread-safe; nothing outside the window).
  func record(_ name: String, track: Int, start: UInt64, end: UInt64) {
    guard recording, origin > 0 else { return }
    lock.lock()
    events.append(Event(name: name, track: track, start: start, end: end, step: step))
    lock.unlock()
  }

  func record(_ name: String, track: Track, start: UInt64, end: UInt64) {
    record(name, track: track.rawValue, start: start, end: end)
  }

  /// Whether the window has ended after `step` (the caller then calls `finish`).
  func ends(after step: Int) -> Bool { !finished && step >= window.upperBound - 1 }

  /// Collective: every rank's events to rank 0, which writes the trace to `path`. `names`
  /// names each layer index; `hostName` this rank's host.
  func finish(communicator: Communicator, layerNames: [String], hostName: String) throws {
    guard !finished else { return }
    finished = true
    let mine = Data(try encode(rank: communicator.rank, host: hostName, layerNames: layerNames).utf8)
    var parts: [Data] = []
    for r in 0..<communicator.size {
      parts.append(try communicator.broadcast(communicator.rank == r ? mine : Data(), root: r))
    }
    guard communicator.isRoot else { return }
    let body = parts.map { String(decoding: $0, as: UTF8.self) }.filter { !$0.isEmpty }.joined(separator: ",\n")
    let text = "{\"displayTimeUnit\": \"ms\", \"otherData\": {\"steps\": \"\(window.lowerBound)..<\(window.upperBound)\"},\n\"traceEvents\": [\n\(body)\n]}\n"
    do { try ModelFile.writeAtomically(Data(text.utf8), to: path) } catch {
      throw TrainingError.unwritable(path: path, reason: "cannot write the timeline: \(error)")
    }
  }

  /// This rank's events as Chrome trace JSON objects (comma-separated, no brackets).
  func encode(rank: Int, host: String, layerNames: [String]) throws -> String {
    func quoted(_ s: String) -> String {
      String(decoding: try! JSONSerialization.data(withJSONObject: [s], options: [.fragmentsAllowed]), as: UTF8.self)
        .dropFirst().dropLast().description
    }
    var lines = [
      "{\"name\": \"process_name\", \"ph\": \"M\", \"pid\": \(rank), \"args\": {\"name\": \(quoted("rank \(rank) (\(host))"))}}",
      "{\"name\": \"process_sort_index\", \"ph\": \"M\", \"pid\": \(rank), \"args\": {\"sort_index\": \(rank)}}",
    ]
    var tracks: [Int: String] = [
      Track.step.rawValue: "step", Track.phases.rawValue: "phases", Track.layers.rawValue: "layers",
      Track.evaluation.rawValue: "evaluation and checkpoints",
    ]
    lock.lock()
    defer { lock.unlock() }
    for e in events where e.track >= Track.reductions {
      let bucket = e.track % 100
      tracks[e.track] = e.track >= Track.gathers ? "all-gather, bucket \(bucket)" : "reduction, bucket \(bucket)"
    }
    for (tid, name) in tracks.sorted(by: { $0.key < $1.key }) {
      lines.append(
        "{\"name\": \"thread_name\", \"ph\": \"M\", \"pid\": \(rank), \"tid\": \(tid), \"args\": {\"name\": \(quoted(name))}}"
      )
      lines.append(
        "{\"name\": \"thread_sort_index\", \"ph\": \"M\", \"pid\": \(rank), \"tid\": \(tid), \"args\": {\"sort_index\": \(tid)}}")
    }
    for e in events {
      let ts = Double(Int64(e.start) - Int64(origin)) / 1000
      let dur = Double(e.end &- e.start) / 1000
      lines.append(
        String(
          format: "{\"name\": %@, \"cat\": \"%@\", \"ph\": \"X\", \"pid\": %d, \"tid\": %d, \"ts\": %.3f, \"dur\": %.3f, \"args\": {\"step\": %d}}",
          quoted(e.name), tracks[e.track] ?? "other", rank, e.track, ts, dur, e.step))
    }
    return lines.joined(separator: ",\n")
  }
}
