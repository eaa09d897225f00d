// Shared-memory limits of the current device, checked before a kernel that needs more than the
// default 48 KB runs: one implementation for every CUDA path.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "cuda/common/check.hpp"
#include "flashmask/types.hpp"

namespace flashmask::cuda {

// The opt-in shared memory per block (cudaDevAttrMaxSharedMemoryPerBlockOptin) of the sm80
// kernels' smaller targets, for kernels sized to fit them exactly (static_asserts beside their
// layouts); at run time the device's own value is what check_shared_memory() compares against.
inline constexpr int kSm80SharedMemoryPerBlock = 163 * 1024;  // A100: 166,912 bytes
inline constexpr int kSm86SharedMemoryPerBlock = 99 * 1024;   // sm_86 / sm_89: 101,376 bytes

// A device that offers less shared memory per block than a kernel needs (sm_86 / sm_89: 99 KB;
// sm_80: 163 KB) is refused with Unsupported, saying what was needed, before anything runs. The
// need is the kernel's dynamic bytes and its static __shared__ variables together: the opt-in
// limit is on their sum (cudaFuncSetAttribute refuses a dynamic size past the limit less the
// static bytes). `function` is the API entry point ("forward", "backward") named in the message.
template <typename Kernel>
void check_shared_memory(const char* function, Kernel kernel, int dynamic_bytes, const char* name) {
    cudaFuncAttributes attributes{};
    FM_CUDA_CHECK(cudaFuncGetAttributes(&attributes, kernel));
    const int static_bytes = int(attributes.sharedSizeBytes);
    int device = 0, available = 0;
    FM_CUDA_CHECK(cudaGetDevice(&device));
    FM_CUDA_CHECK(cudaDeviceGetAttribute(&available, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    if (dynamic_bytes + static_bytes > available)
        throw Error(ErrorCode::Unsupported, "q",
                    std::string("flashmask::") + function + ": " + name + " needs " +
                        std::to_string(dynamic_bytes + static_bytes) + " bytes of shared memory per block (" +
                        std::to_string(dynamic_bytes) + " dynamic + " + std::to_string(static_bytes) +
                        " static) for this head dim; this device offers " + std::to_string(available));
}

// Opts the kernel in to `bytes` of dynamic shared memory (needed above the default 48 KB).
template <typename Kernel>
void allow_shared_memory(Kernel kernel, int bytes) {
    FM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
}

}  // namespace flashmask::cuda
