import FlipBNN
import FlipComm
import Foundation
import Logging
import Testing

@testable import FlipTraining

@Suite("Trainer")
struct TrainerTests {
  func toyModel(seed: UInt64) throws -> Model {
    var specs = ModelPreset.binarynetMLP.layers
    // A narrower BinaryNet for 6×6 images and 2 classes.
    for i in specs.indices where specs[i].kind == .quantDense { specs[i].units = specs[i].units == 10 ? 2 : 32 }
    return try Model(specs: specs, inputShape: [6, 6, 1], seed: seed)
  }

  func makeTrainer(
    _ model: Model, data: DataSplits, epochs: Int = 3, batch: Int = 32, seed: UInt64 = 0,
    observers: TrainingObservers = TrainingObservers()
  ) throws -> Trainer {
    try Trainer(
      model: model, optimizer: try OptimizerSpec.adam(learningRate: 0.01).make(),
      communicator: SingleProcessCommunicator(),
      data: data, options: TrainingOptions(epochs: epochs, batchSize: batch, seed: seed, logEverySteps: 4),
      logger: Logger(label: "test"), observers: observers)
  }

  @Test func learnsAToyProblemAndLogsMetrics() throws {
    let dir = temporaryDirectory()
    writeToyDataset(to: dir)
    let data = try DataSplits.load(directory: dir)
    let model = try toyModel(seed: 0)
    var observers = TrainingObservers()
    observers.metrics = try MetricsLog(path: dir + "/metrics.jsonl")
    let trainer = try makeTrainer(model, data: data, epochs: 4, observers: observers)
    let results = try trainer.fit()
    #expect(results.count == 4)
    #expect(results.last!.testAccuracy > 0.9)
    #expect(results.last!.loss < results.first!.loss)
    // 256 samples / 32 = 8 steps per epoch.
    #expect(trainer.clock.step == 32)
    let rows = try readMetrics(dir + "/metrics.jsonl")
    let epochs = rows.filter { $0["kind"] as? String == "epoch" }
    let steps = rows.filter { $0["kind"] as? String == "step" }
    #expect(epochs.count == 4)
    #expect(steps.count == 8)
    for key in [
      "epoch", "step", "loss", "accuracy", "test_loss", "test_accuracy", "learning_rate", "flip_ratio",
      "images_per_second", "seconds",
    ] {
      #expect(epochs[0][key] != nil, "epoch row lacks \(key)")
    }
    let flips = epochs[0]["flip_ratio"] as! [String: Double]
    #expect(Set(flips.keys) == ["quant_dense", "quant_dense_1", "quant_dense_2", "quant_dense_3"])
    #expect(flips.values.allSatisfy { $0 > 0 && $0 < 1 })
    #expect(epochs[3]["step"] as? Int == 32)
  }

  @Test func sameSeedSameModel() throws {
    let dir = temporaryDirectory()
    writeToyDataset(to: dir, train: 100, test: 20)
    let data = try DataSplits.load(directory: dir)
    func train(seed: UInt64) throws -> [Float] {
      let model = try toyModel(seed: seed)
      try makeTrainer(model, data: data, epochs: 2, batch: 24, seed: seed).fit()
      return model.store.values.array + model.store.state.array
    }
    let a = try train(seed: 5)
    let b = try train(seed: 5)
    let c = try train(seed: 6)
    #expect(a == b)
    #expect(a != c)
  }

  @Test func weightClipHoldsAfterEveryStep() throws {
    let dir = temporaryDirectory()
    writeToyDataset(to: dir, train: 64, test: 16)
    let data = try DataSplits.load(directory: dir)
    let model = try toyModel(seed: 1)
    let trainer = try Trainer(
      model: model,
      optimizer: try OptimizerSpec.sgd(learningRate: .constant(50), momentum: .constant(0), nesterov: false).make(),
      communicator: SingleProcessCommunicator(), data: data,
      options: TrainingOptions(epochs: 1, batchSize: 16, seed: 0, logEverySteps: 0), logger: Logger(label: "t"),
      )
    try trainer.fit()
    for v in model.store.views where v.role == .kernel {
      let w = UnsafeBufferPointer(start: model.store.pointer(v), count: v.count)
      #expect(w.allSatisfy { abs($0) <= 1 })
      #expect(w.contains { abs($0) == 1 })
    }
  }

  @Test func mismatchedModelAndDataAreErrors() throws {
    let dir = temporaryDirectory()
    writeToyDataset(to: dir, train: 20, test: 10)
    let data = try DataSplits.load(directory: dir)
    let wrongInput = try Model(specs: ModelPreset.binarynetMLP.layers, inputShape: [28, 28, 1], seed: 0)
    do {
      _ = try makeTrainer(wrongInput, data: data)
      Issue.record("expected an error")
    } catch { #expect("\(error)".contains("[28, 28, 1]") && "\(error)".contains("[6, 6, 1]")) }
    let wrongClasses = try Model(specs: ModelPreset.binarynetMLP.layers, inputShape: [6, 6, 1], seed: 0)
    do {
      _ = try makeTrainer(wrongClasses, data: data)
      Issue.record("expected an error")
    } catch { #expect("\(error)".contains("2 classes")) }
  }

  @Test func accumulatedMicroStepsEqualOneStep() throws {
    let dir = temporaryDirectory()
    writeToyDataset(to: dir, train: 100, test: 20)
    let data = try DataSplits.load(directory: dir)
    // No BatchNorm: its batch statistics would differ between micro-batches and the batch.
    var specs = [
      LayerSpec(.flatten), LayerSpec(.quantDense), LayerSpec(.activation), LayerSpec(.dense), LayerSpec(.activation),
    ]
    specs[1].units = 12
    specs[1].kernelQuantizer = QuantizerSpec("ste_sign")
    specs[1].kernelConstraint = .weightClip(clipValue: 1)
    specs[2].activation = .relu
    specs[3].units = 2
    specs[4].activation = .softmax
    func train(accumulate: Int) throws -> [Float] {
      let model = try Model(specs: specs, inputShape: [6, 6, 1], seed: 2)
      var options = TrainingOptions(epochs: 2, batchSize: 32, seed: 1, logEverySteps: 0)
      options.accumulate = accumulate
      let trainer = try Trainer(
        model: model, optimizer: try OptimizerSpec.adam(learningRate: 0.01).make(),
        communicator: SingleProcessCommunicator(), data: data, options: options, logger: Logger(label: "t"),
        )
      try trainer.fit()
      return model.store.values.array
    }
    let one = try train(accumulate: 1)
    let four = try train(accumulate: 4)
    #expect(maxDifference(one, four) < 1e-4)
    do {
      _ = try train(accumulate: 3)
      Issue.record("32 is not divisible by 3 micro-steps")
    } catch { #expect("\(error)".contains("ranks × micro-steps = 1 × 3")) }
  }

  @Test func gradientBucketsCoverTheBufferInBackwardOrder() throws {
    let model = try Model(specs: ModelPreset.binarynetMLP.layers, inputShape: [28, 28, 1], seed: 0)
    let views = model.store.views
    for cap in [1, 1 << 20, 4 << 20, 1 << 30] {
      let buckets = GradientBucket.plan(views: views, capBytes: cap)
      // Contiguous from the end of the buffer down to 0, each ready after its lowest layer.
      var upper = model.store.gradients.count
      for b in buckets {
        #expect(b.range.upperBound == upper)
        upper = b.range.lowerBound
        let inside = views.filter { b.range.contains($0.offset) }
        #expect(b.firstLayer == inside.map(\.layerIndex).min())
        #expect(inside.allSatisfy { $0.offset + $0.count <= b.range.upperBound })
      }
      #expect(upper == 0)
      #expect(buckets.map(\.firstLayer) == buckets.map(\.firstLayer).sorted(by: >))
    }
    #expect(GradientBucket.plan(views: views, capBytes: 1).count == views.count)
    #expect(GradientBucket.plan(views: views, capBytes: 1 << 30).count == 1)
    // 4 MiB: each 1024×1024 kernel (4 MiB) closes a bucket; the first layer's 784×1024 kernel
    // (3.1 MiB) and its BatchNorm make the last, smaller one.
    #expect(GradientBucket.plan(views: views, capBytes: 4 << 20).count == 3)
  }

  /// The compact wire's split of the bottom kernel: its row blocks become buckets of their own,
  /// after the buckets of the layers above and before what else its layer holds; together the
  /// buckets still tile the buffer.
  @Test func splitKernelBucketsTileTheBuffer() throws {
    let model = try Model(specs: ModelPreset.binarynetMLP.layers, inputShape: [28, 28, 1], seed: 0)
    let views = model.store.views
    let kernel = try #require(views.firstIndex { $0.role == .kernel })
    let layer = views[kernel].layerIndex
    let split = GradientBucket.KernelSplit(view: kernel, blocks: 3, rowLength: 1024)
    for cap in [1, 4 << 20, 1 << 30] {
      let buckets = GradientBucket.plan(views: views, capBytes: cap, split: split)
      let sorted = buckets.map(\.range).sorted { $0.lowerBound < $1.lowerBound }
      #expect(sorted.first?.lowerBound == 0 && sorted.last?.upperBound == model.store.gradients.count)
      #expect(zip(sorted, sorted.dropFirst()).allSatisfy { $0.upperBound == $1.lowerBound })
      let blocks = buckets.filter { $0.readyAfterRows != nil }
      // 784 rows in 3 blocks, in order, of the kernel's rows.
      #expect(blocks.map(\.readyAfterRows) == [261, 522, 784])
      #expect(blocks.map(\.range.count) == [261 * 1024, 261 * 1024, 262 * 1024])
      #expect(blocks.allSatisfy { $0.firstLayer == layer })
      let first = try #require(buckets.firstIndex { $0.readyAfterRows != nil })
      #expect(buckets[first..<(first + 3)].allSatisfy { $0.readyAfterRows != nil })
      // Before the blocks, only buckets of layers above; after them, only this layer's rest.
      #expect(buckets[..<first].allSatisfy { $0.firstLayer > layer })
      #expect(buckets[(first + 3)...].allSatisfy { $0.firstLayer == layer })
    }
    // Ready as backward reports rows, or passes the layer; a bucket of a layer below never.
    let block = GradientBucket(range: 0..<10, firstLayer: 1, readyAfterRows: 261)
    #expect(!block.isReady(afterLayer: 1, rows: 200) && block.isReady(afterLayer: 1, rows: 261))
    #expect(block.isReady(afterLayer: 1) && block.isReady(afterLayer: 0) && !block.isReady(afterLayer: 2))
    let rest = GradientBucket(range: 0..<10, firstLayer: 1)
    #expect(!rest.isReady(afterLayer: 1, rows: 784) && rest.isReady(afterLayer: 1) && rest.isReady(afterLayer: 0, rows: 5))
  }

  @Test func shardLayoutGivesEachRankOnePartOfEveryBucket() throws {
    let model = try Model(specs: ModelPreset.binarynetMLP.layers, inputShape: [28, 28, 1], seed: 0)
    let buckets = GradientBucket.plan(views: model.store.views, capBytes: 4 << 20)
    for ranks in [1, 2, 3] {
      let layouts = (0..<ranks).map { ShardLayout(buckets: buckets, ranks: ranks, rank: $0) }
      for (i, b) in buckets.enumerated() {
        // The parts tile the bucket in rank order, sizes differing by at most one.
        var at = b.range.lowerBound
        for r in 0..<ranks {
          #expect(layouts[r].mine[i].lowerBound == at)
          #expect(layouts[r].mine[i].count == layouts[0].counts[i][r])
          at = layouts[r].mine[i].upperBound
        }
        #expect(at == b.range.upperBound)
        #expect(layouts[0].counts[i].max()! - layouts[0].counts[i].min()! <= 1)
      }
      // Every element of the flat buffer is owned by exactly one rank.
      let owned = layouts.flatMap(\.mine).reduce(0) { $0 + $1.count }
      #expect(owned == model.store.values.count)
    }
  }
}
