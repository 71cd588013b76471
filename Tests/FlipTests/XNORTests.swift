import CCPUFeatures
import FlipTensor
import FlipXNOR
import Testing

/// The XNOR–popcount product of ±1 matrices: the packing of sign bits by hand, and the product
/// against a plain loop on shapes that exercise every edge (partial words, padding to 256
/// bits, odd rows and outputs, threads), for each variant of the C kernels: the portable one
/// everywhere, the AVX2 one where `XNORProduct.isAvailable` lets it run.
@Suite("XNOR product")
struct XNORTests {
  /// ±1 values with a fixed pattern of signs.
  static func signs(_ n: Int, seed: UInt64) -> [Float] {
    var g = SplitMix64(seed: seed)
    return (0..<n).map { _ in g.nextUnitFloat() < 0.5 ? -1 : 1 }
  }

  /// The kernels that can run here: the portable C ones, and the AVX2 ones where the CPU has them.
  static let kernels: [flip_xnor_kernel] =
    [FLIP_XNOR_BASELINE] + (flip_xnor_has_avx2_kernels() == 1 && XNORProduct.isAvailable ? [FLIP_XNOR_AVX2] : [])

  /// The kernels need AVX2 and the other Haswell extensions: where oneDNN runs below AVX2 (a
  /// cap such as SSE41) or the CPU lacks one, they are off. CPUID agrees with /proc/cpuinfo.
  @Test func availabilityFollowsTheISAAndTheCPU() {
    #if arch(x86_64)
      let haswell = ["avx", "avx2", "fma", "f16c", "movbe", "popcnt", "bmi1", "bmi2", "abm"]
      let missing = haswell.filter { !CPUFeatures.current.flags.contains($0) }
      #expect((flip_cpu_has_haswell_features() == 1) == missing.isEmpty, "missing \(missing)")
      let belowAVX2 = ["sse41", "avx"].contains(OneDNN.effectiveISA)
      #expect(XNORProduct.isAvailable == (!belowAVX2 && missing.isEmpty), "ISA \(OneDNN.effectiveISA)")
      #expect(flip_xnor_has_avx2_kernels() == 1)
      #expect(XNORProduct.defaultKernel == FLIP_XNOR_AVX2)
    #else
      #expect(XNORProduct.isAvailable)
      #expect(XNORProduct.defaultKernel == FLIP_XNOR_BASELINE)
    #endif
  }

  @Test func packRowsByHand() {
    // Row 0: −1 at columns 0, 5, 63, 64 and 69 of 70 (−0 at 66: its sign bit is set too);
    // row 1: all +1. 130 columns: 2 full words and a partial one.
    var x = [Float](repeating: 1, count: 260)
    for c in [0, 5, 63, 64, 69] { x[c] = -1 }
    x[66] = -0.0
    for c in [130, 130 + 127, 130 + 128] { x[c] = -1 }
    for kernel in Self.kernels {
      var words = [UInt64](repeating: .max, count: 8)
      flip_xnor_pack_rows(kernel, x, 130, 4, 0, 2, &words)
      #expect(words[0] == UInt64(1) | 1 << 5 | 1 << 63, "kernel \(kernel.rawValue)")
      #expect(words[1] == UInt64(1) | 1 << 2 | 1 << 5)
      #expect(words[2] == 0 && words[3] == 0, "padding words are zero")
      #expect(words[4] == 1 && words[5] == 1 << 63 && words[6] == 1 && words[7] == 0)
    }
  }

  @Test func packColumnsByHand() {
    // w (L = 3, N = 2), Keras layout: column 0 = [−1, 1, −1], column 1 = [1, −1, 1].
    let w: [Float] = [-1, 1, 1, -1, -1, 1]
    for kernel in Self.kernels {
      var words = [UInt64](repeating: 0, count: 8)
      var scratch = [UInt64](repeating: 7, count: 2)
      flip_xnor_pack_columns(kernel, w, 3, 2, 4, 0, 1, &words, &scratch)
      #expect(words[0] == 0b101 && words[4] == 0b010, "kernel \(kernel.rawValue)")
      #expect(words[1...3].allSatisfy { $0 == 0 } && words[5...7].allSatisfy { $0 == 0 })
    }
  }

  /// y = x · w (+ b) on ±1 values, for rows, length, outputs, on each kernel variant.
  @Test(arguments: [(1, 1, 1), (7, 64, 5), (16, 300, 48), (33, 1030, 3), (40, 256, 17), (2, 2049, 2), (3, 8200, 3)])
  func productEqualsThePlainLoop(rows: Int, length: Int, outputs: Int) throws {
    for kernel in Self.kernels { try productEqualsThePlainLoop(rows: rows, length: length, outputs: outputs, kernel: kernel) }
  }

  func productEqualsThePlainLoop(rows: Int, length: Int, outputs: Int, kernel: flip_xnor_kernel) throws {
    let x = Self.signs(rows * length, seed: UInt64(rows * 1000 + length))
    let w = Self.signs(length * outputs, seed: UInt64(outputs))
    let bias = randomValues(outputs, seed: 3)
    let product = XNORProduct(length: length, outputs: outputs, kernel: kernel)
    product.allocate(rows: rows)
    product.setKernel(w, compute: .serial)
    for useBias in [false, true] {
      var y = [Float](repeating: .nan, count: rows * outputs)
      bias.withUnsafeBufferPointer { b in
        product.run(x, rows: rows, bias: useBias ? b.baseAddress : nil, into: &y, compute: .serial)
      }
      var wrong = 0
      for r in 0..<rows {
        for n in 0..<outputs {
          var dot: Float = 0
          for k in 0..<length { dot += x[r * length + k] * w[k * outputs + n] }
          if useBias { dot += bias[n] }
          if y[r * outputs + n] != dot { wrong += 1 }
        }
      }
      #expect(wrong == 0, "\(wrong) of \(rows * outputs) wrong, bias \(useBias), kernel \(kernel.rawValue)")
    }
    // A new kernel replaces the old one entirely (no bits left from before).
    let flipped = w.map { -$0 }
    product.setKernel(flipped, compute: .serial)
    var y = [Float](repeating: .nan, count: rows * outputs)
    product.run(x, rows: rows, bias: nil, into: &y, compute: .serial)
    var z = [Float](repeating: .nan, count: rows * outputs)
    product.setKernel(w, compute: .serial)
    product.run(x, rows: rows, bias: nil, into: &z, compute: .serial)
    #expect(zip(y, z).allSatisfy { $0 == -$1 })
  }

  /// The same bits on 1 and 2 threads (rows split across them) and on each kernel variant.
  @Test func threadsAndKernelsGiveTheSameBits() {
    let (rows, length, outputs) = (100, 700, 30)
    let x = Self.signs(rows * length, seed: 1)
    let w = Self.signs(length * outputs, seed: 2)
    func run(threads: Int, kernel: flip_xnor_kernel = Self.kernels.last!) -> (y: [Float], teams: Set<Int>) {
      let log = ThreadLog()
      let compute = Compute(threads: threads, threadLog: log)
      let product = XNORProduct(length: length, outputs: outputs, kernel: kernel)
      product.allocate(rows: rows)
      product.setKernel(w, compute: compute)
      var y = [Float](repeating: .nan, count: rows * outputs)
      product.run(x, rows: rows, bias: nil, into: &y, compute: compute)
      return (y, log.loopTeams)
    }
    let one = run(threads: 1)
    let two = run(threads: 2)
    // The kernel packing is 3 chunks and the product 7: every loop split on 2 threads.
    #expect(one.teams == [1] && two.teams == [2])
    #expect(one.y == two.y)
    #expect(run(threads: 1, kernel: FLIP_XNOR_BASELINE).y == two.y)
  }
}
