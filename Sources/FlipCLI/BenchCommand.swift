import ArgumentParser
import FlipBNN
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
  @OptionGroup var shared: SharedSettingsOptions
  @OptionGroup var compute: ComputeOptions
  @Option(name: .long, help: "Timed steps (default 100).")
  var steps = 100
  @Option(name: .long, help: "Untimed warm-up steps (default 5).")
  var warmup = 5
  @Flag(
    name: .long,
    help:
      "Use random images instead of a data set (of --image-size S, S×S×3; Larq Zoo's networks do so at 224×224×3 without --data)."
  )
  var synthetic = false
  @Option(
    name: .long,
    help:
      "Under mpirun: how started reductions progress during backward: testall (MPI_Testall between layers, the default) or thread (a progress thread, MPI_THREAD_MULTIPLE; an experiment)."
  )
  var mpiProgress: MPIProgress = .testall
  @Flag(
    name: .long, help: "Run convolutions as im2col + GEMM instead of oneDNN's convolution primitives (to compare them)."
  )
  var im2col = false
  @Flag(name: .long, help: "Print the result as one JSON object.")
  var json = false

  func validate() throws {
    if steps <= 0 { throw ValidationError("--steps must be positive, got \(steps)") }
    if warmup < 0 { throw ValidationError("--warmup must be ≥ 0, got \(warmup)") }
  }

  func run() throws {
    try Runtime.run(verbose: compute.verbose, progressThread: mpiProgress == .thread) { communicator, logger in
      var settings = try modelOptions.settings(shared, compute, defaultPreset: .binarynetMLP)
      settings.timeline = nil
      var plan = BenchPlan()
      let zoo = ModelPreset(rawValue: settings.model)?.isZoo == true
      let noData = settings.data == DataSplits.defaultDirectory
      (plan.steps, plan.warmup, plan.synthetic, plan.im2col) = (steps, warmup, synthetic || (zoo && noData), im2col)
      plan.mpiProgress = mpiProgress.rawValue
      var env = RunEnvironment(communicator: communicator, logger: logger, progress: ProgressReporter(enabled: false))
      env.timelinePath = shared.timeline
      env.configureThreads = { Runtime.configureThreads($0, localRanks: communicator.localSize) }
      let r = try TrainingRun.bench(settings, plan: plan, environment: env)
      guard communicator.isRoot else { return }
      if json {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        print(String(decoding: try encoder.encode(r), as: UTF8.self))
      } else {
        report(r)
      }
    }
  }

  func report(_ r: BenchResult) {
    print(
      String(
        format: "%@%@: %.1f images/s, %.1f ms/step (batch %d, %d steps, %d thread%@, oneDNN ISA %@%@)", r.model,
        r.imageSize.map { " at \($0)×\($0)" } ?? "", r.imagesPerSecond, r.msPerStep, r.batchSize, r.steps, r.threads,
        r.threads == 1 ? "" : "s", r.isa, r.backwardPrecision == "fp32" ? "" : ", \(r.backwardPrecision) backward"))
    print(
      String(
        format:
          "GEMMs: fp32 %.1f GFLOP/s over %d calls (%.0f %% of the step), exact int8 %.1f GOP/s over %d calls (%.0f %%), XNOR %.1f GOP/s over %d calls (%.0f %%)",
        r.fp32GemmGflopsPerSecond, r.fp32GemmCalls, r.fp32GemmTimeShare * 100, r.int8GemmGopsPerSecond,
        r.int8GemmCalls, r.int8GemmTimeShare * 100, r.xnorGopsPerSecond, r.xnorCalls, r.xnorTimeShare * 100))
    print(
      String(
        format:
          "per step: data %.2f ms, compute %.2f ms, waiting for the slowest rank %.2f ms, communication wait %.2f ms, optimizer %.2f ms; the same communication alone %.2f ms (hidden: %.0f %%)",
        r.dataMs, r.computeMs, r.imbalanceWaitMs, r.communicationWaitMs, r.optimizerMs, r.communicationAloneMs,
        r.hiddenFraction * 100))
    if r.activationGradientBytesIfKept > 0 {
      print(
        String(
          format:
            "activation gradients: %.2f MB in pooled buffers (%.2f MB if each layer kept its own); the layers' shared scratch: %.2f MB",
          Double(r.activationGradientBytes) / 1e6, Double(r.activationGradientBytesIfKept) / 1e6,
          Double(r.scratchBytes) / 1e6))
    }
    if r.ranks > 1 {
      print(
        "exchange: \(r.exchange), \(String(format: "%.2f", Double(r.bytesSentPerStep) / 1e6)) MB sent per step per rank"
      )
    }
  }
}

/// `--mpi-progress` values.
enum MPIProgress: String, ExpressibleByArgument, CaseIterable {
  case testall, thread
}
