import ArgumentParser
import FlipBNN
import FlipComm
import FlipTensor
import FlipTraining
import Foundation

struct BenchCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "bench",
    abstract: "Measure training throughput (images/s) and the GFLOP/s of the step's GEMMs.",
    discussion: """
      Runs --warmup untimed steps (oneDNN compiles its kernels on a shape's first call), then \
      --steps timed training steps (forward, backward, optimizer, constraint) on batches from \
      the data set, and prints images/s, ms/step, and the share and speed of the GEMMs. Use a \
      release build: swift build -c release.
      """)

  @OptionGroup var modelOptions: ModelOptions
  @OptionGroup var compute: ComputeOptions
  @Option(name: .long, help: "Global batch size (default 512).")
  var batchSize = 512
  @Option(name: .long, help: "Timed steps (default 100).")
  var steps = 100
  @Option(name: .long, help: "Untimed warm-up steps (default 5).")
  var warmup = 5
  @Option(name: .long, help: "Data directory (default: the config's, Fashion-MNIST).")
  var data: String?
  @Flag(name: .long, help: "Use random images instead of a data set.")
  var synthetic = false
  @Option(name: .long, help: "Under mpirun: gradient bucket size in MiB (0: one all-reduce after backward; default 4).")
  var bucketMb: Double = 4
  @Flag(inversion: .prefixedNo, help: "Under mpirun: the sharded (ZeRO-1) optimizer step (default), or the all-reduce.")
  var shardOptimizer = true
  @Option(
    name: .long,
    help: ArgumentHelp(
      "Under mpirun, the sharded step's wire: fp32, compact (bf16 gradients, binary kernels as sign bits), or auto (the default: fp32 when every rank is on one host, compact across hosts).",
      discussion:
        "compact sends a quarter of fp32's bytes for a BNN; its gradients are rounded to bfloat16 (summed in fp32), so results differ from fp32's in the last bits."
    ))
  var wire: WirePolicy = .auto
  @Option(
    name: .long,
    help:
      "Under mpirun: how started reductions progress during backward: testall (MPI_Testall between layers, the default) or thread (a progress thread, MPI_THREAD_MULTIPLE; an experiment)."
  )
  var mpiProgress: MPIProgress = .testall
  @Flag(
    name: .long,
    help: "Run convolutions as im2col + GEMM instead of oneDNN's convolution primitives (to compare them).")
  var im2col = false
  @Option(name: .long, help: "Training-image augmentation: none, crop or crop-flip (default: the config's).")
  var augment: AugmentationMode?
  @Option(name: .long, help: "Write a Chrome trace of the timed steps on every rank to this file (see flip train --timeline).")
  var timeline: String?
  @Flag(name: .long, help: "Print the result as one JSON object.")
  var json = false

  func validate() throws {
    if batchSize <= 0 { throw ValidationError("--batch-size must be positive, got \(batchSize)") }
    if steps <= 0 { throw ValidationError("--steps must be positive, got \(steps)") }
    if warmup < 0 { throw ValidationError("--warmup must be ≥ 0, got \(warmup)") }
  }

  func run() throws {
    try Runtime.run(verbose: compute.verbose, progressThread: mpiProgress == .thread) { communicator, logger in
      var config = try modelOptions.resolve(defaultPreset: .binarynetMLP)
      let threads = Runtime.configureThreads(compute.threads, localRanks: communicator.localSize)
      let splits: DataSplits
      if synthetic {
        let shape = config.inputShape ?? [28, 28, 1]
        let n = batchSize * 4
        var g = SplitMix64(seed: 1)
        let size = shape.reduce(1, *)
        let images = (0..<(n * size)).map { _ in UInt8(truncatingIfNeeded: g.next()) }
        let labels = (0..<n).map { Int32($0 % 10) }
        let set = try Dataset(images: images, labels: labels, sampleShape: shape, classes: 10)
        splits = DataSplits(train: set, test: set)
      } else {
        splits = try DataSplits.load(directory: data ?? config.data)
      }
      config.adaptOutput(toClasses: splits.train.classes)
      config.optimizer = config.optimizer.resolvingRunLength(
        totalSteps: config.epochs * max(1, splits.train.count / batchSize))
      let profiler = GEMMProfiler()
      let model = try Model(
        specs: config.layers, inputShape: config.inputShape ?? splits.train.sampleShape, seed: 0,
        compute: Compute(threads: threads, profiler: profiler))
      if im2col { for case let conv as QuantConv2D in model.layers { conv.usePrimitives = false } }
      var options = TrainingOptions(epochs: 1, batchSize: batchSize, seed: 0, logEverySteps: 0)
      options.bucketBytes = Int(bucketMb * 1_048_576)
      options.shardOptimizer = shardOptimizer
      options.measureImbalance = communicator.size > 1
      options.binaryForward = compute.binaryForward
      options.augmentation = Augmentation(mode: augment ?? config.augment)
      options.wire = wire
      let trainer = try Trainer(
        model: model, optimizer: try config.optimizer.make(), communicator: communicator, data: splits,
        options: options, logger: logger,
        progress: ProgressReporter(enabled: false))
      // Full batches only: skip the epoch's last, partial batch.
      let fullSteps = max(1, splits.train.count / batchSize)
      var order = trainer.sampler.permutation(epoch: 0)
      var cursor = 0
      func next() throws {
        if cursor >= fullSteps {
          cursor = 0
          order = trainer.sampler.permutation(epoch: 1)
        }
        _ = try trainer.tracedStep(order: order, stepInEpoch: cursor)
        cursor += 1
      }
      for _ in 0..<warmup { try next() }
      if let timeline {
        trainer.timeline = Timeline(path: timeline, window: (warmup + 1)..<(warmup + steps + 1))
      }
      profiler.reset()
      profiler.enabled = true
      trainer.startTiming()
      try communicator.barrier()
      let start = DispatchTime.now().uptimeNanoseconds
      for _ in 0..<steps { try next() }
      let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
      profiler.enabled = false
      try trainer.finishTimeline()
      // The step's time split, averaged over the ranks (ms per step), and the same
      // communication run alone, for the fraction of it that the step hides.
      let t = try trainer.finishTiming()
      var split = [t.data, t.compute, t.communication, t.optimizer, t.imbalance].map {
        Double($0) / 1e6 / Double(steps)
      }
      split.insert(try trainer.exchange.communicationAlone(repeats: 20), at: 4)
      try communicator.allreduceSum(&split)
      split = split.map { $0 / Double(communicator.size) }
      let hidden = communicator.size > 1 && split[4] > 0 ? 1 - split[2] / split[4] : 0
      let imagesPerSecond = Double(steps * batchSize) / seconds
      let f32 = profiler.float32
      let i8 = profiler.int8
      let xnor = profiler.xnor
      let gemmShare = Double(f32.nanoseconds + i8.nanoseconds + xnor.nanoseconds) / 1e9 / seconds
      let name = config.model
      guard communicator.isRoot else { return }
      if json {
        let row: [String: Any] = [
          "model": name, "batch_size": batchSize, "steps": steps, "threads": threads, "ranks": communicator.size,
          "isa": OneDNN.effectiveISA, "images_per_second": imagesPerSecond,
          "ms_per_step": seconds / Double(steps) * 1000,
          "fp32_gemm_gflops_per_second": f32.rate, "int8_gemm_gops_per_second": i8.rate,
          "fp32_gemm_time_share": Double(f32.nanoseconds) / 1e9 / seconds,
          "int8_gemm_time_share": Double(i8.nanoseconds) / 1e9 / seconds, "gemm_time_share": gemmShare,
          "xnor_gops_per_second": xnor.rate, "xnor_time_share": Double(xnor.nanoseconds) / 1e9 / seconds,
          "data_ms": split[0], "compute_ms": split[1], "communication_wait_ms": split[2], "optimizer_ms": split[3],
          "communication_alone_ms": split[4], "hidden_fraction": hidden, "imbalance_wait_ms": split[5],
          "sharded_optimizer": shardOptimizer && communicator.size > 1, "bucket_mb": bucketMb,
          "mpi_progress": mpiProgress.rawValue, "exchange": trainer.exchange.description,
          "bytes_sent_per_step": trainer.exchange.bytesSentPerStep, "wire": trainer.exchange.wireFormat.rawValue,
          "variables": model.store.values.count,
          "sign_variables": model.signKernels.reduce(0) { $0 + model.store.views[$1.view].count },
          "gradient_sum_bytes": model.gradientBufferBytes, "gradient_sum_bytes_if_kept": model.gradientBytesIfKept,
        ]
        let data = try JSONSerialization.data(withJSONObject: row, options: [.sortedKeys])
        print(String(decoding: data, as: UTF8.self))
      } else {
        let perStep = seconds / Double(steps) * 1000
        print(
          String(
            format: "%@: %.0f images/s, %.1f ms/step (batch %d, %d steps, %d thread%@, oneDNN ISA %@)", name,
            imagesPerSecond, perStep, batchSize, steps, threads, threads == 1 ? "" : "s", OneDNN.effectiveISA))
        print(
          String(
            format:
              "GEMMs: fp32 %.1f GFLOP/s over %d calls (%.0f %% of the step), exact int8 %.1f GOP/s over %d calls (%.0f %%), XNOR %.1f GOP/s over %d calls (%.0f %%)",
            f32.rate, f32.calls, Double(f32.nanoseconds) / 1e9 / seconds * 100, i8.rate, i8.calls,
            Double(i8.nanoseconds) / 1e9 / seconds * 100, xnor.rate, xnor.calls,
            Double(xnor.nanoseconds) / 1e9 / seconds * 100))
        print(
          String(
            format:
              "per step: data %.2f ms, compute %.2f ms, waiting for the slowest rank %.2f ms, communication wait %.2f ms, optimizer %.2f ms; the same communication alone %.2f ms (hidden: %.0f %%)",
            split[0], split[1], split[5], split[2], split[3], split[4], hidden * 100))
        if model.gradientBytesIfKept > 0 {
          print(
            String(
              format: "gradient sums of shared tensors: %.2f MB in pooled buffers (%.2f MB if each kept its own)",
              Double(model.gradientBufferBytes) / 1e6, Double(model.gradientBytesIfKept) / 1e6))
        }
        if communicator.size > 1 {
          print(
            "exchange: \(trainer.exchange.description), \(String(format: "%.2f", Double(trainer.exchange.bytesSentPerStep) / 1e6)) MB sent per step per rank"
          )
        }
      }
    }
  }
}

/// `--mpi-progress` values.
enum MPIProgress: String, ExpressibleByArgument, CaseIterable {
  case testall, thread
}
