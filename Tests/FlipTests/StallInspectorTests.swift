import Foundation
import Testing

@testable import FlipTraining

/// The stall inspector under mpirun (part of the serialized MPI suite).
extension MPITests {
  /// Rank 1 stops itself with SIGSTOP at step 5: within the warning time rank 0 names it and
  /// the collective it waits in, and at the timeout the job ends non-zero; the last
  /// checkpoint (step 3) stays valid.
  @Test func aPausedRankIsNamedAndTheTimeoutEndsTheJob() throws {
    let dir = try ResumeTests.setUp()
    let start = Date()
    let r = try launch(
      2, resumeArguments(dir, out: dir + "/run") + ["--stall-warning", "2", "--stall-timeout", "5"],
      environment: ["FLIP_TEST_FAULT": "stop:1:5"])
    let seconds = Date().timeIntervalSince(start)
    #expect(r.status != 0)
    #expect(r.stderr.contains("flip warning: stall: step 5, "), "\(r.stderr)")
    #expect(r.stderr.contains("waited 2 s for rank 1\n"), "\(r.stderr)")
    #expect(r.stderr.contains("--stall-timeout 5 s reached: ending the job"), "\(r.stderr)")
    #expect(seconds < 30, "ended after \(seconds) s")
    _ = try ModelFile.read(path: dir + "/run/ckpt-000003.safetensors")
  }
}
