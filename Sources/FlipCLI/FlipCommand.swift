import ArgumentParser
import FlipBNN
import FlipTensor
import FlipTraining

/// `flip`: the root command only lists the subcommands.
public struct FlipCommand: ParsableCommand {
  public static let configuration = CommandConfiguration(
    commandName: "flip",
    abstract:
      "Train binary neural networks (latent weights, Larq's quantizers and optimizers), data-parallel over MPI.",
    discussion: """
      Examples:
        flip summary --model larq-cnn
        flip train --model binarynet-mlp --epochs 10 --batch-size 512 --seed 0 --out runs/mlp
        flip evaluate --run runs/mlp
        flip checkpoint inspect runs/mlp/model.safetensors
        flip checkpoint export --binary runs/mlp/model.safetensors runs/mlp/model-binary.safetensors
        flip evaluate --checkpoint runs/mlp/model-binary.safetensors
        flip train --config configs/binarynet-mlp.yaml --out runs/custom
        flip bench --model larq-cnn --steps 60
        flip selftest --model larq-cnn
        flip plot runs/mlp runs/cnn --out curves.png
        flip data check /data/imagenet
        flip train --model birealnet --data /data/imagenet --image-size 224 --batch-size 64
        mpirun -np 2 flip mpi-check
      """,
    subcommands: [
      TrainCommand.self, EvaluateCommand.self, SummaryCommand.self, BenchCommand.self, CheckpointCommand.self,
      MPICheckCommand.self, SelfTestCommand.self, PlotCommand.self, DataCommand.self,
    ])
  public init() {}
}

/// Choosing a model: a built-in preset or a YAML config file.
struct ModelOptions: ParsableArguments {
  @Option(
    name: .long, help: "A built-in model preset: \(ModelPreset.allCases.map(\.rawValue).joined(separator: ", ")).")
  var model: String?

  @Option(
    name: .long,
    help: "A YAML run config (layers, optimizer, epochs, ...); flags override its values. Examples in configs/.")
  var config: String?

  func validate() throws {
    if let model, ModelPreset(rawValue: model) == nil {
      throw ValidationError(
        "unknown model preset '\(model)'; known: \(ModelPreset.allCases.map(\.rawValue).joined(separator: ", "))")
    }
  }

  /// The config the options describe (the preset's defaults when only --model is given).
  func resolve(defaultPreset: ModelPreset? = nil) throws -> RunSettings {
    var c: RunSettings
    if let config {
      c = try RunSettings.load(path: config)
    } else if let p = model.flatMap(ModelPreset.init(rawValue:)) ?? defaultPreset {
      c = RunSettings(preset: p)
    } else {
      throw ValidationError(
        "name a model with --model \(ModelPreset.allCases.map(\.rawValue).joined(separator: "|")) or --config FILE")
    }
    if config != nil, let name = model, let p = ModelPreset(rawValue: name) {
      c.model = p.rawValue
      c.layers = p.layers
    }
    return c
  }
}

/// Compute options shared by the commands that run a model.
struct ComputeOptions: ParsableArguments {
  @Option(
    name: .long,
    help: "oneDNN (OpenMP) compute threads per process. Default: the machine's cores divided by the ranks on this node."
  )
  var threads: Int?

  @Option(
    name: .long,
    help: ArgumentHelp(
      "Forward kernel of binary layers (input and kernel both binary): auto (the fastest of fp32, int8 and xnor, timed at start-up on this CPU; the default), int8, fp32, or xnor.",
      discussion:
        "All are exact, so the choice never changes results. xnor (XNOR and popcount over packed sign bits) serves dense layers with ±1 inputs and kernels on CPUs with AVX2; a layer without the forced kernel runs fp32."
    ))
  var binaryForward: BinaryForwardPolicy?

  @Option(
    name: .long,
    help: ArgumentHelp(
      "Arithmetic of the convolutions' backward passes: fp32 (direct), winograd or bf16. Default: winograd for Larq Zoo's presets, fp32 otherwise.",
      discussion:
        "winograd runs 3×3 stride-1 layers (channels and filters multiples of 16) through Winograd F(4×4, 3×3) transforms in fp32: oneDNN's on AVX-512, Flip's own on AVX2; within fp32's error and 1.5–1.7× as fast for Larq Zoo's networks; other layers, and CPUs without AVX2, run fp32. bf16 rounds x, dy and the kernel to bfloat16 (fp32 accumulation and gradients), as mixed-precision training does: about twice as fast on CPUs with AVX512_BF16 or AMX, an error elsewhere."
    ))
  var backwardPrecision: BackwardPrecision?

  @Flag(name: .long, help: "Print debug logs.")
  var verbose = false

  func validate() throws {
    if let threads, threads <= 0 { throw ValidationError("--threads must be positive, got \(threads)") }
  }

  /// The run-setting keys these flags set (`threads`, `binary_forward`, `backward_precision`).
  func overrides() -> [RunSettings.CodingKeys: ConfigValue] {
    var o: [RunSettings.CodingKeys: ConfigValue] = [:]
    if let threads { o[.threads] = .int(threads) }
    if let binaryForward { o[.binaryForward] = .string(binaryForward.rawValue) }
    if let backwardPrecision { o[.backwardPrecision] = .string(backwardPrecision.rawValue) }
    return o
  }
}
