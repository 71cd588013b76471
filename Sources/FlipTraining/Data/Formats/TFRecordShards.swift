import Foundation

/// TensorFlow Datasets' TFRecord layout: `DIR/<name>/<version>/<name>-train.tfrecord-00000-of-01024`
/// … and `<name>-validation.tfrecord-00000-of-00064` …, each record a serialized
/// `tf.train.Example` with the features `image` (the encoded image), `label` (int64) and
/// usually `file_name`. `DIR` may also be the version folder itself, or `<name>` holding
/// version folders; of several versions the highest (numeric order) is read.
enum TFRecordShards {
  /// The folder holding the shards, and what was chosen on the way there.
  struct Location {
    var versionDirectory: String
    var name: String
    /// The version folders found beside the chosen one (empty when `DIR` was the version folder).
    var versions: [String]
    var version: String? { versions.isEmpty ? nil : (versionDirectory as NSString).lastPathComponent }
  }

  /// A shard file name's parts: `<name>-<split>.tfrecord[-NNNNN-of-MMMMM]`.
  struct ShardName {
    var dataset: String
    var split: String
    var shard: Int
    var of: Int

    init?(_ fileName: String) {
      guard let dot = fileName.range(of: ".tfrecord") else { return nil }
      let stem = fileName[..<dot.lowerBound]
      guard let dash = stem.lastIndex(of: "-") else { return nil }
      dataset = String(stem[..<dash])
      split = String(stem[stem.index(after: dash)...])
      let tail = fileName[dot.upperBound...]
      if tail.isEmpty {
        (shard, of) = (0, 1)
      } else {
        let parts = tail.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count == 4, parts[0].isEmpty, parts[2] == "of", let k = Int(parts[1]), let n = Int(parts[3]),
          k >= 0, k < n
        else { return nil }
        (shard, of) = (k, n)
      }
      guard !dataset.isEmpty, !split.isEmpty else { return nil }
    }
  }

  /// `a` before `b` in numeric version order ("5.0.0" < "5.1.0" < "10.0.0"); parts that are
  /// not numbers compare as text.
  static func versionOrder(_ a: String, _ b: String) -> Bool {
    let x = a.split(separator: ".")
    let y = b.split(separator: ".")
    for (p, q) in zip(x, y) where p != q {
      if let m = Int(p), let n = Int(q) { return m < n }
      return DataFiles.byteOrder(String(p), String(q))
    }
    return x.count < y.count
  }

  /// The version folders `directory` may mean: itself if it holds shards, else the highest
  /// version among its folders, else the highest version of each data set among its folders'
  /// folders (more than one: ambiguous). Empty if there are none.
  static func locations(_ directory: String) -> [Location] {
    func shardName(in folder: String) -> String? {
      DataFiles.visibleNamesIfAny(in: folder).lazy.compactMap(ShardName.init).first { $0.split == "train" }?.dataset
    }
    if let name = shardName(in: directory) { return [Location(versionDirectory: directory, name: name, versions: [])] }
    /// The highest version folder in `folder` holding shards.
    func highestVersion(in folder: String) -> Location? {
      let versions = DataFiles.visibleNamesIfAny(in: folder).filter { shardName(in: DataFiles.join(folder, $0)) != nil }
      guard let highest = versions.max(by: versionOrder) else { return nil }
      let path = DataFiles.join(folder, highest)
      return Location(versionDirectory: path, name: shardName(in: path)!, versions: versions.sorted(by: versionOrder))
    }
    if let found = highestVersion(in: directory) { return [found] }
    return DataFiles.visibleNamesIfAny(in: directory).compactMap { name -> Location? in
      let folder = DataFiles.join(directory, name)
      return DataFiles.isDirectory(folder) ? highestVersion(in: folder) : nil
    }
  }

  /// The one version folder of `directory`; throws if there is none or several data sets.
  static func locate(_ directory: String) throws(TrainingError) -> Location {
    let found = locations(directory)
    guard found.count == 1 else {
      guard !found.isEmpty else {
        throw .fileNotFound(
          path: DataFiles.join(directory, "<name>/<version>/<name>-train.tfrecord-00000-of-NNNNN"),
          hint: "No TFDS shards found.")
      }
      let names = found.map { ($0.versionDirectory as NSString).deletingLastPathComponent }
      throw .invalidArgument(
        "\(directory) holds several TFDS data sets (\(names.joined(separator: ", "))); pass one of them as --data")
    }
    return found[0]
  }

  /// The shards of `split` in `location`'s version folder, in shard order. Throws if one of
  /// `-NNNNN-of-MMMMM` is missing or the split has none.
  static func shards(of split: String, in location: Location) throws(TrainingError) -> [String] {
    let folder = location.versionDirectory
    var found: [(ShardName, String)] = []
    for fileName in try DataFiles.visibleNames(in: folder) {
      guard let s = ShardName(fileName), s.split == split, s.dataset == location.name else { continue }
      found.append((s, DataFiles.join(folder, fileName)))
    }
    let pattern = DataFiles.join(folder, "\(location.name)-\(split).tfrecord-*")
    guard let first = found.first else {
      throw .fileNotFound(path: pattern, hint: "The \(split) split has no shards; TFDS writes them there.")
    }
    let total = first.0.of
    guard total <= 1_000_000 else {
      throw .corruptData(path: first.1, reason: "names a series of \(total) shards; at most 1,000,000 are read")
    }
    var byNumber = [String?](repeating: nil, count: total)
    for (s, path) in found {
      guard s.of == total else {
        throw .corruptData(path: path, reason: "a shard of \(s.of), but \(first.1) is a shard of \(total)")
      }
      byNumber[s.shard] = path
    }
    if let missing = byNumber.firstIndex(of: nil) {
      let name = "\(location.name)-\(split).tfrecord-\(fiveDigits(missing))-of-\(fiveDigits(total))"
      throw .fileNotFound(
        path: DataFiles.join(folder, name),
        hint:
          "\(total - found.count) of the \(total) shards of the \(split) split are missing (an incomplete download?).")
    }
    return byNumber.map { $0! }
  }

  private static func fiveDigits(_ n: Int) -> String {
    let s = String(n)
    return String(repeating: "0", count: max(0, 5 - s.count)) + s
  }

  /// The samples of the shard at `path`: every record's `image` bytes (offset and length in
  /// the file) and `label`. Checks both CRCs of every record; throws on a record cut short, a
  /// checksum mismatch, an undecodable `Example` or one without `image` or `label`.
  static func scan(_ path: String) throws(TrainingError) -> SampleIndex {
    try DataFiles.withMappedFile(path) { (file) throws(TrainingError) -> SampleIndex in
      let (records, incompleteTail) = try TFRecords.scan(file, path: path)
      if incompleteTail > 0 {
        throw .corruptData(
          path: path,
          reason:
            "the record at byte \(file.count - incompleteTail) is cut short (the file ends \(incompleteTail) bytes into it): a truncated shard; download it again"
        )
      }
      var offsets: [Int64] = []
      var lengths: [UInt32] = []
      var labels: [Int32] = []
      var recordOffsets: [Int64] = []
      for record in records {
        let at = record.whole.lowerBound
        let example: (image: Range<Int>, label: Int64)
        do throws(ProtobufDecoder.Malformed) {
          example = try self.example(UnsafeRawBufferPointer(rebasing: file[record.data]))
        } catch {
          throw .corruptData(path: path, reason: "the record at byte \(at): \(error.reason)")
        }
        guard example.label >= Int64(Int32.min), example.label <= Int64(Int32.max) else {
          throw .corruptData(path: path, reason: "the record at byte \(at) has label \(example.label)")
        }
        guard example.image.count <= Int(UInt32.max) else {
          throw .corruptData(
            path: path, reason: "the record at byte \(at) holds an image of \(example.image.count) bytes (over 4 GiB)")
        }
        let start = record.data.lowerBound + example.image.lowerBound
        offsets.append(Int64(start))
        lengths.append(UInt32(example.image.count))
        labels.append(Int32(example.label))
        recordOffsets.append(Int64(at))
      }
      return SampleIndex(
        layout: .tfrecord, files: [path], fileNumbers: [Int32](repeating: 0, count: labels.count), offsets: offsets,
        lengths: lengths, labels: labels, recordOffsets: recordOffsets)
    }
  }

  /// The byte range of the first `image` bytes (within `bytes`) and the first `label` int64 of
  /// a serialized `tf.train.Example`:
  ///
  ///     Example { Features features = 1; }
  ///     Features { map<string, Feature> feature = 1; }   // entries: key = 1, value = 2
  ///     Feature { oneof { BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3; } }
  ///     BytesList { repeated bytes value = 1; }   Int64List { repeated int64 value = 1 [packed]; }
  static func example(_ bytes: UnsafeRawBufferPointer) throws(ProtobufDecoder.Malformed) -> (
    image: Range<Int>, label: Int64
  ) {
    var image: Range<Int>?
    var label: Int64?
    var keys: [String] = []
    var example = ProtobufDecoder(bytes)
    while let (field, wire) = try example.nextKey() {
      guard field == 1 else {
        try example.skip(wire)
        continue
      }
      try ProtobufDecoder.check(wire, 2, "Example.features")
      var features = ProtobufDecoder(try example.lengthDelimited())
      while let (field, wire) = try features.nextKey() {
        guard field == 1 else {
          try features.skip(wire)
          continue
        }
        try ProtobufDecoder.check(wire, 2, "Features.feature")
        var entry = ProtobufDecoder(try features.lengthDelimited())
        var key = ""
        var value: UnsafeRawBufferPointer?
        while let (field, wire) = try entry.nextKey() {
          switch field {
          case 1:
            try ProtobufDecoder.check(wire, 2, "the feature map's key")
            key = ProtobufDecoder.string(try entry.lengthDelimited())
          case 2:
            try ProtobufDecoder.check(wire, 2, "the feature map's value")
            value = try entry.lengthDelimited()
          default: try entry.skip(wire)
          }
        }
        keys.append(key)
        guard let value else { continue }
        switch key {
        case "image":
          guard let found = try firstBytes(value, feature: key) else { continue }
          // Offsets within `bytes`: the buffers are views of the same mapped file.
          let start = found.baseAddress.map { $0 - bytes.baseAddress! } ?? 0
          image = start..<start + found.count
        case "label":
          label = try firstInt64(value, feature: key)
        default: break
        }
      }
    }
    guard let image, let label else {
      let missing = [image == nil ? "image" : nil, label == nil ? "label" : nil].compactMap { $0 }
      let found = keys.isEmpty ? "none" : keys.sorted().joined(separator: ", ")
      throw ProtobufDecoder.Malformed(
        reason:
          "the Example has no \(missing.joined(separator: " and ")) feature (it has: \(found)); an image classification data set has an image (bytes) and a label (int64)"
      )
    }
    return (image, label)
  }

  /// The first value `first` finds in the lists a `Feature` holds in its oneof field `wanted`
  /// (1 `bytes_list`, 3 `int64_list`; each occurrence in turn), or nil; an error naming `kind`
  /// if the feature holds another kind of list.
  private static func firstValue<T>(
    _ feature: UnsafeRawBufferPointer, field wanted: Int, kind: String, feature name: String,
    _ first: (inout ProtobufDecoder) throws(ProtobufDecoder.Malformed) -> T?
  ) throws(ProtobufDecoder.Malformed) -> T? {
    var d = ProtobufDecoder(feature)
    while let (field, wire) = try d.nextKey() {
      guard field == wanted else {
        guard (1...3).contains(field) else {
          try d.skip(wire)
          continue
        }
        throw ProtobufDecoder.Malformed(reason: "the feature \(name) is not \(kind)")
      }
      try ProtobufDecoder.check(wire, 2, "Feature.\(kind)_list")
      var list = ProtobufDecoder(try d.lengthDelimited())
      if let value = try first(&list) { return value }
    }
    return nil
  }

  /// The first value of a `Feature`'s `bytes_list`, or nil if the list is empty.
  private static func firstBytes(_ feature: UnsafeRawBufferPointer, feature name: String) throws(ProtobufDecoder
    .Malformed) -> UnsafeRawBufferPointer?
  {
    try firstValue(feature, field: 1, kind: "bytes", feature: name) { (list) throws(ProtobufDecoder.Malformed) in
      while let (field, wire) = try list.nextKey() {
        guard field == 1 else {
          try list.skip(wire)
          continue
        }
        try ProtobufDecoder.check(wire, 2, "BytesList.value")
        return try list.lengthDelimited()
      }
      return nil
    }
  }

  /// The first value of a `Feature`'s `int64_list` (packed or not), or nil if it is empty.
  private static func firstInt64(_ feature: UnsafeRawBufferPointer, feature name: String) throws(ProtobufDecoder
    .Malformed) -> Int64?
  {
    try firstValue(feature, field: 3, kind: "int64", feature: name) { (list) throws(ProtobufDecoder.Malformed) in
      while let (field, wire) = try list.nextKey() {
        guard field == 1 else {
          try list.skip(wire)
          continue
        }
        switch wire {
        case 0: return Int64(bitPattern: try list.varint())
        case 2:
          var packed = ProtobufDecoder(try list.lengthDelimited())
          if packed.at < packed.bytes.count { return Int64(bitPattern: try packed.varint()) }
        default: throw ProtobufDecoder.Malformed(reason: "Int64List.value has wire type \(wire)")
        }
      }
      return nil
    }
  }
}
