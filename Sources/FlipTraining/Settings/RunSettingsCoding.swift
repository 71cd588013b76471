import FlipBNN
import Foundation

extension RunSettings: Codable {
  /// The keys of config files and settings entries, each named after its flag.
  public enum CodingKeys: String, CodingKey, CaseIterable, Sendable {
    case model, layers
    case inputShape = "input_shape"
    case realValued = "real_valued"
    case initFrom = "init_from"
    case data, augment, optimizer
    case lrScaling = "lr_scaling"
    case lrReferenceBatch = "lr_reference_batch"
    case warmupEpochs = "warmup_epochs"
    case epochs
    case batchSize = "batch_size"
    case seed, accumulate
    case syncBN = "sync_bn"
    case shardOptimizer = "shard_optimizer"
    case bucketMB = "bucket_mb"
    case wire
    case checkpointEvery = "checkpoint_every"
    case checkpointEveryEpochs = "checkpoint_every_epochs"
    case keepCheckpoints = "keep_checkpoints"
    case onCheckpointError = "on_checkpoint_error"
    case logEvery = "log_every"
    case checkEvery = "check_every"
    case tensorboard
    case stallWarning = "stall_warning"
    case stallTimeout = "stall_timeout"
    case timeline
    case timelineSteps = "timeline_steps"
    case binaryForward = "binary_forward"
    case threads

    /// The command-line flag that sets the key (`--sync-bn`).
    public var flag: String { "--" + stringValue.replacingOccurrences(of: "_", with: "-") }
  }

  /// Config files of earlier Flip versions named `log_every` so; still read from YAML.
  static let legacyKeys = ["log_every_steps": CodingKeys.logEvery]

  public init(from decoder: Decoder) throws {
    let strict = decoder.userInfo[.everySettingRequired] as? Bool == true
    let any = try decoder.container(keyedBy: AnyKey.self)
    let accepted = CodingKeys.allCases.map(\.stringValue) + (strict ? [] : Array(Self.legacyKeys.keys))
    for key in any.allKeys.map(\.stringValue).sorted() where !accepted.contains(key) {
      throw ConfigError(
        path: ConfigPath.text(decoder.codingPath + [AnyKey(key)]),
        message: "unknown key '\(key)' (accepted: \(CodingKeys.allCases.map(\.stringValue).joined(separator: ", ")))")
    }
    var r = SettingsReader(container: try decoder.container(keyedBy: CodingKeys.self), strict: strict)
    self.init()
    try r.read(.model, &model)
    if let preset = ModelPreset(rawValue: model) { layers = preset.layers }
    if r.container.contains(.model) && !r.container.contains(.layers) && ModelPreset(rawValue: model) == nil {
      throw ConfigError(
        path: "model",
        message:
          "unknown preset '\(model)' (known: \(ModelPreset.allCases.map(\.rawValue).joined(separator: ", "))); or list the layers under 'layers'"
      )
    }
    try readModelAndData(&r)
    try readOptimization(&r)
    try readRunKeeping(&r, legacy: strict ? nil : any)
  }

  private mutating func readModelAndData(_ r: inout SettingsReader) throws {
    try r.read(.layers, &layers)
    try r.read(.inputShape, &inputShape)
    try r.read(.realValued, &realValued)
    try r.read(.initFrom, &initFrom)
    try r.read(.data, &data)
    try r.choice(.augment, &augment)
  }

  private mutating func readOptimization(_ r: inout SettingsReader) throws {
    try r.read(.optimizer, &optimizer)
    try r.choice(.lrScaling, &lrScaling)
    try r.read(.lrReferenceBatch, &lrReferenceBatch)
    try r.read(.warmupEpochs, &warmupEpochs)
    try r.read(.epochs, &epochs)
    try r.read(.batchSize, &batchSize)
    try r.read(.seed, &seed)
    try r.read(.accumulate, &accumulate)
    try r.read(.syncBN, &syncBN)
    try r.read(.shardOptimizer, &shardOptimizer)
    try r.read(.bucketMB, &bucketMB)
    try r.choice(.wire, &wire)
  }

  private mutating func readRunKeeping(_ r: inout SettingsReader, legacy: KeyedDecodingContainer<AnyKey>?) throws {
    try r.read(.checkpointEvery, &checkpointEvery)
    try r.read(.checkpointEveryEpochs, &checkpointEveryEpochs)
    try r.read(.keepCheckpoints, &keepCheckpoints)
    try r.choice(.onCheckpointError, &onCheckpointError)
    if let legacy, let old = try legacy.decodeIfPresent(Int.self, forKey: AnyKey("log_every_steps")) { logEvery = old }
    try r.read(.logEvery, &logEvery)
    try r.read(.checkEvery, &checkEvery)
    try r.read(.tensorboard, &tensorboard)
    try r.read(.stallWarning, &stallWarning)
    try r.read(.stallTimeout, &stallTimeout)
    try r.read(.timeline, &timeline)
    var window = timelineSteps.description
    try r.read(.timelineSteps, &window)
    guard let steps = StepWindow(window) else {
      throw ConfigError(path: "timeline_steps", message: "must be A:B with 1 ≤ A < B, got '\(window)'")
    }
    timelineSteps = steps
    try r.choice(.binaryForward, &binaryForward)
    try r.read(.threads, &threads)
  }

  /// Writes every key (a missing one is an error when a checkpoint's entry is read back).
  public func encode(to encoder: Encoder) throws {
    var c = encoder.container(keyedBy: CodingKeys.self)
    try c.encode(model, forKey: .model)
    try c.encode(layers, forKey: .layers)
    try c.encode(inputShape, forKey: .inputShape)
    try c.encode(realValued, forKey: .realValued)
    try c.encode(initFrom, forKey: .initFrom)
    try c.encode(data, forKey: .data)
    try c.encode(augment.rawValue, forKey: .augment)
    try c.encode(optimizer, forKey: .optimizer)
    try c.encode(lrScaling.rawValue, forKey: .lrScaling)
    try c.encode(lrReferenceBatch, forKey: .lrReferenceBatch)
    try c.encode(warmupEpochs, forKey: .warmupEpochs)
    try c.encode(epochs, forKey: .epochs)
    try c.encode(batchSize, forKey: .batchSize)
    try c.encode(seed, forKey: .seed)
    try c.encode(accumulate, forKey: .accumulate)
    try c.encode(syncBN, forKey: .syncBN)
    try c.encode(shardOptimizer, forKey: .shardOptimizer)
    try c.encode(bucketMB, forKey: .bucketMB)
    try c.encode(wire.rawValue, forKey: .wire)
    try c.encode(checkpointEvery, forKey: .checkpointEvery)
    try c.encode(checkpointEveryEpochs, forKey: .checkpointEveryEpochs)
    try c.encode(keepCheckpoints, forKey: .keepCheckpoints)
    try c.encode(onCheckpointError.rawValue, forKey: .onCheckpointError)
    try c.encode(logEvery, forKey: .logEvery)
    try c.encode(checkEvery, forKey: .checkEvery)
    try c.encode(tensorboard, forKey: .tensorboard)
    try c.encode(stallWarning, forKey: .stallWarning)
    try c.encode(stallTimeout, forKey: .stallTimeout)
    try c.encode(timeline, forKey: .timeline)
    try c.encode(timelineSteps.description, forKey: .timelineSteps)
    try c.encode(binaryForward.rawValue, forKey: .binaryForward)
    try c.encode(threads, forKey: .threads)
  }
}

extension CodingUserInfoKey {
  /// Decoding a checkpoint's settings entry: every key must be there (no defaults).
  static let everySettingRequired = CodingUserInfoKey(rawValue: "flip.everySettingRequired")!
}

/// Any key of a mapping (to find the unknown ones, or to write keys known only at run time).
struct AnyKey: CodingKey {
  var stringValue: String
  var intValue: Int? { nil }
  init(_ s: String) { stringValue = s }
  init?(stringValue: String) { self.stringValue = stringValue }
  init?(intValue: Int) { nil }
}

/// Reads the keys of a settings mapping into their fields: a missing key keeps the default,
/// or, for a checkpoint's entry (`strict`), is an error naming it.
struct SettingsReader {
  let container: KeyedDecodingContainer<RunSettings.CodingKeys>
  let strict: Bool

  func read<T: Decodable>(_ key: RunSettings.CodingKeys, _ value: inout T) throws {
    guard container.contains(key) else {
      if strict { throw ConfigError(path: key.stringValue, message: "is missing") }
      return
    }
    value = try container.decode(T.self, forKey: key)
  }

  /// A key whose value is one of a fixed set of names (`wire: compact`).
  func choice<T: RawRepresentable & CaseIterable>(_ key: RunSettings.CodingKeys, _ value: inout T) throws
  where T.RawValue == String {
    var name = value.rawValue
    try read(key, &name)
    guard let v = T(rawValue: name) else {
      throw ConfigError(
        path: key.stringValue,
        message: "unknown value '\(name)' (accepted: \(T.allCases.map(\.rawValue).joined(separator: ", ")))")
    }
    value = v
  }
}
