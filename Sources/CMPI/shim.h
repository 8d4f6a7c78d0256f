#ifndef DDPTRAIN_CMPI_SHIM_H
#define DDPTRAIN_CMPI_SHIM_H
#include <mpi.h>

// Open MPI spells these handles as macros over addresses of globals; Swift cannot import
// such macros, so each one gets a getter.
static inline MPI_Comm ddp_mpi_comm_world(void) { return MPI_COMM_WORLD; }
static inline MPI_Datatype ddp_mpi_float(void) { return MPI_FLOAT; }
static inline MPI_Datatype ddp_mpi_double(void) { return MPI_DOUBLE; }
static inline MPI_Datatype ddp_mpi_int64(void) { return MPI_INT64_T; }
static inline MPI_Datatype ddp_mpi_byte(void) { return MPI_BYTE; }
static inline MPI_Datatype ddp_mpi_char(void) { return MPI_CHAR; }
static inline MPI_Op ddp_mpi_sum(void) { return MPI_SUM; }
static inline MPI_Op ddp_mpi_max(void) { return MPI_MAX; }
static inline MPI_Op ddp_mpi_min(void) { return MPI_MIN; }
static inline void *ddp_mpi_in_place(void) { return MPI_IN_PLACE; }
static inline MPI_Errhandler ddp_mpi_errors_return(void) { return MPI_ERRORS_RETURN; }
static inline int ddp_mpi_max_error_string(void) { return MPI_MAX_ERROR_STRING; }
static inline int ddp_mpi_max_processor_name(void) { return MPI_MAX_PROCESSOR_NAME; }
static inline int ddp_mpi_max_library_version_string(void) { return MPI_MAX_LIBRARY_VERSION_STRING; }
static inline int ddp_mpi_thread_single(void) { return MPI_THREAD_SINGLE; }
static inline int ddp_mpi_thread_funneled(void) { return MPI_THREAD_FUNNELED; }
static inline int ddp_mpi_thread_serialized(void) { return MPI_THREAD_SERIALIZED; }
static inline int ddp_mpi_thread_multiple(void) { return MPI_THREAD_MULTIPLE; }
#endif
