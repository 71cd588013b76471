import FlipBNN
import FlipComm
import Foundation

/// One step's figures on one rank, or summed over the ranks: the loss sum, correct
/// predictions and samples, and the requests that ride on the step's all-reduce.
public struct StepSums: Equatable, Sendable {
  public var loss = 0.0
  public var correct = 0.0
  public var samples = 0.0
  /// Ranks that received a stop signal this step.
  public var stopRequests = 0
  /// The signal this rank received (0: none); not summed.
  public var signal: Int32 = 0
  /// 1 + the step of a checkpoint rank 0 failed to write in the background (0: none).
  public var failedCheckpointStep = 0
  /// Images of the step that stood in for bad ones.
  public var badImages = 0

  public init() {}

  init(_ step: (loss: Double, correct: Double, count: Double, badImages: Int)) {
    loss = step.loss
    correct = step.correct
    samples = step.count
    badImages = step.badImages
  }

  /// The sums over every rank (collective); `signal` stays this rank's.
  func summed(over communicator: Communicator) throws -> StepSums {
    var values = [loss, correct, samples, Double(stopRequests), Double(failedCheckpointStep), Double(badImages)]
    try communicator.allreduceSum(&values)
    var s = self
    (s.loss, s.correct, s.samples) = (values[0], values[1], values[2])
    s.stopRequests = Int(values[3])
    s.failedCheckpointStep = Int(values[4])
    s.badImages = Int(values[5])
    return s
  }
}

/// An epoch's running sums so far (global), and the layers' flip ratios summed per step.
struct EpochTotals {
  var loss: Double
  var correct: Double
  var samples: Double
  var flipSums: [Double]
  var flipCounts: [Int]

  /// The totals a checkpoint's position holds (bit patterns of doubles).
  init(_ position: TrainingPosition) {
    let t = position.epochTotals.map(Double.init(bitPattern:))
    (loss, correct, samples) = (t[0], t[1], t[2])
    flipSums = position.flipSums.map(Double.init(bitPattern:))
    flipCounts = position.flipCounts
  }

  var meanLoss: Double { loss / samples }
  var accuracy: Double { correct / samples }

  mutating func add(_ step: StepSums, flipRatios: [(String, Double)], layers: [String]) {
    loss += step.loss
    correct += step.correct
    samples += step.samples
    for (name, ratio) in flipRatios {
      if let i = layers.firstIndex(of: name) {
        flipSums[i] += ratio
        flipCounts[i] += 1
      }
    }
  }

  func store(into position: inout TrainingPosition) {
    position.epochTotals = [loss, correct, samples].map(\.bitPattern)
    position.flipSums = flipSums.map(\.bitPattern)
    position.flipCounts = flipCounts
  }

  /// Each layer's mean flip ratio over the epoch's steps.
  func flipRatios(layers: [String], counts: [Int]) -> [String: Double] {
    var out: [String: Double] = [:]
    for (i, name) in layers.enumerated() where counts[i] > 0 { out[name] = flipSums[i] / Double(counts[i]) }
    return out
  }
}

/// One row of metrics.jsonl: a `step` row every `log_every` steps, an `epoch` row after each
/// epoch. Keys as they always were; a non-finite number is written as null.
public struct MetricsRow: Encodable, Equatable, Sendable {
  public var kind: String
  public var epoch: Int
  public var step: Int
  public var loss: Double
  public var accuracy: Double
  public var seconds: Double
  public var testLoss: Double?
  public var testAccuracy: Double?
  public var testTop5Accuracy: Double?
  public var flipRatio: [String: Double]?
  public var imagesPerSecond: Double?
  /// Epoch rows only (null when the optimizer has none).
  public var learningRate: Double?
  /// Seconds the slowest rank's steps waited for their data since the last step row (epoch
  /// rows: in the whole epoch).
  public var dataWaitSeconds: Double?
  /// Bad images replaced so far in the run (ImageNet-format data only).
  public var badImages: Int?

  public init(kind: String, epoch: Int, step: Int, loss: Double, accuracy: Double, seconds: Double) {
    (self.kind, self.epoch, self.step, self.loss, self.accuracy, self.seconds) = (kind, epoch, step, loss, accuracy, seconds)
  }

  /// The epoch row of `result`.
  public init(_ result: EpochResult) {
    self.init(
      kind: "epoch", epoch: result.epoch, step: result.step, loss: result.loss, accuracy: result.accuracy,
      seconds: result.seconds)
    testLoss = result.testLoss
    testAccuracy = result.testAccuracy
    testTop5Accuracy = result.testTop5Accuracy
    flipRatio = result.flipRatio
    imagesPerSecond = result.imagesPerSecond
    learningRate = result.learningRate
    dataWaitSeconds = result.dataWaitSeconds
    badImages = result.badImages
  }

  enum CodingKeys: String, CodingKey {
    case kind, epoch, step, loss, accuracy, seconds
    case testLoss = "test_loss"
    case testAccuracy = "test_accuracy"
    case testTop5Accuracy = "test_top5_accuracy"
    case flipRatio = "flip_ratio"
    case imagesPerSecond = "images_per_second"
    case learningRate = "learning_rate"
    case dataWaitSeconds = "data_wait_seconds"
    case badImages = "bad_images"
  }

  public func encode(to encoder: Encoder) throws {
    var c = encoder.container(keyedBy: CodingKeys.self)
    func finite(_ v: Double?, _ key: CodingKeys) throws {
      if let v, v.isFinite { try c.encode(v, forKey: key) } else { try c.encodeNil(forKey: key) }
    }
    try c.encode(kind, forKey: .kind)
    try c.encode(epoch, forKey: .epoch)
    try c.encode(step, forKey: .step)
    try finite(loss, .loss)
    try finite(accuracy, .accuracy)
    try finite(seconds, .seconds)
    if let dataWaitSeconds { try finite(dataWaitSeconds, .dataWaitSeconds) }
    if let badImages { try c.encode(badImages, forKey: .badImages) }
    if kind == "epoch" {
      try finite(testLoss, .testLoss)
      try finite(testAccuracy, .testAccuracy)
      try finite(testTop5Accuracy, .testTop5Accuracy)
      try c.encode((flipRatio ?? [:]).filter { $0.value.isFinite }, forKey: .flipRatio)
      try finite(imagesPerSecond, .imagesPerSecond)
      try finite(learningRate, .learningRate)
    }
  }
}
