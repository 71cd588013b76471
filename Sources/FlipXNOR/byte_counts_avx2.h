// The AVX2 popcount both XNOR kernels use (xnor.c's product, xnor_conv.c's convolution): two
// 4-bit table lookups (vpshufb) per byte. Private to FlipXNOR; x86_64 only.
#ifndef FLIP_BYTE_COUNTS_AVX2_H
#define FLIP_BYTE_COUNTS_AVX2_H

#include <immintrin.h>

// The popcounts of 0 ..< 16, in both 128-bit lanes (the `table` argument below).
#define FLIP_NIBBLE_COUNTS                                                                                   \
  _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, \
                   3, 4)

// Popcounts of the 32 bytes of v; `low` is 0x0f in every byte.
static inline __attribute__((always_inline, target("avx2"))) __m256i flip_byte_counts(
    __m256i v, __m256i table, __m256i low) {
  __m256i lo = _mm256_and_si256(v, low);
  __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
  return _mm256_add_epi8(_mm256_shuffle_epi8(table, lo), _mm256_shuffle_epi8(table, hi));
}

#endif
