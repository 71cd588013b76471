import CCPUFeatures
import CDNNL
import FlipXNOR

// Legend: B batch, H×W input, C channels, F filters, T = KH·KW taps, Wc = ⌈C/64⌉ words,
// R = B·OH·OW output pixels.

/// The XNOR–popcount convolution of ±1 images with ±1 kernels (`FlipXNOR`'s
/// `flip_xnor_conv`): both packed to sign bits, each output the exact integer
/// `taps·C − 2·popcount(x ⊕ w)` over the window's taps inside the image (the padded ones add
/// `pad · Σ w`), then × scale, + bias, each rounded on its own: the same bits as an int8 or fp32
/// convolution of the same levels followed by the same scale and bias.
public final class XNORConvolution {
  /// Whether the convolution's fast kernels can run here: AVX-512 with VPOPCNTDQ where CPUID
  /// reports it and oneDNN dispatches to AVX-512 (so an `ONEDNN_MAX_CPU_ISA` cap below it
  /// turns it off, as for oneDNN), else AVX2 where `XNORProduct.isAvailable`.
  public static let isAvailable: Bool = XNORProduct.isAvailable

  /// The convolution's kernels on this CPU.
  public static let defaultKernel: flip_xnor_kernel = {
    #if arch(x86_64)
      let avx512 = dnnl_cpu_isa_avx512_core.rawValue
      if dnnl_get_effective_cpu_isa().rawValue & avx512 == avx512 && flip_cpu_has_avx512_popcount() == 1 {
        return FLIP_XNOR_AVX512
      }
    #endif
    return XNORProduct.defaultKernel
  }()

  /// The name the forward-kernel choice logs.
  public var implementation: String {
    switch kernel {
    case FLIP_XNOR_AVX512: return "Flip XNOR-popcount convolution (AVX-512 VPOPCNTDQ)"
    case FLIP_XNOR_AVX2: return "Flip XNOR-popcount convolution (AVX2)"
    default: return "Flip XNOR-popcount convolution"
    }
  }

  /// Whether a convolution of `geometry` fits `flip_xnor_conv`: at most 64 taps and 64 words
  /// (4,096 channels).
  public static func fits(_ geometry: ConvGeometry) -> Bool {
    geometry.kernelHeight * geometry.kernelWidth <= 64 && (1...64 * 64).contains(geometry.channels)
  }

  public let kernel: flip_xnor_kernel
  public let geometry: ConvGeometry
  public let filters: Int
  public let words: Int
  private var shape: flip_xnor_conv_shape
  /// (T, Wc, F) the kernel's sign bits.
  private let kernelBits: UnsafeMutablePointer<UInt64>
  /// (B, H, W, Wc) the input's sign bits.
  private var inputBits: UnsafeMutablePointer<UInt64>?
  private var capacity = 0

  /// Output pixels per chunk of the convolution, image pixels per chunk of the packing (fixed
  /// sizes: the work splits the same way on any number of threads).
  static let rowsPerChunk = 16
  static let pixelsPerChunk = 1024

  /// A convolution of `geometry` with `filters` filters whose padded taps read `padValue` (−1, 0
  /// or +1). `kernel` `FLIP_XNOR_BASELINE` runs the portable C code on any CPU (the tests
  /// compare the variants); the others need `isAvailable`.
  public init(
    geometry: ConvGeometry, filters: Int, padValue: Int, kernel: flip_xnor_kernel = XNORConvolution.defaultKernel
  ) {
    precondition(kernel == FLIP_XNOR_BASELINE || Self.isAvailable, "XNORConvolution needs AVX2 (check isAvailable)")
    precondition(
      kernel != FLIP_XNOR_AVX512 || Self.defaultKernel == FLIP_XNOR_AVX512,
      "XNORConvolution: this CPU (or the oneDNN ISA cap) has no AVX-512 VPOPCNTDQ")
    precondition((-1...1).contains(padValue), "XNORConvolution: pad value \(padValue) is not −1, 0 or +1")
    precondition(
      Self.fits(geometry) && filters > 0,
      "XNORConvolution: \(geometry.kernelHeight)×\(geometry.kernelWidth) taps, \(geometry.channels) channels")
    self.kernel = kernel
    self.geometry = geometry
    self.filters = filters
    words = (geometry.channels + 63) / 64
    let g = geometry
    shape = flip_xnor_conv_shape(
      height: g.inputHeight, width: g.inputWidth, channels: g.channels, words: words,
      kernel_height: g.kernelHeight, kernel_width: g.kernelWidth, stride_height: g.strideHeight,
      stride_width: g.strideWidth, pad_top: g.padTop, pad_left: g.padLeft, out_height: g.outputHeight,
      out_width: g.outputWidth, filters: filters, pad_value: Int32(padValue))
    let count = g.kernelHeight * g.kernelWidth * words * filters
    kernelBits = .allocate(capacity: count)
    kernelBits.initialize(repeating: 0, count: count)
  }

  deinit {
    kernelBits.deallocate()
    inputBits?.deallocate()
  }

  /// Makes room for batches of up to `batch` images.
  public func allocate(batch: Int) {
    guard batch > capacity else { return }
    capacity = batch
    inputBits?.deallocate()
    inputBits = .allocate(capacity: batch * geometry.inputHeight * geometry.inputWidth * words)
  }

  /// Packs the kernel's int8 levels (T·C, F), each ±1, for the convolutions that follow.
  public func setKernel(levels: UnsafePointer<Int8>) {
    let g = geometry
    flip_xnor_pack_conv_kernel(levels, g.kernelHeight * g.kernelWidth, g.channels, words, filters, kernelBits)
  }

  /// `y (R, F)` from the input's int8 levels (B, H, W, C), each ±1, for the kernel of the last
  /// `setKernel`, then × `scale` and + `bias` (each nil or F values); split over `compute`'s
  /// threads.
  public func run(
    levels x: UnsafePointer<Int8>, batch: Int, scale: UnsafePointer<Float>?, bias: UnsafePointer<Float>?,
    into y: UnsafeMutablePointer<Float>, compute: Compute
  ) {
    precondition(batch <= capacity, "XNORConvolution.run: batch \(batch), allocated for \(capacity)")
    let g = geometry
    let start = compute.profiler?.start()
    defer {
      if let start {
        compute.profiler?.record(
          .xnor, since: start, m: batch * g.outputPixels, n: filters, k: g.kernelHeight * g.kernelWidth * g.channels)
      }
    }
    let bits = inputBits!
    let (channels, words, kernel) = (g.channels, words, kernel)
    compute.forRanges(count: batch * g.inputHeight * g.inputWidth, grain: Self.pixelsPerChunk) { r in
      flip_xnor_pack_levels(kernel, x, channels, words, r.lowerBound, r.upperBound, bits)
    }
    let w = UnsafePointer(kernelBits)
    withUnsafePointer(to: &shape) { s in
      compute.forRanges(count: batch * g.outputPixels, grain: Self.rowsPerChunk) { r in
        flip_xnor_conv(kernel, s, bits, w, r.lowerBound, r.upperBound, scale, bias, y)
      }
    }
  }
}
