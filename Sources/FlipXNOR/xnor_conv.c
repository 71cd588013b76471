// The XNOR–popcount convolution (flip_xnor.h): one portable body compiled three times (plain,
// inside an AVX2-targeted function, and inside an AVX-512 VPOPCNTDQ one), whose loop over a
// tile of filters the compiler vectorizes (vpopcntq on AVX-512; a byte-table popcount or
// scalar popcnt on AVX2).
#include "flip_xnor.h"

#if defined(__x86_64__)
#include <immintrin.h>
#include "byte_counts_avx2.h"
#define FLIP_CONV_X86 1
#define FLIP_CONV_AVX2 __attribute__((target("avx2,bmi2,popcnt")))
#define FLIP_CONV_AVX512 __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx512vpopcntdq,popcnt")))
#else
#define FLIP_CONV_X86 0
#endif

// The output's scale and bias are separate roundings, as in Swift (no contraction to FMA).
#pragma STDC FP_CONTRACT OFF

#define ALWAYS_INLINE static inline __attribute__((always_inline))

int flip_xnor_has_avx512_kernels(void) { return FLIP_CONV_X86; }

// ---------------------------------------------------------------------------------------------
// Packing.

ALWAYS_INLINE void pack_levels_body(
    const int8_t *x, ptrdiff_t channels, ptrdiff_t words, ptrdiff_t row_begin, ptrdiff_t row_end, uint64_t *into) {
  for (ptrdiff_t r = row_begin; r < row_end; r++) {
    const int8_t *source = x + r * channels;
    uint64_t *row = into + r * words;
    for (ptrdiff_t k = 0; k < words; k++) {
      ptrdiff_t first = 64 * k;
      ptrdiff_t count = channels - first < 64 ? channels - first : 64;
      uint64_t word = 0;
      for (ptrdiff_t j = 0; j < count; j++) word |= (uint64_t)(source[first + j] < 0) << j;
      row[k] = word;
    }
  }
}

static void pack_levels_baseline(
    const int8_t *x, ptrdiff_t channels, ptrdiff_t words, ptrdiff_t row_begin, ptrdiff_t row_end, uint64_t *into) {
  pack_levels_body(x, channels, words, row_begin, row_end, into);
}

#if FLIP_CONV_X86
// vpmovmskb takes the sign bits of 32 levels at once.
FLIP_CONV_AVX2 static void pack_levels_avx2(
    const int8_t *x, ptrdiff_t channels, ptrdiff_t words, ptrdiff_t row_begin, ptrdiff_t row_end, uint64_t *into) {
  if (channels % 64 != 0) {
    pack_levels_body(x, channels, words, row_begin, row_end, into);
    return;
  }
  for (ptrdiff_t r = row_begin; r < row_end; r++) {
    const int8_t *source = x + r * channels;
    uint64_t *row = into + r * words;
    for (ptrdiff_t k = 0; k < words; k++) {
      const __m256i *s = (const __m256i *)(source + 64 * k);
      uint32_t low = (uint32_t)_mm256_movemask_epi8(_mm256_loadu_si256(s));
      uint32_t high = (uint32_t)_mm256_movemask_epi8(_mm256_loadu_si256(s + 1));
      row[k] = (uint64_t)low | (uint64_t)high << 32;
    }
  }
}
#endif

void flip_xnor_pack_levels(
    flip_xnor_kernel kernel, const int8_t *x, ptrdiff_t channels, ptrdiff_t words, ptrdiff_t row_begin,
    ptrdiff_t row_end, uint64_t *into) {
#if FLIP_CONV_X86
  if (kernel != FLIP_XNOR_BASELINE) {
    pack_levels_avx2(x, channels, words, row_begin, row_end, into);
    return;
  }
#endif
  (void)kernel;
  pack_levels_baseline(x, channels, words, row_begin, row_end, into);
}

void flip_xnor_pack_conv_kernel(
    const int8_t *levels, ptrdiff_t taps, ptrdiff_t channels, ptrdiff_t words, ptrdiff_t filters, uint64_t *into) {
  for (ptrdiff_t i = 0; i < taps * words * filters; i++) into[i] = 0;
  for (ptrdiff_t t = 0; t < taps; t++) {
    for (ptrdiff_t c = 0; c < channels; c++) {
      const int8_t *row = levels + (t * channels + c) * filters;
      uint64_t *word = into + (t * words + c / 64) * filters;
      uint64_t bit = (uint64_t)1 << (c % 64);
      for (ptrdiff_t f = 0; f < filters; f++) word[f] |= row[f] < 0 ? bit : 0;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The convolution.

// A padded tap's words (at most 64): +1 is bit 0 everywhere; −1 is bit 1 on the real channels
// only.
ALWAYS_INLINE void fill_pad_word(const flip_xnor_conv_shape *s, uint64_t *pad_word) {
  for (ptrdiff_t k = 0; k < s->words && k < 64; k++) {
    ptrdiff_t count = s->channels - 64 * k < 64 ? s->channels - 64 * k : 64;
    pad_word[k] = s->pad_value < 0 ? (count == 64 ? ~(uint64_t)0 : (((uint64_t)1 << count) - 1)) : 0;
  }
}

// Filters per tile of the portable code.
#define TILE 64

// The taps of output pixel (n, oh, ow) that count: the input's words (or the pad word) and the
// tap's index; returns how many.
ALWAYS_INLINE ptrdiff_t pixel_taps(
    const flip_xnor_conv_shape *s, const uint64_t *x, const uint64_t *pad_word, ptrdiff_t n, ptrdiff_t oh,
    ptrdiff_t ow, const uint64_t **inputs, ptrdiff_t *indices) {
  ptrdiff_t taps = 0;
  for (ptrdiff_t kh = 0; kh < s->kernel_height; kh++) {
    ptrdiff_t ih = oh * s->stride_height - s->pad_top + kh;
    int row_inside = ih >= 0 && ih < s->height;
    for (ptrdiff_t kw = 0; kw < s->kernel_width; kw++) {
      ptrdiff_t iw = ow * s->stride_width - s->pad_left + kw;
      if (row_inside && iw >= 0 && iw < s->width) {
        inputs[taps] = x + ((n * s->height + ih) * s->width + iw) * s->words;
      } else if (s->pad_value != 0) {
        inputs[taps] = pad_word;
      } else {
        continue;
      }
      indices[taps++] = kh * s->kernel_width + kw;
    }
  }
  return taps;
}

#define MAX_TAPS 64

ALWAYS_INLINE void conv_body(
    const flip_xnor_conv_shape *s, const uint64_t *x, const uint64_t *w, ptrdiff_t row_begin, ptrdiff_t row_end,
    const float *scale, const float *bias, float *y) {
  uint64_t pad_word[64];
  fill_pad_word(s, pad_word);
  const uint64_t *inputs[MAX_TAPS];
  ptrdiff_t indices[MAX_TAPS];
  const ptrdiff_t pixels = s->out_height * s->out_width, filters = s->filters, words = s->words;
  for (ptrdiff_t r = row_begin; r < row_end; r++) {
    ptrdiff_t p = r % pixels;
    ptrdiff_t taps = pixel_taps(s, x, pad_word, r / pixels, p / s->out_width, p % s->out_width, inputs, indices);
    const int64_t total = (int64_t)taps * (int64_t)s->channels;
    float *yr = y + r * filters;
    for (ptrdiff_t f0 = 0; f0 < filters; f0 += TILE) {
      ptrdiff_t count = filters - f0 < TILE ? filters - f0 : TILE;
      uint64_t acc[TILE];
      for (ptrdiff_t j = 0; j < TILE; j++) acc[j] = 0;
      for (ptrdiff_t t = 0; t < taps; t++) {
        const uint64_t *wt = w + indices[t] * words * filters + f0;
        for (ptrdiff_t k = 0; k < words; k++) {
          const uint64_t xv = inputs[t][k];
          const uint64_t *wk = wt + k * filters;
          for (ptrdiff_t j = 0; j < count; j++) acc[j] += (uint64_t)__builtin_popcountll(xv ^ wk[j]);
        }
      }
      for (ptrdiff_t j = 0; j < count; j++) {
        float v = (float)(total - 2 * (int64_t)acc[j]);
        if (scale) v = v * scale[f0 + j];
        if (bias) v = v + bias[f0 + j];
        yr[f0 + j] = v;
      }
    }
  }
}

static void conv_baseline(
    const flip_xnor_conv_shape *s, const uint64_t *x, const uint64_t *w, ptrdiff_t row_begin, ptrdiff_t row_end,
    const float *scale, const float *bias, float *y) {
  conv_body(s, x, w, row_begin, row_end, scale, bias, y);
}

#if FLIP_CONV_X86


#define FLIP_COUNT(a, xv, j) a = _mm512_add_epi64(a, _mm512_popcnt_epi64(_mm512_xor_si512(xv, wv##j)))

// taps·C − 2·count, exact in int64 and in float (|Σ| < 2²⁴), then × scale and + bias, for 8
// filters from f.
FLIP_CONV_AVX512 ALWAYS_INLINE void store_outputs(
    __m512i total, __m512i count, const float *scale, const float *bias, ptrdiff_t f, float *y) {
  __m256 v = _mm512_cvtepi64_ps(_mm512_sub_epi64(total, _mm512_slli_epi64(count, 1)));
  if (scale) v = _mm256_mul_ps(v, _mm256_loadu_ps(scale + f));
  if (bias) v = _mm256_add_ps(v, _mm256_loadu_ps(bias + f));
  _mm256_storeu_ps(y + f, v);
}

#define FLIP_LOAD_FILTERS(wk)                                                                            \
  const __m512i wv0 = _mm512_loadu_si512(wk), wv1 = _mm512_loadu_si512(wk + 8),                         \
                wv2 = _mm512_loadu_si512(wk + 16), wv3 = _mm512_loadu_si512(wk + 24),                    \
                wv4 = _mm512_loadu_si512(wk + 32), wv5 = _mm512_loadu_si512(wk + 40),                    \
                wv6 = _mm512_loadu_si512(wk + 48), wv7 = _mm512_loadu_si512(wk + 56)

// One output pixel: for each tile of 64 filters, eight registers of counts while its taps and
// words stream through.
FLIP_CONV_AVX512 static void conv_pixel_avx512(
    const flip_xnor_conv_shape *s, const uint64_t *w, const uint64_t **inputs, const ptrdiff_t *indices,
    ptrdiff_t taps, const float *scale, const float *bias, float *y) {
  const ptrdiff_t filters = s->filters, words = s->words;
  const __m512i total = _mm512_set1_epi64((int64_t)taps * (int64_t)s->channels);
  for (ptrdiff_t f0 = 0; f0 < filters; f0 += 64) {
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    for (ptrdiff_t t = 0; t < taps; t++) {
      const uint64_t *xw = inputs[t];
      const uint64_t *wt = w + indices[t] * words * filters + f0;
      for (ptrdiff_t k = 0; k < words; k++) {
        const __m512i xv = _mm512_set1_epi64((int64_t)xw[k]);
        FLIP_LOAD_FILTERS(wt + k * filters);
        FLIP_COUNT(a0, xv, 0); FLIP_COUNT(a1, xv, 1); FLIP_COUNT(a2, xv, 2); FLIP_COUNT(a3, xv, 3);
        FLIP_COUNT(a4, xv, 4); FLIP_COUNT(a5, xv, 5); FLIP_COUNT(a6, xv, 6); FLIP_COUNT(a7, xv, 7);
      }
    }
    store_outputs(total, a0, scale, bias, f0, y); store_outputs(total, a1, scale, bias, f0 + 8, y);
    store_outputs(total, a2, scale, bias, f0 + 16, y); store_outputs(total, a3, scale, bias, f0 + 24, y);
    store_outputs(total, a4, scale, bias, f0 + 32, y); store_outputs(total, a5, scale, bias, f0 + 40, y);
    store_outputs(total, a6, scale, bias, f0 + 48, y); store_outputs(total, a7, scale, bias, f0 + 56, y);
  }
}

// Two output pixels with the same taps: each filter word loaded once serves both (16 registers
// of counts).
FLIP_CONV_AVX512 static void conv_pair_avx512(
    const flip_xnor_conv_shape *s, const uint64_t *w, const uint64_t **first, const uint64_t **second,
    const ptrdiff_t *indices, ptrdiff_t taps, const float *scale, const float *bias, float *y) {
  const ptrdiff_t filters = s->filters, words = s->words;
  const __m512i total = _mm512_set1_epi64((int64_t)taps * (int64_t)s->channels);
  for (ptrdiff_t f0 = 0; f0 < filters; f0 += 64) {
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    __m512i b0 = a0, b1 = a0, b2 = a0, b3 = a0, b4 = a0, b5 = a0, b6 = a0, b7 = a0;
    for (ptrdiff_t t = 0; t < taps; t++) {
      const uint64_t *xw = first[t], *zw = second[t];
      const uint64_t *wt = w + indices[t] * words * filters + f0;
      for (ptrdiff_t k = 0; k < words; k++) {
        const __m512i xv = _mm512_set1_epi64((int64_t)xw[k]), zv = _mm512_set1_epi64((int64_t)zw[k]);
        FLIP_LOAD_FILTERS(wt + k * filters);
        FLIP_COUNT(a0, xv, 0); FLIP_COUNT(a1, xv, 1); FLIP_COUNT(a2, xv, 2); FLIP_COUNT(a3, xv, 3);
        FLIP_COUNT(a4, xv, 4); FLIP_COUNT(a5, xv, 5); FLIP_COUNT(a6, xv, 6); FLIP_COUNT(a7, xv, 7);
        FLIP_COUNT(b0, zv, 0); FLIP_COUNT(b1, zv, 1); FLIP_COUNT(b2, zv, 2); FLIP_COUNT(b3, zv, 3);
        FLIP_COUNT(b4, zv, 4); FLIP_COUNT(b5, zv, 5); FLIP_COUNT(b6, zv, 6); FLIP_COUNT(b7, zv, 7);
      }
    }
    float *z = y + filters;
    store_outputs(total, a0, scale, bias, f0, y); store_outputs(total, a1, scale, bias, f0 + 8, y);
    store_outputs(total, a2, scale, bias, f0 + 16, y); store_outputs(total, a3, scale, bias, f0 + 24, y);
    store_outputs(total, a4, scale, bias, f0 + 32, y); store_outputs(total, a5, scale, bias, f0 + 40, y);
    store_outputs(total, a6, scale, bias, f0 + 48, y); store_outputs(total, a7, scale, bias, f0 + 56, y);
    store_outputs(total, b0, scale, bias, f0, z); store_outputs(total, b1, scale, bias, f0 + 8, z);
    store_outputs(total, b2, scale, bias, f0 + 16, z); store_outputs(total, b3, scale, bias, f0 + 24, z);
    store_outputs(total, b4, scale, bias, f0 + 32, z); store_outputs(total, b5, scale, bias, f0 + 40, z);
    store_outputs(total, b6, scale, bias, f0 + 48, z); store_outputs(total, b7, scale, bias, f0 + 56, z);
  }
}
#undef FLIP_COUNT
#undef FLIP_LOAD_FILTERS

// Tiles of 64 filters whose counts stay in eight registers while the pixel's taps and words
// stream through; each filter word is loaded once per pixel.
FLIP_CONV_AVX512 static void conv_avx512(
    const flip_xnor_conv_shape *s, const uint64_t *x, const uint64_t *w, ptrdiff_t row_begin, ptrdiff_t row_end,
    const float *scale, const float *bias, float *y) {
  const ptrdiff_t filters = s->filters;
  if (filters % 64 != 0) {
    conv_body(s, x, w, row_begin, row_end, scale, bias, y);
    return;
  }
  uint64_t pad_word[64];
  fill_pad_word(s, pad_word);
  const uint64_t *inputs[2][MAX_TAPS];
  ptrdiff_t indices[2][MAX_TAPS];
  const ptrdiff_t pixels = s->out_height * s->out_width;
  for (ptrdiff_t r = row_begin; r < row_end;) {
    ptrdiff_t taps[2];
    taps[0] = pixel_taps(s, x, pad_word, r / pixels, r % pixels / s->out_width, r % pixels % s->out_width, inputs[0],
                         indices[0]);
    // Two pixels at a time when they have the same taps (each filter word then serves both).
    int pair = 0;
    if (r + 1 < row_end) {
      ptrdiff_t q = r + 1;
      taps[1] = pixel_taps(s, x, pad_word, q / pixels, q % pixels / s->out_width, q % pixels % s->out_width,
                           inputs[1], indices[1]);
      pair = taps[1] == taps[0];
      for (ptrdiff_t t = 0; pair && t < taps[0]; t++) pair = indices[0][t] == indices[1][t];
    }
    if (pair) {
      conv_pair_avx512(s, w, inputs[0], inputs[1], indices[0], taps[0], scale, bias, y + r * filters);
      r += 2;
    } else {
      conv_pixel_avx512(s, w, inputs[0], indices[0], taps[0], scale, bias, y + r * filters);
      r += 1;
    }
  }
}

// taps·C − 2·count for 8 filters from two registers of 4 64-bit counts (each < 2²⁴, so their
// low 32 bits), then × scale and + bias.
FLIP_CONV_AVX2 ALWAYS_INLINE void store_outputs_avx2(
    __m256i total, __m256i c0, __m256i c1, const float *scale, const float *bias, ptrdiff_t f, float *y) {
  const __m256i low_halves = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
  __m256i a = _mm256_permutevar8x32_epi32(c0, low_halves), b = _mm256_permutevar8x32_epi32(c1, low_halves);
  __m256i counts = _mm256_permute2x128_si256(a, b, 0x20);
  __m256 v = _mm256_cvtepi32_ps(_mm256_sub_epi32(total, _mm256_slli_epi32(counts, 1)));
  if (scale) v = _mm256_mul_ps(v, _mm256_loadu_ps(scale + f));
  if (bias) v = _mm256_add_ps(v, _mm256_loadu_ps(bias + f));
  _mm256_storeu_ps(y + f, v);
}

// Tiles of 16 filters: byte counts add up over whole taps of up to 31 words in all (at most 8
// per byte per word: 248 < 256), then into four registers of 64-bit counts (vpsadbw).
FLIP_CONV_AVX2 static void conv_avx2(
    const flip_xnor_conv_shape *s, const uint64_t *x, const uint64_t *w, ptrdiff_t row_begin, ptrdiff_t row_end,
    const float *scale, const float *bias, float *y) {
  const ptrdiff_t filters = s->filters, words = s->words;
  if (filters % 16 != 0 || words > 31) {
    conv_body(s, x, w, row_begin, row_end, scale, bias, y);
    return;
  }
  uint64_t pad_word[64];
  fill_pad_word(s, pad_word);
  const __m256i table = FLIP_NIBBLE_COUNTS;
  const __m256i low = _mm256_set1_epi8(0x0f);
  const __m256i zero = _mm256_setzero_si256();
  const uint64_t *inputs[MAX_TAPS];
  ptrdiff_t indices[MAX_TAPS];
  const ptrdiff_t pixels = s->out_height * s->out_width;
  for (ptrdiff_t r = row_begin; r < row_end; r++) {
    ptrdiff_t p = r % pixels;
    ptrdiff_t taps = pixel_taps(s, x, pad_word, r / pixels, p / s->out_width, p % s->out_width, inputs, indices);
    const __m256i total = _mm256_set1_epi32((int32_t)(taps * s->channels));
    float *yr = y + r * filters;
    for (ptrdiff_t f0 = 0; f0 < filters; f0 += 16) {
      __m256i c0 = zero, c1 = zero, c2 = zero, c3 = zero;
      __m256i s0 = zero, s1 = zero, s2 = zero, s3 = zero;
      ptrdiff_t pending = 0;  // words in the byte counts since they were last added up
      for (ptrdiff_t t = 0; t < taps; t++) {
        if (pending + words > 31) {
          c0 = _mm256_add_epi64(c0, _mm256_sad_epu8(s0, zero));
          c1 = _mm256_add_epi64(c1, _mm256_sad_epu8(s1, zero));
          c2 = _mm256_add_epi64(c2, _mm256_sad_epu8(s2, zero));
          c3 = _mm256_add_epi64(c3, _mm256_sad_epu8(s3, zero));
          s0 = s1 = s2 = s3 = zero;
          pending = 0;
        }
        pending += words;
        const uint64_t *xw = inputs[t];
        const uint64_t *wt = w + indices[t] * words * filters + f0;
        for (ptrdiff_t k = 0; k < words; k++) {
          const __m256i xv = _mm256_set1_epi64x((long long)xw[k]);
          const __m256i *wk = (const __m256i *)(wt + k * filters);
          s0 = _mm256_add_epi8(s0, flip_byte_counts(_mm256_xor_si256(xv, _mm256_loadu_si256(wk)), table, low));
          s1 = _mm256_add_epi8(s1, flip_byte_counts(_mm256_xor_si256(xv, _mm256_loadu_si256(wk + 1)), table, low));
          s2 = _mm256_add_epi8(s2, flip_byte_counts(_mm256_xor_si256(xv, _mm256_loadu_si256(wk + 2)), table, low));
          s3 = _mm256_add_epi8(s3, flip_byte_counts(_mm256_xor_si256(xv, _mm256_loadu_si256(wk + 3)), table, low));
        }
      }
      c0 = _mm256_add_epi64(c0, _mm256_sad_epu8(s0, zero));
      c1 = _mm256_add_epi64(c1, _mm256_sad_epu8(s1, zero));
      c2 = _mm256_add_epi64(c2, _mm256_sad_epu8(s2, zero));
      c3 = _mm256_add_epi64(c3, _mm256_sad_epu8(s3, zero));
      store_outputs_avx2(total, c0, c1, scale, bias, f0, yr);
      store_outputs_avx2(total, c2, c3, scale, bias, f0 + 8, yr);
    }
  }
}
#endif

void flip_xnor_conv(
    flip_xnor_kernel kernel, const flip_xnor_conv_shape *shape, const uint64_t *x, const uint64_t *w,
    ptrdiff_t row_begin, ptrdiff_t row_end, const float *scale, const float *bias, float *y) {
#if FLIP_CONV_X86
  if (kernel == FLIP_XNOR_AVX512) {
    conv_avx512(shape, x, w, row_begin, row_end, scale, bias, y);
    return;
  }
  if (kernel == FLIP_XNOR_AVX2) {
    conv_avx2(shape, x, w, row_begin, row_end, scale, bias, y);
    return;
  }
#endif
  (void)kernel;
  conv_baseline(shape, x, w, row_begin, row_end, scale, bias, y);
}
