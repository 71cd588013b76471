import Foundation
import Testing

@testable import FlipTraining

@Suite("IDX files and data sets")
struct DataTests {
  @Test func parsesValidIDX() throws {
    let f = try IDXFile.parse(idxBytes(dimensions: [2, 2, 3], data: Array(0..<12)), path: "x")
    #expect(f.dimensions == [2, 2, 3])
    #expect(f.data == Array(0..<12))
  }

  @Test func rejectsBadFilesWithClearMessages() throws {
    func message(_ bytes: [UInt8]) -> String {
      do {
        _ = try IDXFile.parse(bytes, path: "f.idx")
        return "no error"
      } catch { return "\(error)" }
    }
    #expect(message([0, 0]).contains("too short"))
    #expect(message([1, 0, 8, 1, 0, 0, 0, 1, 5]).contains("bad magic number"))
    #expect(message([0, 0, 0x0D, 1, 0, 0, 0, 1, 5]).contains("element type 0x0D"))
    #expect(message([0, 0, 8, 2, 0, 0, 0, 1]).contains("shorter than its 2-dimension header"))
    #expect(
      message(idxBytes(dimensions: [3, 2], data: [1, 2, 3])).contains(
        "need 6 data bytes but the file has 3 (truncated?)"))
    #expect(message(idxBytes(dimensions: [1], data: [1, 2])).contains("trailing bytes"))
    #expect(message(idxBytes(dimensions: [0], data: [])).contains("dimension 0 is 0"))
    #expect(message([0, 0, 8, 0]).contains("0 dimensions"))
  }

  @Test func readsGzipAndRawTheSame() throws {
    let dir = temporaryDirectory()
    let bytes = idxBytes(dimensions: [4, 3], data: Array(10..<22))
    write(bytes, to: dir + "/raw")
    write(bytes, to: dir + "/zipped", gzip: true)
    let raw = try IDXFile.read(path: dir + "/raw")
    let zipped = try IDXFile.read(path: dir + "/zipped.gz")
    #expect(raw == zipped)
    #expect(raw.data == Array(10..<22))
  }

  @Test func corruptGzipIsAnError() throws {
    let dir = temporaryDirectory()
    write(idxBytes(dimensions: [64], data: [UInt8](repeating: 3, count: 64)), to: dir + "/f", gzip: true)
    var bytes = [UInt8](FileManager.default.contents(atPath: dir + "/f.gz")!)
    let truncated = Array(bytes.prefix(bytes.count / 2))
    write(truncated, to: dir + "/t.gz")
    #expect(throws: TrainingError.self) { try IDXFile.read(path: dir + "/t.gz") }
    bytes[12] ^= 0xFF
    bytes[13] ^= 0xFF
    write(bytes, to: dir + "/c.gz")
    #expect(throws: TrainingError.self) { try IDXFile.read(path: dir + "/c.gz") }
  }

  /// A small gzip file that inflates past what its IDX header declares (a gzip bomb, or
  /// trailing data) is an error once the excess appears, before it is all inflated.
  @Test func gzipBeyondItsHeaderIsAnError() throws {
    let dir = temporaryDirectory()
    let bomb = idxBytes(dimensions: [16], data: [UInt8](repeating: 0, count: 16)) + [UInt8](repeating: 0, count: 64 << 20)
    write(bomb, to: dir + "/bomb", gzip: true)
    let compressed = try FileManager.default.attributesOfItem(atPath: dir + "/bomb.gz")[.size] as! Int
    #expect(compressed < 1 << 20, "64 MiB of zeros compress to \(compressed) bytes")
    do {
      _ = try IDXFile.read(path: dir + "/bomb.gz")
      Issue.record("a gzip file inflating past its header was accepted")
    } catch {
      #expect("\(error)".contains("decompresses to more than the 24 bytes its IDX header declares"))
    }
    write([1, 0, 8, 1, 0, 0, 0, 1, 5], to: dir + "/magic", gzip: true)
    #expect(throws: TrainingError.self) { try IDXFile.read(path: dir + "/magic.gz") }
  }

  @Test func loadsADirectoryAndScalesPixels() throws {
    let dir = temporaryDirectory()
    writeToyDataset(to: dir, train: 10, test: 6, height: 3, width: 4, gzip: true)
    let splits = try DataSplits.load(directory: dir)
    #expect(splits.train.count == 10)
    #expect(splits.test.count == 6)
    #expect(splits.train.sampleShape == [3, 4, 1])
    #expect(splits.train.classes == 2)
    var x = [Float](repeating: 0, count: 12)
    var y: [Int32] = [0]
    x.withUnsafeMutableBufferPointer { xp in
      y.withUnsafeMutableBufferPointer { yp in splits.memoryTrain.fill([3], images: xp.baseAddress!, labels: yp.baseAddress!)
      }
    }
    for (i, v) in x.enumerated() {
      let byte = Float(splits.memoryTrain.images[3 * 12 + i])
      #expect(abs(v - (byte / 127.5 - 1)) < 1e-6)
    }
    #expect(x.allSatisfy { $0 >= -1 && $0 <= 1 })
    #expect(y[0] == splits.memoryTrain.labels[3])
  }

  @Test func missingAndMismatchedFilesAreNamed() throws {
    let dir = temporaryDirectory()
    do {
      _ = try DataSplits.load(directory: dir + "/nope")
      Issue.record("expected an error")
    } catch { #expect("\(error)".contains("nope")) }
    writeToyDataset(to: dir, train: 8, test: 4)
    try FileManager.default.removeItem(atPath: dir + "/t10k-labels-idx1-ubyte")
    do {
      _ = try DataSplits.load(directory: dir)
      Issue.record("expected an error")
    } catch { #expect("\(error)".contains("t10k-labels-idx1-ubyte")) }
    write(idxBytes(dimensions: [5], data: [0, 1, 0, 1, 0]), to: dir + "/t10k-labels-idx1-ubyte")
    do {
      _ = try DataSplits.load(directory: dir)
      Issue.record("expected an error")
    } catch { #expect("\(error)".contains("4 images but") && "\(error)".contains("5 labels")) }
    write(idxBytes(dimensions: [4], data: [0, 1, 7, 1]), to: dir + "/t10k-labels-idx1-ubyte")
    do {
      _ = try DataSplits.load(directory: dir)
      Issue.record("expected an error")
    } catch { #expect("\(error)".contains("label 7")) }
  }
}

@Suite("Epoch sampler")
struct SamplerTests {
  @Test func permutationIsSeededByEpoch() throws {
    let s = try EpochSampler(datasetSize: 100, globalBatch: 32, seed: 3)
    #expect(s.permutation(epoch: 0).sorted() == Array(0..<100))
    #expect(s.permutation(epoch: 0) == s.permutation(epoch: 0))
    #expect(s.permutation(epoch: 0) != s.permutation(epoch: 1))
    let t = try EpochSampler(datasetSize: 100, globalBatch: 32, seed: 4)
    #expect(s.permutation(epoch: 0) != t.permutation(epoch: 0))
  }

  @Test func keepsTheLastPartialBatch() throws {
    let s = try EpochSampler(datasetSize: 100, globalBatch: 32, seed: 0)
    #expect(s.stepsPerEpoch == 4)
    #expect((0..<4).map(s.globalBatchSize) == [32, 32, 32, 4])
    #expect(s.shard(step: 3) == 96..<100)
  }

  @Test func shardsAreDisjointAndCoverEachGlobalBatch() throws {
    for ranks in [2, 4] {
      let samplers = try (0..<ranks).map {
        try EpochSampler(datasetSize: 103, globalBatch: 32, seed: 0, rank: $0, worldSize: ranks)
      }
      for step in 0..<samplers[0].stepsPerEpoch {
        let shards = samplers.map { $0.shard(step: step) }
        let covered = shards.flatMap { Array($0) }
        #expect(covered == Array((step * 32)..<min(step * 32 + 32, 103)))
        let sizes = shards.map(\.count)
        #expect(sizes.max()! - sizes.min()! <= 1)
      }
    }
  }

  /// Micro-steps cut the global batch as ranks do: the parts depend on ranks × micro-steps
  /// only, so 4 ranks of 1, 2 of 2 and 1 of 4 see the same micro-batches (the last, partial
  /// batch of 7 too: parts of 2, 2, 2, 1), and a rank's shard is its parts.
  @Test func microStepPartsDependOnRanksTimesMicroSteps() throws {
    var parts: [[[Range<Int>]]] = []
    for (ranks, micro) in [(4, 1), (2, 2), (1, 4)] {
      let samplers = try (0..<ranks).map {
        try EpochSampler(datasetSize: 103, globalBatch: 32, seed: 0, rank: $0, worldSize: ranks, microSteps: micro)
      }
      parts.append(
        (0..<samplers[0].stepsPerEpoch).map { step in
          samplers.flatMap { s in
            let mine = (0..<micro).map { s.microShard(step: step, rank: s.rank, micro: $0) }
            #expect(s.shard(step: step) == mine.first!.lowerBound..<mine.last!.upperBound)
            return mine
          }
        })
    }
    #expect(parts[0] == parts[1] && parts[1] == parts[2])
    #expect(parts[0].last!.map(\.count) == [2, 2, 2, 1])
  }

  @Test func rejectsABatchNotDivisibleByRanks() {
    do {
      _ = try EpochSampler(datasetSize: 10, globalBatch: 10, seed: 0, rank: 0, worldSize: 4)
      Issue.record("expected an error")
    } catch { #expect("\(error)".contains("10") && "\(error)".contains("4")) }
    #expect(throws: TrainingError.self) { try EpochSampler(datasetSize: 10, globalBatch: 0, seed: 0) }
  }
}
