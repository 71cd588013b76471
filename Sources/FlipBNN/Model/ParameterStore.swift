import FlipTensor
import Foundation

/// What a variable is to its layer. Names follow Keras's (`kernel`, `depthwise_kernel`, `bias`,
/// `gamma`, `beta`, `moving_mean`, `moving_variance`), so checkpoint tensors read like Keras weights.
public enum ParameterRole: String, Sendable, Codable {
  case kernel, bias, gamma, beta
  /// The kernel of `DepthwiseConv2D`/`QuantDepthwiseConv2D`, (KH, KW, C, M).
  case depthwiseKernel = "depthwise_kernel"
  case movingMean = "moving_mean"
  case movingVariance = "moving_variance"
}

/// How a layer asks for a variable before the store exists.
public struct ParameterSpec: Sendable {
  public var role: ParameterRole
  public var shape: [Int]
  /// Bits of the values the forward pass uses (the kernel quantizer's precision; 32 otherwise).
  public var precision: Int
  /// Trainable variables live in the parameter buffer and get gradients; the others (BatchNorm
  /// moving statistics) live in the state buffer.
  public var trainable: Bool
  public var constraint: KernelConstraint?
  public var initializer: Initializer

  public init(
    role: ParameterRole, shape: [Int], precision: Int = 32, trainable: Bool = true,
    constraint: KernelConstraint? = nil, initializer: Initializer
  ) {
    self.role = role
    self.shape = shape
    self.precision = precision
    self.trainable = trainable
    self.constraint = constraint
    self.initializer = initializer
  }
}

/// A named view into one of the store's flat buffers.
public struct ParameterView: Sendable, Equatable {
  /// `layers.<index>.<layer name>.<role>`, e.g. `layers.1.quant_dense.kernel`.
  public let name: String
  public let layerIndex: Int
  public let role: ParameterRole
  public let shape: [Int]
  /// Offset in elements into `values`/`gradients` (trainable) or `state` (non-trainable).
  public let offset: Int
  public let count: Int
  public let precision: Int
  public let trainable: Bool
  public let constraint: KernelConstraint?
}

/// All variables of a model in three flat buffers with named views, in the llm.c style: the
/// trainable `values` and their `gradients` share one layout, so zeroing gradients is one fill,
/// an all-reduce is one call per bucket, and an optimizer is one loop per view; non-trainable
/// `state` (BatchNorm moving statistics) has its own buffer and views.
public final class ParameterStore {
  public let views: [ParameterView]
  public let stateViews: [ParameterView]
  /// (P) trainable parameters.
  public let values: FloatBuffer
  /// (P) gradients of the summed loss with respect to `values`; accumulated by backward.
  public let gradients: FloatBuffer
  /// (S) non-trainable state.
  public let state: FloatBuffer

  /// Lays out `specs[layer]` in order and initializes every variable from `random`.
  public init(layerNames: [String], specs: [[ParameterSpec]], random: inout SplitMix64) {
    var views: [ParameterView] = []
    var stateViews: [ParameterView] = []
    var p = 0
    var s = 0
    for (index, layerSpecs) in specs.enumerated() {
      for spec in layerSpecs {
        let count = spec.shape.reduce(1, *)
        let name = "layers.\(index).\(layerNames[index]).\(spec.role.rawValue)"
        if spec.trainable {
          views.append(
            ParameterView(
              name: name, layerIndex: index, role: spec.role, shape: spec.shape, offset: p,
              count: count, precision: spec.precision, trainable: true, constraint: spec.constraint))
          p += count
        } else {
          stateViews.append(
            ParameterView(
              name: name, layerIndex: index, role: spec.role, shape: spec.shape, offset: s,
              count: count, precision: spec.precision, trainable: false, constraint: nil))
          s += count
        }
      }
    }
    self.views = views
    self.stateViews = stateViews
    values = FloatBuffer(count: p)
    gradients = FloatBuffer(count: p)
    state = FloatBuffer(count: s)
    // Initialize in declaration order so the draws do not depend on the buffer layout.
    var vi = 0
    var si = 0
    for layerSpecs in specs {
      for spec in layerSpecs {
        if spec.trainable {
          let v = views[vi]
          spec.initializer.fill(values.pointer + v.offset, shape: v.shape, random: &random)
          vi += 1
        } else {
          let v = stateViews[si]
          spec.initializer.fill(state.pointer + v.offset, shape: v.shape, random: &random)
          si += 1
        }
      }
    }
  }

  public var parameterCount: Int { values.count }

  /// The pointer to a trainable view's values.
  @inlinable public func pointer(_ view: ParameterView) -> UnsafeMutablePointer<Float> {
    (view.trainable ? values.pointer : state.pointer) + view.offset
  }
  @inlinable public func gradient(_ view: ParameterView) -> UnsafeMutablePointer<Float> {
    gradients.pointer + view.offset
  }

  /// The views of one layer, trainable first, in declaration order.
  public func views(ofLayer index: Int) -> [ParameterView] {
    views.filter { $0.layerIndex == index } + stateViews.filter { $0.layerIndex == index }
  }

  /// The threads of the passes over the whole store (zeroing, optimizer steps): its model's
  /// (`Model.compute`).
  public var compute = Compute.serial

  /// Sets every gradient to zero (the start of a step).
  public func zeroGradients() {
    let g = gradients.pointer
    compute.forEach(count: gradients.count) { r in (g + r.lowerBound).update(repeating: 0, count: r.count) }
  }

  /// Applies each view's kernel constraint (after every optimizer step).
  public func applyConstraints() {
    for v in views { v.constraint?.apply(values.pointer + v.offset, count: v.count) }
  }
}

/// Kernel constraints, by Larq's names.
public enum KernelConstraint: Sendable, Equatable {
  /// `weight_clip(clip_value=1)`: `w ← clip(w, −clip_value, clip_value)`.
  case weightClip(clipValue: Float)

  public var name: String {
    switch self {
    case .weightClip: return "weight_clip"
    }
  }

  /// The interval the constraint clips to.
  public var bounds: (Float, Float) {
    switch self {
    case .weightClip(let c): return (-c, c)
    }
  }

  public func apply(_ w: UnsafeMutablePointer<Float>, count: Int) {
    switch self {
    case .weightClip(let c):
      for i in 0..<count { w[i] = min(max(w[i], -c), c) }
    }
  }
}

extension Optional where Wrapped == KernelConstraint {
  /// The clip interval, (−∞, ∞) without a constraint (so one branch-free loop serves both).
  public var bounds: (Float, Float) { self?.bounds ?? (-.infinity, .infinity) }
}

/// Variable initializers (Keras's defaults: glorot_uniform kernels, zero biases and betas,
/// unit gammas and moving variances).
public enum Initializer: Sendable, Equatable {
  case zeros, ones
  /// `U(−l, l)` with `l = √(6 / (fan_in + fan_out))`; for a kernel of shape
  /// `[..receptive.., in, out]`, `fan_in = in·receptive`, `fan_out = out·receptive`.
  case glorotUniform
  /// Keras's `GlorotNormal`: a normal truncated at 2 standard deviations, of standard
  /// deviation `√(2 / (fan_in + fan_out)) / 0.87962566103423978` (so the truncated
  /// distribution's is `√(2 / (fan_in + fan_out))`).
  case glorotNormal
  /// Keras's `HeNormal`: a normal truncated at 2 standard deviations, of standard deviation
  /// `√(2 / fan_in) / 0.87962566103423978`.
  case heNormal
  /// Larq Zoo's `blurpool_initializer` (QuickNet's anti-aliased pooling, Zhang 2019) for a
  /// depthwise kernel (K, K, C, 1): each channel's K×K kernel is `k kᵀ / (Σk)²` with
  /// `k = [1, 1]`, `[1, 2, 1]` or `[1, 4, 6, 4, 1]` for K = 2, 3, 5.
  case blurpool
  case constant(Float)

  /// Keras's string names.
  public init?(name: String) {
    switch name {
    case "zeros": self = .zeros
    case "ones": self = .ones
    case "glorot_uniform": self = .glorotUniform
    case "glorot_normal": self = .glorotNormal
    case "he_normal": self = .heNormal
    case "blurpool_initializer": self = .blurpool
    default: return nil
    }
  }

  public var name: String {
    switch self {
    case .zeros: return "zeros"
    case .ones: return "ones"
    case .glorotUniform: return "glorot_uniform"
    case .glorotNormal: return "glorot_normal"
    case .heNormal: return "he_normal"
    case .blurpool: return "blurpool_initializer"
    case .constant(let v): return "constant(\(v))"
    }
  }

  public func fill(_ p: UnsafeMutablePointer<Float>, shape: [Int], random: inout SplitMix64) {
    let count = shape.reduce(1, *)
    switch self {
    case .zeros: p.update(repeating: 0, count: count)
    case .ones: p.update(repeating: 1, count: count)
    case .constant(let v): p.update(repeating: v, count: count)
    case .glorotUniform:
      let (fanIn, fanOut) = Initializer.fans(shape)
      let limit = (6 / Float(fanIn + fanOut)).squareRoot()
      for i in 0..<count { p[i] = (2 * random.nextUnitFloat() - 1) * limit }
    case .glorotNormal:
      let (fanIn, fanOut) = Initializer.fans(shape)
      Self.fillTruncatedNormal(p, count: count, deviation: (2 / Double(fanIn + fanOut)).squareRoot(), random: &random)
    case .heNormal:
      let (fanIn, _) = Initializer.fans(shape)
      Self.fillTruncatedNormal(p, count: count, deviation: (2 / Double(fanIn)).squareRoot(), random: &random)
    case .blurpool:
      let taps = Self.blurTaps(shape[0])
      let total = taps.reduce(0, +)
      let lanes = shape.dropFirst(2).reduce(1, *)
      for ky in 0..<shape[0] {
        for kx in 0..<shape[1] {
          let v = taps[ky] * taps[kx] / (total * total)
          (p + (ky * shape[1] + kx) * lanes).update(repeating: v, count: lanes)
        }
      }
    }
  }

  /// A normal of standard deviation `deviation` after truncation at ±2 (Keras's truncated
  /// normal initializers): Box–Muller, redrawn outside ±2, scaled by `deviation / 0.8796…`.
  private static func fillTruncatedNormal(
    _ p: UnsafeMutablePointer<Float>, count: Int, deviation: Double, random: inout SplitMix64
  ) {
    let scale = deviation / 0.879_625_661_034_239_78
    for i in 0..<count {
      var z: Double
      repeat {
        let u = max(Double(random.nextUnitFloat()), 1e-12)
        let v = Double(random.nextUnitFloat())
        z = (-2 * log(u)).squareRoot() * cos(2 * Double.pi * v)
      } while abs(z) > 2
      p[i] = Float(z * scale)
    }
  }

  /// The binomial taps of a blur kernel of `size` (2, 3 or 5; `checkShape` rejects others).
  static func blurTaps(_ size: Int) -> [Float] {
    switch size {
    case 2: return [1, 1]
    case 3: return [1, 2, 1]
    default: return [1, 4, 6, 4, 1]
    }
  }

  /// Throws when the initializer cannot fill a kernel of `shape` (`blurpool` wants a square
  /// (K, K, C, 1) depthwise kernel with K 2, 3 or 5, as Larq Zoo's does).
  public func checkShape(_ shape: [Int], owner: String) throws {
    guard self == .blurpool else { return }
    guard shape.count == 4, shape[0] == shape[1], [2, 3, 5].contains(shape[0]), shape[3] == 1 else {
      throw BNNError.invalidParameter(
        owner: owner, parameter: "depthwise_initializer",
        reason:
          "blurpool_initializer needs a 2×2, 3×3 or 5×5 depthwise kernel with depth_multiplier 1, got shape \(shape)")
    }
  }

  /// Keras's names of the initializers a config may give.
  public static let names = ["glorot_uniform", "glorot_normal", "he_normal", "zeros", "ones", "blurpool_initializer"]

  static func fans(_ shape: [Int]) -> (Int, Int) {
    if shape.count < 2 {
      let n = shape.first ?? 1
      return (n, n)
    }
    let receptive = shape.dropLast(2).reduce(1, *)
    return (shape[shape.count - 2] * receptive, shape[shape.count - 1] * receptive)
  }
}
