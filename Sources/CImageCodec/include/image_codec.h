// JPEG (libjpeg's API, from libjpeg-turbo) and PNG (libpng's simplified API) decoding and
// encoding for ImageNet-format data. libjpeg reports errors by longjmp; that stays inside
// these functions, which return a status instead (Swift frames are never jumped over).
// Pixels: RGB8, rows top-down, row stride width*3. Coordinates: x, y from the top left.
#ifndef FLIP_IMAGE_CODEC_H
#define FLIP_IMAGE_CODEC_H

#include <stddef.h>

// Return codes of the flip_* functions.
enum {
  FLIP_IMAGE_OK = 0,
  // The bytes are neither JPEG (FF D8 FF) nor PNG (its 8-byte signature).
  FLIP_IMAGE_UNRECOGNIZED = 1,
  // The file is damaged or unsupported (libjpeg's or libpng's error, or an absurd size).
  FLIP_IMAGE_CORRUPT = 2,
  // The caller's arguments are out of range (a bug in the caller, not in the file).
  FLIP_IMAGE_INVALID_ARGUMENT = 3,
};

enum { FLIP_IMAGE_FORMAT_JPEG = 1, FLIP_IMAGE_FORMAT_PNG = 2 };

// Decoders refuse images of more pixels than this (2^28; ImageNet's largest has about 2^25),
// so that a damaged header cannot ask for a huge allocation.
#define FLIP_IMAGE_MAX_PIXELS (1L << 28)
// Longer than libjpeg's JMSG_LENGTH_MAX (200) and libpng's message (64).
#define FLIP_IMAGE_MESSAGE_MAX 320

// What a call reports besides its return code.
typedef struct flip_image_status {
  // libjpeg warnings (corrupt data it recovered from: a truncated file, a bad Huffman code);
  // 0 for a clean file and for PNG.
  int warnings;
  // On failure, the error; on success, the first warning's text ("" without warnings).
  char message[FLIP_IMAGE_MESSAGE_MAX];
} flip_image_status;

// A file's header.
typedef struct flip_image_header {
  int format;  // FLIP_IMAGE_FORMAT_*
  int width, height;
  // Stored components: JPEG 1 (gray), 3 (YCbCr or RGB) or 4 (CMYK or YCCK); PNG its channels
  // as decoded by libpng (1 gray, 2 gray+alpha, 3 RGB, 4 RGBA; a palette is 3, or 4 with tRNS).
  int components;
  // JPEG: the J_COLOR_SPACE of the file (jpeg_color_space); PNG: png_image's format flags.
  int color_space;
} flip_image_header;

// The size of a whole image at the scale decoded.
typedef struct flip_image_size {
  int width, height;
} flip_image_size;

// Sniffs the bytes and reads the header only.
int flip_image_probe(const unsigned char *bytes, size_t size, flip_image_header *header,
                     flip_image_status *status);

// Decodes rows y..<y+height, columns x..<x+width of a JPEG scaled by scale_eighths/8
// (1...16) into `out` (RGB8, row stride width*3), and sets `scaled` to the scaled image's size,
// ceil(image_width*n/8) × ceil(image_height*n/8). The rectangle is in the scaled image's
// coordinates and must lie inside it. The pixels are those of a full decode at that scale.
// libjpeg decodes whole iMCU columns (and one more column each side where chroma is upsampled),
// so `capacity` must hold (width + 65) * height * 3 bytes, or the scaled image's rows if
// narrower. Only the rows down to y+height are decoded. CMYK and YCCK files come out as
// TensorFlow's decode_jpeg gives them (cmyk_to_rgb in image_codec.c).
int flip_jpeg_decode_region(const unsigned char *bytes, size_t size, int scale_eighths, int x, int y,
                            int width, int height, unsigned char *out, size_t capacity,
                            flip_image_size *scaled, flip_image_status *status);

// Decodes a whole PNG into `out` (at least width*height*4 bytes: it is the working buffer),
// then keeps the rectangle x, y, width, height at its start (RGB8, row stride width*3).
int flip_png_decode_region(const unsigned char *bytes, size_t size, int x, int y, int width,
                           int height, unsigned char *out, size_t capacity, flip_image_size *full,
                           flip_image_status *status);

// Encodes width×height pixels of `components` 8-bit channels (1 gray, 3 RGB, 4 CMYK with
// 0 = no ink) as a JPEG at `quality` (1...100) into *out (malloc'd; the caller frees it).
// RGB is stored as YCbCr with luma sampled luma_h × luma_v (1 or 2 each) times as densely as
// chroma: 2×2 is 4:2:0, 2×1 4:2:2, 1×2 4:4:0, 1×1 4:4:4. CMYK is written as Photoshop writes
// it: inverted, with an Adobe marker. `progressive`: 1 for libjpeg's progressive scans.
int flip_jpeg_encode(const unsigned char *pixels, int width, int height, int components, int quality,
                     int luma_h, int luma_v, int progressive, unsigned char **out, size_t *out_size,
                     flip_image_status *status);

// Encodes width×height pixels of `channels` 8-bit channels (1 gray, 3 RGB, 4 RGBA) as a PNG
// into *out (malloc'd; the caller frees it).
int flip_png_encode(const unsigned char *pixels, int width, int height, int channels,
                    unsigned char **out, size_t *out_size, flip_image_status *status);

#endif
