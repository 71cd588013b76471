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
#endif
