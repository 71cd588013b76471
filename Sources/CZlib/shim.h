// zlib for Swift: gzip decompression of IDX files.
#ifndef FLIP_CZLIB_SHIM_H
#define FLIP_CZLIB_SHIM_H
#include <zlib.h>

// inflateInit2 is a macro over inflateInit2_ that passes the header's version and struct size.
static inline int flip_inflate_init2(z_streamp stream, int windowBits) {
  return inflateInit2(stream, windowBits);
}
#endif
