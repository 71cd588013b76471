#include "flip_cpu_features.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>

int flip_cpu_has_haswell_features(void) {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
  const unsigned leaf1 = (1u << 12)    // FMA
                         | (1u << 22)  // MOVBE
                         | (1u << 23)  // POPCNT
                         | (1u << 28)  // AVX
                         | (1u << 29); // F16C
  if ((c & leaf1) != leaf1) return 0;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
  const unsigned leaf7 = (1u << 3)    // BMI1
                         | (1u << 5)  // AVX2
                         | (1u << 8); // BMI2
  if ((b & leaf7) != leaf7) return 0;
  if (!__get_cpuid(0x80000001, &a, &b, &c, &d)) return 0;
  return (c & (1u << 5)) != 0;  // LZCNT (ABM)
}

int flip_cpu_has_avx512_popcount(void) {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
  const unsigned ebx = (1u << 16)    // AVX512F
                       | (1u << 17)  // AVX512DQ
                       | (1u << 30)  // AVX512BW
                       | (1u << 31); // AVX512VL
  return (b & ebx) == ebx && (c & (1u << 14)) != 0;  // AVX512_VPOPCNTDQ
}
#else
int flip_cpu_has_haswell_features(void) { return 0; }
int flip_cpu_has_avx512_popcount(void) { return 0; }
#endif
