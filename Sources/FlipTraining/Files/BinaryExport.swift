import FlipBNN
import Foundation

// Legend: I the kernel's input (reduction) axis, O its output channels, R the product of the
// axes before I (1 for Dense, KH·KW for Conv2D), W = ⌈I/32⌉ words per packed row.

/// Binary export: a trained model's quantized weights, for inference.
///
/// Kernels whose quantizer outputs ±1 (`ste_sign`, `approx_sign`, `swish_sign`) are stored as
/// U32 bits packed along the input axis, in Larq Compute Engine's output-channel-first order:
/// Dense `[I, O]` → `[O, W]`, Conv2D `[KH, KW, I, O]` → `[O, KH, KW, W]`. Bit `j` of word `k` is
/// the weight at input index `32k + j`; bit 1 is −1, bit 0 is +1 (`sign(0) = +1`); the padding
/// bits of the last word are 0. Metadata `binary_kernels` (JSON) lists each packed tensor's Keras
/// shape, the true length of its packed axis and its quantizer.
///
/// Kernels with other quantizers are stored as F32 quantized values (the quantizer's forward;
/// `quantized_kernels` names their quantizers), with `magnitude_aware_sign`'s per-output-channel
/// scales in metadata `kernel_scales` (JSON), so the tensor names stay exactly the model's.
/// A loaded export reproduces the model because its quantizer maps those values to
/// themselves; where it does not (`dorefa_quantizer` weights with `k_bit` ≥ 4), the kernel
/// keeps its latent weights and `latent_kernels` names its quantizer. Kernels without a
/// quantizer, biases and BatchNormalization tensors are F32 as they are.
public enum BinaryExport {
  public static let binaryKernelsKey = "binary_kernels"
  public static let quantizedKernelsKey = "quantized_kernels"
  public static let kernelScalesKey = "kernel_scales"
  public static let latentKernelsKey = "latent_kernels"

  /// An entry of `binary_kernels`: how a packed tensor maps back to its Keras kernel.
  public struct PackedKernel: Codable, Equatable, Sendable {
    /// Dense `[I, O]` or Conv2D `[KH, KW, I, O]`.
    public var kerasShape: [Int]
    /// `I`, the packed axis' length before padding to a multiple of 32.
    public var axisLength: Int
    /// The kernel quantizer, by Larq's name.
    public var quantizer: String

    public init(kerasShape: [Int], axisLength: Int, quantizer: String) {
      self.kerasShape = kerasShape
      self.axisLength = axisLength
      self.quantizer = quantizer
    }

    enum CodingKeys: String, CodingKey {
      case kerasShape = "keras_shape"
      case axisLength = "axis_length"
      case quantizer
    }
  }

  /// Whether the quantizer's outputs are exactly ±1, so its kernel packs to bits.
  public static func packs(_ quantizer: Quantizer) -> Bool {
    quantizer is SteSign || quantizer is ApproxSign || quantizer is SwishSign
  }

  /// The packed shape of a kernel of Keras shape `[..., I, O]`: `[O, ..., ⌈I/32⌉]`.
  public static func packedShape(_ kerasShape: [Int]) -> [Int] {
    precondition(kerasShape.count >= 2, "a kernel has an input and an output axis")
    let i = kerasShape[kerasShape.count - 2]
    return [kerasShape.last!] + kerasShape.dropLast(2) + [(i + 31) / 32]
  }

  /// Packs ±1 `values` of Keras shape `[..., I, O]` into bits (bit 1 where the value is negative).
  public static func pack(_ values: [Float], kerasShape shape: [Int]) -> SafeTensors.Tensor {
    let (r, i, o, w) = dimensions(shape)
    precondition(values.count == r * i * o, "\(values.count) values do not fill \(shape)")
    var words = [UInt32](repeating: 0, count: o * r * w)
    for c in 0..<o {
      for p in 0..<r {
        let row = (c * r + p) * w
        for k in 0..<i where values[(p * i + k) * o + c] < 0 { words[row + (k >> 5)] |= 1 << UInt32(k & 31) }
      }
    }
    return SafeTensors.Tensor(shape: packedShape(shape), words: words)
  }

  /// The ±1 values, in Keras shape `kerasShape`, of the packed tensor `t` named `name` in `path`;
  /// checks the packed shape and that every padding bit is 0.
  public static func unpack(_ t: SafeTensors.Tensor, kerasShape shape: [Int], name: String, path: String) throws
    -> [Float]
  {
    let expected = packedShape(shape)
    guard t.dtype == .u32, t.shape == expected, t.words.count == expected.reduce(1, *) else {
      throw TrainingError.modelFile(
        path: path,
        reason:
          "packed kernel \(name) is \(t.dtype.rawValue) \(t.shape); its kernel \(shape) packs to U32 \(expected): re-export the model"
      )
    }
    let (r, i, o, w) = dimensions(shape)
    let tail = i & 31
    let padding: UInt32 = tail == 0 ? 0 : ~((1 << UInt32(tail)) - 1)
    var values = [Float](repeating: 0, count: r * i * o)
    for c in 0..<o {
      for p in 0..<r {
        let row = (c * r + p) * w
        if (t.words[row + w - 1] & padding) != 0 {
          throw TrainingError.modelFile(
            path: path,
            reason:
              "packed kernel \(name) has padding bits set (output channel \(c), beyond input \(i)): the file is corrupt or was not packed by Flip"
          )
        }
        for k in 0..<i { values[(p * i + k) * o + c] = (t.words[row + (k >> 5)] >> UInt32(k & 31)) & 1 == 1 ? -1 : 1 }
      }
    }
    return values
  }

  /// The model's tensors for a binary export (see the type's documentation) and `metadata`
  /// with `binary_kernels`, `quantized_kernels`, `kernel_scales` and `latent_kernels` added.
  /// Kernels are read from the model's current latent weights.
  public static func export(model: Model, metadata: [String: String]) throws -> (
    tensors: [String: SafeTensors.Tensor], metadata: [String: String]
  ) {
    var tensors = ModelFile.tensors(of: model)
    var packed: [String: PackedKernel] = [:]
    var quantized: [String: String] = [:]
    var scales: [String: [Float]] = [:]
    var latentKept: [String: String] = [:]
    for (index, layer) in model.layers.enumerated() where layer is QuantDense || layer is QuantConv2D {
      // A fresh quantizer: the layer's own keeps statistics of its last forward for backward.
      guard let quantizer = try model.specs[index].kernelQuantizer?.make(),
        let view = model.store.views(ofLayer: index).first(where: { $0.role == .kernel })
      else { continue }
      func quantize(_ x: [Float]) -> [Float] {
        var y = [Float](repeating: 0, count: x.count)
        y.withUnsafeMutableBufferPointer {
          quantizer.forward(x, $0.baseAddress!, count: x.count, channels: view.shape.last!)
        }
        return y
      }
      let q = quantize(tensors[view.name]!.values)
      let scale = (quantizer as? MagnitudeAwareSign)?.scale
      if packs(quantizer) {
        tensors[view.name] = pack(q, kerasShape: view.shape)
        packed[view.name] = PackedKernel(
          kerasShape: view.shape, axisLength: view.shape[view.shape.count - 2], quantizer: quantizer.name)
      } else if quantize(q) != q {
        latentKept[view.name] = quantizer.name
      } else {
        tensors[view.name] = SafeTensors.Tensor(shape: view.shape, values: q)
        quantized[view.name] = quantizer.name
        if let scale { scales[view.name] = scale }
      }
    }
    var out = metadata
    out[binaryKernelsKey] = try json(packed)
    if !quantized.isEmpty { out[quantizedKernelsKey] = try json(quantized) }
    if !scales.isEmpty { out[kernelScalesKey] = try json(scales) }
    if !latentKept.isEmpty { out[latentKernelsKey] = try json(latentKept) }
    return (tensors, out)
  }

  /// The `binary_kernels` entries of a file's metadata (none when the key is absent).
  public static func packedKernels(in metadata: [String: String], path: String) throws -> [String: PackedKernel] {
    guard let text = metadata[binaryKernelsKey] else { return [:] }
    do {
      return try JSONDecoder().decode([String: PackedKernel].self, from: Data(text.utf8))
    } catch {
      throw TrainingError.modelFile(
        path: path,
        reason:
          "metadata \(binaryKernelsKey) is not a JSON object of {keras_shape, axis_length, quantizer} entries: \(error)"
      )
    }
  }

  private static func dimensions(_ shape: [Int]) -> (r: Int, i: Int, o: Int, w: Int) {
    let i = shape[shape.count - 2]
    return (shape.dropLast(2).reduce(1, *), i, shape.last!, (i + 31) / 32)
  }

  private static func json<T: Encodable>(_ value: T) throws -> String {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    return String(decoding: try encoder.encode(value), as: UTF8.self)
  }
}
