/// The built-in model presets. Each is written out the same way in `configs/<name>.yaml`.
public enum ModelPreset: String, CaseIterable, Sendable {
  /// BinaryNet MLP (Courbariaux et al. 2016) as in Larq's examples: 3 × 1024 hidden units.
  case binarynetMLP = "binarynet-mlp"
  /// Larq's introductory CNN: three 3×3 binary convolutions and two binary dense layers.
  case larqCNN = "larq-cnn"
  /// Bi-Real Net's residual structure scaled to small images (`birealnetLayers`).
  case birealnet
  /// Larq Zoo's QuickNet structure scaled to small images (`quicknetLayers`).
  case quicknetMini = "quicknet-mini"
  /// Larq Zoo's ImageNet networks, layer for layer (`zooLayers`), at 224×224×3 with 1,000
  /// classes unless the data says otherwise.
  case birealnet18
  case binaryResNetE18 = "binary-resnet-e18"
  case binaryDenseNet28 = "binary-densenet28"
  case quicknetSmall = "quicknet-small"
  case quicknet
  case quicknetLarge = "quicknet-large"

  /// Whether the preset is one of Larq Zoo's ImageNet networks.
  public var isZoo: Bool {
    switch self {
    case .binarynetMLP, .larqCNN, .birealnet, .quicknetMini: return false
    case .birealnet18, .binaryResNetE18, .binaryDenseNet28, .quicknetSmall, .quicknet, .quicknetLarge: return true
    }
  }

  /// The input shape (H, W, C) the preset is built for when no data gives one: ImageNet's
  /// 224×224×3 for Larq Zoo's networks, Fashion-MNIST's 28×28×1 for the others.
  public var defaultInputShape: [Int] { isZoo ? [224, 224, 3] : [28, 28, 1] }
  /// The classes of the output layer when no data gives them: 1,000 (ImageNet) or 10.
  public var defaultClasses: Int { isZoo ? 1000 : 10 }

  /// The Keras model name Larq prints (`binarynet_mlp`, Larq Zoo's `binary_resnet_e_18`).
  public var modelName: String {
    switch self {
    case .binaryResNetE18: return "binary_resnet_e_18"
    default: return rawValue.replacingOccurrences(of: "-", with: "_")
    }
  }

  /// The layers for inputs of `inputShape` (one sample) in `classes` classes: the output
  /// layer has one unit per class, and Larq Zoo's networks follow the input's size (their
  /// global pool, and the stems of `binary-resnet-e18` and `binary-densenet28`).
  public func layers(inputShape: [Int], classes: Int) -> [LayerSpec] {
    if let zoo = zooLayers(inputShape: inputShape, classes: classes) { return zoo }
    var specs = layers
    if let last = specs.lastIndex(where: { $0.kind == .dense || $0.kind == .quantDense }) {
      specs[last].units = classes
    }
    return specs
  }

  /// The layers for the default input shape and classes.
  public var layers: [LayerSpec] {
    if let zoo = zooLayers(inputShape: defaultInputShape, classes: defaultClasses) { return zoo }
    let clip = KernelConstraint.weightClip(clipValue: 1)
    func bn() -> LayerSpec {
      var s = LayerSpec(.batchNormalization)
      s.momentum = 0.9
      s.scale = false
      return s
    }
    func dense(_ units: Int, quantizeInput: Bool) -> LayerSpec {
      var s = LayerSpec(.quantDense)
      s.units = units
      s.inputQuantizer = quantizeInput ? QuantizerSpec("ste_sign") : nil
      s.kernelQuantizer = QuantizerSpec("ste_sign")
      s.kernelConstraint = clip
      s.useBias = false
      return s
    }
    func conv(_ filters: Int, quantizeInput: Bool) -> LayerSpec {
      var s = LayerSpec(.quantConv2D)
      s.filters = filters
      s.kernelSize = [3, 3]
      s.inputQuantizer = quantizeInput ? QuantizerSpec("ste_sign") : nil
      s.kernelQuantizer = QuantizerSpec("ste_sign")
      s.kernelConstraint = clip
      s.useBias = false
      return s
    }
    var softmax = LayerSpec(.activation)
    softmax.activation = .softmax
    var pool = LayerSpec(.maxPool2D)
    pool.poolSize = [2, 2]
    switch self {
    case .birealnet: return Self.birealnetLayers
    case .quicknetMini: return Self.quicknetLayers
    case .birealnet18, .binaryResNetE18, .binaryDenseNet28, .quicknetSmall, .quicknet, .quicknetLarge: return []
    case .binarynetMLP:
      return [
        LayerSpec(.flatten),
        dense(1024, quantizeInput: false), bn(),
        dense(1024, quantizeInput: true), bn(),
        dense(1024, quantizeInput: true), bn(),
        dense(10, quantizeInput: true), bn(),
        softmax,
      ]
    case .larqCNN:
      return [
        conv(32, quantizeInput: false), pool, bn(),
        conv(64, quantizeInput: true), pool, bn(),
        conv(64, quantizeInput: true), bn(),
        LayerSpec(.flatten),
        dense(64, quantizeInput: true), bn(),
        dense(10, quantizeInput: true), bn(),
        softmax,
      ]
    }
  }
}

/// Each preset's training recipe: Larq's (Adam 1e-3, batch 512) for the small presets, cosine
/// decay for the small residual ones, and Larq Zoo's own for its networks
/// (`larq_zoo/training/basic_experiments.py` and `sota_experiments.py`).
extension ModelPreset {
  /// The preset's own optimizer (nil: Larq's Adam 1e-3).
  ///
  /// - `birealnet`, `quicknet-mini`: Adam from 1e-3, cosine decay to 0 over the run, per step.
  /// - `birealnet18`: Adam 5e-3 decaying linearly to 0 over the run (Keras's `PolynomialDecay`,
  ///   power 1, end 0), per step.
  /// - `binary-resnet-e18`: Adam 4e-3, ε 1e-8, ×0.3 at epochs 70, 90 and 110.
  /// - `binary-densenet28`: Adam 4e-3, ε 1e-8, ×0.1 at epochs 100 and 110.
  /// - QuickNet (all three): Larq's `CaseOptimizer`: Adam (peak 1e-2) for the binary kernels,
  ///   SGD with momentum 0.9 (peak 0.1) for every other variable, both decaying by a cosine to 0
  ///   after the warm-up (`warmupEpochs`), per step.
  public var optimizer: OptimizerSpec? {
    func cosine(_ peak: Double) -> Hyperparameter {
      Hyperparameter(.cosineDecay(initial: peak, decaySteps: Schedule.runLength, alpha: 0))
    }
    func steps(_ lr: Double, factor: Double, at epochs: [Int]) -> OptimizerSpec {
      var values = [lr]
      for _ in epochs { values.append(values.last! * factor) }
      // Epoch t (0-based) takes values[i] for boundaries[i−1] < t ≤ boundaries[i].
      let schedule = Schedule.stepDecay(boundaries: epochs.map { $0 - 1 }, values: values)
      return .adam(
        learningRate: Hyperparameter(schedule, unit: .epoch), beta1: .constant(OptimizerDefaults.adamBeta1),
        beta2: .constant(OptimizerDefaults.adamBeta2), epsilon: .constant(1e-8))
    }
    switch self {
    case .binarynetMLP, .larqCNN: return nil
    case .birealnet, .quicknetMini: return .adam(learningRate: cosine(1e-3))
    case .birealnet18:
      return .adam(
        learningRate: Hyperparameter(.polynomialDecay(initial: 5e-3, decaySteps: Schedule.runLength, end: 0, power: 1)))
    case .binaryResNetE18: return steps(4e-3, factor: 0.3, at: [70, 90, 110])
    case .binaryDenseNet28: return steps(4e-3, factor: 0.1, at: [100, 110])
    case .quicknetSmall, .quicknet, .quicknetLarge:
      let sgd = OptimizerSpec.sgd(learningRate: cosine(0.1), momentum: .constant(0.9), nesterov: false)
      return .caseOptimizer(cases: [(.binary, .adam(learningRate: cosine(1e-2)))], default: sgd)
    }
  }

  /// Epochs of linear warm-up from 0 (QuickNet's 5).
  public var warmupEpochs: Int { self == .quicknetSmall || self == .quicknet || self == .quicknetLarge ? 5 : 0 }

  /// The preset's global batch size.
  public var batchSize: Int {
    switch self {
    case .binarynetMLP, .larqCNN, .birealnet18: return 512
    case .birealnet, .quicknetMini, .binaryDenseNet28: return 256
    case .binaryResNetE18: return 1024
    case .quicknetSmall, .quicknet, .quicknetLarge: return 2048
    }
  }

  /// The preset's epochs (nil: Flip's default): Larq Zoo's for its networks.
  public var epochs: Int? {
    switch self {
    case .binarynetMLP, .larqCNN, .birealnet, .quicknetMini: return nil
    case .birealnet18: return 300
    case .binaryResNetE18, .binaryDenseNet28: return 120
    case .quicknetSmall, .quicknet, .quicknetLarge: return 600
    }
  }
}
