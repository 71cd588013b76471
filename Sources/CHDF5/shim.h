// HDF5 for Swift: reading Keras weight files (Sources/FlipTraining/Files/HDF5File.swift).
#ifndef FLIP_CHDF5_SHIM_H
#define FLIP_CHDF5_SHIM_H
#include <hdf5.h>

// The predefined types, property lists and flags below are macros over library globals that
// need H5open() first (H5T_NATIVE_FLOAT is `(H5OPEN H5T_NATIVE_FLOAT_LE_g)`); Swift imports none.
static inline hid_t flip_h5_native_float(void) { return H5T_NATIVE_FLOAT; }
static inline hid_t flip_h5_native_double(void) { return H5T_NATIVE_DOUBLE; }
static inline hid_t flip_h5_native_int(void) { return H5T_NATIVE_INT; }
static inline hid_t flip_h5_c_s1(void) { return H5T_C_S1; }
static inline hid_t flip_h5_default(void) { return H5P_DEFAULT; }
static inline hid_t flip_h5_all(void) { return H5S_ALL; }
static inline unsigned flip_h5_read_only(void) { return H5F_ACC_RDONLY; }
static inline unsigned flip_h5_truncate(void) { return H5F_ACC_TRUNC; }
static inline size_t flip_h5_variable(void) { return H5T_VARIABLE; }
static inline hid_t flip_h5_error_stack(void) { return H5E_DEFAULT; }

// Stops HDF5 printing its error stack to stderr: Flip reports each failure once, itself.
static inline void flip_h5_silence_errors(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }
#endif
