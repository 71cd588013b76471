// Open MPI for Swift. Swift cannot import the predefined handles (they are macros that
// take the address of library globals), so each one is a prefixed inline function here.
#ifndef FLIP_CMPI_SHIM_H
#define FLIP_CMPI_SHIM_H
#include <mpi.h>

// MPI_COMM_WORLD: the communicator of all ranks.
static inline MPI_Comm flip_mpi_comm_world(void) { return MPI_COMM_WORLD; }
// MPI_FLOAT, MPI_DOUBLE, MPI_UINT64_T, MPI_INT, MPI_BYTE: element types of buffers.
static inline MPI_Datatype flip_mpi_float(void) { return MPI_FLOAT; }
static inline MPI_Datatype flip_mpi_double(void) { return MPI_DOUBLE; }
static inline MPI_Datatype flip_mpi_uint64(void) { return MPI_UINT64_T; }
static inline MPI_Datatype flip_mpi_uint32(void) { return MPI_UINT32_T; }
static inline MPI_Datatype flip_mpi_uint16(void) { return MPI_UINT16_T; }
static inline MPI_Datatype flip_mpi_int64(void) { return MPI_INT64_T; }
static inline MPI_Datatype flip_mpi_int(void) { return MPI_INT; }
static inline MPI_Datatype flip_mpi_byte(void) { return MPI_BYTE; }
// MPI_SUM, MPI_MAX, MPI_MIN: reduction operations.
static inline MPI_Op flip_mpi_sum(void) { return MPI_SUM; }
static inline MPI_Op flip_mpi_max(void) { return MPI_MAX; }
static inline MPI_Op flip_mpi_min(void) { return MPI_MIN; }
// MPI_IN_PLACE: a sentinel pointer for in-place collectives.
static inline void *flip_mpi_in_place(void) { return MPI_IN_PLACE; }
// MPI_REQUEST_NULL and MPI_STATUS_IGNORE.
static inline MPI_Request flip_mpi_request_null(void) { return MPI_REQUEST_NULL; }
static inline MPI_Status *flip_mpi_status_ignore(void) { return MPI_STATUS_IGNORE; }
// MPI_THREAD_FUNNELED / MPI_THREAD_MULTIPLE: thread-support levels for MPI_Init_thread.
static inline int flip_mpi_thread_funneled(void) { return MPI_THREAD_FUNNELED; }
static inline int flip_mpi_thread_multiple(void) { return MPI_THREAD_MULTIPLE; }
// MPI_SUCCESS and MPI_MAX_LIBRARY_VERSION_STRING (a compile-time size).
static inline int flip_mpi_success(void) { return MPI_SUCCESS; }
static inline int flip_mpi_max_library_version_string(void) { return MPI_MAX_LIBRARY_VERSION_STRING; }
// MPI_STATUSES_IGNORE: for MPI_Testall / MPI_Waitall.
static inline MPI_Status *flip_mpi_statuses_ignore(void) { return MPI_STATUSES_IGNORE; }
// MPI_INFO_NULL and MPI_ERRORS_RETURN: handles for MPI_Comm_split_type and error handling.
static inline MPI_Info flip_mpi_info_null(void) { return MPI_INFO_NULL; }
static inline MPI_Errhandler flip_mpi_errors_return(void) { return MPI_ERRORS_RETURN; }
#endif
