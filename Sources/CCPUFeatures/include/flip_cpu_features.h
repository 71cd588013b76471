// The x86 features FlipXNOR's AVX2 kernels need (and the rest of Haswell's), read with CPUID.
#ifndef FLIP_CPU_FEATURES_H
#define FLIP_CPU_FEATURES_H

// 1 when the CPU reports every instruction set extension of LLVM's `haswell` target that
// compiled code can contain (AVX, AVX2, FMA, F16C, MOVBE, POPCNT, BMI1, BMI2, LZCNT: a superset
// of FlipXNOR's `target("avx2,bmi2,popcnt")`); 0
// otherwise, and on other architectures. Whether the OS saves the AVX registers is oneDNN's
// check (its effective ISA).
int flip_cpu_has_haswell_features(void);

// 1 when CPUID reports AVX512F, DQ, BW, VL and VPOPCNTDQ (the OS's support for the registers is
// oneDNN's check: its effective ISA).
int flip_cpu_has_avx512_popcount(void);

#endif
