import FlipTensor
import Foundation
import Testing

@testable import FlipTraining

/// Writes an image folder `dir/train/<class>/*.JPEG`, `dir/val/<class>/*.JPEG` of JPEGs
/// (quality 90) whose colors tell the class apart: class c tints channel c % 3, with a
/// gradient and noise drawn from the image's index.
func writeImageFolder(
  _ dir: String, classes: Int = 3, perClass: Int, valPerClass: Int = 2, width: Int = 40, height: Int = 30
) throws {
  var g = SplitMix64(seed: 11)
  for (split, count) in [("train", perClass), ("val", valPerClass)] {
    for c in 0..<classes {
      let folder = "\(dir)/\(split)/class\(c)"
      try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
      for i in 0..<count {
        let (w, h) = (width + i % 5, height + i % 3)
        var pixels = [UInt8](repeating: 0, count: w * h * 3)
        for y in 0..<h {
          for x in 0..<w {
            for ch in 0..<3 {
              let base = ch == c % 3 ? 170 : 60
              let v = base + (x * 40) / w - (y * 20) / h + Int(g.next() % 24)
              pixels[(y * w + x) * 3 + ch] = UInt8(clamping: v)
            }
          }
        }
        let jpeg = try ImageEncoder.jpeg(pixels, width: w, height: h, components: 3, quality: 90)
        try Data(jpeg).write(to: URL(fileURLWithPath: "\(folder)/img\(i).JPEG"))
      }
    }
  }
}

/// Reads every batch of `batches` from a fresh feed of `images`.
func feedAll(_ images: StreamedImages, _ batches: [ArraySlice<Int>], training: Bool = true, epoch: Int = 0)
  throws -> (pixels: [Float], labels: [Int32], bad: Int)
{
  let feed = images.makeFeed(
    batch: batches.map(\.count).max() ?? 1, training: training, seed: 5, augmentation: nil, compute: .serial)
  try feed.begin(epoch: epoch, batches: batches)
  var pixels: [Float] = []
  var labels: [Int32] = []
  var bad = 0
  for _ in batches {
    let b = try feed.next()
    pixels += UnsafeBufferPointer(start: b.images, count: b.count * images.sampleSize)
    labels += UnsafeBufferPointer(start: b.labels, count: b.count)
    bad += b.badImages
  }
  return (pixels, labels, bad)
}

/// Collects the reports of bad images.
final class ReportLog: @unchecked Sendable {
  private let lock = NSLock()
  private var lines: [String] = []
  var messages: [String] { lock.withLock { lines } }
  func add(_ s: String) { lock.withLock { lines.append(s) } }
}

@Suite("ImageNet-format data: decoding feeds")
struct ImageFeedTests {
  func options(size: Int = 16, threads: Int = 2, policy: BadImagePolicy = .replace, log: ReportLog? = nil)
    -> ImageDataOptions
  {
    var o = ImageDataOptions()
    o.preprocessing = ImagePreprocessing(imageSize: size, augment: .cropFlip)
    o.threads = threads
    o.badImages = policy
    o.cache = nil
    if let log { o.report = { log.add($0) } }
    return o
  }

  @Test func anImageFolderLoadsWithItsClassesAndShape() throws {
    let dir = temporaryDirectory("image-folder")
    try writeImageFolder(dir, perClass: 4)
    let splits = try DataSplits.load(directory: dir, images: options())
    #expect(splits.format == .imageFolder)
    #expect(splits.train.count == 12 && splits.test.count == 6)
    #expect(splits.train.sampleShape == [16, 16, 3] && splits.train.classes == 3)
    #expect(splits.classNames == ["class0", "class1", "class2"])
  }

  /// The same samples give the same floats whatever the threads, the batches they are cut
  /// into, or the ranks that share them: the shards of 2 or 4 ranks, put together, give the
  /// one-rank global batches.
  @Test func batchesAreTheSameOnAnyThreadsBatchingAndRanks() throws {
    let dir = temporaryDirectory("image-folder-ranks")
    try writeImageFolder(dir, perClass: 8)
    let one = try DataSplits.load(directory: dir, images: options(threads: 1)).train as! StreamedImages
    let three = try DataSplits.load(directory: dir, images: options(threads: 3)).train as! StreamedImages
    let order = try EpochSampler(datasetSize: one.count, globalBatch: 8, seed: 5).permutation(epoch: 1)
    let global = stride(from: 0, to: 24, by: 8).map { order[$0..<$0 + 8] }
    let a = try feedAll(one, global, epoch: 1)
    let b = try feedAll(three, global, epoch: 1)
    #expect(a.pixels == b.pixels && a.labels == b.labels && a.bad == 0)
    for world in [2, 4] {
      var ranks: [[Float]] = []
      for rank in 0..<world {
        let sampler = try EpochSampler(datasetSize: one.count, globalBatch: 8, seed: 5, rank: rank, worldSize: world)
        ranks.append(try feedAll(three, (0..<3).map { order[sampler.shard(step: $0)] }, epoch: 1).pixels)
      }
      let n = one.sampleSize * 8 / world
      var joined: [Float] = []
      for s in 0..<3 {
        let part: Range<Int> = (s * n)..<((s + 1) * n)
        for r in 0..<world { joined.append(contentsOf: ranks[r][part]) }
      }
      #expect(joined == a.pixels, "\(world) ranks")
    }
    // Another epoch draws other crops.
    #expect(try feedAll(one, global, epoch: 2).pixels != a.pixels)
  }

  /// Evaluation takes the central S/(S+32) of the shorter side: a 64 × 64 PNG (named .JPEG, as
  /// ImageNet's one PNG is) at S = 32 gives exactly its pixels (16…47, 16…47), normalized.
  @Test func evaluationCropIsExact() throws {
    let dir = temporaryDirectory("image-folder-eval")
    try writeImageFolder(dir, classes: 2, perClass: 2, valPerClass: 1)
    var pixels = [UInt8](repeating: 0, count: 64 * 64 * 3)
    for y in 0..<64 {
      for x in 0..<64 { for c in 0..<3 { pixels[(y * 64 + x) * 3 + c] = UInt8((x * 3 + y * 5 + c * 70) % 256) } }
    }
    let png = try ImageEncoder.png(pixels, width: 64, height: 64, channels: 3)
    try Data(png).write(to: URL(fileURLWithPath: dir + "/val/class1/img0.JPEG"))
    let splits = try DataSplits.load(directory: dir, images: options(size: 32))
    let val = splits.test as! StreamedImages
    let out = try feedAll(val, [Array(0..<val.count)[...]], training: false)
    let p = val.preprocessing
    let i = (0..<val.count).first { val.index.file(of: $0).hasSuffix("class1/img0.JPEG") }!
    for y in 0..<32 {
      for x in 0..<32 {
        for c in 0..<3 {
          let v = Float(pixels[((y + 16) * 64 + x + 16) * 3 + c])
          let expected = v * (1 / (255 * p.std[c])) + -p.mean[c] / p.std[c]
          #expect(out.pixels[i * val.sampleSize + (y * 32 + x) * 3 + c] == expected)
        }
      }
    }
  }

  /// ImageNet's odd files train without error: a grayscale JPEG (R = G = B), a CMYK JPEG and
  /// a PNG named .JPEG.
  @Test func grayscaleCMYKAndPNGAsJPEGDecode() throws {
    let dir = temporaryDirectory("image-folder-odd")
    try writeImageFolder(dir, classes: 2, perClass: 2, valPerClass: 1)
    let gray = try ImageEncoder.jpeg(
      [UInt8](repeating: 90, count: 30 * 20), width: 30, height: 20, components: 1, quality: 90)
    try Data(gray).write(to: URL(fileURLWithPath: dir + "/train/class0/gray.JPEG"))
    let cmyk = try ImageEncoder.jpeg(
      (0..<(30 * 20)).flatMap { _ in [UInt8(20), 200, 120, 30] }, width: 30, height: 20, components: 4, quality: 90)
    try Data(cmyk).write(to: URL(fileURLWithPath: dir + "/train/class0/cmyk.JPEG"))
    let png = try ImageEncoder.png([UInt8](repeating: 7, count: 30 * 20 * 4), width: 30, height: 20, channels: 4)
    try Data(png).write(to: URL(fileURLWithPath: dir + "/train/class1/n02105855_2933.JPEG"))
    let log = ReportLog()
    let train = try DataSplits.load(directory: dir, images: options(log: log)).train as! StreamedImages
    let out = try feedAll(train, [Array(0..<train.count)[...]])
    #expect(out.bad == 0 && log.messages.isEmpty, "\(log.messages)")
    let g = (0..<train.count).first { train.index.file(of: $0).hasSuffix("gray.JPEG") }!
    let p = train.preprocessing
    for k in stride(from: 0, to: train.sampleSize, by: 3) {
      let rgb = (0..<3).map { c in (out.pixels[g * train.sampleSize + k + c] + p.mean[c] / p.std[c]) * 255 * p.std[c] }
      #expect(abs(rgb[0] - rgb[1]) < 1e-3 && abs(rgb[1] - rgb[2]) < 1e-3)
    }
    let report = try DataCheckReport.check(directory: dir, threads: 2, cache: nil)
    #expect(report.bad.isEmpty && report.splits[0].samples == 7)
  }

  /// A truncated JPEG and a file that is no image: reported once each (path and problem),
  /// counted, replaced by the same other sample on every run; under `error` the first stops
  /// the feed naming its file. `flip data check` lists both.
  @Test func badFilesAreReplacedAndCountedOrStopTheRun() throws {
    let dir = temporaryDirectory("image-folder-bad")
    try writeImageFolder(dir, classes: 2, perClass: 4, valPerClass: 1)
    let whole = try Data(contentsOf: URL(fileURLWithPath: dir + "/train/class0/img0.JPEG"))
    try whole.prefix(whole.count / 2).write(to: URL(fileURLWithPath: dir + "/train/class0/img0.JPEG"))
    try Data("not an image".utf8).write(to: URL(fileURLWithPath: dir + "/train/class1/img1.JPEG"))
    let log = ReportLog()
    let train = try DataSplits.load(directory: dir, images: options(log: log)).train as! StreamedImages
    let all = Array(0..<train.count)[...]
    let first = try feedAll(train, [all])
    #expect(first.bad == 2)
    let again = try feedAll(train, [all])
    #expect(again.pixels == first.pixels && again.labels == first.labels)
    #expect(log.messages.count == 2, "\(log.messages)")  // once per file
    #expect(log.messages.contains { $0.contains("class0/img0.JPEG") && $0.contains("Premature end") })
    #expect(log.messages.contains { $0.contains("class1/img1.JPEG") })
    let strict = try DataSplits.load(directory: dir, images: options(policy: .error)).train as! StreamedImages
    #expect {
      _ = try feedAll(strict, [all])
    } throws: { e in
      "\(e)".contains("/train/class0/img0.JPEG") || "\(e)".contains("/train/class1/img1.JPEG")
    }
    let report = try DataCheckReport.check(directory: dir, threads: 2, cache: nil)
    #expect(report.bad.map(\.file).sorted().map { ($0 as NSString).lastPathComponent } == ["img0.JPEG", "img1.JPEG"])
    // A file that cannot be read (replaced by a folder after indexing) is no bad image: it
    // stops the run whatever the policy, naming the file.
    let fresh = try DataSplits.load(directory: dir, images: options(log: log)).train as! StreamedImages
    try FileManager.default.removeItem(atPath: dir + "/train/class1/img3.JPEG")
    try FileManager.default.createDirectory(atPath: dir + "/train/class1/img3.JPEG", withIntermediateDirectories: false)
    #expect {
      _ = try feedAll(fresh, [all])
    } throws: { e in
      "\(e)".contains("/train/class1/img3.JPEG")
    }
  }

  /// The same JPEGs as an image folder, as TFDS TFRecords and as WebDataset tar shards (in
  /// the folder's order): the three indices list the same samples with the same labels, and
  /// their feeds give bit-identical batches.
  @Test func theThreeLayoutsGiveTheSameBatches() throws {
    let dir = temporaryDirectory("three-layouts")
    try writeImageFolder(dir + "/folder", classes: 3, perClass: 4, valPerClass: 2)
    let folder = try DataSplits.load(directory: dir + "/folder", images: options())
    let folderTrain = folder.train as! StreamedImages
    let folderVal = folder.test as! StreamedImages
    for (split, images) in [("train", folderTrain), ("validation", folderVal)] {
      var records: [[UInt8]] = []
      var tar = ImageDataFormatTests.Tar()
      for i in 0..<images.count {
        var bytes: [UInt8] = []
        try images.index.read(i, into: &bytes)
        let label = images.index.label(of: i)
        let name = (images.index.file(of: i) as NSString).lastPathComponent
        records.append(ImageDataFormatTests.example(image: bytes, label: Int64(label), fileName: name))
        let key = "class\(label)/" + (name as NSString).deletingPathExtension
        tar.file(key + ".cls", Array(String(label).utf8))
        tar.file(key + ".jpg", bytes)
      }
      tar.end()
      ImageDataFormatTests.writeShards(
        [Array(records.prefix(5)), Array(records.dropFirst(5))], name: "toy", split: split, in: dir + "/tfds/toy/1.0.0")
      ImageDataFormatTests.write(tar.bytes, to: "\(dir)/wds/\(split == "train" ? "train" : "val")/shard-0.tar")
    }
    let names = "class0\nclass1\nclass2\n"
    ImageDataFormatTests.write(names, to: dir + "/tfds/toy/1.0.0/label.labels.txt")
    ImageDataFormatTests.write(names, to: dir + "/wds/label.labels.txt")
    let order = try EpochSampler(datasetSize: folderTrain.count, globalBatch: 4, seed: 2).permutation(epoch: 3)
    let batches = stride(from: 0, to: order.count, by: 4).map { order[$0..<min($0 + 4, order.count)] }
    let expected = try feedAll(folderTrain, batches, epoch: 3)
    let expectedVal = try feedAll(folderVal, [Array(0..<folderVal.count)[...]], training: false)
    for (layout, format) in [("tfds", DataFormat.tfrecord), ("wds", .webDataset)] {
      let splits = try DataSplits.load(directory: dir + "/" + layout, images: options())
      #expect(splits.format == format && splits.classNames == ["class0", "class1", "class2"])
      let train = splits.train as! StreamedImages
      let val = splits.test as! StreamedImages
      #expect((0..<train.count).map(train.index.label) == (0..<folderTrain.count).map(folderTrain.index.label))
      let got = try feedAll(train, batches, epoch: 3)
      #expect(got.pixels == expected.pixels && got.labels == expected.labels, "\(layout)")
      let gotVal = try feedAll(val, [Array(0..<val.count)[...]], training: false)
      #expect(gotVal.pixels == expectedVal.pixels && gotVal.labels == expectedVal.labels, "\(layout)")
    }
  }

  @Test func dataBenchTimesThePipeline() throws {
    let dir = temporaryDirectory("image-folder-bench")
    try writeImageFolder(dir, perClass: 10)
    let r = try DataBenchResult.run(
      directory: dir, preprocessing: ImagePreprocessing(imageSize: 24), threads: 2, images: nil, batch: 8, cache: nil)
    #expect(r.images == 22 && r.imagesPerSecond > 0 && r.layout == "image folder")
  }
}
