import FlipTensor
import Foundation
import Testing

/// The fast-path tests and `flip selftest` under every oneDNN ISA cap this CPU can honour.
///
/// oneDNN reads `ONEDNN_MAX_CPU_ISA` once per process, so each cap runs in a child process:
/// this test binary itself, filtered to the suites that compare fast kernels with their
/// references, and the built `flip selftest` for every preset. A cap above the CPU is skipped
/// with its reason (Swift Testing prints it); a machine of the other kind covers it.
@Suite("ISA matrix", .serialized)
struct ISAMatrixTests {
  /// The suites that check fast paths against references (GEMMs, int8, XNOR, convolution and
  /// matmul primitives, vectorized elementwise passes, layer gradients).
  static let suites = [
    "FastPathTests", "TensorTests", "QuantizerTests", "LayerGradientTests", "OptimizerTests", "XNORTests",
  ]

  /// Runs the suites and `flip selftest` with `cap` (nil: no cap, oneDNN's default).
  func runUnder(_ cap: String?) throws {
    // `ALL` is oneDNN's name for no cap (it also overrides a cap this process may run under).
    let environment = ["ONEDNN_MAX_CPU_ISA": cap ?? "ALL"]
    let suites = try runProcess(
      "/proc/self/exe", ["--testing-library", "swift-testing"] + Self.suites.flatMap { ["--filter", $0] },
      environment: environment)
    // Swift Testing reports on standard error.
    let report = suites.stdout + suites.stderr
    #expect(suites.status == 0, "fast-path suites under \(cap ?? "no cap"):\n\(report.suffix(4000))")
    #expect(report.contains("Test run with"), "\(report.suffix(2000))")
    let selftest = try runProcess(flipExecutable, ["selftest", "--batch", "1"], environment: environment)
    #expect(selftest.status == 0, "flip selftest under \(cap ?? "no cap"):\n\(selftest.stdout)\(selftest.stderr)")
    let isa = cap?.lowercased() ?? CPUFeatures.current.bestISA
    #expect(selftest.stdout.contains("ISA \(isa)"), "oneDNN did not run at \(isa):\n\(selftest.stdout.prefix(300))")
    #expect(!selftest.stdout.contains("FAIL"))
  }

  @Test(.enabled(if: CPUFeatures.current.supports("SSE41"), CPUFeatures.current.reason("SSE41")))
  func sse41() throws { try runUnder("SSE41") }

  @Test(.enabled(if: CPUFeatures.current.supports("AVX2"), CPUFeatures.current.reason("AVX2")))
  func avx2() throws { try runUnder("AVX2") }

  @Test(.enabled(if: CPUFeatures.current.supports("AVX512_CORE"), CPUFeatures.current.reason("AVX512_CORE")))
  func avx512Core() throws { try runUnder("AVX512_CORE") }

  @Test(.enabled(if: CPUFeatures.current.supports("AVX512_CORE_VNNI"), CPUFeatures.current.reason("AVX512_CORE_VNNI")))
  func avx512CoreVNNI() throws { try runUnder("AVX512_CORE_VNNI") }

  @Test(.enabled(if: CPUFeatures.current.supports("AVX512_CORE_BF16"), CPUFeatures.current.reason("AVX512_CORE_BF16")))
  func avx512CoreBF16() throws { try runUnder("AVX512_CORE_BF16") }

  @Test(.enabled(if: CPUFeatures.current.supports("AVX512_CORE_AMX"), CPUFeatures.current.reason("AVX512_CORE_AMX")))
  func avx512CoreAMX() throws { try runUnder("AVX512_CORE_AMX") }

  @Test func defaultISA() throws { try runUnder(nil) }

  /// The cap names map to the CPU flags oneDNN requires for them.
  @Test func capsFollowTheCPUFlags() {
    let zen3 = CPUFeatures(flags: ["sse4_1", "avx", "avx2", "fma"])
    #expect(zen3.supports("AVX2") && !zen3.supports("AVX512_CORE") && zen3.bestISA == "avx2")
    #expect(zen3.missing("AVX512_CORE") == ["avx512f", "avx512bw", "avx512vl", "avx512dq"])
    let sapphire = CPUFeatures(flags: [
      "sse4_1", "avx", "avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx512_bf16", "amx_tile",
      "amx_int8", "amx_bf16",
    ])
    #expect(sapphire.bestISA == "avx512_core_amx")
    let zen4 = CPUFeatures(flags: [
      "sse4_1", "avx", "avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx512_bf16",
    ])
    #expect(
      zen4.supports("AVX512_CORE_BF16") && !zen4.supports("AVX512_CORE_AMX") && zen4.bestISA == "avx512_core_bf16")
  }
}

/// The x86 features of this CPU, from /proc/cpuinfo, and the oneDNN ISA caps they allow.
struct CPUFeatures {
  let flags: Set<String>

  /// oneDNN's caps, lowest first, and the CPU flags each needs.
  static let caps: [(cap: String, flags: [String])] = [
    ("SSE41", ["sse4_1"]),
    ("AVX2", ["avx", "avx2"]),
    ("AVX512_CORE", ["avx512f", "avx512bw", "avx512vl", "avx512dq"]),
    ("AVX512_CORE_VNNI", ["avx512_vnni"]),
    ("AVX512_CORE_BF16", ["avx512_bf16"]),
    ("AVX512_CORE_AMX", ["amx_tile", "amx_int8", "amx_bf16"]),
  ]

  static let current: CPUFeatures = {
    let text = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
    let line = text.split(separator: "\n").first { $0.hasPrefix("flags") } ?? ""
    return CPUFeatures(flags: Set(line.split(separator: " ").map(String.init)))
  }()

  /// The flags `cap` needs that this CPU lacks (each cap needs those of the caps below it).
  func missing(_ cap: String) -> [String] {
    guard let index = Self.caps.firstIndex(where: { $0.cap == cap }) else { return ["unknown cap \(cap)"] }
    return Self.caps[...index].flatMap(\.flags).filter { !flags.contains($0) }
  }

  func supports(_ cap: String) -> Bool { missing(cap).isEmpty }

  func reason(_ cap: String) -> Comment {
    "ONEDNN_MAX_CPU_ISA=\(cap) is above this CPU (it lacks \(missing(cap).joined(separator: ", "))); a machine that has them runs it"
  }

  /// oneDNN's name of the best ISA this CPU supports among the caps.
  var bestISA: String { Self.caps.last { supports($0.cap) }?.cap.lowercased() ?? "default" }
}
