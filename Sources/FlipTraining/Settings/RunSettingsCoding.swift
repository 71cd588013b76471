import FlipBNN
import FlipTensor
import Foundation

extension RunSettings: Codable {
  /// The keys of config files and settings entries, each named after its flag.
  public enum CodingKeys: String, CodingKey, CaseIterable, Sendable {
    case model, layers
    case inputShape = "input_shape"
    case realValued = "real_valued"
    case initFrom = "init_from"
    case data, augment
    case imageSize = "image_size"
    case mean, std
    case dataThreads = "data_threads"
    case badImages = "bad_images"
    case optimizer
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
    case backwardPrecision = "backward_precision"
    case threads

    /// The command-line flag that sets the key (`--sync-bn`).
    public var flag: String { "--" + stringValue.replacingOccurrences(of: "_", with: "-") }
  }

  /// Keys that settings entries written before them lack: read with their defaults.
  static let laterKeys: Set<CodingKeys> = [.imageSize, .mean, .std, .dataThreads, .badImages, .backwardPrecision]

  /// Config files of earlier Flip versions named `log_every` so; still read from YAML.
  static let legacyLogEvery = "log_every_steps"

  public init(from decoder: Decoder) throws {
    let strict = decoder.userInfo[.everySettingRequired] as? Bool == true
    let any = try decoder.container(keyedBy: AnyKey.self)
    let accepted = CodingKeys.allCases.map(\.stringValue) + (strict ? [] : [Self.legacyLogEvery])
    for key in any.allKeys.map(\.stringValue).sorted() where !accepted.contains(key) {
      throw ConfigError(
        path: ConfigPath.text(decoder.codingPath + [AnyKey(key)]),
        message: "unknown key '\(key)' (accepted: \(CodingKeys.allCases.map(\.stringValue).joined(separator: ", ")))")
    }
    let r = SettingsReader(container: try decoder.container(keyedBy: CodingKeys.self), strict: strict)
    self.init()
    if !strict, let old = try any.decodeIfPresent(Int.self, forKey: AnyKey(Self.legacyLogEvery)) { logEvery = old }
    for field in Self.fields { try field.read(r, &self) }
    if r.container.contains(.model) && !r.container.contains(.layers) && ModelPreset(rawValue: model) == nil {
      throw ConfigError(
        path: "model",
        message:
          "unknown preset '\(model)' (known: \(ModelPreset.allCases.map(\.rawValue).joined(separator: ", "))); or list the layers under 'layers'"
      )
    }
  }

  /// Writes every key (a missing one is an error when a checkpoint's entry is read back).
  public func encode(to encoder: Encoder) throws {
    var c = encoder.container(keyedBy: CodingKeys.self)
    for field in Self.fields { try field.write(self, &c) }
  }

  /// How each key is read and written, in the order of `CodingKeys` (a test checks both list
  /// the same keys).
  static let fields: [SettingField] = [
    .model,
    .value(.layers, \.layers), .value(.inputShape, \.inputShape), .value(.realValued, \.realValued),
    .value(.initFrom, \.initFrom), .value(.data, \.data), .optionalChoice(.augment, \.augment),
    .value(.imageSize, \.imageSize), .value(.mean, \.mean), .value(.std, \.std), .value(.dataThreads, \.dataThreads),
    .choice(.badImages, \.badImages),
    .value(.optimizer, \.optimizer), .choice(.lrScaling, \.lrScaling), .value(.lrReferenceBatch, \.lrReferenceBatch),
    .value(.warmupEpochs, \.warmupEpochs), .value(.epochs, \.epochs), .value(.batchSize, \.batchSize),
    .value(.seed, \.seed), .value(.accumulate, \.accumulate), .value(.syncBN, \.syncBN),
    .value(.shardOptimizer, \.shardOptimizer), .value(.bucketMB, \.bucketMB), .choice(.wire, \.wire),
    .value(.checkpointEvery, \.checkpointEvery), .value(.checkpointEveryEpochs, \.checkpointEveryEpochs),
    .value(.keepCheckpoints, \.keepCheckpoints), .choice(.onCheckpointError, \.onCheckpointError),
    .value(.logEvery, \.logEvery), .value(.checkEvery, \.checkEvery), .value(.tensorboard, \.tensorboard),
    .value(.stallWarning, \.stallWarning), .value(.stallTimeout, \.stallTimeout), .value(.timeline, \.timeline),
    .timelineSteps, .choice(.binaryForward, \.binaryForward),
    .choice(.backwardPrecision, \.backwardPrecision), .value(.threads, \.threads),
  ]
}

/// One key of the settings: how it is read into its field and written from it.
struct SettingField: Sendable {
  let key: RunSettings.CodingKeys
  let read: @Sendable (SettingsReader, inout RunSettings) throws -> Void
  let write: @Sendable (RunSettings, inout KeyedEncodingContainer<RunSettings.CodingKeys>) throws -> Void

  /// A field stored as it is coded.
  static func value<T: Codable & Sendable>(
    _ key: RunSettings.CodingKeys, _ path: WritableKeyPath<RunSettings, T> & Sendable
  ) -> SettingField {
    SettingField(
      key: key, read: { r, s in try r.read(key, &s[keyPath: path]) },
      write: { s, c in try c.encode(s[keyPath: path], forKey: key) })
  }

  /// A field whose value is one of a fixed set of names (`wire: compact`).
  static func choice<T: RawRepresentable & CaseIterable & Sendable>(
    _ key: RunSettings.CodingKeys, _ path: WritableKeyPath<RunSettings, T> & Sendable
  ) -> SettingField where T.RawValue == String {
    SettingField(
      key: key, read: { r, s in try r.choice(key, &s[keyPath: path]) },
      write: { s, c in try c.encode(s[keyPath: path].rawValue, forKey: key) })
  }

  /// A field that is one of a fixed set of names or null.
  static func optionalChoice<T: RawRepresentable & CaseIterable & Sendable>(
    _ key: RunSettings.CodingKeys, _ path: WritableKeyPath<RunSettings, T?> & Sendable
  ) -> SettingField where T.RawValue == String {
    SettingField(
      key: key,
      read: { r, s in
        guard r.container.contains(key) else {
          var absent = ""
          return try r.read(key, &absent)  // an error only where every key is required
        }
        if try r.container.decodeNil(forKey: key) {
          s[keyPath: path] = nil
          return
        }
        var v = s[keyPath: path] ?? T.allCases.first!
        try r.choice(key, &v)
        s[keyPath: path] = v
      },
      write: { s, c in try c.encode(s[keyPath: path]?.rawValue, forKey: key) })
  }

  /// `model`: a preset's name also gives the preset's layers (a `layers` key replaces them).
  static let model = SettingField(
    key: .model,
    read: { r, s in
      try r.read(.model, &s.model)
      if let preset = ModelPreset(rawValue: s.model) { s.layers = preset.layers }
    },
    write: { s, c in try c.encode(s.model, forKey: .model) })

  /// `timeline_steps: A:B`.
  static let timelineSteps = SettingField(
    key: .timelineSteps,
    read: { r, s in
      var window = s.timelineSteps.description
      try r.read(.timelineSteps, &window)
      guard let steps = StepWindow(window) else {
        throw ConfigError(path: "timeline_steps", message: "must be A:B with 1 ≤ A < B, got '\(window)'")
      }
      s.timelineSteps = steps
    },
    write: { s, c in try c.encode(s.timelineSteps.description, forKey: .timelineSteps) })
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
      if strict && !RunSettings.laterKeys.contains(key) { throw ConfigError(path: key.stringValue, message: "is missing") }
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
