import Foundation
import Testing

/// `scripts/scaling-model.py`, the alpha–beta model the README's scaling table comes from, on
/// inputs whose step times are worked out by hand.
@Suite("Scaling model")
struct ScalingModelTests {
  static let script = EmulatedCluster.repository + "/scripts/scaling-model.py"

  /// Links of 1e-5 ms per byte and no latency; one node: 100 ms of compute at batch 1024 and
  /// 50 ms at 512 (nothing repeated per rank), no optimizer, 10⁶ real-valued variables.
  func run(measured: [String: Any]) throws -> String {
    let dir = temporaryDirectory("flip-scaling-model")
    func write(_ name: String, _ object: [String: Any]) throws -> String {
      let path = dir + "/" + name
      try JSONSerialization.data(withJSONObject: object).write(to: URL(fileURLWithPath: path))
      return path
    }
    let fits = ["reduce-scatter fp32", "reduce-scatter bf16", "all-gather"].map {
      ["collective": $0, "alpha_ms": 0.0, "beta_ms_per_byte": 1e-5, "gbit_per_s": 0.8] as [String: Any]
    }
    let single: [String: Any] = [
      "model": "m", "batch_size": 1024, "compute_ms": 100.0, "optimizer_ms": 0.0, "variables": 1_000_000,
      "sign_variables": 0,
    ]
    var half = single
    half["batch_size"] = 512
    half["compute_ms"] = 50.0
    let r = try runProcess(
      "/usr/bin/env",
      [
        "python3", Self.script, "--timing", try write("timing.json", ["fits": fits]), "--single",
        try write("one.json", single), "--single-half", try write("half.json", half), "--measured",
        try write("fp32.json", measured), "--nodes", "1,2,4",
      ])
    #expect(r.status == 0, "\(r.stderr)")
    return r.stdout
  }

  /// The fp32 column of the table's row for `nodes`.
  func fp32Milliseconds(_ output: String, nodes: Int) -> Double? {
    let row = output.split(separator: "\n").first { $0.split(separator: " ").first == "\(nodes)" }
    return row.flatMap { Double($0.split(separator: " ")[1]) }
  }

  @Test func stepTimesMatchTheFormulaWorkedByHand() throws {
    // 2 nodes: compute 50; fp32 sends 0.5 · 4 MB in each collective, 40 ms, half of it hidden;
    // waiting for the slower rank 10 ms of 50 measured (a share of 0.2): 50 + 10 + 40 − 20.
    let measured: [String: Any] = [
      "ranks": 2, "wire": "fp32", "ms_per_step": 80.0, "hidden_fraction": 0.5, "compute_ms": 50.0,
      "imbalance_wait_ms": 10.0,
    ]
    let out = try run(measured: measured)
    #expect(fp32Milliseconds(out, nodes: 1) == 100.0, "\(out)")
    #expect(fp32Milliseconds(out, nodes: 2) == 80.0, "\(out)")
    // 4 nodes: compute 25, communication 0.75 · 4 MB · 2 = 60 ms, of which half would hide but
    // only as much as there is compute (25), waiting 0.2 · 25 grown by E[max of 4 normals] /
    // E[max of 2] = 1.0294 / 0.5642: 25 + 9.1 + 60 − 25.
    #expect(fp32Milliseconds(out, nodes: 4) == 69.1, "\(out)")
    #expect(out.contains("measured 2 ranks, fp32 wire: 80.0 ms/step; model 80.0 ms (+0.0 %)"), "\(out)")
    // A bench record without the waiting (an older flip) leaves it out: 50 + 40 − 20.
    var older = measured
    older["imbalance_wait_ms"] = nil
    #expect(fp32Milliseconds(try run(measured: older), nodes: 2) == 70.0)
  }
}
