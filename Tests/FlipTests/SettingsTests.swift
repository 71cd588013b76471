import FlipBNN
import FlipComm
import Foundation
import Logging
import Testing

@testable import FlipTraining

/// `RunSettings`: strict YAML, one rule set for every source, the checkpoint's settings entry,
/// and a run that validates everything before it touches its directory.
struct SettingsTests {
  static let tiny = """
    model: tiny
    layers:
      - {type: Flatten}
      - {type: QuantDense, units: 8, kernel_quantizer: ste_sign, kernel_constraint: weight_clip, use_bias: false}
      - {type: BatchNormalization, momentum: 0.9}
      - {type: QuantDense, units: 2, input_quantizer: ste_sign, kernel_quantizer: ste_sign, use_bias: false}
      - {type: Activation, activation: softmax}
    """

  @Test func yamlRoundTripsWithFloatsAsPeopleWriteThem() throws {
    var s = try RunSettings.parse(yaml: Self.tiny + "\naccumulate: 2\nsync_bn: true\n", file: "t.yaml")
    s.optimizer = .adam(learningRate: 0.001)
    let text = try s.yaml()
    #expect(text.contains("accumulate: 2\n") && text.contains("sync_bn: true\n"), "\(text)")
    #expect(text.contains("momentum: 0.9\n") && text.contains("learning_rate: 0.001\n"), "\(text)")
    #expect(text.contains("epsilon: 1.0e-07\n"), "\(text)")
    #expect(!text.contains("e-1\n") && !text.contains("e+0"), "\(text)")
    #expect(try RunSettings.parse(yaml: text, file: "again") == s)
    // The file a run writes is a config another run can start from.
    #expect(try RunSettings.parse(yaml: try RunSettings(preset: .birealnet).yaml(), file: "b") == RunSettings(preset: .birealnet))
  }

  @Test func everyKeyIsReadAndWrittenOnce() throws {
    #expect(RunSettings.fields.map(\.key) == RunSettings.CodingKeys.allCases)
    // Every key a written entry holds is one the settings have, and each reads back.
    guard case .map(let written) = try RunSettings(preset: .larqCNN).config else { throw ConfigError(path: "", message: "not a map") }
    #expect(Set(written.keys) == Set(RunSettings.CodingKeys.allCases.map(\.stringValue)))
  }

  @Test func unknownAndMistypedKeysNameTheirPath() {
    let unknown = errorMessage { _ = try RunSettings.parse(yaml: Self.tiny + "\nsync_batchnorm: true\n", file: "c.yaml") }
    #expect(unknown.contains("c.yaml: sync_batchnorm: unknown key") && unknown.contains("sync_bn"), "\(unknown)")
    let mistyped = errorMessage { _ = try RunSettings.parse(yaml: Self.tiny + "\nepochs: ten\n", file: "c.yaml") }
    #expect(mistyped.contains("c.yaml: epochs: expected an integer, found 'ten'"), "\(mistyped)")
    let layer = errorMessage {
      _ = try RunSettings.parse(yaml: "layers: [{type: Flatten}, {type: Dense, unit: 3}]", file: "c.yaml")
    }
    #expect(layer.contains("layers[1].unit: unknown key 'unit' for Dense"), "\(layer)")
    let choice = errorMessage { _ = try RunSettings.parse(yaml: Self.tiny + "\nwire: copper\n", file: "c.yaml") }
    #expect(choice.contains("wire: unknown value 'copper' (accepted: auto, fp32, compact)"), "\(choice)")
  }

  /// What the flags reject, YAML rejects too, with the key and its flag named.
  @Test(arguments: [
    ("optimizer: {type: adam, learning_rate: 0}", "learning_rate"),
    ("optimizer: {type: adam, learning_rate: -0.1}", "learning_rate"),
    ("optimizer: {type: adam, beta_1: 2}", "beta_1"),
    ("optimizer: {type: adam, epsilon: -1}", "epsilon"),
    ("optimizer: {type: sgd, momentum: -3}", "momentum"),
    ("optimizer: {type: bop, gamma: -1}", "gamma"),
    ("log_every: -1", "log_every"),
    ("epochs: 0", "epochs"),
    ("keep_checkpoints: 0", "keep_checkpoints"),
    ("bucket_mb: -1", "bucket_mb"),
    ("stall_timeout: 0", "stall_timeout"),
    ("image_size: 2", "image_size"),
    ("data_threads: 0", "data_threads"),
    ("mean: [0.5, 0.5]", "mean"),
    ("std: [0.2, 0, 0.2]", "std"),
  ])
  func outOfRangeValuesAreErrorsWhateverTheirSource(line: String, key: String) throws {
    let message = errorMessage {
      let s = try RunSettings.parse(yaml: Self.tiny + "\n" + line + "\n", file: "r.yaml")
      try s.validate()
    }
    #expect(message.contains(key) && message.contains("must be"), "\(line): \(message)")
  }

  /// The ImageNet-format keys: read from YAML, resumable where they change nothing trained
  /// (decoding threads, the bad-image policy), and absent from the settings entries of
  /// earlier checkpoints, which read with their defaults.
  @Test func imageDataKeys() throws {
    let yaml =
      Self.tiny
      + "\nimage_size: 160\naugment: crop\nmean: [0.5, 0.5, 0.5]\nstd: [0.25, 0.25, 0.25]\ndata_threads: 3\nbad_images: error\n"
    let s = try RunSettings.parse(yaml: yaml, file: "r.yaml")
    try s.validate()
    #expect(s.imageSize == 160 && s.augment == .crop && s.mean == [0.5, 0.5, 0.5] && s.dataThreads == 3)
    #expect(s.badImages == .error)
    #expect(try RunSettings.parse(yaml: Self.tiny, file: "t").augment == nil)
    let unknown = errorMessage { _ = try RunSettings.parse(yaml: Self.tiny + "\nbad_images: skip\n", file: "r.yaml") }
    #expect(unknown.contains("bad_images") && unknown.contains("replace, error"), "\(unknown)")
    #expect(RunSettings.resumableKeys.isSuperset(of: [.dataThreads, .badImages]))
    #expect(!RunSettings.resumableKeys.contains(.imageSize) && !RunSettings.resumableKeys.contains(.mean))
    // Resolved for streamed data: crop-flip and 224 unless given; in-memory data: no augmentation.
    let tiny = try RunSettings.parse(yaml: Self.tiny, file: "t")
    let streamed = try tiny.resolved(trainSamples: 10, sampleShape: [224, 224, 3], classes: 2, streamed: true)
    #expect(streamed.augment == .cropFlip && streamed.imageSize == 224)
    let memory = try tiny.resolved(trainSamples: 10, sampleShape: [28, 28, 1], classes: 2)
    #expect(memory.augment == AugmentationMode.none && memory.imageSize == nil)
    // An entry written before these keys existed.
    var entry = try JSONSerialization.jsonObject(with: Data(try SettingsEntry.text(s).utf8)) as! [String: Any]
    var settings = entry["settings"] as! [String: Any]
    for key in ["image_size", "mean", "std", "data_threads", "bad_images"] { settings[key] = nil }
    entry["settings"] = settings
    let text = String(decoding: try JSONSerialization.data(withJSONObject: entry), as: UTF8.self)
    let old = try SettingsEntry.read([SettingsEntry.key: text], file: "old")
    #expect(old.imageSize == nil && old.mean == ImagePreprocessing.imageNetMean && old.badImages == .replace)
  }

  @Test func aliasBombsAreRefusedQuicklyInBoundedMemory() {
    var yaml = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
    for i in 1...9 { yaml += "a\(i): &a\(i) [" + Array(repeating: "*a\(i - 1)", count: 10).joined(separator: ", ") + "]\n" }
    let start = Date()
    let message = errorMessage { _ = try RunSettings.parse(yaml: yaml, file: "bomb.yaml") }
    #expect(message.contains("bomb.yaml") && message.contains("expands to more than"), "\(message)")
    #expect(Date().timeIntervalSince(start) < 10)
    // The same in a model file's config entry (files of earlier Flip versions carry YAML).
    let file = errorMessage { _ = try SettingsEntry.read(["config": yaml], file: "model.safetensors") }
    #expect(file.contains("model.safetensors (config entry)") && file.contains("expands to more than"), "\(file)")
  }

  @Test func theSettingsEntryIsStrictAndVersioned() throws {
    var s = try RunSettings.parse(yaml: Self.tiny, file: "t")
    s.accumulate = 2
    s.syncBN = true
    let text = try SettingsEntry.text(s)
    #expect(try SettingsEntry.read([SettingsEntry.key: text], file: "f") == s)
    // A key taken out, or made the wrong type, is named.
    let missing = text.replacingOccurrences(of: #""sync_bn":true,"#, with: "")
    #expect(missing != text)
    let m1 = errorMessage { _ = try SettingsEntry.read([SettingsEntry.key: missing], file: "ckpt") }
    #expect(m1.contains("ckpt (settings entry): sync_bn: is missing"), "\(m1)")
    let wrong = text.replacingOccurrences(of: #""accumulate":2"#, with: #""accumulate":"two""#)
    let m2 = errorMessage { _ = try SettingsEntry.read([SettingsEntry.key: wrong], file: "ckpt") }
    #expect(m2.contains("accumulate: expected an integer"), "\(m2)")
    let future = text.replacingOccurrences(of: #""version":1"#, with: #""version":9"#)
    let m3 = errorMessage { _ = try SettingsEntry.read([SettingsEntry.key: future], file: "ckpt") }
    #expect(m3.contains("version 9"), "\(m3)")
    let m4 = errorMessage { _ = try SettingsEntry.read([SettingsEntry.key: "{not json"], file: "ckpt") }
    #expect(m4.contains("ckpt (settings entry)"), "\(m4)")
  }

  /// Checkpoints of earlier Flip versions: the config YAML and the training entry.
  @Test func earlierCheckpointsAreReadOrRefusedNamingWhatTheyLack() throws {
    let legacy = [
      "format": "flip-checkpoint", "config": Self.tiny + "\nlog_every_steps: 7\n",
      "training": #"{"accumulate":2,"sync_batch_norm":true,"global_batch":32,"train_samples":10}"#,
    ]
    let s = try SettingsEntry.read(legacy, file: "old")
    #expect(s.accumulate == 2 && s.syncBN && s.logEvery == 7)
    var lacking = legacy
    lacking["training"] = #"{"global_batch":32}"#
    let message = errorMessage { _ = try SettingsEntry.read(lacking, file: "old") }
    #expect(message.contains("old (training entry)") && message.contains("accumulate is missing"), "\(message)")
  }

  @Test func aGraphBranchThatFeedsNothingIsAnError() {
    let yaml = """
      layers:
        - {type: Flatten, name: f}
        - {type: Dense, units: 4, name: used}
        - {type: Dense, units: 3, name: dead, inputs: f}
        - {type: Dense, units: 2, name: out, inputs: used}
      """
    let message = errorMessage {
      let s = try RunSettings.parse(yaml: yaml, file: "g.yaml")
      _ = try Model(specs: s.layers, inputShape: [6, 6, 1], seed: 0)
    }
    #expect(message.contains("dead (layer 2) feeds no other layer") && message.contains("out"), "\(message)")
  }

  // MARK: Nothing is touched before everything is checked

  func environment() -> RunEnvironment {
    var env = RunEnvironment(
      communicator: SingleProcessCommunicator(), logger: Logger(label: "test"), progress: ProgressReporter(enabled: false))
    env.skipSelftest = true
    return env
  }

  /// An earlier run's files, to see that a failed start leaves them.
  func earlierRun() throws -> (dir: String, files: [String: Data]) {
    let dir = temporaryDirectory("flip-settings")
    try FileManager.default.createDirectory(atPath: dir + "/run/tensorboard", withIntermediateDirectories: true)
    var files: [String: Data] = [:]
    for name in ["config.yaml", "metrics.jsonl", "model.safetensors", "ckpt-000003.safetensors", "tensorboard/events"] {
      files[name] = Data("earlier \(name)".utf8)
      try files[name]!.write(to: URL(fileURLWithPath: dir + "/run/" + name))
    }
    return (dir, files)
  }

  func expectUntouched(_ dir: String, _ files: [String: Data], sourceLocation: SourceLocation = #_sourceLocation) {
    for (name, data) in files {
      #expect(FileManager.default.contents(atPath: dir + "/run/" + name) == data, "\(name)", sourceLocation: sourceLocation)
    }
  }

  @Test func aFailedOverwriteLeavesTheEarlierRun() throws {
    let (dir, files) = try earlierRun()
    try FileManager.default.createDirectory(atPath: dir + "/data", withIntermediateDirectories: true)
    writeToyDataset(to: dir + "/data")
    var good = try RunSettings.parse(yaml: Self.tiny, file: "t")
    good.data = dir + "/data"
    good.epochs = 1
    good.batchSize = 32
    var cases: [(String, RunSettings)] = []
    var s = good
    s.data = dir + "/no-data"
    cases.append(("no such", s))
    s = good
    s.layers[3].units = 3  // 2 classes in the data
    cases.append(("classes", s))
    s = good
    s.timeline = "/nonexistent/dir/trace.json"
    cases.append(("/nonexistent", s))
    s = good
    s.initFrom = dir + "/missing.safetensors"
    cases.append(("missing.safetensors", s))
    s = good
    s.batchSize = 0
    cases.append(("batch_size", s))
    for (expected, settings) in cases {
      let message = errorMessage { _ = try TrainingRun.start(settings, in: dir + "/run", overwrite: true, environment: environment()) }
      #expect(message.contains(expected), "\(message)")
      expectUntouched(dir, files)
    }
    // Without --overwrite, a directory with only another run's TensorBoard events is refused.
    try FileManager.default.createDirectory(atPath: dir + "/tb/tensorboard", withIntermediateDirectories: true)
    let refused = errorMessage { _ = try TrainingRun.start(good, in: dir + "/tb", overwrite: false, environment: environment()) }
    #expect(refused.contains("already holds a run (tensorboard)"), "\(refused)")
    #expect(FileManager.default.fileExists(atPath: dir + "/tb/tensorboard"))
    // A valid overwrite replaces every file of the earlier run.
    let run = try TrainingRun.start(good, in: dir + "/run", overwrite: true, environment: environment())
    #expect(!FileManager.default.fileExists(atPath: dir + "/run/model.safetensors"))
    #expect(!FileManager.default.fileExists(atPath: dir + "/run/ckpt-000003.safetensors"))
    try run.train()
    let written = try SettingsEntry.read(try ModelFile.read(path: dir + "/run/model.safetensors").1, file: "m")
    #expect(written.layers == run.settings.layers && written.batchSize == 32)
  }
}

extension SettingsTests {
  /// A checkpoint whose settings entry lost a key (checksums re-stamped, as a buggy writer or
  /// another tool would leave them) is refused by --resume, naming the entry and the key;
  /// the intact one resumes.
  @Test func resumeRefusesADamagedSettingsEntry() throws {
    let dir = try ResumeTests.setUp()
    let first = try ResumeTests.train(dir, out: dir + "/run", extra: ["--epochs", "1", "--keep-checkpoints", "1"])
    #expect(first.status == 0, "\(first.stderr)")
    let path = try #require(try CheckpointFiles.list(dir + "/run").last?.path)
    let data = try Data(contentsOf: URL(fileURLWithPath: path))
    let length = (0..<8).reduce(0) { $0 | Int(data[$1]) << (8 * $1) }
    var header = try #require(try JSONSerialization.jsonObject(with: data[8..<(8 + length)]) as? [String: Any])
    var metadata = try #require(header["__metadata__"] as? [String: String])
    let entry = try #require(metadata[SettingsEntry.key])
    metadata[SettingsEntry.key] = entry.replacingOccurrences(of: #""sync_bn":false,"#, with: "")
    #expect(metadata[SettingsEntry.key] != entry)
    header["__metadata__"] = metadata
    let json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
    var damaged = Data((0..<8).map { UInt8(truncatingIfNeeded: json.count >> (8 * $0)) })
    damaged.append(json)
    damaged.append(data[(8 + length)...])
    try FileMutationTests.restamped(damaged).write(to: URL(fileURLWithPath: path))
    _ = try ModelFile.read(path: path)  // the checksums hold: only the entry is wrong
    let resumed = try runFlip(["train", "--resume", dir + "/run", "--epochs", "2", "--threads", "1", "--quiet"])
    #expect(resumed.status != 0)
    #expect(resumed.stderr.contains("(settings entry): sync_bn: is missing"), "\(resumed.stderr)")
  }
}
