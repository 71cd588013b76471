import FlipTensor
import Foundation
import Testing

/// `flip selftest`, the start-up kernel check of `flip train`, and the logged forward kernels.
@Suite("flip selftest and the start-up kernel check", .serialized)
struct SelfTestCommandTests {
  /// A small model with a binary convolution (binary input and kernel) for 6×6 toy images.
  static let binaryConvolution = """
    model: tiny-conv
    layers:
      - {type: QuantConv2D, filters: 4, kernel_size: 3, kernel_quantizer: ste_sign, kernel_constraint: weight_clip, use_bias: false}
      - {type: BatchNormalization, momentum: 0.9, scale: false}
      - {type: QuantConv2D, filters: 8, kernel_size: 3, input_quantizer: ste_sign, kernel_quantizer: ste_sign, kernel_constraint: weight_clip, use_bias: false}
      - {type: Flatten}
      - {type: QuantDense, units: 2, input_quantizer: ste_sign, kernel_quantizer: ste_sign, kernel_constraint: weight_clip}
      - {type: Activation, activation: softmax}
    optimizer: {type: adam, learning_rate: 0.01}
    """

  @Test func printsATableAndPasses() throws {
    let r = try runFlip(["selftest", "--model", "larq-cnn", "--batch", "1"])
    #expect(r.status == 0, "\(r.stderr)")
    #expect(r.stdout.contains("kernel") && r.stdout.contains("implementation") && r.stdout.contains("max error"))
    for layer in ["quant_conv2d_1", "quant_conv2d_2", "quant_dense_1"] {
      #expect(r.stdout.contains("forward int8      \(layer)"), "\(r.stdout)")
    }
    // The XNOR forward adds a check per binary dense and binary convolution layer (2 each)
    // where the CPU has AVX2.
    let xnor = XNORProduct.isAvailable
    #expect(r.stdout.contains(xnor ? "28 of 28 kernels pass" : "24 of 24 kernels pass"), "\(r.stdout)")
    let json = try runFlip(["selftest", "--model", "binarynet-mlp", "--batch", "1", "--json"])
    #expect(json.status == 0, "\(json.stderr)")
    let object = try #require(try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any])
    #expect(object["passed"] as? Bool == true)
    // Its two 1024 × 1024 binary layers run the same kernels: checked once.
    #expect((object["checks"] as? [[String: Any]])?.count == (xnor ? 16 : 14))
  }

  @Test func badInputsAreErrors() throws {
    let missing = try runFlip(["selftest", "--config", "/nonexistent/run.yaml"])
    #expect(missing.status != 0)
    #expect(missing.stderr.contains("/nonexistent/run.yaml"), "\(missing.stderr)")
    let shape = try runFlip(["selftest", "--model", "larq-cnn", "--input-shape", "28,x"])
    #expect(shape.status != 0)
    #expect(shape.stderr.contains("28,x"), "\(shape.stderr)")
  }

  /// The int8 convolution as it was before it was made exact (kernel levels not doubled), on
  /// rank 1 only, under the AVX2 cap (oneDNN halves s8 weights there, as on AMD EPYC or
  /// Skylake): the job stops before training, naming the kernel, the rank and the host.
  @Test func aWrongKernelOnOneRankStopsTheJob() throws {
    let dir = temporaryDirectory("flip-selftest")
    writeToyDataset(to: dir, train: 64, test: 16)
    try Self.binaryConvolution.write(toFile: dir + "/conv.yaml", atomically: true, encoding: .utf8)
    let start = Date()
    let r = try runProcess(
      MPITests.mpirun,
      [
        "-np", "2", "--oversubscribe", "--allow-run-as-root", "--mca", "oob_tcp_if_include", "lo",
        "-x", "ONEDNN_MAX_CPU_ISA=AVX2", "-x", "FLIP_TEST_FAULT=unscaled-int8:1:1", flipExecutable,
        "train", "--config", dir + "/conv.yaml", "--data", dir, "--epochs", "1", "--batch-size", "16", "--threads", "1",
        "--out", dir + "/run",
      ])
    #expect(r.status != 0)
    let host = ProcessInfo.processInfo.hostName
    #expect(r.stderr.contains("flip[rank 1]: error: kernel self-check failed on rank 1 (host \(host)"), "\(r.stderr)")
    #expect(r.stderr.contains("forward int8 of quant_conv2d_1 (jit_uni_int8:avx2)"), "\(r.stderr)")
    #expect(!r.stderr.contains("rank 0 (host"), "rank 0's kernels are right: \(r.stderr)")
    #expect(!FileManager.default.fileExists(atPath: dir + "/run/model.safetensors"))
    #expect(Date().timeIntervalSince(start) < 30)
    // --skip-selftest trains with the wrong kernel: the check is what stopped it.
    let skipped = try runFlip(
      [
        "train", "--config", dir + "/conv.yaml", "--data", dir, "--epochs", "1", "--batch-size", "16", "--threads", "1",
        "--out", dir + "/skipped", "--skip-selftest", "--binary-forward", "int8",
      ], environment: ["ONEDNN_MAX_CPU_ISA": "AVX2", "FLIP_TEST_FAULT": "unscaled-int8:0:1"])
    #expect(skipped.status == 0, "\(skipped.stderr)")
  }

  /// Start-up logs say which kernel each quantized layer's forward runs, with the ISA.
  @Test func trainingLogsTheForwardKernels() throws {
    let dir = temporaryDirectory("flip-selftest")
    writeToyDataset(to: dir, train: 64, test: 16)
    try Self.binaryConvolution.write(toFile: dir + "/conv.yaml", atomically: true, encoding: .utf8)
    for policy in ["auto", "fp32", "int8", "xnor"] {
      let r = try runFlip([
        "train", "--config", dir + "/conv.yaml", "--data", dir, "--epochs", "1", "--batch-size", "16", "--threads", "1",
        "--out", dir + "/run-" + policy, "--binary-forward", policy,
      ])
      #expect(r.status == 0, "\(r.stderr)")
      let checks = XNORProduct.isAvailable ? 16 : 14
      #expect(r.stderr.contains("kernel self-check: \(checks) kernels agree with their references"), "\(r.stderr)")
      let lines = r.stderr.split(separator: "\n").filter { $0.contains("binary forward on oneDNN ISA") }
      #expect(lines.count == 3, "\(r.stderr)")
      #expect(lines.first?.contains("quant_conv2d: fp32") == true, "the first layer's input is not binary: \(lines)")
      if policy == "xnor" {
        // The binary-input convolution and the dense layer have the XNOR kernel (with AVX2).
        let forced = XNORProduct.isAvailable ? ": xnor (" : ": fp32 ("
        #expect(lines.dropFirst().allSatisfy { $0.contains(forced) }, "\(lines)")
      } else if policy != "auto" {
        #expect(lines.dropFirst().allSatisfy { $0.contains(": \(policy) (") }, "\(lines)")
      } else {
        #expect(lines.dropFirst().allSatisfy { $0.contains("ms in fp32 vs") && $0.contains("ms in int8") }, "\(lines)")
      }
    }
    let bad = try runFlip(["train", "--config", dir + "/conv.yaml", "--data", dir, "--binary-forward", "int4"])
    #expect(bad.status != 0)
    #expect(bad.stderr.contains("int4"), "\(bad.stderr)")
  }
}
