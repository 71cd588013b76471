import Dispatch
import FlipTensor

/// The forward kernel a layer runs, and the timings it was chosen by.
public struct BinaryForwardChoice: Sendable, CustomStringConvertible {
  public var layer: String
  public var kernel: BinaryForwardKernel
  /// The implementation of the chosen kernel for the timed batch (oneDNN's, or Flip's).
  public var implementation: String
  /// The fastest of the timed forwards of each kernel (empty when not timed).
  public var milliseconds: [BinaryForwardKernel: Double] = [:]
  /// The kernels the layer has (fp32 only when its input or kernel is not binary).
  public var available: [BinaryForwardKernel]

  public var description: String {
    var text = "\(layer): \(kernel.rawValue) (\(implementation))"
    let timed = available.compactMap { k in milliseconds[k].map { "\(format($0)) ms in \(k.rawValue)" } }
    if timed.count > 1 {
      text += ", forward " + timed.joined(separator: " vs ")
    } else if available == [.fp32] {
      text += ", no int8 path (input or kernel not binary)"
    }
    return text
  }

  private func format(_ ms: Double) -> String {
    let tenths = (ms * 100).rounded() / 100
    return "\(tenths)"
  }
}

extension BinaryForwardPolicy {
  /// For a forced kernel (`int8`, `xnor`) that none of the layers has, so that all of them run
  /// fp32: a warning that says why; nil otherwise.
  public func unusedWarning(_ choices: [BinaryForwardChoice], isa: String = OneDNN.effectiveISA) -> String? {
    guard let kernel = BinaryForwardKernel(rawValue: rawValue), kernel != .fp32 else { return nil }
    guard !choices.contains(where: { $0.kernel == kernel }) else { return nil }
    let need =
      kernel == .int8
      ? "a layer whose input and kernel quantizers both take integer levels (e.g. ste_sign on both), or a convolution of a binary input with a magnitude_aware_sign kernel"
      : "a dense layer whose input and kernel quantizers both output ±1 (ste_sign, approx_sign, swish_sign), on a CPU with AVX2"
    return
      "--binary-forward \(rawValue): no layer can run it (it needs \(need); oneDNN ISA here: \(isa)), so every layer runs fp32"
  }
}

/// A fast kernel that disagrees with its reference (or with the other exact kernel).
public struct KernelMismatch: Error, CustomStringConvertible, Equatable {
  public var kernel: String
  public var layer: String
  public var implementation: String
  public var detail: String

  public var description: String {
    "the \(kernel) kernel of layer \(layer) (\(implementation), oneDNN ISA \(OneDNN.effectiveISA)) gives wrong results: \(detail). Run `flip selftest` on this machine for the full table; `--binary-forward fp32` avoids the int8 and XNOR kernels"
  }
}

extension Model {
  /// Picks each exact binary layer's forward kernel for batches of `batch` samples.
  ///
  /// `auto` runs each layer's forward in every kernel it has (fp32, int8, XNOR) on its own
  /// shape, in turn, `repeats` times after one untimed run of each (oneDNN compiles its kernels
  /// on first use), and keeps the fastest: no kernel is fastest everywhere (measured on an
  /// AVX2 CPU: int8 is 2–3× faster than fp32 for binary convolutions and slower for small dense
  /// layers; XNOR runs the whole forward of binarynet-mlp's 1024-unit dense layers 2.5× faster
  /// than int8). All kernels give the same bits, so the choice never changes results, and each
  /// layer's outputs are compared: a difference is thrown as a `KernelMismatch`, with the layer
  /// left on fp32. A forced kernel runs where the layer has it, fp32 elsewhere. Call after
  /// `allocate(maxBatch:)`; the layers' buffers are overwritten (before training, or between
  /// steps).
  @discardableResult
  public func chooseBinaryForward(batch: Int, policy: BinaryForwardPolicy, repeats: Int = 3) throws
    -> [BinaryForwardChoice]
  {
    precondition(batch > 0 && batch <= maxBatch, "chooseBinaryForward: batch \(batch) outside 1...\(maxBatch)")
    var choices: [BinaryForwardChoice] = []
    var random = SplitMix64(seed: 0xF11B)
    for case let layer as ExactBinaryForward & FlipCounting in layers {
      let kernels = layer.forwardKernels
      guard kernels.count > 1 else {
        if layer.hasQuantizedKernel {
          choices.append(
            BinaryForwardChoice(
              layer: layer.name, kernel: .fp32, implementation: try layer.forwardImplementation(batch: batch),
              available: kernels))
        }
        continue
      }
      var times: [BinaryForwardKernel: Double] = [:]
      if policy == .auto {
        let x = FloatBuffer(count: batch * layer.inputSize)
        for i in 0..<x.count { x[i] = 2 * random.nextUnitFloat() - 1 }
        var outputs: [BinaryForwardKernel: [Float]] = [:]
        for round in 0...repeats {
          for kernel in kernels {
            layer.forwardKernel = kernel
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
        let reference = outputs[.fp32]!
        for kernel in kernels where kernel != .fp32 {
          let a = outputs[kernel]!
          if let i = a.indices.first(where: { a[$0] != reference[$0] }) {
            layer.forwardKernel = kernel
            let implementation = try layer.forwardImplementation(batch: batch)
            // A caller that goes on after the error must not run the wrong kernel.
            layer.forwardKernel = .fp32
            throw KernelMismatch(
              kernel: "\(kernel.rawValue) forward", layer: layer.name, implementation: implementation,
              detail:
                "output \(i) of \(a.count) is \(a[i]) in \(kernel.rawValue) and \(reference[i]) in fp32 at batch \(batch)"
            )
          }
        }
      }
      let kernel: BinaryForwardKernel
      switch policy {
      case .int8: kernel = kernels.contains(.int8) ? .int8 : .fp32
      case .fp32: kernel = .fp32
      case .xnor: kernel = kernels.contains(.xnor) ? .xnor : .fp32
      case .auto: kernel = kernels.min { times[$0]! < times[$1]! }!
      }
      layer.forwardKernel = kernel
      choices.append(
        BinaryForwardChoice(
          layer: layer.name, kernel: kernel, implementation: try layer.forwardImplementation(batch: batch),
          milliseconds: times, available: kernels))
    }
    return choices
  }
}
