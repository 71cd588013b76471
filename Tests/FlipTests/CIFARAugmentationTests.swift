import FlipCLI
import FlipTensor
import Foundation
import Testing

@testable import FlipTraining

// CIFAR-10's binary batches (read from files the tests write), format detection, and the
// training fill's augmentation (crop, flip, normalization).

/// One CIFAR-10 record: the label byte, then the R, G and B planes (row-major 32×32 each).
/// Pixel (r, q) of channel c of record `seed` is `(seed·7 + r·5 + q·3 + c·101) mod 256`.
func cifarRecord(label: UInt8, seed: Int) -> [UInt8] {
  var b: [UInt8] = [label]
  for c in 0..<3 {
    for r in 0..<32 {
      for q in 0..<32 { b.append(UInt8((seed * 7 + r * 5 + q * 3 + c * 101) % 256)) }
    }
  }
  return b
}

/// Writes `batches` training batches of `records` records each, and a test batch of
/// `testRecords`; labels cycle 0…9. Returns the directory.
@discardableResult
func writeToyCIFAR(
  to directory: String, batches: Int = 2, records: Int = 7, testRecords: Int = 5, meta: Bool = false
) -> String {
  var seed = 0
  for b in 1...max(1, batches) where batches > 0 {
    var bytes: [UInt8] = []
    for _ in 0..<records {
      bytes += cifarRecord(label: UInt8(seed % 10), seed: seed)
      seed += 1
    }
    write(bytes, to: directory + "/data_batch_\(b).bin")
  }
  var test: [UInt8] = []
  for i in 0..<testRecords { test += cifarRecord(label: UInt8((i + 3) % 10), seed: 1000 + i) }
  write(test, to: directory + "/test_batch.bin")
  if meta {
    let names = "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n"
    write(Array(names.utf8), to: directory + "/batches.meta.txt")
  }
  return directory
}

/// The error message `body` throws, or "no error".
func errorMessage(_ body: () throws -> Void) -> String {
  do {
    try body()
    return "no error"
  } catch { return "\(error)" }
}

/// Fills `indices` of `dataset` with the training fill; returns the images.
func augmented(
  _ dataset: Dataset, _ indices: [Int], _ augmentation: Augmentation?, seed: UInt64 = 5, epoch: Int = 0,
  compute: Compute = .serial
) -> [Float] {
  var x = [Float](repeating: .nan, count: indices.count * dataset.sampleSize)
  var y = [Int32](repeating: -1, count: indices.count)
  x.withUnsafeMutableBufferPointer { xp in
    y.withUnsafeMutableBufferPointer { yp in
      dataset.fill(
        indices[...], images: xp.baseAddress!, labels: yp.baseAddress!, augmentation: augmentation, seed: seed,
        epoch: epoch, compute: compute)
    }
  }
  for (k, i) in indices.enumerated() { precondition(y[k] == dataset.labels[i]) }
  return x
}

/// The plain fill of `indices`.
func plain(_ dataset: Dataset, _ indices: [Int], normalization: ChannelNormalization? = nil) -> [Float] {
  var x = [Float](repeating: .nan, count: indices.count * dataset.sampleSize)
  var y = [Int32](repeating: -1, count: indices.count)
  x.withUnsafeMutableBufferPointer { xp in
    y.withUnsafeMutableBufferPointer { yp in
      if let normalization {
        dataset.fill(indices[...], images: xp.baseAddress!, labels: yp.baseAddress!, normalization: normalization)
      } else {
        dataset.fill(indices[...], images: xp.baseAddress!, labels: yp.baseAddress!)
      }
    }
  }
  return x
}

/// A data set of `n` random images of `shape`, 10 classes.
func randomDataset(_ n: Int, shape: [Int], seed: UInt64 = 1) throws -> Dataset {
  var g = SplitMix64(seed: seed)
  let size = shape.reduce(1, *)
  // Bytes 1…255: a padded (black, byte 0) pixel is then never confused with an image pixel.
  let images = (0..<(n * size)).map { _ in UInt8(1 + g.nextInt(below: 255)) }
  return try Dataset(images: images, labels: (0..<n).map { Int32($0 % 10) }, sampleShape: shape, classes: 10)
}

@Suite("CIFAR-10 binary batches")
struct CIFARReaderTests {
  @Test func roundTripInNHWCWithChannelsByHand() throws {
    let dir = writeToyCIFAR(to: temporaryDirectory("cifar"), batches: 2, records: 7, testRecords: 5, meta: true)
    let splits = try DataSplits.load(directory: dir)
    #expect(splits.format == .cifar10)
    #expect(splits.train.count == 14 && splits.test.count == 5)
    #expect(splits.train.sampleShape == [32, 32, 3] && splits.test.sampleShape == [32, 32, 3])
    #expect(splits.train.classes == 10)
    #expect(splits.classNames?.first == "airplane" && splits.classNames?.count == 10)
    #expect(splits.memoryTrain.labels == (0..<14).map { Int32($0 % 10) })
    #expect(splits.memoryTest.labels == [3, 4, 5, 6, 7])
    // Record 9 (batch 2, its third record), pixel (row 2, column 5): NHWC offset (2·32 + 5)·3 + c.
    // Its file bytes: label at 0, R plane at 1 + 2·32 + 5, G at 1 + 1024 + …, B at 1 + 2048 + ….
    let fileBytes = [UInt8](FileManager.default.contents(atPath: dir + "/data_batch_2.bin")!)
    let record = Array(fileBytes[(2 * 3073)..<(3 * 3073)])
    #expect(record[0] == 9)
    let o = 9 * 3072 + (2 * 32 + 5) * 3
    let rgb = Array(splits.memoryTrain.images[o..<(o + 3)])
    #expect(rgb == [record[1 + 69], record[1 + 1024 + 69], record[1 + 2048 + 69]])
    // By the generator's formula: (9·7 + 2·5 + 5·3 + c·101) mod 256 = 88, 189, 34.
    #expect(rgb == [88, 189, 34])
    // The whole test set against the formula.
    for i in 0..<5 {
      for r in [0, 17, 31] {
        for q in [0, 9, 31] {
          for c in 0..<3 {
            let v = splits.memoryTest.images[i * 3072 + (r * 32 + q) * 3 + c]
            #expect(Int(v) == ((1000 + i) * 7 + r * 5 + q * 3 + c * 101) % 256)
          }
        }
      }
    }
  }

  @Test func badFilesAreErrorsNamingTheFile() throws {
    // A size that is not a whole number of records.
    var dir = writeToyCIFAR(to: temporaryDirectory("cifar"))
    var bytes = [UInt8](FileManager.default.contents(atPath: dir + "/data_batch_2.bin")!)
    write(Array(bytes.dropLast(100)), to: dir + "/data_batch_2.bin")
    var m = errorMessage { _ = try DataSplits.load(directory: dir) }
    #expect(m.contains("data_batch_2.bin") && m.contains("3,073-byte records") && m.contains("truncated"), "\(m)")

    // Empty file.
    dir = writeToyCIFAR(to: temporaryDirectory("cifar"))
    write([], to: dir + "/test_batch.bin")
    m = errorMessage { _ = try DataSplits.load(directory: dir) }
    #expect(m.contains("test_batch.bin") && m.contains("empty"), "\(m)")

    // A label above 9.
    dir = writeToyCIFAR(to: temporaryDirectory("cifar"))
    bytes = [UInt8](FileManager.default.contents(atPath: dir + "/data_batch_1.bin")!)
    bytes[3 * 3073] = 10
    write(bytes, to: dir + "/data_batch_1.bin")
    m = errorMessage { _ = try DataSplits.load(directory: dir) }
    #expect(m.contains("data_batch_1.bin") && m.contains("record 3 has label 10") && m.contains("0–9"), "\(m)")

    // A missing batch between others: 1, 2, 4, 5 present.
    dir = writeToyCIFAR(to: temporaryDirectory("cifar"), batches: 5, records: 2)
    try FileManager.default.removeItem(atPath: dir + "/data_batch_3.bin")
    m = errorMessage { _ = try DataSplits.load(directory: dir) }
    #expect(m.contains("data_batch_3.bin: no such file") && m.contains("data_batch_1,2,4,5.bin"), "\(m)")

    // The first batch missing.
    dir = writeToyCIFAR(to: temporaryDirectory("cifar"), batches: 2)
    try FileManager.default.removeItem(atPath: dir + "/data_batch_1.bin")
    m = errorMessage { _ = try DataSplits.load(directory: dir) }
    #expect(m.contains("data_batch_1.bin: no such file"), "\(m)")

    // Only the test batch.
    dir = writeToyCIFAR(to: temporaryDirectory("cifar"), batches: 1)
    try FileManager.default.removeItem(atPath: dir + "/data_batch_1.bin")
    m = errorMessage { _ = try DataSplits.load(directory: dir) }
    #expect(m.contains("data_batch_1.bin: no such file"), "\(m)")

    // No test batch.
    dir = writeToyCIFAR(to: temporaryDirectory("cifar"))
    try FileManager.default.removeItem(atPath: dir + "/test_batch.bin")
    m = errorMessage { _ = try DataSplits.load(directory: dir) }
    #expect(m.contains("test_batch.bin: no such file"), "\(m)")

    // A class list that is not 10 names.
    dir = writeToyCIFAR(to: temporaryDirectory("cifar"))
    write(Array("cat\ndog\n".utf8), to: dir + "/batches.meta.txt")
    m = errorMessage { _ = try DataSplits.load(directory: dir) }
    #expect(m.contains("batches.meta.txt") && m.contains("2 class names"), "\(m)")

    // Every error is a TrainingError.
    #expect(throws: TrainingError.self) { try DataSplits.load(directory: dir) }
  }

  @Test func decodeRejectsWithoutCrashingOnAnySize() throws {
    for size in [1, 3072, 3074, 6145, 6147] {
      var images: [UInt8] = []
      var labels: [Int32] = []
      let bytes = [UInt8](repeating: 0, count: size)
      let m = errorMessage {
        try bytes.withUnsafeBytes { try CIFAR10.decode($0, path: "f.bin", images: &images, labels: &labels) }
      }
      #expect(m.contains("f.bin") && m.contains("not a whole number"), "\(size): \(m)")
    }
  }

  @Test func batchNumbersAreStrict() {
    #expect(CIFAR10.trainingBatchNumber("data_batch_1.bin") == 1)
    #expect(CIFAR10.trainingBatchNumber("data_batch_12.bin") == 12)
    #expect(CIFAR10.trainingBatchNumber("data_batch_01.bin") == nil)
    #expect(CIFAR10.trainingBatchNumber("data_batch_.bin") == nil)
    #expect(CIFAR10.trainingBatchNumber("data_batch_1.bin.gz") == nil)
    #expect(CIFAR10.trainingBatchNumber("data_batch_x.bin") == nil)
  }
}

@Suite("Data format detection")
struct DataFormatTests {
  @Test func recognizesIDXAndCIFARDirectories() throws {
    let idx = temporaryDirectory("idx")
    writeToyDataset(to: idx, train: 8, test: 4, gzip: true)
    #expect(try DataSplits.detectFormat(directory: idx) == .idx)
    #expect(try DataSplits.load(directory: idx).format == .idx)
    let cifar = writeToyCIFAR(to: temporaryDirectory("cifar"))
    #expect(try DataSplits.detectFormat(directory: cifar) == .cifar10)
  }

  @Test func anEmptyDirectorySaysWhatItLookedFor() throws {
    let dir = temporaryDirectory("empty")
    let m = errorMessage { _ = try DataSplits.load(directory: dir) }
    #expect(m.contains(dir) && m.contains("no data set found") && m.contains("it is empty"), "\(m)")
    for name in ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "data_batch_1.bin", "test_batch.bin", ".gz"] {
      #expect(m.contains(name), "\(name) in \(m)")
    }
    write([1, 2, 3], to: dir + "/notes.txt")
    try FileManager.default.createDirectory(atPath: dir + "/cifar-10-batches-bin", withIntermediateDirectories: true)
    let n = errorMessage { _ = try DataSplits.load(directory: dir) }
    #expect(n.contains("it holds cifar-10-batches-bin, notes.txt") && n.contains("Did you mean"), "\(n)")
  }

  @Test func bothFormatsInOneDirectoryIsAnError() throws {
    let dir = writeToyCIFAR(to: temporaryDirectory("both"))
    writeToyDataset(to: dir, train: 8, test: 4)
    let m = errorMessage { _ = try DataSplits.load(directory: dir) }
    #expect(m.contains("both IDX files and CIFAR-10 batches"), "\(m)")
  }
}

@Suite("Training augmentation")
struct AugmentationTests {
  @Test func sameSeedEpochIndexGivesTheSameImageWhateverTheBatchOrRank() throws {
    let data = try randomDataset(40, shape: [8, 6, 3])
    let a = Augmentation(mode: .cropFlip, padding: 2)
    let size = data.sampleSize
    let serial = ThreadLog()
    let all = augmented(data, Array(0..<40), a, epoch: 3, compute: Compute(threads: 1, threadLog: serial))
    #expect(serial.loopTeams == [1])
    // Reversed order, in odd batches, and as 3 ranks' shards of a permuted global batch.
    let order = Array((0..<40).reversed())
    let reversed = augmented(data, order, a, epoch: 3)
    for (k, i) in order.enumerated() {
      #expect(Array(reversed[(k * size)..<((k + 1) * size)]) == Array(all[(i * size)..<((i + 1) * size)]))
    }
    var g = SplitMix64(seed: 9)
    var permutation = Array(0..<40)
    g.shuffle(&permutation)
    for ranks in [1, 2, 3, 4] {
      for rank in 0..<ranks {
        let lo = rank * 40 / ranks
        let hi = (rank + 1) * 40 / ranks
        let shard = Array(permutation[lo..<hi])
        let x = augmented(data, shard, a, epoch: 3)
        for (k, i) in shard.enumerated() {
          #expect(Array(x[(k * size)..<((k + 1) * size)]) == Array(all[(i * size)..<((i + 1) * size)]))
        }
      }
    }
    // More threads: the same bytes (the 40 samples are 2 chunks, one per thread).
    let parallel = ThreadLog()
    let threaded = augmented(data, Array(0..<40), a, epoch: 3, compute: Compute(threads: 2, threadLog: parallel))
    #expect(parallel.loopTeams == [2])
    #expect(threaded == all)
    // The draw alone is a function of (seed, epoch, index): another augmentation with the same
    // settings, drawing the indices in the opposite order, draws the same.
    let again = Augmentation(mode: .cropFlip, padding: 2)
    let draws = (0..<40).map { a.draw(seed: 5, epoch: 3, index: $0) }
    let reversedDraws = (0..<40).reversed().map { again.draw(seed: 5, epoch: 3, index: $0) }
    #expect(draws == Array(reversedDraws.reversed()))
    #expect(Set(draws).count > 1)
  }

  @Test func epochsAndSeedsDiffer() throws {
    let data = try randomDataset(64, shape: [8, 8, 1])
    let a = Augmentation(mode: .cropFlip)
    let e0 = augmented(data, Array(0..<64), a, epoch: 0)
    let e1 = augmented(data, Array(0..<64), a, epoch: 1)
    #expect(e0 != e1)
    let draws0 = (0..<64).map { a.draw(seed: 5, epoch: 0, index: $0) }
    let draws1 = (0..<64).map { a.draw(seed: 5, epoch: 1, index: $0) }
    let other = (0..<64).map { a.draw(seed: 6, epoch: 0, index: $0) }
    #expect(zip(draws0, draws1).filter { $0 != $1 }.count > 50)
    #expect(zip(draws0, other).filter { $0 != $1 }.count > 50)
    // crop and crop-flip crop alike.
    let crop = Augmentation(mode: .crop)
    #expect(
      (0..<64).allSatisfy { i in
        let c = crop.draw(seed: 5, epoch: 0, index: i)
        let f = a.draw(seed: 5, epoch: 0, index: i)
        return c.top == f.top && c.left == f.left && !c.flip
      })
  }

  @Test func cropCoversAll81PositionsAndFlipsAboutHalf() {
    let a = Augmentation(mode: .cropFlip, padding: 4)
    var counts = [Int](repeating: 0, count: 81)
    var flips = 0
    let n = 20_000
    for i in 0..<n {
      let d = a.draw(seed: 11, epoch: i % 7, index: i)
      #expect((0...8).contains(d.top) && (0...8).contains(d.left))
      counts[d.top * 9 + d.left] += 1
      if d.flip { flips += 1 }
    }
    #expect(counts.allSatisfy { $0 > 0 })
    // Each position ~247 times: a uniform draw stays well inside [150, 350].
    #expect(counts.min()! > 150 && counts.max()! < 350, "\(counts)")
    // Half of 20,000 ± 4.5 σ (σ ≈ 71).
    #expect(abs(flips - n / 2) < 320, "\(flips) flips")
  }

  @Test func cropAndFlipMoveThePixelsAsDrawnAndPadWithMinusOne() throws {
    let shape = [7, 5, 3]
    let data = try randomDataset(300, shape: shape, seed: 4)
    let (h, w, c) = (7, 5, 3)
    let a = Augmentation(mode: .cropFlip, padding: 4)
    let x = augmented(data, Array(0..<300), a, seed: 21, epoch: 2)
    var paddedSeen = 0
    var shifted = 0
    for i in 0..<300 {
      let d = a.draw(seed: 21, epoch: 2, index: i)
      if d.top != 4 || d.left != 4 { shifted += 1 }
      for r in 0..<h {
        for q in 0..<w {
          let qc = d.flip ? w - 1 - q : q
          let (sr, sq) = (r + d.top - 4, qc + d.left - 4)
          for ch in 0..<c {
            let v = x[i * h * w * c + (r * w + q) * c + ch]
            if sr < 0 || sr >= h || sq < 0 || sq >= w {
              #expect(v == -1)
              paddedSeen += 1
            } else {
              let byte = data.images[i * h * w * c + (sr * w + sq) * c + ch]
              #expect(v == Float(byte) / 127.5 - 1)
            }
          }
        }
      }
    }
    #expect(paddedSeen > 0 && shifted > 250)
    // A window entirely outside (padding larger than the image) is all black.
    let far = Augmentation(mode: .crop, padding: 50)
    let y = augmented(data, Array(0..<40), far, seed: 1)
    #expect(y.contains(-1) && y.allSatisfy { $0 >= -1 && $0 <= 1 })
  }

  @Test func noneEqualsThePlainFillExactly() throws {
    for shape in [[28, 28, 1], [32, 32, 3], [4, 6, 2]] {
      let data = try randomDataset(33, shape: shape)
      let indices = [5, 0, 32, 7, 7, 19]
      let p = plain(data, indices)
      #expect(augmented(data, indices, nil) == p)
      #expect(augmented(data, indices, Augmentation(mode: .none)) == p)
      #expect(augmented(data, indices, Augmentation(mode: .none, padding: 9), epoch: 4) == p)
      // A crop of offset (padding, padding) without flip is the identity too.
      let zero = Augmentation(mode: .crop, padding: 0)
      #expect(augmented(data, indices, zero) == p)
    }
  }

  @Test func normalizationFormula() throws {
    let data = try randomDataset(20, shape: [4, 4, 3])
    let n = try ChannelNormalization(mean: [0.1, -0.2, 0.3], std: [0.5, 0.25, 2])
    let x = plain(data, Array(0..<20), normalization: n)
    for k in 0..<x.count {
      let c = k % 3
      let byte = data.images[k]
      #expect(x[k] == (Float(byte) / 127.5 - 1 - n.mean[c]) / n.std[c])
    }
    // Through the training fill, mode none: the same.
    #expect(augmented(data, Array(0..<20), Augmentation(mode: .none, normalization: n)) == x)
    // Cropped: padding is black (byte 0) normalized.
    let a = Augmentation(mode: .crop, padding: 4, normalization: n)
    let y = augmented(data, Array(0..<20), a)
    let blacks = (0..<3).map { (-1 - n.mean[$0]) / n.std[$0] }
    #expect((0..<y.count).contains { y[$0] == blacks[$0 % 3] })
    // Torchvision's [0, 1] figures: mean 2m − 1, std 2s.
    let u = try ChannelNormalization.unitRange(mean: [0.5, 0.25, 0.75], std: [0.25, 0.5, 0.125])
    #expect(u.mean == [0, -0.5, 0.5] && u.std == [0.5, 1, 0.25])
    // Estimated from the data: the normalized training pixels have mean ≈ 0 and std ≈ 1.
    let e = try ChannelNormalization.estimate(from: data)
    let z = plain(data, Array(0..<20), normalization: e)
    for c in 0..<3 {
      let v = stride(from: c, to: z.count, by: 3).map { Double(z[$0]) }
      let m = v.reduce(0, +) / Double(v.count)
      let s = (v.map { ($0 - m) * ($0 - m) }.reduce(0, +) / Double(v.count)).squareRoot()
      #expect(abs(m) < 1e-5 && abs(s - 1) < 1e-4)
    }
    // Invalid: counts differ, std ≤ 0, channels differ from the data's.
    #expect(throws: TrainingError.self) { try ChannelNormalization(mean: [0, 0], std: [1]) }
    #expect(throws: TrainingError.self) { try ChannelNormalization(mean: [0], std: [0]) }
    #expect(throws: TrainingError.self) {
      try Augmentation(mode: .none, normalization: n).validate(sampleShape: [28, 28, 1])
    }
    #expect(throws: TrainingError.self) { try Augmentation(mode: .crop).validate(sampleShape: [784]) }
    try Augmentation(mode: .cropFlip).validate(sampleShape: [32, 32, 3])
  }

  @Test func augmentKeyInRunConfigs() throws {
    let base = "model: binarynet-mlp\n"
    #expect(try RunSettings.parse(yaml: base, file: "c").augment == .none)
    for mode in AugmentationMode.allCases {
      let c = try RunSettings.parse(yaml: base + "augment: \(mode.rawValue)\n", file: "c")
      #expect(c.augment == mode)
      #expect(try c.yaml().contains("augment: \(mode.rawValue)"))
      #expect(try RunSettings.parse(yaml: try c.yaml(), file: "again") == c)
    }
    let m = errorMessage { _ = try RunSettings.parse(yaml: base + "augment: mixup\n", file: "c.yaml") }
    #expect(m.contains("c.yaml") && m.contains("augment") && m.contains("'mixup'"), "\(m)")
    #expect(m.contains("accepted: none, crop, crop-flip"), "\(m)")
    #expect(AugmentationMode(rawValue: "crop-flip") == .cropFlip)
  }
}
