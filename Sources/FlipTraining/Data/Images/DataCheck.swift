import FlipTensor
import Foundation

/// `flip data check DIR`: the layout of an ImageNet-format data set, its samples per split and
/// class, and every image decoded once, in parallel; a file that does not decode cleanly (an
/// error, or a libjpeg warning such as a premature end of data) is listed.
public struct DataCheckReport: Codable, Sendable {
  public struct Split: Codable, Sendable {
    public var name: String
    public var samples: Int
    /// Samples of each class, by label.
    public var perClass: [Int]
    enum CodingKeys: String, CodingKey {
      case name, samples
      case perClass = "per_class"
    }
  }
  public struct BadFile: Codable, Sendable, Equatable {
    public var split: String
    /// The file (and record or member) as `SampleIndex.describe` names it.
    public var file: String
    public var problem: String
  }
  public var directory: String
  public var layout: String
  public var classNames: [String]
  public var splits: [Split]
  public var bad: [BadFile]
  public var seconds: Double
  enum CodingKeys: String, CodingKey {
    case directory, layout, splits, bad, seconds
    case classNames = "class_names"
  }

  /// Opens and decodes the data set in `directory` with `threads` threads.
  public static func check(directory: String, threads: Int, cache: IndexCache? = IndexCache()) throws
    -> DataCheckReport
  {
    let start = DispatchTime.now().uptimeNanoseconds
    let set = try ImageDataSet.open(directory: directory, cache: cache)
    var splits: [Split] = []
    var bad: [BadFile] = []
    for (name, index) in [("train", set.train), ("validation", set.validation)] {
      var perClass = [Int](repeating: 0, count: set.classes)
      for i in 0..<index.count { perClass[Int(index.label(of: i))] += 1 }
      splits.append(Split(name: name, samples: index.count, perClass: perClass))
      bad += decodeAll(index, threads: threads).map { BadFile(split: name, file: index.describe($0.0), problem: $0.1) }
    }
    return DataCheckReport(
      directory: set.directory, layout: set.layout.rawValue, classNames: set.classNames, splits: splits, bad: bad,
      seconds: Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
  }

  /// The samples of `index` that do not decode cleanly, and why, in index order.
  static func decodeAll(_ index: SampleIndex, threads: Int) -> [(Int, String)] {
    let tally = Tally()
    DispatchQueue.concurrentPerform(iterations: max(1, min(threads, index.count))) { _ in
      let decoder = ImageDecoder()
      var bytes: [UInt8] = []
      while true {
        let i = tally.take()
        guard i < index.count else { return }
        if let problem = decodeWhole(i, index, decoder, &bytes) { tally.add(i, problem) }
      }
    }
    return tally.found.sorted { $0.0 < $1.0 }
  }

  /// The next sample to decode and the problems found, shared by the decoding threads.
  private final class Tally: @unchecked Sendable {
    private let lock = NSLock()
    private var next = 0
    private(set) var found: [(Int, String)] = []
    func take() -> Int {
      lock.withLock {
        next += 1
        return next - 1
      }
    }
    func add(_ i: Int, _ problem: String) { lock.withLock { found.append((i, problem)) } }
  }

  /// Why sample `i` does not decode cleanly at full size, or nil.
  static func decodeWhole(_ i: Int, _ index: SampleIndex, _ decoder: ImageDecoder, _ bytes: inout [UInt8]) -> String? {
    do { try index.read(i, into: &bytes) } catch { return "\(error)" }
    return bytes.withUnsafeBytes { raw -> String? in
      do throws(ImageDecodeError) {
        let h = try ImageDecoder.header(raw)
        let r = try decoder.decode(raw, scaleEighths: 8, rect: PixelRect(x: 0, y: 0, width: h.width, height: h.height))
        return r.warningProblem
      } catch { return error.description }
    }
  }

  /// The report as people read it: layout, samples per split and class, the bad files.
  public func text() -> String {
    var lines = ["\(directory): \(layout), \(classNames.count) classes"]
    for s in splits {
      let counts = s.perClass.filter { $0 > 0 }
      let range = counts.isEmpty ? "" : " (\(counts.min()!)–\(counts.max()!) per class)"
      lines.append("\(s.name): \(s.samples) images\(range)")
    }
    lines.append("class" + "\t" + splits.map(\.name).joined(separator: "\t") + "\tname")
    for c in classNames.indices {
      lines.append("\(c)\t" + splits.map { String($0.perClass[c]) }.joined(separator: "\t") + "\t\(classNames[c])")
    }
    let decoded = splits.reduce(0) { $0 + $1.samples }
    lines.append(
      String(format: "decoded %d images in %.1f s: ", decoded, seconds)
        + (bad.isEmpty ? "none bad" : "\(bad.count) bad"))
    for b in bad { lines.append("bad (\(b.split)): \(b.file): \(b.problem)") }
    return lines.joined(separator: "\n")
  }
}
