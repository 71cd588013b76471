/// The built-in model presets. Each is written out the same way in `configs/<name>.yaml`.
public enum ModelPreset: String, CaseIterable, Sendable {
  /// BinaryNet MLP (Courbariaux et al. 2016) as in Larq's examples: 3 × 1024 hidden units.
  case binarynetMLP = "binarynet-mlp"
  /// Larq's introductory CNN: three 3×3 binary convolutions and two binary dense layers.
  case larqCNN = "larq-cnn"
  /// Bi-Real Net's residual structure scaled to small images (`birealnetLayers`).
  case birealnet
  /// Larq Zoo's QuickNet structure scaled to small images (`quicknetLayers`).
  case quicknet

  /// The preset's own optimizer (nil: Larq's Adam 1e-3): for the residual presets Adam from
  /// 1e-3 with cosine decay to 0 over all steps of the run, per step (Keras's `CosineDecay`
  /// with `decay_steps` = epochs × steps per epoch).
  public var optimizer: OptimizerSpec? {
    switch self {
    case .binarynetMLP, .larqCNN: return nil
    case .birealnet, .quicknet:
      let cosine = Hyperparameter(.cosineDecay(initial: 1e-3, decaySteps: Schedule.runLength, alpha: 0))
      return .adam(learningRate: cosine)
    }
  }

  /// The preset's global batch size.
  public var batchSize: Int { self == .birealnet || self == .quicknet ? 256 : 512 }

  /// The Keras model name Larq prints (`binarynet_mlp`).
  public var modelName: String { rawValue.replacingOccurrences(of: "-", with: "_") }

  public var layers: [LayerSpec] {
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
    case .quicknet: return Self.quicknetLayers
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
