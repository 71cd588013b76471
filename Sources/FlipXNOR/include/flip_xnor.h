// Sign bits of ±1 matrices, packed 64 to a word, and their XNOR–popcount product.
//
// Legend: R rows of the product (batch), L reduction length (input units), N outputs (units),
// W words per packed row: L rounded up to 256 bits, in 64-bit words (a multiple of 4).
//
// For a, b ∈ {−1, +1}ᴸ with bit 1 for −1: a·b = L − 2·popcount(bits(a) ⊕ bits(b)), an integer,
// so the product equals an fp32 or int8 GEMM of the same ±1 values bit for bit. Rows are padded
// with zero bits to a multiple of 256 (zero in both operands: no contribution).
//
// Every function comes in two variants, chosen by its first argument: portable C, and (on
// x86_64) AVX2 code compiled per function with `target("avx2,bmi2,popcnt")`, so the rest of
// the program stays baseline x86-64. The caller chooses: FLIP_XNOR_AVX2 only after checking
// the CPU and the OS (FlipTensor's `XNORProduct.isAvailable`). Both give the same bits.
#ifndef FLIP_XNOR_H
#define FLIP_XNOR_H

#include <stddef.h>
#include <stdint.h>

typedef enum flip_xnor_kernel {
  // Portable C (any CPU).
  FLIP_XNOR_BASELINE = 0,
  // AVX2, BMI2 and POPCNT (Haswell and later, AMD Zen). Where the build has no AVX2 variant
  // (not x86_64) it runs the portable code.
  FLIP_XNOR_AVX2 = 1,
  // AVX-512 with VPOPCNTDQ (Ice Lake and later, AMD Zen 4): the convolution only; the other
  // functions run their AVX2 variant.
  FLIP_XNOR_AVX512 = 2,
} flip_xnor_kernel;

// 1 when this build has the AVX2 variants (x86_64), else 0.
int flip_xnor_has_avx2_kernels(void);

// Writes the packed sign bits of rows [row_begin, row_end) of x (R, L) into `into` (R, W): bit j
// of word k of row r is the sign bit of x[r, 64k + j]; padding bits are 0.
void flip_xnor_pack_rows(
    flip_xnor_kernel kernel, const float *x, ptrdiff_t length, ptrdiff_t words, ptrdiff_t row_begin,
    ptrdiff_t row_end, uint64_t *into);

// Writes the packed sign bits of the columns of w (L, N) (Keras's kernel layout) into `into`
// (N, W), for the 64-row blocks [block_begin, block_end) of w: word k of column n holds rows
// 64k ..< 64k + 64. `scratch` holds N words. Padding words are left as they are (zero them once).
void flip_xnor_pack_columns(
    flip_xnor_kernel kernel, const float *w, ptrdiff_t length, ptrdiff_t columns, ptrdiff_t words,
    ptrdiff_t block_begin, ptrdiff_t block_end, uint64_t *into, uint64_t *scratch);

// y[r, n] = L − 2·popcount(a[r] ⊕ b[n]) (+ bias[n]) for r in [row_begin, row_end): a (R, W) and
// b (N, W) packed as above, y (R, N), bias NULL or N values. `words` must be a multiple of 4.
void flip_xnor_product(
    flip_xnor_kernel kernel, const uint64_t *a, const uint64_t *b, ptrdiff_t length, ptrdiff_t words,
    ptrdiff_t row_begin, ptrdiff_t row_end, ptrdiff_t outputs, const float *bias, float *y);

// ---------------------------------------------------------------------------------------------
// Convolutions of ±1 images with ±1 kernels (NHWC, Keras's (KH, KW, C, F) kernels), directly on
// packed bits: Wc = ⌈C/64⌉ words per pixel and per tap, bit 1 for −1, zero padding bits.
//
// For each output pixel, over its taps inside the image: Σ = taps·C − 2·popcount(x ⊕ w), an
// exact integer; taps in the padding contribute nothing (pad 0), or the sum over the tap's
// kernel values times the pad value (±1). The output is (float)Σ, then × scale[f], then
// + bias[f], each rounded on its own (no fused multiply-add): the same bits as an int8 or fp32
// product of the same levels followed by the same scale and bias.

typedef struct flip_xnor_conv_shape {
  ptrdiff_t height, width, channels, words;  // the input image; words = ⌈channels / 64⌉
  ptrdiff_t kernel_height, kernel_width, stride_height, stride_width, pad_top, pad_left;
  ptrdiff_t out_height, out_width, filters;
  int pad_value;  // −1, 0 or +1
} flip_xnor_conv_shape;

// 1 when this build has the AVX-512 variant (x86_64), else 0.
int flip_xnor_has_avx512_kernels(void);

// Packs rows [row_begin, row_end) of int8 levels x (R, C) (bit 1 where the level is negative)
// into `into` (R, words).
void flip_xnor_pack_levels(
    flip_xnor_kernel kernel, const int8_t *x, ptrdiff_t channels, ptrdiff_t words, ptrdiff_t row_begin,
    ptrdiff_t row_end, uint64_t *into);

// Packs the int8 levels of a kernel (KH·KW·C, F) into `into` (KH·KW, words, F): word k of tap t
// and filter f holds channels 64k ..< 64k + 64.
void flip_xnor_pack_conv_kernel(
    const int8_t *levels, ptrdiff_t taps, ptrdiff_t channels, ptrdiff_t words, ptrdiff_t filters, uint64_t *into);

// y (rows, F) for the output pixels [row_begin, row_end) of (B·OH·OW): x (B, H, W, words) and w
// (KH·KW, words, F) packed as above; scale and bias NULL or F values. At most 64 taps (KH·KW)
// and 64 words (C ≤ 4096).
void flip_xnor_conv(
    flip_xnor_kernel kernel, const flip_xnor_conv_shape *shape, const uint64_t *x, const uint64_t *w,
    ptrdiff_t row_begin, ptrdiff_t row_end, const float *scale, const float *bias, float *y);

#endif
