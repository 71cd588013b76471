// Winograd F(4×4, 3×3) transforms (see flip_winograd.h). Each works on 16 channels at a time
// in small local arrays, which clang vectorizes over the channels.
#include "flip_winograd.h"

#if defined(__x86_64__)
#define TARGET __attribute__((target("avx2,fma")))
#else
#define TARGET
#endif

// Channels per block.
#define KB 16

// Bᵀ (rows 0-5) applied to d0..d5, each a vector of KB channels.
#define B_T(r, d, k)                                      \
  do {                                                    \
    float d0 = d(0, k), d1 = d(1, k), d2 = d(2, k);       \
    float d3 = d(3, k), d4 = d(4, k), d5 = d(5, k);       \
    r(0, k) = 4 * d0 - 5 * d2 + d4;                       \
    r(1, k) = -4 * (d1 + d2) + d3 + d4;                   \
    r(2, k) = 4 * (d1 - d2) - d3 + d4;                    \
    r(3, k) = 2 * (d3 - d1) - d2 + d4;                    \
    r(4, k) = 2 * (d1 - d3) - d2 + d4;                    \
    r(5, k) = 4 * d1 - 5 * d3 + d5;                       \
  } while (0)

// A (6×4) applied to g0..g3: the transform of a 4×4 tile of dy for the kernel gradient.
#define A_(r, g, k)                                                 \
  do {                                                              \
    float g0 = g(0, k), g1 = g(1, k), g2 = g(2, k), g3 = g(3, k);   \
    r(0, k) = g0;                                                   \
    r(1, k) = g0 + g1 + g2 + g3;                                    \
    r(2, k) = g0 - g1 + g2 - g3;                                    \
    r(3, k) = g0 + 2 * g1 + 4 * g2 + 8 * g3;                        \
    r(4, k) = g0 - 2 * g1 + 4 * g2 - 8 * g3;                        \
    r(5, k) = g3;                                                   \
  } while (0)

// Aᵀ (4×6) applied to m0..m5: back from the 36 products to a 4×4 tile.
#define A_T(r, m, k)                                      \
  do {                                                    \
    float m0 = m(0, k), m1 = m(1, k), m2 = m(2, k);       \
    float m3 = m(3, k), m4 = m(4, k), m5 = m(5, k);       \
    r(0, k) = m0 + m1 + m2 + m3 + m4;                     \
    r(1, k) = m1 - m2 + 2 * (m3 - m4);                    \
    r(2, k) = m1 + m2 + 4 * (m3 + m4);                    \
    r(3, k) = m1 - m2 + 8 * (m3 - m4) + m5;               \
  } while (0)

// G (6×3) applied to w0..w2: the kernel's transform.
#define G_(r, w, k)                                                               \
  do {                                                                            \
    float w0 = w(0, k), w1 = w(1, k), w2 = w(2, k);                               \
    r(0, k) = w0 * (1.f / 4);                                                     \
    r(1, k) = -(w0 + w1 + w2) * (1.f / 6);                                        \
    r(2, k) = -(w0 - w1 + w2) * (1.f / 6);                                        \
    r(3, k) = w0 * (1.f / 24) + w1 * (1.f / 12) + w2 * (1.f / 6);                 \
    r(4, k) = w0 * (1.f / 24) - w1 * (1.f / 12) + w2 * (1.f / 6);                 \
    r(5, k) = w2;                                                                 \
  } while (0)

// Gᵀ (3×6) applied to m0..m5: from the 36 sums to a row (or column) of the 3×3 kernel gradient.
#define G_T(r, m, k)                                                              \
  do {                                                                            \
    float m0 = m(0, k), m1 = m(1, k), m2 = m(2, k);                               \
    float m3 = m(3, k), m4 = m(4, k), m5 = m(5, k);                               \
    r(0, k) = m0 * (1.f / 4) - (m1 + m2) * (1.f / 6) + (m3 + m4) * (1.f / 24);    \
    r(1, k) = (m2 - m1) * (1.f / 6) + (m3 - m4) * (1.f / 12);                     \
    r(2, k) = (m3 + m4 - m1 - m2) * (1.f / 6) + m5;                               \
  } while (0)

// The tile's image, and its top-left output pixel.
static inline void locate(flip_winograd_chunk c, long t, long *image, int *y, int *x) {
  long across = (c.width + 3) / 4, per = (long)((c.height + 3) / 4) * across;
  *image = t / per;
  long r = t % per;
  *y = (int)(r / across) * 4;
  *x = (int)(r % across) * 4;
}

TARGET void flip_winograd_input_tiles(flip_winograd_chunk c, flip_winograd_source s, long begin, long end, float *v) {
  const long K = s.channels, rowStride = c.capacity * K;
  for (long i = begin; i < end; i++) {
    const long t = c.first + i;
    float *out = v + i * K;
    if (t >= c.tiles) {
      for (int p = 0; p < 36; p++)
        for (long k = 0; k < K; k++) out[p * rowStride + k] = 0;
      continue;
    }
    long n;
    int y0, x0;
    locate(c, t, &n, &y0, &x0);
    y0 -= s.top;
    x0 -= s.left;
    for (long k0 = 0; k0 < K; k0 += KB) {
      float d[6][6][KB], m[6][6][KB];
      for (int i6 = 0; i6 < 6; i6++)
        for (int j = 0; j < 6; j++) {
          const int yy = y0 + i6, xx = x0 + j;
          if (yy < 0 || yy >= s.height || xx < 0 || xx >= s.width) {
            for (int k = 0; k < KB; k++) d[i6][j][k] = 0;
          } else {
            const float *p = s.data + ((n * s.height + yy) * (long)s.width + xx) * K + k0;
            for (int k = 0; k < KB; k++) d[i6][j][k] = p[k];
          }
        }
      for (int j = 0; j < 6; j++) {
#define D(row, k) d[row][j][k]
#define M(row, k) m[row][j][k]
        for (int k = 0; k < KB; k++) B_T(M, D, k);
#undef D
#undef M
      }
      for (int i6 = 0; i6 < 6; i6++) {
        float o[6][KB];
#define S(col, k) m[i6][col][k]
#define O(col, k) o[col][k]
        for (int k = 0; k < KB; k++) B_T(O, S, k);
#undef S
#undef O
        for (int j = 0; j < 6; j++) {
          float *q = out + (i6 * 6 + j) * rowStride + k0;
          for (int k = 0; k < KB; k++) q[k] = o[j][k];
        }
      }
    }
  }
}

TARGET void flip_winograd_gradient_tiles(
    flip_winograd_chunk c, const float *dy, int filters, long begin, long end, float *z) {
  const long F = filters, rowStride = c.capacity * F;
  for (long i = begin; i < end; i++) {
    const long t = c.first + i;
    float *out = z + i * F;
    if (t >= c.tiles) {
      for (int p = 0; p < 36; p++)
        for (long k = 0; k < F; k++) out[p * rowStride + k] = 0;
      continue;
    }
    long n;
    int y0, x0;
    locate(c, t, &n, &y0, &x0);
    for (long k0 = 0; k0 < F; k0 += KB) {
      float g[4][4][KB], m[6][4][KB];
      for (int i4 = 0; i4 < 4; i4++)
        for (int j = 0; j < 4; j++) {
          const int yy = y0 + i4, xx = x0 + j;
          if (yy >= c.height || xx >= c.width) {
            for (int k = 0; k < KB; k++) g[i4][j][k] = 0;
          } else {
            const float *p = dy + ((n * c.height + yy) * (long)c.width + xx) * F + k0;
            for (int k = 0; k < KB; k++) g[i4][j][k] = p[k];
          }
        }
      for (int j = 0; j < 4; j++) {
#define S(row, k) g[row][j][k]
#define M(row, k) m[row][j][k]
        for (int k = 0; k < KB; k++) A_(M, S, k);
#undef S
#undef M
      }
      for (int i6 = 0; i6 < 6; i6++) {
        float o[6][KB];
#define S(col, k) m[i6][col][k]
#define O(col, k) o[col][k]
        for (int k = 0; k < KB; k++) A_(O, S, k);
#undef S
#undef O
        for (int j = 0; j < 6; j++) {
          float *q = out + (i6 * 6 + j) * rowStride + k0;
          for (int k = 0; k < KB; k++) q[k] = o[j][k];
        }
      }
    }
  }
}

TARGET void flip_winograd_output_tiles(
    flip_winograd_chunk c, const float *o, int channels, long begin, long end, float *dx) {
  const long C = channels, rowStride = c.capacity * C;
  for (long i = begin; i < end; i++) {
    const long t = c.first + i;
    if (t >= c.tiles) continue;
    long n;
    int y0, x0;
    locate(c, t, &n, &y0, &x0);
    const float *in = o + i * C;
    for (long k0 = 0; k0 < C; k0 += KB) {
      float m[6][6][KB], a[4][6][KB];
      for (int p = 0; p < 36; p++) {
        const float *q = in + p * rowStride + k0;
        for (int k = 0; k < KB; k++) m[p / 6][p % 6][k] = q[k];
      }
      for (int j = 0; j < 6; j++) {
#define S(row, k) m[row][j][k]
#define R(row, k) a[row][j][k]
        for (int k = 0; k < KB; k++) A_T(R, S, k);
#undef S
#undef R
      }
      for (int i4 = 0; i4 < 4 && y0 + i4 < c.height; i4++) {
        float r[4][KB];
#define S(col, k) a[i4][col][k]
#define R(col, k) r[col][k]
        for (int k = 0; k < KB; k++) A_T(R, S, k);
#undef S
#undef R
        for (int j = 0; j < 4 && x0 + j < c.width; j++) {
          float *p = dx + ((n * c.height + y0 + i4) * (long)c.width + x0 + j) * C + k0;
          for (int k = 0; k < KB; k++) p[k] = r[j][k];
        }
      }
    }
  }
}

TARGET void flip_winograd_kernel_for_data(
    const float *kernel, int channels, int filters, int cBegin, int cEnd, float *wt) {
  const long F = filters, CF = (long)channels * F;
  for (long ch = cBegin; ch < cEnd; ch++)
    for (long f0 = 0; f0 < F; f0 += KB) {
      float w[3][3][KB], m[6][3][KB];
      for (int a = 0; a < 3; a++)
        for (int b = 0; b < 3; b++) {
          const float *p = kernel + ((2 - a) * 3 + (2 - b)) * CF + ch * F + f0;
          for (int k = 0; k < KB; k++) w[a][b][k] = p[k];
        }
      for (int j = 0; j < 3; j++) {
#define S(row, k) w[row][j][k]
#define R(row, k) m[row][j][k]
        for (int k = 0; k < KB; k++) G_(R, S, k);
#undef S
#undef R
      }
      for (int i6 = 0; i6 < 6; i6++) {
        float u[6][KB];
#define S(col, k) m[i6][col][k]
#define R(col, k) u[col][k]
        for (int k = 0; k < KB; k++) G_(R, S, k);
#undef S
#undef R
        for (int j = 0; j < 6; j++) {
          float *q = wt + (i6 * 6 + j) * CF + ch * F + f0;
          for (int k = 0; k < KB; k++) q[k] = u[j][k];
        }
      }
    }
}

TARGET void flip_winograd_kernel_gradient(
    const float *acc, int channels, int filters, int cBegin, int cEnd, float *dkernel) {
  const long F = filters, CF = (long)channels * F;
  for (long ch = cBegin; ch < cEnd; ch++)
    for (long f0 = 0; f0 < F; f0 += KB) {
      float m[6][6][KB], a[3][6][KB];
      for (int p = 0; p < 36; p++) {
        const float *q = acc + p * CF + ch * F + f0;
        for (int k = 0; k < KB; k++) m[p / 6][p % 6][k] = q[k];
      }
      for (int j = 0; j < 6; j++) {
#define S(row, k) m[row][j][k]
#define R(row, k) a[row][j][k]
        for (int k = 0; k < KB; k++) G_T(R, S, k);
#undef S
#undef R
      }
      for (int i3 = 0; i3 < 3; i3++) {
        float r[3][KB];
#define S(col, k) a[i3][col][k]
#define R(col, k) r[col][k]
        for (int k = 0; k < KB; k++) G_T(R, S, k);
#undef S
#undef R
        for (int j = 0; j < 3; j++) {
          float *q = dkernel + (i3 * 3 + j) * CF + ch * F + f0;
          for (int k = 0; k < KB; k++) q[k] = r[j][k];
        }
      }
    }
}
