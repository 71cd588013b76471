// oneDNN (Debian's libdnnl-dev 2.6) for Swift, plus the OpenMP thread count.
#ifndef FLIP_CDNNL_SHIM_H
#define FLIP_CDNNL_SHIM_H
#include <oneapi/dnnl/dnnl.h>
#include <dlfcn.h>

// libdnnl uses GNU OpenMP (libgomp), which reads OMP_NUM_THREADS only when it loads, so the
// thread count must be set through omp_set_num_threads. Debian ships libgomp.so.1 without the
// unversioned link name that `-lgomp` needs, so the symbol is looked up in the libgomp that
// libdnnl already loaded. Returns 0 on success, -1 when no OpenMP runtime is loaded.
static inline int flip_omp_set_num_threads(int n) {
  void (*set)(int) = (void (*)(int))dlsym(RTLD_DEFAULT, "omp_set_num_threads");
  if (!set) return -1;
  set(n);
  return 0;
}

// omp_get_max_threads: the count that the next parallel region will use, or -1 without OpenMP.
static inline int flip_omp_get_max_threads(void) {
  int (*get)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "omp_get_max_threads");
  return get ? get() : -1;
}

// Runs body(context, thread, threads) on every thread of libgomp's team, the same threads that
// run oneDNN's kernels (so Flip's elementwise loops never compete with spinning OpenMP
// workers). GOMP_parallel is the entry point that GCC emits for `#pragma omp parallel`.
// Returns -1 (and runs nothing) when no OpenMP runtime is loaded.
typedef void (*flip_parallel_body)(void *context, int thread, int threads);
struct flip_parallel_call { flip_parallel_body body; void *context; };

static void flip_parallel_trampoline(void *data) {
  static int (*thread_num)(void) = 0;
  static int (*num_threads)(void) = 0;
  if (!thread_num) {
    num_threads = (int (*)(void))dlsym(RTLD_DEFAULT, "omp_get_num_threads");
    thread_num = (int (*)(void))dlsym(RTLD_DEFAULT, "omp_get_thread_num");
  }
  struct flip_parallel_call *call = (struct flip_parallel_call *)data;
  call->body(call->context, thread_num(), num_threads());
}

static inline int flip_parallel(flip_parallel_body body, void *context, int threads) {
  static void (*gomp_parallel)(void (*)(void *), void *, unsigned, unsigned) = 0;
  if (!gomp_parallel) {
    gomp_parallel = (void (*)(void (*)(void *), void *, unsigned, unsigned))dlsym(RTLD_DEFAULT, "GOMP_parallel");
    if (!gomp_parallel || !dlsym(RTLD_DEFAULT, "omp_get_thread_num")) return -1;
  }
  struct flip_parallel_call call = {body, context};
  gomp_parallel(flip_parallel_trampoline, &call, (unsigned)threads, 0);
  return 0;
}
// Execution-argument indices (macros in dnnl_types.h) and DNNL_MEMORY_NONE, for Swift.
static inline int flip_dnnl_arg_src(void) { return DNNL_ARG_SRC; }
static inline int flip_dnnl_arg_weights(void) { return DNNL_ARG_WEIGHTS; }
static inline int flip_dnnl_arg_dst(void) { return DNNL_ARG_DST; }
static inline int flip_dnnl_arg_diff_src(void) { return DNNL_ARG_DIFF_SRC; }
static inline int flip_dnnl_arg_diff_weights(void) { return DNNL_ARG_DIFF_WEIGHTS; }
static inline int flip_dnnl_arg_diff_dst(void) { return DNNL_ARG_DIFF_DST; }
static inline int flip_dnnl_arg_from(void) { return DNNL_ARG_FROM; }
static inline int flip_dnnl_arg_to(void) { return DNNL_ARG_TO; }
static inline int flip_dnnl_arg_scratchpad(void) { return DNNL_ARG_SCRATCHPAD; }
static inline void *flip_dnnl_memory_none(void) { return DNNL_MEMORY_NONE; }
#endif
