import CCPUFeatures
import CDNNL

/// Process-wide facts and settings of the oneDNN runtime (and its OpenMP threads).
public enum OneDNN {
  /// Whether Flip's own code compiled per function for Haswell's extensions (FlipXNOR's and
  /// FlipWinograd's AVX2 kernels) may run: CPUID reports every one of them (a superset: AVX,
  /// AVX2, FMA, F16C, MOVBE, POPCNT, BMI1, BMI2, LZCNT) and oneDNN dispatches to AVX2 or later
  /// (so the OS saves the AVX registers; `ONEDNN_MAX_CPU_ISA` below AVX2, an older CPU or a
  /// test of one, turns it off too). True off x86_64, where that code is portable C.
  public static let runsHaswellCode: Bool = {
    #if arch(x86_64)
      let avx2 = dnnl_cpu_isa_avx2.rawValue
      return dnnl_get_effective_cpu_isa().rawValue & avx2 == avx2 && flip_cpu_has_haswell_features() == 1
    #else
      return true
    #endif
  }()

  /// The instruction set oneDNN dispatches its kernels to on this CPU, e.g. `avx512_core_amx`.
  public static var effectiveISA: String {
    isaName(dnnl_get_effective_cpu_isa())
  }

  /// oneDNN's library version, e.g. `2.6.3`.
  public static var version: String {
    guard let v = dnnl_version() else { return "unknown" }
    return "\(v.pointee.major).\(v.pointee.minor).\(v.pointee.patch)"
  }

  /// Sets the number of OpenMP threads of the calling thread (OpenMP's `nthreads-var` is per
  /// thread): what an OpenMP region that this thread starts uses by default. Flip's own work
  /// does not depend on it: its loops and oneDNN calls run with the thread count of their
  /// `Compute`, which every oneDNN call sets first (`Compute.applyToOneDNN()`).
  ///
  /// libgomp reads `OMP_NUM_THREADS` only when it loads, so Flip sets the count through
  /// `omp_set_num_threads` instead. Returns false when no OpenMP runtime is loaded.
  @discardableResult
  public static func setThreads(_ n: Int) -> Bool {
    flip_omp_set_num_threads(Int32(max(1, n))) == 0
  }

  /// The thread count the next oneDNN call from the calling thread will use (-1 without OpenMP).
  public static var threads: Int { Int(flip_omp_get_max_threads()) }

  static func isaName(_ isa: dnnl_cpu_isa_t) -> String {
    switch isa {
    case dnnl_cpu_isa_all: return "all"
    case dnnl_cpu_isa_sse41: return "sse41"
    case dnnl_cpu_isa_avx: return "avx"
    case dnnl_cpu_isa_avx2: return "avx2"
    case dnnl_cpu_isa_avx2_vnni: return "avx2_vnni"
    case dnnl_cpu_isa_avx512_core: return "avx512_core"
    case dnnl_cpu_isa_avx512_core_vnni: return "avx512_core_vnni"
    case dnnl_cpu_isa_avx512_core_bf16: return "avx512_core_bf16"
    case dnnl_cpu_isa_avx512_core_amx: return "avx512_core_amx"
    default: return "isa(0x\(String(isa.rawValue, radix: 16)))"
    }
  }

  static func statusName(_ status: Int) -> String {
    switch dnnl_status_t(rawValue: UInt32(truncatingIfNeeded: status)) {
    case dnnl_success: return "success"
    case dnnl_out_of_memory: return "out of memory"
    case dnnl_invalid_arguments: return "invalid arguments"
    case dnnl_unimplemented: return "unimplemented"
    case dnnl_runtime_error: return "runtime error"
    default: return "status \(status)"
    }
  }

  /// oneDNN's name of the implementation behind a primitive descriptor, e.g. `jit_uni_int8:avx2`.
  static func implementation(of pd: dnnl_primitive_desc_t) -> String {
    var info: UnsafePointer<CChar>?
    guard dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &info) == dnnl_success, let info else {
      return "unknown"
    }
    return String(cString: info)
  }

  /// Primitive attributes with a common output scale (nil handle when the scale is 1).
  final class Attributes {
    let handle: dnnl_primitive_attr_t?
    init(outputScale: Float) throws {
      guard outputScale != 1 else {
        handle = nil
        return
      }
      var a: dnnl_primitive_attr_t?
      try OneDNN.check(dnnl_primitive_attr_create(&a), "dnnl_primitive_attr_create")
      handle = a
      var scale = outputScale
      try OneDNN.check(dnnl_primitive_attr_set_output_scales(a, 1, 0, &scale), "dnnl_primitive_attr_set_output_scales")
    }
    /// Attributes that make the primitive take its scratchpad from the caller
    /// (`DNNL_ARG_SCRATCHPAD`) instead of oneDNN's own global one.
    init(userScratchpad: Void) throws {
      var a: dnnl_primitive_attr_t?
      try OneDNN.check(dnnl_primitive_attr_create(&a), "dnnl_primitive_attr_create")
      handle = a
      try OneDNN.check(
        dnnl_primitive_attr_set_scratchpad_mode(a, dnnl_scratchpad_mode_user), "dnnl_primitive_attr_set_scratchpad_mode"
      )
    }
    deinit { if let handle { dnnl_primitive_attr_destroy(handle) } }
  }

  /// Throws a `TensorError.onednn` naming `function` unless `status` is success.
  @inline(__always)
  static func check(_ status: dnnl_status_t, _ function: String) throws {
    if status != dnnl_success { throw TensorError.onednn(function: function, status: Int(status.rawValue)) }
  }
}
