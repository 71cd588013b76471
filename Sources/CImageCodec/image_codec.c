// JPEG and PNG decoding and encoding for Flip's ImageNet-format data (see image_codec.h).
// libjpeg stops on an error by calling error_exit, which must not return: here it longjmps
// back to the setjmp in the flip_* function that called libjpeg, which frees and returns.
#include "image_codec.h"

#include <png.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>  // after stdio.h, which it needs
#include <jerror.h>

static void set_message(flip_image_status *status, const char *format, ...) {
  va_list args;
  va_start(args, format);
  vsnprintf(status->message, sizeof status->message, format, args);
  va_end(args);
}

static void reset(flip_image_status *status) {
  status->warnings = 0;
  status->message[0] = 0;
}

// MARK: libjpeg's error manager

typedef struct flip_jpeg_error {
  struct jpeg_error_mgr pub;  // first: libjpeg sees only this
  jmp_buf jump;
  flip_image_status *status;
} flip_jpeg_error;

// Formats the error as "JPEG: <libjpeg's message>", with the first warning if there was one
// (a truncated file often warns "Premature end of JPEG file" before the error it leads to),
// and jumps back to the caller's setjmp.
static void jpeg_error_exit(j_common_ptr cinfo) {
  flip_jpeg_error *error = (flip_jpeg_error *)cinfo->err;
  char text[JMSG_LENGTH_MAX];
  (*cinfo->err->format_message)(cinfo, text);
  flip_image_status *status = error->status;
  if (status->warnings > 0) {
    char warning[FLIP_IMAGE_MESSAGE_MAX];
    memcpy(warning, status->message, sizeof warning);
    set_message(status, "JPEG: %s (after %d warning%s, the first: %s)", text, status->warnings,
                status->warnings == 1 ? "" : "s", warning);
  } else {
    set_message(status, "JPEG: %s", text);
  }
  longjmp(error->jump, 1);
}

// msg_level -1 is a warning: corrupt data that libjpeg recovered from. Counted, and the
// first one's text kept; trace messages (msg_level >= 0) are dropped. Nothing is printed.
static void jpeg_emit_message(j_common_ptr cinfo, int msg_level) {
  if (msg_level != -1) return;
  flip_jpeg_error *error = (flip_jpeg_error *)cinfo->err;
  cinfo->err->num_warnings++;
  if (error->status->warnings++ == 0) {
    char text[JMSG_LENGTH_MAX];
    (*cinfo->err->format_message)(cinfo, text);
    set_message(error->status, "%s", text);
  }
}

static struct jpeg_error_mgr *jpeg_error_init(flip_jpeg_error *error, flip_image_status *status) {
  jpeg_std_error(&error->pub);
  error->pub.error_exit = jpeg_error_exit;
  error->pub.emit_message = jpeg_emit_message;
  error->status = status;
  return &error->pub;
}

// MARK: Probing

static const unsigned char png_signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};

static int sniff(const unsigned char *bytes, size_t size) {
  if (size >= 3 && bytes[0] == 0xff && bytes[1] == 0xd8 && bytes[2] == 0xff) return FLIP_IMAGE_FORMAT_JPEG;
  if (size >= 8 && memcmp(bytes, png_signature, 8) == 0) return FLIP_IMAGE_FORMAT_PNG;
  return 0;
}

static int unrecognized(const unsigned char *bytes, size_t size, flip_image_status *status) {
  if (size == 0) {
    set_message(status, "the bytes are neither JPEG nor PNG: there are none (an empty file)");
    return FLIP_IMAGE_UNRECOGNIZED;
  }
  char hex[8 * 5 + 1] = {0};
  size_t shown = size < 8 ? size : 8;
  for (size_t i = 0; i < shown; i++) snprintf(hex + 5 * i, 6, " 0x%02x", bytes[i]);
  if (size > 8) {
    set_message(status, "the bytes are neither JPEG nor PNG: the first 8 of %zu are%s", size, hex);
  } else {
    set_message(status, "the bytes are neither JPEG nor PNG: the %zu byte%s%s", size, size == 1 ? " is" : "s are", hex);
  }
  return FLIP_IMAGE_UNRECOGNIZED;
}

static int too_large(const char *format, long width, long height, flip_image_status *status) {
  if (width * height <= FLIP_IMAGE_MAX_PIXELS) return 0;
  set_message(status, "%s: %ld×%ld pixels is more than the %ld (2^28) Flip decodes", format, width, height,
              (long)FLIP_IMAGE_MAX_PIXELS);
  return 1;
}

static int jpeg_probe(const unsigned char *bytes, size_t size, flip_image_header *header,
                      flip_image_status *status) {
  struct jpeg_decompress_struct cinfo;
  flip_jpeg_error error;
  cinfo.err = jpeg_error_init(&error, status);
  if (setjmp(error.jump)) {
    jpeg_destroy_decompress(&cinfo);
    return FLIP_IMAGE_CORRUPT;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, bytes, size);
  jpeg_read_header(&cinfo, TRUE);
  header->format = FLIP_IMAGE_FORMAT_JPEG;
  header->width = (int)cinfo.image_width;
  header->height = (int)cinfo.image_height;
  header->components = cinfo.num_components;
  header->color_space = (int)cinfo.jpeg_color_space;
  jpeg_destroy_decompress(&cinfo);
  return too_large("JPEG", header->width, header->height, status) ? FLIP_IMAGE_CORRUPT : FLIP_IMAGE_OK;
}

static int png_probe(const unsigned char *bytes, size_t size, flip_image_header *header,
                     flip_image_status *status) {
  png_image image;
  memset(&image, 0, sizeof image);
  image.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_memory(&image, bytes, size)) {
    set_message(status, "PNG: %s", image.message);
    png_image_free(&image);
    return FLIP_IMAGE_CORRUPT;
  }
  header->format = FLIP_IMAGE_FORMAT_PNG;
  header->width = (int)image.width;
  header->height = (int)image.height;
  // Channels as decoded: a palette's entries are RGB, or RGBA with tRNS.
  header->components = (int)PNG_IMAGE_SAMPLE_CHANNELS(image.format & ~PNG_FORMAT_FLAG_COLORMAP);
  header->color_space = (int)image.format;
  png_image_free(&image);
  return too_large("PNG", header->width, header->height, status) ? FLIP_IMAGE_CORRUPT : FLIP_IMAGE_OK;
}

int flip_image_probe(const unsigned char *bytes, size_t size, flip_image_header *header,
                     flip_image_status *status) {
  reset(status);
  memset(header, 0, sizeof *header);
  switch (sniff(bytes, size)) {
  case FLIP_IMAGE_FORMAT_JPEG: return jpeg_probe(bytes, size, header, status);
  case FLIP_IMAGE_FORMAT_PNG: return png_probe(bytes, size, header, status);
  default: return unrecognized(bytes, size, status);
  }
}

// MARK: JPEG decoding

// CMYK to RGB as TensorFlow's decode_jpeg computes it (tensorflow/core/lib/jpeg/jpeg_mem.cc),
// truncating integer division. With an Adobe marker (Photoshop's files) the stored values are
// inverted (255 = no ink): R = C·K/255, G = M·K/255, B = Y·K/255; without one,
// R = (255 − C)(255 − K)/255 and likewise for G and B. `cmyk`: (width, 4); `rgb`: (width, 3).
static void cmyk_to_rgb(const JSAMPLE *cmyk, unsigned char *rgb, int width, int adobe) {
  for (int i = 0; i < width; i++) {
    int c = cmyk[4 * i], m = cmyk[4 * i + 1], y = cmyk[4 * i + 2], k = cmyk[4 * i + 3];
    if (!adobe) c = 255 - c, m = 255 - m, y = 255 - y, k = 255 - k;
    rgb[3 * i] = (unsigned char)(c * k / 255);
    rgb[3 * i + 1] = (unsigned char)(m * k / 255);
    rgb[3 * i + 2] = (unsigned char)(y * k / 255);
  }
}

int flip_jpeg_decode_region(const unsigned char *bytes, size_t size, int scale_eighths, int x, int y,
                            int width, int height, unsigned char *out, size_t capacity,
                            flip_image_size *scaled, flip_image_status *status) {
  reset(status);
  memset(scaled, 0, sizeof *scaled);
  if (sniff(bytes, size) != FLIP_IMAGE_FORMAT_JPEG) {
    if (sniff(bytes, size) == 0) return unrecognized(bytes, size, status);
    set_message(status, "flip_jpeg_decode_region: the bytes are a PNG");
    return FLIP_IMAGE_INVALID_ARGUMENT;
  }
  if (scale_eighths < 1 || scale_eighths > 16) {
    set_message(status, "flip_jpeg_decode_region: scale %d/8 is outside 1/8...16/8", scale_eighths);
    return FLIP_IMAGE_INVALID_ARGUMENT;
  }
  struct jpeg_decompress_struct cinfo;
  flip_jpeg_error error;
  cinfo.err = jpeg_error_init(&error, status);
  if (setjmp(error.jump)) {
    jpeg_destroy_decompress(&cinfo);
    return FLIP_IMAGE_CORRUPT;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, bytes, size);
  jpeg_read_header(&cinfo, TRUE);
  if (too_large("JPEG", cinfo.image_width, cinfo.image_height, status)) {
    jpeg_destroy_decompress(&cinfo);
    return FLIP_IMAGE_CORRUPT;
  }
  const int cmyk = cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK;
  // libjpeg-turbo converts gray to RGB itself; YCCK it converts to CMYK.
  cinfo.out_color_space = cmyk ? JCS_CMYK : JCS_RGB;
  cinfo.scale_num = (unsigned)scale_eighths;
  cinfo.scale_denom = 8;
  // The fast integer IDCT: what TensorFlow's decode_jpeg and decode_and_crop_jpeg use unless told
  // otherwise (their dct_method "" gives the same pixels as "INTEGER_FAST", checked with
  // TensorFlow 2.15), so Larq Zoo's training decoded with it.
  cinfo.dct_method = JDCT_IFAST;
  jpeg_calc_output_dimensions(&cinfo);
  scaled->width = (int)cinfo.output_width;
  scaled->height = (int)cinfo.output_height;
  if (too_large("JPEG (scaled)", cinfo.output_width, cinfo.output_height, status)) {
    jpeg_destroy_decompress(&cinfo);
    return FLIP_IMAGE_CORRUPT;
  }
  if (x < 0 || y < 0 || width < 1 || height < 1 || x > scaled->width - width ||
      y > scaled->height - height) {
    set_message(status, "flip_jpeg_decode_region: the rectangle x %d, y %d, %d×%d is not inside the %d×%d image",
                x, y, width, height, scaled->width, scaled->height);
    jpeg_destroy_decompress(&cinfo);
    return FLIP_IMAGE_INVALID_ARGUMENT;
  }
  jpeg_start_decompress(&cinfo);
  // jpeg_crop_scanline moves x left to an iMCU boundary and widens the width to match. Where a
  // component is upsampled horizontally (chroma at 8/8 and above; below, libjpeg scales chroma
  // up in its IDCT instead), fancy upsampling blends each pixel with its neighbour column, and
  // at the crop's edges it has none: the edge columns differ from a full decode. So one more
  // column is decoded on each side (within the image), and the rows are trimmed to the asked
  // columns below: every pixel returned is the full decode's.
  int upsampled = 0;
  for (int c = 0; c < cinfo.num_components; c++) {
    const jpeg_component_info *component = &cinfo.comp_info[c];
    upsampled |= component->h_samp_factor * component->DCT_scaled_size <
                 cinfo.max_h_samp_factor * cinfo.min_DCT_scaled_size;
  }
  const int margin_left = upsampled && x > 0, margin_right = upsampled && x + width < scaled->width;
  JDIMENSION crop_x = (JDIMENSION)(x - margin_left), crop_width = (JDIMENSION)(width + margin_left + margin_right);
  jpeg_crop_scanline(&cinfo, &crop_x, &crop_width);
  const size_t row_bytes = (size_t)crop_width * 3;
  if (row_bytes * (size_t)height > capacity) {
    set_message(status, "flip_jpeg_decode_region: %zu bytes of output space, %zu needed", capacity,
                row_bytes * (size_t)height);
    jpeg_destroy_decompress(&cinfo);
    return FLIP_IMAGE_INVALID_ARGUMENT;
  }
  if (y > 0 && jpeg_skip_scanlines(&cinfo, (JDIMENSION)y) != (JDIMENSION)y) {
    set_message(status, "JPEG: jpeg_skip_scanlines skipped fewer than %d rows", y);
    jpeg_destroy_decompress(&cinfo);
    return FLIP_IMAGE_CORRUPT;
  }
  if (cmyk) {
    // One row of CMYK, freed with cinfo.
    JSAMPARRAY row = (*cinfo.mem->alloc_sarray)((j_common_ptr)&cinfo, JPOOL_IMAGE, crop_width * 4, 1);
    for (int r = 0; r < height; r++) {
      if (jpeg_read_scanlines(&cinfo, row, 1) != 1) ERREXIT(&cinfo, JERR_CANT_SUSPEND);
      cmyk_to_rgb(row[0], out + (size_t)r * row_bytes, (int)crop_width, cinfo.saw_Adobe_marker);
    }
  } else {
    JSAMPROW rows[16];
    int done = 0;
    while (done < height) {
      int n = height - done < 16 ? height - done : 16;
      for (int i = 0; i < n; i++) rows[i] = out + (size_t)(done + i) * row_bytes;
      JDIMENSION read = jpeg_read_scanlines(&cinfo, rows, (JDIMENSION)n);
      if (read == 0) ERREXIT(&cinfo, JERR_CANT_SUSPEND);  // a memory source never suspends
      done += (int)read;
    }
  }
  // The rows below the region are never decoded: no jpeg_finish_decompress, which would
  // decode them (and warn about data after the region that is damaged).
  jpeg_destroy_decompress(&cinfo);
  // Keep the asked columns, at row stride width*3 (each row moves to a lower offset).
  const size_t skip = ((size_t)x - crop_x) * 3;
  if (skip > 0 || crop_width != (JDIMENSION)width) {
    for (int r = 0; r < height; r++) {
      memmove(out + (size_t)r * width * 3, out + (size_t)r * row_bytes + skip, (size_t)width * 3);
    }
  }
  return FLIP_IMAGE_OK;
}

// MARK: PNG decoding

int flip_png_decode_region(const unsigned char *bytes, size_t size, int x, int y, int width,
                           int height, unsigned char *out, size_t capacity, flip_image_size *full,
                           flip_image_status *status) {
  reset(status);
  memset(full, 0, sizeof *full);
  if (sniff(bytes, size) != FLIP_IMAGE_FORMAT_PNG) {
    if (sniff(bytes, size) == 0) return unrecognized(bytes, size, status);
    set_message(status, "flip_png_decode_region: the bytes are a JPEG");
    return FLIP_IMAGE_INVALID_ARGUMENT;
  }
  png_image image;
  memset(&image, 0, sizeof image);
  image.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_memory(&image, bytes, size)) {
    set_message(status, "PNG: %s", image.message);
    png_image_free(&image);
    return FLIP_IMAGE_CORRUPT;
  }
  const long full_width = (long)image.width, full_height = (long)image.height;
  if (too_large("PNG", full_width, full_height, status)) {
    png_image_free(&image);
    return FLIP_IMAGE_CORRUPT;
  }
  full->width = (int)full_width;
  full->height = (int)full_height;
  if (x < 0 || y < 0 || width < 1 || height < 1 || x > full_width - width || y > full_height - height) {
    set_message(status, "flip_png_decode_region: the rectangle x %d, y %d, %d×%d is not inside the %ld×%ld image",
                x, y, width, height, full_width, full_height);
    png_image_free(&image);
    return FLIP_IMAGE_INVALID_ARGUMENT;
  }
  // Every input becomes 8-bit RGB: gray is replicated, a palette expanded, 16 bits scaled to 8.
  // Alpha (an alpha channel, or tRNS) is dropped, not composited: transparent pixels keep
  // their stored colour, as TensorFlow's decode_png(channels=3) gives them. libpng composites
  // when asked for RGB from an image with alpha, so read RGBA and drop the A below.
  const int channels = (image.format & PNG_FORMAT_FLAG_ALPHA) ? 4 : 3;
  image.format = channels == 4 ? PNG_FORMAT_RGBA : PNG_FORMAT_RGB;
  // A 16-bit file without gAMA or sRGB chunk is sRGB (as TensorFlow reads it: the high bits),
  // not linear light, which libpng's simplified API assumes by default. Files with a gAMA
  // chunk far from sRGB's are converted to sRGB.
  image.flags |= PNG_IMAGE_FLAG_16BIT_sRGB;
  const size_t need = (size_t)full_width * (size_t)full_height * (size_t)channels;
  if (need > capacity) {
    set_message(status, "flip_png_decode_region: %zu bytes of working space, %zu needed", capacity, need);
    png_image_free(&image);
    return FLIP_IMAGE_INVALID_ARGUMENT;
  }
  if (!png_image_finish_read(&image, NULL, out, 0, NULL)) {
    set_message(status, "PNG: %s", image.message);
    png_image_free(&image);
    return FLIP_IMAGE_CORRUPT;
  }
  png_image_free(&image);
  // Keep the rectangle, moving it to the buffer's start: each byte moves to an offset no
  // larger than its own, and a pixel is read before it can be overwritten.
  for (int r = 0; r < height; r++) {
    const unsigned char *source = out + (((size_t)(y + r) * (size_t)full_width + (size_t)x) * channels);
    unsigned char *target = out + (size_t)r * (size_t)width * 3;
    if (channels == 3) {
      memmove(target, source, (size_t)width * 3);
    } else {
      for (int i = 0; i < width; i++) {
        unsigned char red = source[4 * i], green = source[4 * i + 1], blue = source[4 * i + 2];
        target[3 * i] = red, target[3 * i + 1] = green, target[3 * i + 2] = blue;
      }
    }
  }
  return FLIP_IMAGE_OK;
}

// MARK: Encoding

int flip_jpeg_encode(const unsigned char *pixels, int width, int height, int components, int quality,
                     int luma_h, int luma_v, int progressive, unsigned char **out, size_t *out_size,
                     flip_image_status *status) {
  reset(status);
  *out = NULL;
  *out_size = 0;
  if (components != 1 && components != 3 && components != 4) {
    set_message(status, "JPEG encoding: %d components; 1 (gray), 3 (RGB) or 4 (CMYK) are supported", components);
    return FLIP_IMAGE_INVALID_ARGUMENT;
  }
  if (width < 1 || height < 1 || width > JPEG_MAX_DIMENSION || height > JPEG_MAX_DIMENSION ||
      quality < 1 || quality > 100) {
    set_message(status, "JPEG encoding: %d×%d pixels at quality %d; 1...%d pixels a side and quality 1...100",
                width, height, quality, JPEG_MAX_DIMENSION);
    return FLIP_IMAGE_INVALID_ARGUMENT;
  }
  if (luma_h < 1 || luma_h > 2 || luma_v < 1 || luma_v > 2) {
    set_message(status, "JPEG encoding: luma sampled %d×%d; 1 or 2 each way are supported", luma_h, luma_v);
    return FLIP_IMAGE_INVALID_ARGUMENT;
  }
  struct jpeg_compress_struct cinfo;
  flip_jpeg_error error;
  // jpeg_mem_dest writes the buffer it mallocs into *out (the caller's memory, not a local, so
  // its value is defined after a longjmp); ours to free on error.
  unsigned long buffer_size = 0;
  cinfo.err = jpeg_error_init(&error, status);
  if (setjmp(error.jump)) {
    jpeg_destroy_compress(&cinfo);
    free(*out);
    *out = NULL;
    return FLIP_IMAGE_CORRUPT;
  }
  jpeg_create_compress(&cinfo);
  jpeg_mem_dest(&cinfo, out, &buffer_size);
  cinfo.image_width = (JDIMENSION)width;
  cinfo.image_height = (JDIMENSION)height;
  cinfo.input_components = components;
  cinfo.in_color_space = components == 1 ? JCS_GRAYSCALE : components == 3 ? JCS_RGB : JCS_CMYK;
  jpeg_set_defaults(&cinfo);  // CMYK: stored as CMYK (not YCCK), with an Adobe marker
  jpeg_set_quality(&cinfo, quality, TRUE);
  if (components == 3) {
    cinfo.comp_info[0].h_samp_factor = luma_h;
    cinfo.comp_info[0].v_samp_factor = luma_v;
  }
  if (progressive) jpeg_simple_progression(&cinfo);
  jpeg_start_compress(&cinfo, TRUE);
  const size_t row_bytes = (size_t)width * (size_t)components;
  JSAMPARRAY inverted = (*cinfo.mem->alloc_sarray)((j_common_ptr)&cinfo, JPOOL_IMAGE, (JDIMENSION)row_bytes, 1);
  while (cinfo.next_scanline < cinfo.image_height) {
    JSAMPROW row = (JSAMPROW)(pixels + cinfo.next_scanline * row_bytes);
    if (components == 4) {
      for (size_t i = 0; i < row_bytes; i++) inverted[0][i] = (JSAMPLE)(255 - row[i]);
      row = inverted[0];
    }
    jpeg_write_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_compress(&cinfo);
  jpeg_destroy_compress(&cinfo);
  *out_size = buffer_size;
  return FLIP_IMAGE_OK;
}

int flip_png_encode(const unsigned char *pixels, int width, int height, int channels,
                    unsigned char **out, size_t *out_size, flip_image_status *status) {
  reset(status);
  *out = NULL;
  *out_size = 0;
  if (channels != 1 && channels != 3 && channels != 4) {
    set_message(status, "PNG encoding: %d channels; 1 (gray), 3 (RGB) or 4 (RGBA) are supported", channels);
    return FLIP_IMAGE_INVALID_ARGUMENT;
  }
  if (width < 1 || height < 1 || (long)width * height > FLIP_IMAGE_MAX_PIXELS) {
    set_message(status, "PNG encoding: %d×%d pixels; 1 to 2^28 are supported", width, height);
    return FLIP_IMAGE_INVALID_ARGUMENT;
  }
  png_image image;
  memset(&image, 0, sizeof image);
  image.version = PNG_IMAGE_VERSION;
  image.width = (png_uint_32)width;
  image.height = (png_uint_32)height;
  image.format = channels == 1 ? PNG_FORMAT_GRAY : channels == 3 ? PNG_FORMAT_RGB : PNG_FORMAT_RGBA;
  png_alloc_size_t size = 0;
  // First the size, then the bytes.
  if (!png_image_write_to_memory(&image, NULL, &size, 0, pixels, 0, NULL)) {
    set_message(status, "PNG encoding: %s", image.message);
    png_image_free(&image);
    return FLIP_IMAGE_CORRUPT;
  }
  unsigned char *buffer = malloc(size);
  if (buffer == NULL) {
    set_message(status, "PNG encoding: out of memory for %zu bytes", (size_t)size);
    return FLIP_IMAGE_CORRUPT;
  }
  if (!png_image_write_to_memory(&image, buffer, &size, 0, pixels, 0, NULL)) {
    set_message(status, "PNG encoding: %s", image.message);
    png_image_free(&image);
    free(buffer);
    return FLIP_IMAGE_CORRUPT;
  }
  *out = buffer;
  *out_size = size;
  return FLIP_IMAGE_OK;
}
