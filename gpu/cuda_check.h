#pragma once
// Every CUDA call is checked; launchers return the first cudaError_t instead of aborting.
#include <cuda_runtime.h>

#define KVQ_CUDA_TRY(call)                 \
  do {                                     \
    const cudaError_t kvq_status_ = (call); \
    if (kvq_status_ != cudaSuccess) return kvq_status_; \
  } while (0)
