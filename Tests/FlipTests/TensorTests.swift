import FlipTensor
import Testing

// The tensor core: GEMM against the triple-loop oracle, im2col/col2im adjointness and layout,
// Keras's convolution geometry, and Flip's seeded generator.

/// One GEMM case: transposes, sizes, extra row-stride padding, alpha and beta.
struct GEMMCase: CustomTestStringConvertible, Sendable {
  var transA: Transpose, transB: Transpose
  var m: Int, n: Int, k: Int
  var alpha: Float, beta: Float
  var testDescription: String {
    "\(transA == .none ? "N" : "T")\(transB == .none ? "N" : "T") \(m)×\(n)×\(k) α=\(alpha) β=\(beta)"
  }
}

private let gemmCases: [GEMMCase] = {
  var cases: [GEMMCase] = []
  for ta in [Transpose.none, .transposed] {
    for tb in [Transpose.none, .transposed] {
      for (alpha, beta) in [(Float(1), Float(0)), (1, 1), (0.5, 1), (2, 0)] {
        cases.append(GEMMCase(transA: ta, transB: tb, m: 7, n: 5, k: 3, alpha: alpha, beta: beta))
        cases.append(GEMMCase(transA: ta, transB: tb, m: 3, n: 70, k: 37, alpha: alpha, beta: beta))
      }
    }
  }
  return cases
}()

@Suite("Tensor core")
struct TensorTests {

  // MARK: GEMM

  @Test("gemm equals referenceGEMM (leading dimensions larger than the rows)", arguments: gemmCases)
  func gemmMatchesReference(_ t: GEMMCase) throws {
    // Stored shapes: op(A) is m×k, so A is m×k (N) or k×m (T); likewise B. Each row is padded.
    let aRows = t.transA == .none ? t.m : t.k
    let aCols = t.transA == .none ? t.k : t.m
    let bRows = t.transB == .none ? t.k : t.n
    let bCols = t.transB == .none ? t.n : t.k
    let lda = aCols + 2
    let ldb = bCols + 3
    let ldc = t.n + 1
    let a = randomValues(aRows * lda, seed: 1)
    let b = randomValues(bRows * ldb, seed: 2)
    let c0 = randomValues(t.m * ldc, seed: 3, in: -5...5)
    var got = c0
    var want = c0
    try a.withUnsafeBufferPointer { ap in
      try b.withUnsafeBufferPointer { bp in
        try got.withUnsafeMutableBufferPointer { cp in
          try gemm(
            t.transA, t.transB, m: t.m, n: t.n, k: t.k, alpha: t.alpha, a: ap.baseAddress!, lda: lda,
            b: bp.baseAddress!, ldb: ldb, beta: t.beta, c: cp.baseAddress!, ldc: ldc, compute: .serial)
        }
        want.withUnsafeMutableBufferPointer { cp in
          referenceGEMM(
            t.transA, t.transB, m: t.m, n: t.n, k: t.k, alpha: t.alpha, a: ap.baseAddress!, lda: lda,
            b: bp.baseAddress!, ldb: ldb, beta: t.beta, c: cp.baseAddress!, ldc: ldc)
        }
      }
    }
    for i in 0..<t.m {
      for j in 0..<t.n {
        #expect(close(got[i * ldc + j], want[i * ldc + j], tol: 1e-5), "C[\(i),\(j)]")
      }
      // The padding between rows is never written.
      #expect(got[i * ldc + t.n] == c0[i * ldc + t.n], "padding of row \(i)")
    }
    // The oracle itself: C[0,0] by hand.
    var s = 0.0
    for p in 0..<t.k {
      let av = t.transA == .none ? a[p] : a[p * lda]
      let bv = t.transB == .none ? b[p * ldb] : b[p]
      s += Double(av) * Double(bv)
    }
    let c00 = Double(t.alpha) * s + Double(t.beta) * Double(c0[0])
    #expect(close(Double(want[0]), c00, tol: 1e-5))
  }

  @Test("gemm with beta 0 ignores what C held (even NaN)")
  func gemmBetaZeroIgnoresC() throws {
    let a: [Float] = [1, 2, 3, 4]
    let b: [Float] = [1, 0, 0, 1]
    var c = [Float](repeating: .nan, count: 4)
    try gemm(.none, .none, m: 2, n: 2, k: 2, a: a, lda: 2, b: b, ldb: 2, c: &c, ldc: 2, compute: .serial)
    #expect(c == [1, 2, 3, 4])
    try gemm(
      .transposed, .none, m: 2, n: 2, k: 2, alpha: 2, a: a, lda: 2, b: b, ldb: 2, beta: 1, c: &c, ldc: 2,
      compute: .serial)
    #expect(c == [3, 8, 7, 12])
  }

  @Test("gemm with m or n = 0 does nothing")
  func gemmEmpty() throws {
    let a: [Float] = [1]
    let b: [Float] = [1]
    var c: [Float] = [42]
    try gemm(.none, .none, m: 0, n: 1, k: 1, a: a, lda: 1, b: b, ldb: 1, c: &c, ldc: 1, compute: .serial)
    try gemm(.none, .none, m: 1, n: 0, k: 1, a: a, lda: 1, b: b, ldb: 1, c: &c, ldc: 1, compute: .serial)
    #expect(c == [42])
  }

  // MARK: im2col / col2im

  static let geometries: [(h: Int, w: Int, c: Int, kh: Int, kw: Int, s: Int, padding: Padding)] = [
    (5, 6, 2, 3, 3, 1, .valid), (5, 6, 2, 3, 3, 1, .same), (5, 6, 2, 3, 3, 2, .valid), (5, 6, 2, 3, 3, 2, .same),
    (6, 6, 3, 3, 2, 2, .same), (7, 5, 1, 2, 3, 2, .same), (4, 4, 2, 1, 1, 2, .valid), (3, 3, 2, 3, 3, 1, .valid),
  ]

  @Test("im2col and col2im are adjoint: ⟨im2col(x), c⟩ = ⟨x, col2im(c)⟩", arguments: 0..<TensorTests.geometries.count)
  func adjoint(_ index: Int) throws {
    let p = Self.geometries[index]
    let g = try ConvGeometry(
      inputHeight: p.h, inputWidth: p.w, channels: p.c, kernelHeight: p.kh, kernelWidth: p.kw,
      strideHeight: p.s, strideWidth: p.s, padding: p.padding)
    let batch = 2
    let x = randomValues(batch * g.inputSize, seed: 10 + UInt64(index))
    let columnCount = batch * g.outputPixels * g.patchSize
    let c = randomValues(columnCount, seed: 20 + UInt64(index))
    var cols = [Float](repeating: .nan, count: columnCount)
    var dx = [Float](repeating: .nan, count: x.count)
    im2col(x, batch: batch, geometry: g, padValue: 0, into: &cols, compute: .serial)
    col2im(c, batch: batch, geometry: g, into: &dx, compute: .serial)
    var lhs = 0.0
    var rhs = 0.0
    var magnitude = 0.0
    for i in 0..<columnCount {
      lhs += Double(cols[i]) * Double(c[i])
      magnitude += abs(Double(cols[i]) * Double(c[i]))
    }
    for i in 0..<x.count { rhs += Double(x[i]) * Double(dx[i]) }
    // col2im sums overlapping windows in Float: allow its rounding (~1e-7 of the magnitude).
    #expect(abs(lhs - rhs) <= 1e-6 * magnitude, "\(lhs) vs \(rhs)")
    #expect(abs(lhs) > 1e-3)
  }

  @Test("im2col equals the direct definition, padding taking pad_value", arguments: 0..<TensorTests.geometries.count)
  func im2colLayout(_ index: Int) throws {
    let p = Self.geometries[index]
    let g = try ConvGeometry(
      inputHeight: p.h, inputWidth: p.w, channels: p.c, kernelHeight: p.kh, kernelWidth: p.kw,
      strideHeight: p.s, strideWidth: p.s, padding: p.padding)
    let batch = 2
    let padValue: Float = 7
    let x = randomValues(batch * g.inputSize, seed: 30 + UInt64(index))
    var cols = [Float](repeating: .nan, count: batch * g.outputPixels * g.patchSize)
    im2col(x, batch: batch, geometry: g, padValue: padValue, into: &cols, compute: .serial)
    let total = max((g.outputHeight - 1) * p.s + p.kh - p.h, 0)
    let top = p.padding == .same ? total / 2 : 0
    let totalW = max((g.outputWidth - 1) * p.s + p.kw - p.w, 0)
    let left = p.padding == .same ? totalW / 2 : 0
    var mismatches = 0
    for b in 0..<batch {
      for oy in 0..<g.outputHeight {
        for ox in 0..<g.outputWidth {
          let row = (b * g.outputHeight + oy) * g.outputWidth + ox
          for ky in 0..<p.kh {
            for kx in 0..<p.kw {
              for ch in 0..<p.c {
                let iy = oy * p.s - top + ky
                let ix = ox * p.s - left + kx
                let want =
                  (iy < 0 || iy >= p.h || ix < 0 || ix >= p.w) ? padValue : x[((b * p.h + iy) * p.w + ix) * p.c + ch]
                if cols[row * g.patchSize + (ky * p.kw + kx) * p.c + ch] != want { mismatches += 1 }
              }
            }
          }
        }
      }
    }
    #expect(mismatches == 0)
  }

  @Test("col2im sums overlapping windows and drops padding")
  func col2imCounts() throws {
    // 3×3 kernel, stride 1, same, on a 3×3 image: an all-ones column matrix counts how many
    // windows cover each pixel: 4 at corners, 6 at edges, 9 in the middle.
    let g = try ConvGeometry(
      inputHeight: 3, inputWidth: 3, channels: 1, kernelHeight: 3, kernelWidth: 3, strideHeight: 1,
      strideWidth: 1, padding: .same)
    let ones = [Float](repeating: 1, count: g.outputPixels * g.patchSize)
    var dx = [Float](repeating: 5, count: 9)
    col2im(ones, batch: 1, geometry: g, into: &dx, compute: .serial)
    #expect(dx == [4, 6, 4, 6, 9, 6, 4, 6, 4])
  }

  // MARK: ConvGeometry

  @Test("ConvGeometry follows Keras: valid ⌊(H−K)/S⌋+1, same ⌈H/S⌉ with the smaller half of the padding first")
  func geometry() throws {
    func geo(_ h: Int, _ w: Int, _ kh: Int, _ kw: Int, _ sh: Int, _ sw: Int, _ p: Padding) throws -> ConvGeometry {
      try ConvGeometry(
        inputHeight: h, inputWidth: w, channels: 3, kernelHeight: kh, kernelWidth: kw, strideHeight: sh,
        strideWidth: sw, padding: p)
    }
    let cases: [(ConvGeometry, Int, Int, Int, Int)] = [
      // (geometry, OH, OW, padTop, padLeft)
      (try geo(28, 28, 3, 3, 1, 1, .valid), 26, 26, 0, 0),
      (try geo(28, 28, 3, 3, 1, 1, .same), 28, 28, 1, 1),
      (try geo(26, 26, 2, 2, 2, 2, .valid), 13, 13, 0, 0),
      (try geo(11, 11, 2, 2, 2, 2, .valid), 5, 5, 0, 0),
      (try geo(5, 5, 3, 3, 2, 2, .same), 3, 3, 1, 1),
      (try geo(6, 6, 3, 3, 2, 2, .same), 3, 3, 0, 0),  // total padding 1: none before, 1 after
      (try geo(7, 8, 2, 4, 3, 3, .valid), 2, 2, 0, 0),
      (try geo(7, 8, 2, 4, 3, 3, .same), 3, 3, 0, 1),  // totals 1 and 2
      (try geo(4, 4, 5, 5, 1, 1, .same), 4, 4, 2, 2),  // totals 4 and 4
      (try geo(9, 9, 1, 1, 4, 4, .same), 3, 3, 0, 0),
    ]
    for (g, oh, ow, top, left) in cases {
      #expect(g.outputHeight == oh && g.outputWidth == ow, "\(g)")
      #expect(g.padTop == top && g.padLeft == left, "\(g)")
    }
    let g = try geo(5, 6, 3, 2, 1, 1, .valid)
    #expect(g.patchSize == 3 * 2 * 3 && g.outputPixels == 3 * 5 && g.inputSize == 5 * 6 * 3)
  }

  @Test("ConvGeometry rejects a window larger than a valid input, and non-positive sizes")
  func geometryErrors() {
    #expect(throws: TensorError.self) {
      try ConvGeometry(
        inputHeight: 2, inputWidth: 5, channels: 1, kernelHeight: 3, kernelWidth: 3, strideHeight: 1,
        strideWidth: 1, padding: .valid)
    }
    #expect(throws: TensorError.self) {
      try ConvGeometry(
        inputHeight: 5, inputWidth: 5, channels: 1, kernelHeight: 3, kernelWidth: 3, strideHeight: 0,
        strideWidth: 1, padding: .same)
    }
    #expect(throws: TensorError.self) {
      try ConvGeometry(
        inputHeight: 5, inputWidth: 5, channels: 1, kernelHeight: 0, kernelWidth: 3, strideHeight: 1,
        strideWidth: 1, padding: .same)
    }
    // A too-large window is fine with same padding.
    #expect(throws: Never.self) {
      try ConvGeometry(
        inputHeight: 2, inputWidth: 2, channels: 1, kernelHeight: 3, kernelWidth: 3, strideHeight: 1,
        strideWidth: 1, padding: .same)
    }
  }

  // MARK: SplitMix64

  @Test("SplitMix64 produces the reference sequence and repeats from a saved state")
  func splitMixReference() {
    var g = SplitMix64(seed: 0)
    #expect(g.next() == 0xE220_A839_7B1D_CDAF)
    #expect(g.next() == 0x6E78_9E6A_A1B9_65F4)
    #expect(g.next() == 0x06C4_5D18_8009_454F)
    let saved = g
    let a = (0..<5).map { _ in g.next() }
    var h = saved
    let b = (0..<5).map { _ in h.next() }
    #expect(a == b)
    #expect(g == h)
    var x = SplitMix64(seed: 1)
    var y = SplitMix64(seed: 1)
    var z = SplitMix64(seed: 2)
    let xs = (0..<4).map { _ in x.next() }
    #expect(xs == (0..<4).map { _ in y.next() })
    #expect(xs != (0..<4).map { _ in z.next() })
    var s1 = SplitMix64(seed: 7, stream: 1)
    var s2 = SplitMix64(seed: 7, stream: 2)
    let s1b = SplitMix64(seed: 7, stream: 1)
    #expect(s1 == s1b)
    #expect(s1.next() != s2.next())
  }

  @Test("SplitMix64 floats lie in [0, 1) and bounded integers are in range and spread out")
  func splitMixRanges() {
    var g = SplitMix64(seed: 3)
    var sum = 0.0
    for _ in 0..<10_000 {
      let u = g.nextUnitFloat()
      #expect(u >= 0 && u < 1)
      sum += Double(u)
    }
    #expect(abs(sum / 10_000 - 0.5) < 0.02)
    var counts = [Int](repeating: 0, count: 6)
    for _ in 0..<6_000 { counts[g.nextInt(below: 6)] += 1 }
    #expect(counts.allSatisfy { $0 > 850 && $0 < 1150 }, "\(counts)")
    #expect(g.nextInt(below: 1) == 0)
  }

  @Test("shuffle is a permutation, repeats for a seed, and depends on the seed")
  func shuffle() {
    let original = Array(0..<100)
    var a = original
    var b = original
    var c = original
    var ga = SplitMix64(seed: 11)
    var gb = SplitMix64(seed: 11)
    var gc = SplitMix64(seed: 12)
    ga.shuffle(&a)
    gb.shuffle(&b)
    gc.shuffle(&c)
    #expect(a.sorted() == original)
    #expect(c.sorted() == original)
    #expect(a != original)
    #expect(a == b)
    #expect(a != c)
    // Every position is reachable: over many shuffles of 4 items, each item lands everywhere.
    var seen = Set<[Int]>()
    var g = SplitMix64(seed: 5)
    for _ in 0..<500 {
      var v = [0, 1, 2, 3]
      g.shuffle(&v)
      seen.insert(v)
    }
    #expect(seen.count == 24)
    var single = [9]
    g.shuffle(&single)
    #expect(single == [9])
  }

  // MARK: Elementwise passes

  @Test("convertToInt8 is exact for every level in ±127 and −0, in vector body and tail")
  func convertToInt8Exact() {
    // 255 levels, −0, and a length that leaves a scalar tail after the 16-lane body.
    var x = (-127...127).map(Float.init) + [-0.0]
    x += x.reversed().prefix(13)
    var y = [Int8](repeating: 99, count: x.count)
    convertToInt8(x, &y, count: x.count, compute: .serial)
    #expect(y == x.map { Int8($0) })
  }

  @Test("countDifferences counts unequal positions, NaN included, in vector body and tail")
  func countDifferencesCounts() {
    let n = 16 * 5 + 7
    let a = (0..<n).map { Float($0 % 3) - 1 }
    var b = a
    for i in [0, 15, 16, 40, 79, 80, 86] { b[i] = -b[i] + 0.5 }
    #expect(countDifferences(a, b, count: n) == 7)
    #expect(countDifferences(a, a, count: n) == 0)
    var c = a
    c[3] = .nan
    c[83] = .nan
    #expect(countDifferences(c, c, count: n) == 2, "NaN != NaN")
    #expect(countDifferences([0.0], [-0.0], count: 1) == 0, "0 == −0")
  }

  @Test("allMagnitudes(atMost:) is inclusive and false for a NaN, in vector body and tail")
  func allMagnitudesBound() {
    let n = 16 * 3 + 5
    var x = (0..<n).map { Float($0 % 5) / 4 - 0.5 }  // within [−0.5, 0.5]
    x[10] = 1
    x[n - 1] = -1
    #expect(allMagnitudes(x, count: n, atMost: 1))
    #expect(!allMagnitudes(x, count: n, atMost: 0.99))
    for i in [7, n - 2] {
      var y = x
      y[i] = -1.0001
      #expect(!allMagnitudes(y, count: n, atMost: 1), "element \(i) outside")
      y[i] = .nan
      #expect(!allMagnitudes(y, count: n, atMost: .infinity), "NaN at \(i)")
    }
  }
}
