import CMPI
import Foundation

/// Facts about the Open MPI library and the launcher, available without initializing MPI.
public enum MPIRuntime {
  /// The MPI library's version string (`MPI_Get_library_version`, callable before `MPI_Init`).
  public static var libraryVersion: String {
    let capacity = Int(flip_mpi_max_library_version_string())
    var chars = [CChar](repeating: 0, count: capacity + 1)
    var length: Int32 = 0
    _ = MPI_Get_library_version(&chars, &length)
    let bytes = chars.prefix(Int(length)).map { UInt8(bitPattern: $0) }
    let text = String(decoding: bytes, as: UTF8.self)
    return text.split(separator: "\n").first.map(String.init)?.trimmingCharacters(in: .whitespaces) ?? text
  }

  /// Whether this process was started by Open MPI's `mpirun` (it sets `OMPI_COMM_WORLD_SIZE`)
  /// or by a PMIx launcher such as SLURM's `srun --mpi=pmix` (it sets `PMIX_RANK`).
  public static var launchedByMPI: Bool {
    let env = ProcessInfo.processInfo.environment
    return env["OMPI_COMM_WORLD_SIZE"] != nil || env["PMIX_RANK"] != nil
  }

  /// Ranks on this node according to the launcher (1 without `mpirun`).
  public static var localSizeFromLauncher: Int {
    let env = ProcessInfo.processInfo.environment
    return Int(env["OMPI_COMM_WORLD_LOCAL_SIZE"] ?? "") ?? 1
  }
}
