import Dispatch
import FlipTensor

/// The forward kernel a layer runs, and the timings it was chosen by.
public struct BinaryForwardChoice: Sendable, CustomStringConvertible {
  public var layer: String
  public var kernel: BinaryForwardKernel
  /// oneDNN's implementation of the chosen kernel for the timed batch.
  public var implementation: String
  /// The fastest of the timed forwards of each kernel (nil when not timed).
  public var int8Milliseconds: Double?
  public var fp32Milliseconds: Double?
  /// Whether int8 was possible (both quantizers take integer levels).
  public var int8Available: Bool

  public var description: String {
    var text = "\(layer): \(kernel.rawValue) (\(implementation))"
    if let i = int8Milliseconds, let f = fp32Milliseconds {
      text += ", forward \(format(i)) ms in int8 vs \(format(f)) ms in fp32"
    } else if !int8Available {
      text += ", no int8 path (input or kernel not binary)"
    }
    return text
  }

  private func format(_ ms: Double) -> String {
    let tenths = (ms * 100).rounded() / 100
    return "\(tenths)"
  }
}

/// A fast kernel that disagrees with its reference (or with the other exact kernel).
public struct KernelMismatch: Error, CustomStringConvertible, Equatable {
  public var kernel: String
  public var layer: String
  public var implementation: String
  public var detail: String

  public var description: String {
    "the \(kernel) kernel of layer \(layer) (\(implementation), oneDNN ISA \(OneDNN.effectiveISA)) gives wrong results: \(detail). Run `flip selftest` on this machine for the full table; `--binary-forward fp32` avoids the int8 kernels"
  }
}

extension Model {
  /// Picks each exact binary layer's forward kernel for batches of `batch` samples.
  ///
  /// `auto` runs each layer's forward in int8 and in fp32 on its own shape, alternately
  /// `repeats` times after one untimed run of each (oneDNN compiles its kernels on first use),
  /// and keeps the faster: int8 is not faster everywhere (measured on an AVX2 CPU: 2–3× faster
  /// for binary convolutions, slower for small dense layers). Both kernels give the same bits,
  /// so the choice never changes results, and each layer's two outputs are compared: a
  /// difference is thrown as a `KernelMismatch`. Call after `allocate(maxBatch:)`; the layers'
  /// buffers are overwritten (before training, or between steps).
  @discardableResult
  public func chooseBinaryForward(batch: Int, policy: BinaryForwardPolicy, repeats: Int = 3) throws
    -> [BinaryForwardChoice]
  {
    precondition(batch > 0 && batch <= maxBatch, "chooseBinaryForward: batch \(batch) outside 1...\(maxBatch)")
    var choices: [BinaryForwardChoice] = []
    var random = SplitMix64(seed: 0xF11B)
    for case let layer as ExactBinaryForward & FlipCounting in layers {
      guard layer.int8ForwardAvailable else {
        if layer.hasQuantizedKernel {
          choices.append(
            BinaryForwardChoice(
              layer: layer.name, kernel: .fp32, implementation: try layer.forwardImplementation(batch: batch),
              int8Available: false))
        }
        continue
      }
      var times: [BinaryForwardKernel: Double] = [:]
      if policy == .auto {
        let x = FloatBuffer(count: batch * layer.inputSize)
        for i in 0..<x.count { x[i] = 2 * random.nextUnitFloat() - 1 }
        var outputs: [BinaryForwardKernel: [Float]] = [:]
        for round in 0...repeats {
          for kernel in BinaryForwardKernel.allCases {
            layer.exactInt8Forward = kernel == .int8
            let start = DispatchTime.now().uptimeNanoseconds
            let y = try layer.forward(x.pointer, batch: batch, training: false)
            let ms = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6
            if round == 0 {
              outputs[kernel] = Array(UnsafeBufferPointer(start: y, count: batch * layer.outputSize))
            } else {
              times[kernel] = min(times[kernel] ?? .infinity, ms)
            }
          }
        }
        if let a = outputs[.int8], let b = outputs[.fp32], let i = a.indices.first(where: { a[$0] != b[$0] }) {
          throw KernelMismatch(
            kernel: "int8 forward", layer: layer.name, implementation: try layer.forwardImplementation(batch: batch),
            detail: "output \(i) of \(a.count) is \(a[i]) in int8 and \(b[i]) in fp32 at batch \(batch)")
        }
      }
      let kernel: BinaryForwardKernel
      switch policy {
      case .int8: kernel = .int8
      case .fp32: kernel = .fp32
      case .auto: kernel = times[.int8]! <= times[.fp32]! ? .int8 : .fp32
      }
      layer.exactInt8Forward = kernel == .int8
      choices.append(
        BinaryForwardChoice(
          layer: layer.name, kernel: kernel, implementation: try layer.forwardImplementation(batch: batch),
          int8Milliseconds: times[.int8], fp32Milliseconds: times[.fp32], int8Available: true))
    }
    return choices
  }
}
