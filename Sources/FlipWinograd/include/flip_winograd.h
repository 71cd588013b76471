// The transforms of Winograd's F(4×4, 3×3) for the backward of a 3×3, stride-1 convolution
// over NHWC tensors: the algorithm's linear maps, with its products left to 36
// matrix products (FlipTensor's `WinogradBackward` runs them on oneDNN's batched matmul).
//
// With the matrices of Lavin and Gray (interpolation points 0, ±1, ±2, ∞), Bᵀ (6×6), G (6×3)
// and Aᵀ (4×6), a 4×4 tile of the 'same' correlation y = x ⋆ w is Aᵀ[(G w Gᵀ) ⊙ (Bᵀ d B)]A,
// d the 6×6 input tile around it. Its two backward passes are the same algorithm:
// - input gradient: dx = dy ⋆ w' with w'[a][b] = w[2−a][2−b] (channels and filters swapped,
//   dy padded by 2 − the forward's padding), a forward of dy's tiles through Bᵀ·B, the kernel
//   through G·Gᵀ, the result through Aᵀ·A;
// - kernel gradient: dw = Gᵀ[Σ_tiles (A g Aᵀ) ⊙ (Bᵀ d B)]G, g the tile's 4×4 of dy (the
//   transpose of the forward's bilinear form: dw is ∂⟨dy, y⟩/∂w).
//
// Tiles cut a map (dy's for the kernel gradient, dx's for the input gradient) into 4×4
// squares, ⌈H/4⌉ × ⌈W/4⌉ per image, tile t = (image, row, column) in row-major order; beyond
// their maps x and dy read as zeros (the padding, and the cut last tiles). A chunk is
// `capacity` consecutive tiles; its
// transformed tiles are 36 row-major matrices, one per point ξ of the 6×6 product: element
// (ξ, i, k) at [ξ·capacity·K + i·K + k] for the chunk's i-th tile and channel k. Tiles past
// the last write zeros (so a short last chunk multiplies as a full one).
//
// Channel and filter counts must be multiples of 16, and the padding at most 2 (the caller
// checks). On x86_64 the code is
// compiled for AVX2 and FMA (`target("avx2,fma")`) and may run only where the CPU has them
// (FlipTensor checks); elsewhere it is portable C.
#ifndef FLIP_WINOGRAD_H
#define FLIP_WINOGRAD_H

// One chunk of tiles of an H × W map.
typedef struct flip_winograd_chunk {
  // The tiled map.
  int height, width;
  // Tiles in the batch: images × ⌈height/4⌉ × ⌈width/4⌉.
  long tiles;
  // The chunk's first tile, and its tiles (the rows of each of its 36 matrices).
  long first, capacity;
} flip_winograd_chunk;

// The map a chunk's 6×6 input tiles are read from: (B, height, width, channels), the tile at
// (row, column) of the tiled map reading rows row − top ..< row − top + 6 and columns
// column − left ..< column − left + 6.
typedef struct flip_winograd_source {
  const float *data;
  int height, width, channels, top, left;
} flip_winograd_source;

// v ← Bᵀ d B of the 6×6 input tiles d of tiles first+begin ..< first+end.
void flip_winograd_input_tiles(flip_winograd_chunk c, flip_winograd_source s, long begin, long end, float *v);

// z ← A g Aᵀ of the 4×4 tiles g of dy (B, H, W, F), the tiled map, tiles first+begin ..< first+end.
void flip_winograd_gradient_tiles(flip_winograd_chunk c, const float *dy, int filters, long begin, long end, float *z);

// dx's 4×4 tiles first+begin ..< first+end ← Aᵀ o A (dx (B, H, W, C) the tiled map; clipped to
// it; tiles past the last are skipped).
void flip_winograd_output_tiles(flip_winograd_chunk c, const float *o, int channels, long begin, long end, float *dx);

// wt[ξ][c][f] ← (G w' Gᵀ)[ξ] for channels cBegin ..< cEnd, w' the flipped kernel of the
// input gradient; kernel HWIO (3, 3, C, F).
void flip_winograd_kernel_for_data(const float *kernel, int channels, int filters, int cBegin, int cEnd, float *wt);

// The kernel gradient (HWIO) of channels cBegin ..< cEnd ← Gᵀ acc G, acc[ξ][c][f] the
// 36 products' sums over every tile.
void flip_winograd_kernel_gradient(const float *acc, int channels, int filters, int cBegin, int cEnd, float *dkernel);

#endif
