import Foundation

/// The numbers of `larq.models.summary`, kept apart from their printing (as Larq does).
///
/// Counting rules (Larq 0.14 `larq/models.py`): a weight's bit width is its quantizer's
/// precision (32 without one); BatchNormalization drops `beta` when `moving_mean` exists and
/// `gamma` when `moving_variance` exists (the inference-fused form), so it counts its moving
/// statistics only; a layer's MACs are `kernel count · output pixels` at precision
/// `max(input precision or 32, kernel bits)` (for a depthwise kernel (KH, KW, C, M) that is
/// `KH·KW·C·M · OH·OW`); pooling layers have none (0); activations' and
/// `GlobalAveragePooling2D`'s MACs are unknown (`?`: Larq's list of supported layers omits them).
public struct ModelSummary: Sendable {
  public struct Row: Sendable {
    public var profile: LayerProfile
    /// Counted weights (after the BatchNorm pairing).
    public var weights: [LayerProfile.Weights]
    public func weightCount(precision: Int) -> Int {
      weights.filter { $0.precision == precision }.reduce(0) { $0 + $1.count }
    }
    /// Memory in bits.
    public var memoryBits: Int { weights.reduce(0) { $0 + $1.count * $1.precision } }
    public func macs(precision: Int) -> Int? {
      switch profile.macs {
      case .none: return 0
      case .unknown: return nil
      case .count(let n, let p): return p == precision ? n : 0
      }
    }
  }

  public let modelName: String
  public let rows: [Row]

  public init(modelName: String, profiles: [LayerProfile]) {
    self.modelName = modelName
    rows = profiles.map { p in
      var weights = p.weights
      let roles = Set(weights.map(\.role))
      if roles.contains(.movingMean) { weights.removeAll { $0.role == .beta } }
      if roles.contains(.movingVariance) { weights.removeAll { $0.role == .gamma } }
      return Row(profile: p, weights: weights)
    }
  }

  /// A graph model (Keras's functional API) lists its input first as `input_1`, with
  /// unknown MACs, as Keras's InputLayer.
  public init(modelName: String, model: Model) {
    let input = LayerProfile(
      name: "input_1", inputPrecision: nil, outputShape: model.inputShape, weights: [], macs: .unknown)
    self.init(modelName: modelName, profiles: (model.isGraph ? [input] : []) + model.layers.map(\.profile))
  }

  private var allWeights: [LayerProfile.Weights] { rows.flatMap(\.weights) }
  /// Distinct weight bit widths, ascending (the `# p-bit` columns).
  public var weightPrecisions: [Int] { Array(Set(allWeights.map(\.precision)).union([1, 32])).sorted() }
  /// Distinct MAC bit widths, ascending (the `p-bit MACs` columns).
  public var macPrecisions: [Int] {
    let ps = rows.compactMap { r -> Int? in
      if case .count(_, let p) = r.profile.macs { return p }
      return nil
    }
    return Array(Set(ps).union([1, 32])).sorted()
  }

  public var totalParameters: Int { allWeights.reduce(0) { $0 + $1.count } }
  public var trainableParameters: Int { allWeights.filter(\.trainable).reduce(0) { $0 + $1.count } }
  public var nonTrainableParameters: Int { totalParameters - trainableParameters }
  public func weightCount(precision: Int) -> Int { rows.reduce(0) { $0 + $1.weightCount(precision: precision) } }
  public var memoryBits: Int { rows.reduce(0) { $0 + $1.memoryBits } }
  /// Weights wider than 8 bits stored as 8-bit floats.
  public var int8FloatWeightsMemoryBits: Int {
    allWeights.reduce(0) { $0 + $1.count * ($1.precision > 8 ? 8 : $1.precision) }
  }
  public var float32EquivalentBits: Int { totalParameters * 32 }
  public var compressionRatio: Double { Double(memoryBits) / max(1e-8, Double(float32EquivalentBits)) }
  public func macs(precision: Int) -> Int { rows.reduce(0) { $0 + ($1.macs(precision: precision) ?? 0) } }
  public var totalMACs: Int { macPrecisions.reduce(0) { $0 + macs(precision: $1) } }
  public var binarizedMACRatio: Double { Double(macs(precision: 1)) / Double(max(1, totalMACs)) }
  public var ternarizedMACRatio: Double { Double(macs(precision: 2)) / Double(max(1, totalMACs)) }

  // MARK: Printing

  /// Both tables, exactly as `larq.models.summary` prints them.
  public func render() -> String {
    statsTable() + summaryTable()
  }

  func statsTable() -> String {
    var header1 = ["Layer", "Input prec.", "Outputs"]
    var header2 = ["", "(bit)", ""]
    for p in weightPrecisions {
      header1.append("# \(p)-bit")
      header2.append("x 1")
    }
    header1.append("Memory")
    header2.append("(kB)")
    for p in macPrecisions {
      header1.append("\(p)-bit MACs")
      header2.append("")
    }
    var body: [[String]] = []
    for r in rows {
      var cells = [
        r.profile.name, r.profile.inputPrecision.map(String.init) ?? "-",
        "(" + (["-1"] + r.profile.outputShape.map(String.init)).joined(separator: ", ") + ")",
      ]
      for p in weightPrecisions { cells.append(String(r.weightCount(precision: p))) }
      cells.append(Self.kilobytes(r.memoryBits))
      for p in macPrecisions { cells.append(r.macs(precision: p).map(String.init) ?? "?") }
      body.append(cells)
    }
    var total = ["Total", "", ""]
    for p in weightPrecisions { total.append(String(weightCount(precision: p))) }
    total.append(Self.kilobytes(memoryBits))
    for p in macPrecisions { total.append(String(macs(precision: p))) }

    let all = [header1, header2] + body + [total]
    let widths = (0..<header1.count).map { c in all.map { $0[c].count }.max()! }
    func line(_ cells: [String]) -> String {
      let padded = cells.enumerated().map { c, s in
        let pad = String(repeating: " ", count: widths[c] - s.count)
        return c == 0 ? s + pad : pad + s
      }
      return "| " + padded.joined(separator: "  ") + " |"
    }
    let inner = widths.reduce(0, +) + 2 * (widths.count - 1) + 2
    let rule = "+" + String(repeating: "-", count: inner) + "+"
    let title = "\(modelName) stats"
    let top = "+" + title + String(repeating: "-", count: max(0, inner - title.count)) + "+"
    var lines = [top, line(header1), line(header2), rule]
    lines += body.map(line)
    lines += [rule, line(total), rule]
    return lines.joined(separator: "\n") + "\n"
  }

  func summaryTable() -> String {
    var items: [(String, String)] = [
      ("Total params", Self.readable(Double(totalParameters))),
      ("Trainable params", Self.readable(Double(trainableParameters))),
      ("Non-trainable params", Self.readable(Double(nonTrainableParameters))),
      ("Model size", Self.memory(bits: memoryBits)),
      ("Model size (8-bit FP weights)", Self.memory(bits: int8FloatWeightsMemoryBits)),
      ("Float-32 Equivalent", Self.memory(bits: float32EquivalentBits)),
      ("Compression Ratio of Memory", String(format: "%.2f", compressionRatio)),
      ("Number of MACs", Self.readable(Double(totalMACs))),
    ]
    if binarizedMACRatio > 0 {
      items.append(("Ratio of MACs that are binarized", String(format: "%.4f", binarizedMACRatio)))
    }
    if ternarizedMACRatio > 0 {
      items.append(("Ratio of MACs that are ternarized", String(format: "%.4f", ternarizedMACRatio)))
    }
    let w0 = items.map(\.0.count).max()!
    let w1 = items.map(\.1.count).max()!
    let inner = w0 + w1 + 4
    let title = "\(modelName) summary"
    var lines = ["+" + title + String(repeating: "-", count: max(0, inner - title.count)) + "+"]
    for (k, v) in items {
      lines.append(
        "| " + k + String(repeating: " ", count: w0 - k.count) + "  " + v
          + String(repeating: " ", count: w1 - v.count) + " |")
    }
    lines.append("+" + String(repeating: "-", count: inner) + "+")
    return lines.joined(separator: "\n") + "\n"
  }

  /// Memory in Larq's kB (8·1024 bits) with two decimals; zero prints as `0`.
  static func kilobytes(_ bits: Int) -> String {
    bits == 0 ? "0" : String(format: "%.2f", Double(bits) / 8192)
  }

  /// Larq's `memory_as_readable_str`: bytes in B/KiB/MiB/GiB with two decimals.
  static func memory(bits: Int) -> String {
    var value = Double(bits) / 8
    for unit in ["B", "KiB", "MiB", "GiB"] {
      if value < 1024 { return String(format: "%.2f", value) + " " + unit }
      value /= 1024
    }
    return String(format: "%.2f", value) + " TiB"
  }

  /// Larq's `_number_as_readable_str`: three significant figures with k/M/B/T.
  static func readable(_ number: Double) -> String {
    var num = Double(String(format: "%.3g", number))!
    if num < 1000 {
      var s = "\(num)"
      while s.hasSuffix("0") && s.contains(".") { s.removeLast() }
      if s.hasSuffix(".") { s.removeLast() }
      return s
    }
    if num >= 1e15 { return String(format: "%.2E", num) }
    var magnitude = 0
    while abs(num) >= 1000 && magnitude < 4 {
      magnitude += 1
      num /= 1000
    }
    var s = String(format: "%.3g", num)
    if s.hasSuffix(".") { s.removeLast() }
    return s + ["", " k", " M", " B", " T"][magnitude]
  }
}
