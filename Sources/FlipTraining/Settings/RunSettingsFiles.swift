import FlipBNN
import Foundation

/// Reading and writing settings: YAML config files, overrides, and checkpoints' entries.
extension RunSettings {
  /// Parses a YAML config; `file` names the source in errors.
  public static func parse(yaml text: String, file: String) throws -> RunSettings {
    let value = try YAML.load(text, source: file)
    let settings = try decode(value, source: file, strict: false)
    if settings.layers.isEmpty {
      throw ConfigError(
        file: file, path: "layers", message: "the config names no model: give 'model: <preset>' or a list of 'layers'")
    }
    return settings
  }

  /// Reads and parses a config file.
  public static func load(path: String) throws -> RunSettings {
    guard FileManager.default.fileExists(atPath: path) else {
      throw TrainingError.fileNotFound(path: path, hint: "Pass an existing YAML file to --config (examples in configs/).")
    }
    guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
      throw TrainingError.unreadable(path: path, reason: "not readable as UTF-8 text")
    }
    return try parse(yaml: text, file: path)
  }

  /// The settings as a config value, every key written out.
  public var config: ConfigValue {
    get throws { try JSONDecoder().decode(ConfigValue.self, from: try JSONEncoder().encode(self)) }
  }

  /// The settings as YAML (the run directory's `config.yaml`), keys in the order of `CodingKeys`.
  public func yaml() throws -> String {
    YAML.dump(try config, order: CodingKeys.allCases.map(\.stringValue))
  }

  /// These settings with `overrides` (keys set by flags) replacing their values, checked as
  /// a config file's would be; `source` names them in errors.
  public func overriding(_ overrides: [CodingKeys: ConfigValue], source: String) throws -> RunSettings {
    guard !overrides.isEmpty, case .map(var m) = try config else { return self }
    for (key, value) in overrides { m[key.stringValue] = value }
    return try Self.decode(.map(m), source: source, strict: false)
  }

  /// Decodes a config value; a missing key is an error when `strict` (a checkpoint's entry).
  static func decode(_ value: ConfigValue, source: String, strict: Bool) throws -> RunSettings {
    let decoder = JSONDecoder()
    decoder.userInfo[.everySettingRequired] = strict
    do {
      return try decoder.decode(RunSettings.self, from: try JSONEncoder().encode(value))
    } catch let e as ConfigError {
      throw e.inFile(source)
    } catch let e as DecodingError {
      throw Self.describe(e, in: value).inFile(source)
    }
  }

  /// A decoding error as a config error: the key's path, what was expected and what was found.
  static func describe(_ error: DecodingError, in root: ConfigValue) -> ConfigError {
    func found(_ path: [CodingKey]) -> String {
      var v: ConfigValue? = root
      for key in path {
        switch v {
        case .map(let m)?: v = m[key.stringValue]
        case .list(let l)?: v = key.intValue.flatMap { $0 < l.count ? l[$0] : nil }
        default: v = nil
        }
      }
      return v.map { ", found \($0)" } ?? ""
    }
    func expected(_ type: Any.Type) -> String {
      switch type {
      case is Int.Type, is UInt64.Type, is Int?.Type: return "an integer" + (type is UInt64.Type ? " ≥ 0" : "")
      case is Double.Type, is Double?.Type: return "a number"
      case is Bool.Type: return "true or false"
      case is String.Type, is String?.Type: return "a string"
      case is [Int].Type, is [Int]?.Type: return "a list of integers"
      default: return "a value of type \(type)"
      }
    }
    switch error {
    case .keyNotFound(let key, let c):
      return ConfigError(path: ConfigPath.text(c.codingPath + [key]), message: "is missing")
    case .typeMismatch(let type, let c), .valueNotFound(let type, let c):
      return ConfigError(path: ConfigPath.text(c.codingPath), message: "expected \(expected(type))\(found(c.codingPath))")
    case .dataCorrupted(let c):
      return ConfigError(path: ConfigPath.text(c.codingPath), message: "expected a valid value\(found(c.codingPath))")
    @unknown default:
      return ConfigError(path: "", message: "\(error)")
    }
  }
}

/// The run's settings inside a checkpoint or model file: one metadata entry, `settings`, a JSON
/// object `{"format": "flip-run-settings", "version": 1, "settings": {...every key...}}`.
public enum SettingsEntry {
  public static let key = "settings"
  public static let format = "flip-run-settings"
  public static let version = 1

  struct Envelope: Codable {
    var format: String
    var version: Int
    var settings: ConfigValue
  }

  /// The entry's text for `settings`.
  public static func text(_ settings: RunSettings) throws -> String {
    let envelope = Envelope(format: format, version: version, settings: try settings.config)
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    return String(decoding: try encoder.encode(envelope), as: UTF8.self)
  }

  /// The settings a file's metadata holds. Every key must be present and valid: a missing or
  /// malformed one is an error naming it. Files written before the entry existed (a `config`
  /// YAML, and for checkpoints a `training` entry) are read from those, or refused naming what
  /// they lack.
  public static func read(_ metadata: [String: String], file: String) throws -> RunSettings {
    let source = "\(file) (\(key) entry)"
    guard let text = metadata[key] else { return try readLegacy(metadata, file: file) }
    let envelope: Envelope
    do { envelope = try JSONDecoder().decode(Envelope.self, from: Data(text.utf8)) } catch {
      throw ConfigError(
        file: source, path: "", message: "not a settings entry (expected JSON with format, version and settings)")
    }
    guard envelope.format == format else {
      throw ConfigError(file: source, path: "format", message: "expected \(format), found '\(envelope.format)'")
    }
    guard envelope.version == version else {
      throw ConfigError(
        file: source, path: "version",
        message: "version \(envelope.version) is not one this Flip reads (\(version)); use the Flip that wrote it")
    }
    let settings = try RunSettings.decode(envelope.settings, source: source, strict: true)
    do { try settings.validate() } catch let e as ConfigError { throw e.inFile(source) }
    return settings
  }

  /// Files of earlier Flip versions: the run config as YAML (`config`), and in checkpoints the
  /// micro-steps and sync BatchNorm in the `training` entry and the checkpoint policy in
  /// `checkpointing`.
  static func readLegacy(_ metadata: [String: String], file: String) throws -> RunSettings {
    guard let yaml = metadata["config"] else {
      throw TrainingError.modelFile(
        path: file, reason: "has no \(key) entry, so Flip cannot rebuild its run (was it written by flip train?)")
    }
    var settings = try RunSettings.parse(yaml: yaml, file: file + " (config entry)")
    guard ModelFile.kind(metadata) == .checkpoint else { return settings }
    struct Training: Decodable {
      var accumulate: Int
      var syncBatchNorm: Bool
      enum CodingKeys: String, CodingKey {
        case accumulate
        case syncBatchNorm = "sync_batch_norm"
      }
    }
    struct Checkpointing: Decodable {
      var every_steps: Int
      var every_epochs: Int
      var keep: Int
      var on_error: String
    }
    let training: Training
    do { training = try JSONDecoder().decode(Training.self, from: Data((metadata["training"] ?? "").utf8)) } catch {
      throw ConfigError(
        file: file + " (training entry)", path: "",
        message:
          "this checkpoint of an earlier Flip does not say its accumulate and sync_batch_norm (\(Self.reason(error))), so it cannot be resumed exactly; resume it with the Flip that wrote it"
      )
    }
    settings.accumulate = training.accumulate
    settings.syncBN = training.syncBatchNorm
    if let text = metadata["checkpointing"] {
      do {
        let c = try JSONDecoder().decode(Checkpointing.self, from: Data(text.utf8))
        settings.checkpointEvery = c.every_steps
        settings.checkpointEveryEpochs = c.every_epochs
        settings.keepCheckpoints = c.keep
        settings.onCheckpointError = CheckpointErrorPolicy(rawValue: c.on_error) ?? .stop
      } catch {
        throw ConfigError(file: file + " (checkpointing entry)", path: "", message: Self.reason(error))
      }
    }
    try settings.validate()
    return settings
  }

  static func reason(_ error: Error) -> String {
    if case DecodingError.keyNotFound(let key, _) = error { return "\(key.stringValue) is missing" }
    if case DecodingError.dataCorrupted = error { return "not JSON" }
    return "\(error)"
  }
}
