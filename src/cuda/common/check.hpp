// Every CUDA runtime call and kernel launch goes through these, so a failure comes back through
// the API's one error path (flashmask::Error with CUDA's own message) instead of a crash.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "flashmask/types.hpp"

namespace flashmask::cuda {

inline void check_cuda(cudaError_t status, const char* what) {
    if (status != cudaSuccess) {
        // Clear the error this call left as the "last error" (unless it is sticky), so that the
        // next check_launch does not blame an innocent launch for it.
        (void)cudaGetLastError();
        throw Error(ErrorCode::CudaError, "", std::string(what) + ": " + cudaGetErrorName(status) + ": " +
                                                  cudaGetErrorString(status));
    }
}

// After a <<<...>>> launch: configuration errors show up here, not at the launch.
inline void check_launch(const char* kernel) { check_cuda(cudaGetLastError(), kernel); }

}  // namespace flashmask::cuda

#define FM_CUDA_CHECK(call) ::flashmask::cuda::check_cuda((call), #call)
