// GPU test helpers: skip cleanly without a device; RAII device buffers.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <vector>

#include "cuda/common/check.hpp"

namespace flashmask::testing {

inline bool has_cuda_device() {
    int count = 0;
    return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

#define FM_SKIP_WITHOUT_GPU() \
    if (!::flashmask::testing::has_cuda_device()) GTEST_SKIP() << "no CUDA device"

template <typename T>
class DeviceBuffer {
public:
    explicit DeviceBuffer(std::size_t count) : count_(count) {
        FM_CUDA_CHECK(cudaMalloc(&data_, count * sizeof(T) + 1));
    }
    explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) {
        FM_CUDA_CHECK(cudaMemcpy(data_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
    }
    ~DeviceBuffer() { cudaFree(data_); }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;

    T* get() const { return data_; }
    std::vector<T> to_host() const {
        std::vector<T> host(count_);
        FM_CUDA_CHECK(cudaMemcpy(host.data(), data_, count_ * sizeof(T), cudaMemcpyDeviceToHost));
        return host;
    }

private:
    T* data_ = nullptr;
    std::size_t count_;
};

}  // namespace flashmask::testing
