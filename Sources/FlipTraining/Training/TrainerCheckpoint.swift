import FlipBNN
import FlipComm
import Foundation
import Logging

/// Checkpoints of a `Trainer`: the collective save (rank 0 writes) and the restore.
///
/// A checkpoint holds the model's tensors (latent weights, BatchNorm parameters and moving
/// statistics), the optimizer state as `optimizer.<state>.<variable>` tensors, and metadata:
/// `position` (step, epoch, batch within the epoch, the epoch's running metrics),
/// `optimizer` (name and step count), `training` (global batch, seed, micro-steps, sync BN,
/// epochs), `data_order`, `rng` and `schedule` (all JSON strings), `world_size`, and the
/// policy's metadata (model name, config YAML).
extension Trainer {
  /// Saves a checkpoint of the current state: every rank calls it at the same step. BatchNorm
  /// moving statistics are averaged across ranks first (so all ranks hold the model that is
  /// saved) and a sharded optimizer state is gathered. Rank 0 copies the tensors and writes
  /// the file in the background (atomically, then prunes old ones) while training goes on;
  /// with `wait`, the write is finished before returning. A failed write — this one when
  /// waiting, else an earlier one — throws on every rank, unless the policy says to continue.
  public func saveCheckpoint(_ policy: CheckpointPolicy, wait: Bool = false) throws {
    let start = DispatchTime.now()
    try stallInspector?.enter(step: clock.step, .checkpoint, waiting: true)
    try synchronizeBatchNormStatistics()
    try exchange.gatherState()
    let path = policy.directory + "/" + CheckpointFiles.name(step: clock.step)
    var failure: CheckpointWriter.Failure?
    var bytes = 0
    var copySeconds = 0.0
    if communicator.isRoot {
      let writer = checkpointWriter ?? CheckpointWriter(logger: logger)
      checkpointWriter = writer
      failure = writer.wait()
      do {
        (bytes, copySeconds) = writer.submit(
          checkpointRefs(), metadata: try checkpointMetadata(policy), step: clock.step, path: path,
          directory: policy.directory, keep: policy.keep)
        if wait, let f = writer.wait() { failure = f }
      } catch {
        failure = CheckpointWriter.Failure(step: clock.step, path: path, error: error)
      }
    }
    try settleCheckpointFailure(failure, policy: policy)
    timeline?.record(
      "checkpoint \(clock.step)", track: .evaluation, start: start.uptimeNanoseconds,
      end: DispatchTime.now().uptimeNanoseconds)
    let seconds = Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e9
    checkpointWrites.append(
      CheckpointWrite(path: path, step: clock.step, bytes: bytes, seconds: seconds, copySeconds: copySeconds))
    logger.debug(
      "checkpoint \(path): training paused \(String(format: "%.3f", seconds)) s (copy \(String(format: "%.3f", copySeconds)) s)\(wait ? ", written" : ", writing in the background")"
    )
  }

  /// Waits for rank 0's write in flight and settles its outcome on every rank (collective).
  public func flushCheckpoints(_ policy: CheckpointPolicy) throws {
    try settleCheckpointFailure(communicator.isRoot ? checkpointWriter?.wait() : nil, policy: policy)
  }

  /// Every rank learns whether rank 0's write failed (collective), and all decide the same.
  func settleCheckpointFailure(_ failure: CheckpointWriter.Failure?, policy: CheckpointPolicy) throws {
    var status = [failure.map { Double($0.step + 1) } ?? 0]
    try communicator.allreduceSum(&status)
    if status[0] > 0 { try checkpointFailed(step: Int(status[0]) - 1, failure, policy: policy) }
  }

  /// The reaction to a failed write (rank 0 knows why; the others only that it failed).
  func checkpointFailed(step: Int, _ failure: CheckpointWriter.Failure?, policy: CheckpointPolicy) throws {
    let path = failure?.path ?? policy.directory + "/" + CheckpointFiles.name(step: step)
    let message =
      "checkpoint at step \(step) was not written (\(failure.map { "\($0.error)" } ?? "rank 0 failed to write it")); earlier checkpoints in \(policy.directory) are intact"
    guard policy.continueOnError else {
      throw TrainingError.unwritable(
        path: path,
        reason: "\(message). Free space or fix permissions, then resume with flip train --resume \(policy.directory)")
    }
    logger.warning("\(message); training continues (--on-checkpoint-error continue)")
  }

  /// The tensors of a checkpoint in place: the model's, then the optimizer state of each
  /// variable (written straight from these buffers).
  func checkpointRefs() -> [SafeTensors.TensorRef] {
    var refs = ModelFile.refs(of: model)
    for s in optimizer.stateBuffers {
      for v in s.views {
        refs.append(
          SafeTensors.TensorRef(
            name: ModelFile.optimizerPrefix + s.name + "." + v.name, shape: v.shape,
            floats: s.buffer.pointer + v.offset,
            count: v.count))
      }
    }
    return refs
  }

  func checkpointMetadata(_ policy: CheckpointPolicy) throws -> [String: String] {
    func json<T: Encodable>(_ value: T) throws -> String {
      String(decoding: try JSONEncoder.sorted.encode(value), as: UTF8.self)
    }
    var m: [String: String] = [:]
    if let settings = policy.settings {
      m["model"] = settings.model
      m[SettingsEntry.key] = try SettingsEntry.text(settings)
    }
    m["step"] = String(clock.step)
    m["epoch"] = String(clock.epoch)
    m["world_size"] = String(communicator.size)
    var position = position
    position.step = clock.step
    position.epoch = clock.epoch
    m["position"] = try json(position)
    m["optimizer"] = try json(OptimizerRecord(name: optimizer.name, iterations: optimizer.iterations))
    m["training"] = try json(
      TrainingRecord(
        globalBatch: options.batchSize, seed: String(options.seed), epochs: options.epochs,
        trainSamples: data.train.count, testSamples: data.test.count))
    m["data_order"] = try json(
      DataOrderRecord(seed: String(options.seed), epoch: clock.epoch, nextBatch: position.stepInEpoch))
    m["rng"] = try json(RNGRecord(seed: String(options.seed)))
    if let names = data.classNames { m["labels"] = try json(names) }
    m["schedule"] = try json(
      ScheduleRecord(
        step: clock.step, epoch: clock.epoch, values: optimizer.hyperparameters(clock).mapValues { $0.isFinite ? $0 : 0 }))
    return m
  }

  /// The run's label map (class names by index, the `labels` entry of checkpoints that have
  /// one) must be the data set's: the same index must mean the same class.
  func checkLabelMap(_ entry: String?, _ bad: (String) -> TrainingError) throws {
    guard let entry else { return }
    guard let saved = try? JSONDecoder().decode([String].self, from: Data(entry.utf8)) else {
      throw bad("its labels entry is not a JSON list of class names")
    }
    let names = data.classNames ?? (0..<data.train.classes).map(String.init)
    guard saved != names else { return }
    if let i = zip(saved, names).enumerated().first(where: { $0.element.0 != $0.element.1 })?.offset {
      throw bad(
        "it was trained with another label map: class \(i) is '\(saved[i])' in the run but '\(names[i])' in the data set (\(saved.count) and \(names.count) classes); resume with the data set it was trained on"
      )
    }
    throw bad(
      "it was trained with \(saved.count) classes but the data set has \(names.count); resume with the data set it was trained on")
  }

  /// Restores a checkpoint's state (read and validated by `ModelFile.decode`): model tensors,
  /// optimizer state and step count, clock and position. Every name and shape must match the
  /// model and optimizer; the global batch and data set must be the run's.
  public func restore(tensors: [String: SafeTensors.Tensor], metadata: [String: String], path: String) throws {
    func bad(_ why: String) -> TrainingError { .modelFile(path: path, reason: why) }
    guard ModelFile.kind(metadata) == .checkpoint else {
      throw bad(
        "not a training checkpoint (format \(metadata["format"] ?? "missing")); --resume needs ckpt-*.safetensors")
    }
    guard let positionText = metadata["position"],
      let position = try? JSONDecoder().decode(TrainingPosition.self, from: Data(positionText.utf8))
    else { throw bad("the metadata has no readable position") }
    guard let optimizerText = metadata["optimizer"],
      let info = try? JSONDecoder().decode(OptimizerRecord.self, from: Data(optimizerText.utf8)), info.iterations >= 0
    else { throw bad("the metadata has no readable optimizer state") }
    guard info.name == optimizer.name else {
      throw bad("its optimizer is \(info.name) but this run's is \(optimizer.name)")
    }
    guard let trainingText = metadata["training"],
      let training = try? JSONDecoder().decode(TrainingRecord.self, from: Data(trainingText.utf8))
    else { throw bad("the metadata has no readable training entry (global_batch, train_samples)") }
    if training.globalBatch != options.batchSize {
      throw bad("it was trained with global batch \(training.globalBatch), this run uses \(options.batchSize)")
    }
    if training.trainSamples != data.train.count {
      throw bad("it was trained on \(training.trainSamples) training images, the data set has \(data.train.count)")
    }
    try checkLabelMap(metadata["labels"], bad)
    let flipLayers = model.flipCountingLayers.count
    guard position.step >= 0, position.epoch >= 0, position.stepInEpoch >= 0,
      position.stepInEpoch <= sampler.stepsPerEpoch, position.epochTotals.count == 3,
      position.flipSums.count == position.flipCounts.count,
      position.flipSums.count == flipLayers
    else { throw bad("its position \(positionText) does not fit this run (\(sampler.stepsPerEpoch) steps per epoch)") }
    try ModelFile.load(tensors, into: model, path: path)
    // Optimizer state: exactly the tensors this optimizer has, by name and shape.
    var expected = Set<String>()
    for s in optimizer.stateBuffers {
      for v in s.views {
        let key = ModelFile.optimizerPrefix + s.name + "." + v.name
        expected.insert(key)
        guard let t = tensors[key] else { throw bad("optimizer state \(key) is missing") }
        guard t.dtype == .f32, t.shape == v.shape else {
          throw bad("optimizer state \(key) has shape \(t.shape) \(t.dtype.rawValue), expected \(v.shape) F32")
        }
        t.values.withUnsafeBufferPointer { (s.buffer.pointer + v.offset).update(from: $0.baseAddress!, count: v.count) }
      }
    }
    let extra = tensors.keys.filter { $0.hasPrefix(ModelFile.optimizerPrefix) && !expected.contains($0) }.sorted()
    guard extra.isEmpty else { throw bad("unexpected optimizer state: \(extra.joined(separator: ", "))") }
    optimizer.iterations = info.iterations
    self.position = position
    clock = TrainingClock(step: position.step, epoch: position.epoch)
    checkpointWrites = []
  }
}

extension JSONEncoder {
  /// An encoder with sorted keys (stable files).
  public static var sorted: JSONEncoder {
    let e = JSONEncoder()
    e.outputFormatting = [.sortedKeys]
    return e
  }
}

/// The records a checkpoint's metadata holds beside the settings: what the optimizer has
/// done, what the run trained on, and where the data order, generators and schedules stand.
struct OptimizerRecord: Codable {
  var name: String
  var iterations: Int
}

struct TrainingRecord: Codable {
  var globalBatch: Int
  var seed: String?
  var epochs: Int?
  var trainSamples: Int
  var testSamples: Int?
  enum CodingKeys: String, CodingKey {
    case globalBatch = "global_batch"
    case seed, epochs
    case trainSamples = "train_samples"
    case testSamples = "test_samples"
  }
}

struct DataOrderRecord: Encodable {
  var sampler = "permutation of the training set seeded by (seed, epoch); global batch i is positions [i·B, (i+1)·B)"
  var seed: String
  var epoch: Int
  var nextBatch: Int
  enum CodingKeys: String, CodingKey {
    case sampler, seed, epoch
    case nextBatch = "next_batch"
  }
  init(seed: String, epoch: Int, nextBatch: Int) { (self.seed, self.epoch, self.nextBatch) = (seed, epoch, nextBatch) }
}

struct RNGRecord: Encodable {
  var generator = "splitmix64"
  var seed: String
  var dropout = "reseeded from (seed, step, micro-step, rank) at every micro-step; no state to carry"
  init(seed: String) { self.seed = seed }
}

struct ScheduleRecord: Encodable {
  var step: Int
  var epoch: Int
  var values: [String: Double]
}

/// A checkpoint rank 0 read and validated, broadcast to every rank.
public struct LoadedCheckpoint {
  public var path: String
  public var tensors: [String: SafeTensors.Tensor]
  public var metadata: [String: String]

  /// The newest valid checkpoint of `directory`: rank 0 reads it and sends its bytes to every
  /// rank, so all decode the same file.
  public static func broadcastNewest(in directory: String, communicator: Communicator, logger: Logger) throws
    -> LoadedCheckpoint
  {
    var path = Data()
    var bytes = Data()
    var failure: Error?
    if communicator.isRoot {
      do {
        let found = try CheckpointFiles.newestValid(directory, logger: logger)
        path = Data(found.path.utf8)
        bytes = found.data
      } catch { failure = error }
    }
    path = try communicator.broadcast(path, root: 0)
    bytes = try communicator.broadcast(bytes, root: 0)
    if let failure { throw failure }
    guard !bytes.isEmpty else {
      throw TrainingError.invalidArgument("rank 0 found no valid checkpoint in \(directory)")
    }
    let file = String(decoding: path, as: UTF8.self)
    let (tensors, metadata) = try ModelFile.decode(bytes, path: file)
    guard ModelFile.kind(metadata) == .checkpoint else {
      throw TrainingError.modelFile(
        path: file, reason: "not a training checkpoint (format \(metadata["format"] ?? "missing")); --resume needs ckpt-*.safetensors")
    }
    return LoadedCheckpoint(path: file, tensors: tensors, metadata: metadata)
  }

  /// Where the run stood when the checkpoint was written.
  public func position() throws -> TrainingPosition {
    guard let text = metadata["position"],
      let position = try? JSONDecoder().decode(TrainingPosition.self, from: Data(text.utf8))
    else { throw TrainingError.modelFile(path: path, reason: "the metadata has no readable position") }
    return position
  }
}
