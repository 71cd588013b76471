// The XNOR–popcount kernels (flip_xnor.h): one portable body per function, compiled twice where
// it pays (plain, and inside an AVX2-targeted function), and the product's AVX2 variant written
// with intrinsics. No function here uses a wider ISA than its caller asked for.
#include "flip_xnor.h"

#if defined(__x86_64__)
#include <immintrin.h>
#include "byte_counts_avx2.h"
#define FLIP_XNOR_X86 1
#define FLIP_AVX2 __attribute__((target("avx2,bmi2,popcnt")))
#else
#define FLIP_XNOR_X86 0
#endif

#define ALWAYS_INLINE static inline __attribute__((always_inline))

int flip_xnor_has_avx2_kernels(void) { return FLIP_XNOR_X86; }

// The sign bit of a float (1 for −0 and negative values, as the bit pattern says).
ALWAYS_INLINE uint64_t sign_bit(const float *x) {
  uint32_t bits;
  __builtin_memcpy(&bits, x, sizeof bits);
  return bits >> 31;
}

// ---------------------------------------------------------------------------------------------
// Packing rows.

ALWAYS_INLINE uint64_t pack_word(const float *x, ptrdiff_t count) {
  uint64_t word = 0;
  for (ptrdiff_t j = 0; j < count; j++) word |= sign_bit(x + j) << j;
  return word;
}

ALWAYS_INLINE void pack_rows_tail(const float *source, ptrdiff_t length, ptrdiff_t words, uint64_t *row) {
  ptrdiff_t full = length / 64, k = full;
  if (length % 64 != 0) row[k++] = pack_word(source + 64 * full, length - 64 * full);
  for (; k < words; k++) row[k] = 0;
}

static void pack_rows_baseline(
    const float *x, ptrdiff_t length, ptrdiff_t words, ptrdiff_t row_begin, ptrdiff_t row_end, uint64_t *into) {
  for (ptrdiff_t r = row_begin; r < row_end; r++) {
    const float *source = x + r * length;
    uint64_t *row = into + r * words;
    for (ptrdiff_t k = 0; k < length / 64; k++) row[k] = pack_word(source + 64 * k, 64);
    pack_rows_tail(source, length, words, row);
  }
}

#if FLIP_XNOR_X86
// vmovmskps takes the sign bits of 8 floats at once.
FLIP_AVX2 static void pack_rows_avx2(
    const float *x, ptrdiff_t length, ptrdiff_t words, ptrdiff_t row_begin, ptrdiff_t row_end, uint64_t *into) {
  for (ptrdiff_t r = row_begin; r < row_end; r++) {
    const float *source = x + r * length;
    uint64_t *row = into + r * words;
    for (ptrdiff_t k = 0; k < length / 64; k++) {
      const float *s = source + 64 * k;
      uint64_t word = 0;
      for (int i = 0; i < 8; i++) word |= (uint64_t)(uint32_t)_mm256_movemask_ps(_mm256_loadu_ps(s + 8 * i)) << (8 * i);
      row[k] = word;
    }
    pack_rows_tail(source, length, words, row);
  }
}
#endif

void flip_xnor_pack_rows(
    flip_xnor_kernel kernel, const float *x, ptrdiff_t length, ptrdiff_t words, ptrdiff_t row_begin,
    ptrdiff_t row_end, uint64_t *into) {
#if FLIP_XNOR_X86
  if (kernel == FLIP_XNOR_AVX2) {
    pack_rows_avx2(x, length, words, row_begin, row_end, into);
    return;
  }
#endif
  (void)kernel;
  pack_rows_baseline(x, length, words, row_begin, row_end, into);
}

// ---------------------------------------------------------------------------------------------
// Packing columns: a loop over the columns that the compiler vectorizes (4 words a vector
// under AVX2).

ALWAYS_INLINE void pack_columns_body(
    const float *w, ptrdiff_t length, ptrdiff_t columns, ptrdiff_t words, ptrdiff_t block_begin,
    ptrdiff_t block_end, uint64_t *into, uint64_t *scratch) {
  for (ptrdiff_t block = block_begin; block < block_end; block++) {
    for (ptrdiff_t n = 0; n < columns; n++) scratch[n] = 0;
    ptrdiff_t first = 64 * block;
    ptrdiff_t count = length - first < 64 ? length - first : 64;
    for (ptrdiff_t j = 0; j < count; j++) {
      const float *row = w + (first + j) * columns;
      for (ptrdiff_t n = 0; n < columns; n++) scratch[n] |= sign_bit(row + n) << j;
    }
    for (ptrdiff_t n = 0; n < columns; n++) into[n * words + block] = scratch[n];
  }
}

static void pack_columns_baseline(
    const float *w, ptrdiff_t length, ptrdiff_t columns, ptrdiff_t words, ptrdiff_t block_begin,
    ptrdiff_t block_end, uint64_t *into, uint64_t *scratch) {
  pack_columns_body(w, length, columns, words, block_begin, block_end, into, scratch);
}

#if FLIP_XNOR_X86
FLIP_AVX2 static void pack_columns_avx2(
    const float *w, ptrdiff_t length, ptrdiff_t columns, ptrdiff_t words, ptrdiff_t block_begin,
    ptrdiff_t block_end, uint64_t *into, uint64_t *scratch) {
  pack_columns_body(w, length, columns, words, block_begin, block_end, into, scratch);
}
#endif

void flip_xnor_pack_columns(
    flip_xnor_kernel kernel, const float *w, ptrdiff_t length, ptrdiff_t columns, ptrdiff_t words,
    ptrdiff_t block_begin, ptrdiff_t block_end, uint64_t *into, uint64_t *scratch) {
#if FLIP_XNOR_X86
  if (kernel == FLIP_XNOR_AVX2) {
    pack_columns_avx2(w, length, columns, words, block_begin, block_end, into, scratch);
    return;
  }
#endif
  (void)kernel;
  pack_columns_baseline(w, length, columns, words, block_begin, block_end, into, scratch);
}

// ---------------------------------------------------------------------------------------------
// The product.

// L − 2·count, plus the bias: the same float as an fp32 GEMM of ±1 values (an exact integer,
// then one rounding add).
ALWAYS_INLINE float dot_value(ptrdiff_t length, uint64_t count, const float *bias, ptrdiff_t n) {
  float dot = (float)((int64_t)length - 2 * (int64_t)count);
  return bias ? dot + bias[n] : dot;
}

static void product_baseline(
    const uint64_t *a, const uint64_t *b, ptrdiff_t length, ptrdiff_t words, ptrdiff_t row_begin,
    ptrdiff_t row_end, ptrdiff_t outputs, const float *bias, float *y) {
  for (ptrdiff_t r = row_begin; r < row_end; r++) {
    const uint64_t *x = a + r * words;
    for (ptrdiff_t n = 0; n < outputs; n++) {
      const uint64_t *v = b + n * words;
      uint64_t count = 0;
      for (ptrdiff_t k = 0; k < words; k++) count += (uint64_t)__builtin_popcountll(x[k] ^ v[k]);
      y[r * outputs + n] = dot_value(length, count, bias, n);
    }
  }
}

#if FLIP_XNOR_X86
FLIP_AVX2 ALWAYS_INLINE uint64_t sum_lanes(__m256i v) {
  __m128i s = _mm_add_epi64(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  return (uint64_t)_mm_cvtsi128_si64(s) + (uint64_t)_mm_extract_epi64(s, 1);
}

// Tiles of 2 rows × 2 outputs: each loaded vector serves two products. Byte counts add up in
// bytes for up to 31 vectors (at most 8 per vector: 248 < 256), then once into 64-bit lanes
// (vpsadbw).
FLIP_AVX2 static void product_avx2(
    const uint64_t *a, const uint64_t *b, ptrdiff_t length, ptrdiff_t words, ptrdiff_t row_begin,
    ptrdiff_t row_end, ptrdiff_t outputs, const float *bias, float *y) {
  const __m256i table = FLIP_NIBBLE_COUNTS;
  const __m256i low = _mm256_set1_epi8(0x0f);
  const __m256i zero = _mm256_setzero_si256();
  const ptrdiff_t vectors = words / 4;
  for (ptrdiff_t r = row_begin; r < row_end; r += 2) {
    int pair = r + 1 < row_end;
    const __m256i *a0 = (const __m256i *)(a + r * words);
    const __m256i *a1 = pair ? (const __m256i *)(a + (r + 1) * words) : a0;
    float *y0 = y + r * outputs;
    float *y1 = y + (pair ? r + 1 : r) * outputs;
    for (ptrdiff_t n = 0; n < outputs; n += 2) {
      int both = n + 1 < outputs;
      const __m256i *b0 = (const __m256i *)(b + n * words);
      const __m256i *b1 = both ? (const __m256i *)(b + (n + 1) * words) : b0;
      __m256i c00 = zero, c01 = zero, c10 = zero, c11 = zero;
      for (ptrdiff_t v = 0; v < vectors;) {
        ptrdiff_t end = vectors - v > 31 ? v + 31 : vectors;
        __m256i s00 = zero, s01 = zero, s10 = zero, s11 = zero;
        for (; v < end; v++) {
          __m256i x0 = _mm256_loadu_si256(a0 + v), x1 = _mm256_loadu_si256(a1 + v);
          __m256i w0 = _mm256_loadu_si256(b0 + v), w1 = _mm256_loadu_si256(b1 + v);
          s00 = _mm256_add_epi8(s00, flip_byte_counts(_mm256_xor_si256(x0, w0), table, low));
          s01 = _mm256_add_epi8(s01, flip_byte_counts(_mm256_xor_si256(x0, w1), table, low));
          s10 = _mm256_add_epi8(s10, flip_byte_counts(_mm256_xor_si256(x1, w0), table, low));
          s11 = _mm256_add_epi8(s11, flip_byte_counts(_mm256_xor_si256(x1, w1), table, low));
        }
        c00 = _mm256_add_epi64(c00, _mm256_sad_epu8(s00, zero));
        c01 = _mm256_add_epi64(c01, _mm256_sad_epu8(s01, zero));
        c10 = _mm256_add_epi64(c10, _mm256_sad_epu8(s10, zero));
        c11 = _mm256_add_epi64(c11, _mm256_sad_epu8(s11, zero));
      }
      y0[n] = dot_value(length, sum_lanes(c00), bias, n);
      if (both) y0[n + 1] = dot_value(length, sum_lanes(c01), bias, n + 1);
      if (pair) {
        y1[n] = dot_value(length, sum_lanes(c10), bias, n);
        if (both) y1[n + 1] = dot_value(length, sum_lanes(c11), bias, n + 1);
      }
    }
  }
}
#endif

void flip_xnor_product(
    flip_xnor_kernel kernel, const uint64_t *a, const uint64_t *b, ptrdiff_t length, ptrdiff_t words,
    ptrdiff_t row_begin, ptrdiff_t row_end, ptrdiff_t outputs, const float *bias, float *y) {
#if FLIP_XNOR_X86
  if (kernel == FLIP_XNOR_AVX2) {
    product_avx2(a, b, length, words, row_begin, row_end, outputs, bias, y);
    return;
  }
#endif
  (void)kernel;
  product_baseline(a, b, length, words, row_begin, row_end, outputs, bias, y);
}
