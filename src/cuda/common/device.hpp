// What the launchers ask of the current device. Host code only, legal during stream capture.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common/check.hpp"

namespace flashmask::cuda {

// The current device's SM count: the unit of a wave, for grid sizes and schedules.
inline int32_t current_device_sms() {
    int device = 0, sms = 0;
    FM_CUDA_CHECK(cudaGetDevice(&device));
    FM_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    return sms;
}

}  // namespace flashmask::cuda
