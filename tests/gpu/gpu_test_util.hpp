// GPU test helpers: skip cleanly without a device; RAII streams and device buffers.
//
// A GPU test starts with FM_SKIP_WITHOUT_GPU(), so that the suite passes (as skipped) on a
// machine without a CUDA device and CTest can run it everywhere.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstring>
#include <utility>
#include <vector>

#include "cuda/common/check.hpp"
#include "flashmask/tiles.hpp"

namespace flashmask::testing {

inline bool has_cuda_device() {
    int count = 0;
    return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

#define FM_SKIP_WITHOUT_GPU() \
    if (!::flashmask::testing::has_cuda_device()) GTEST_SKIP() << "no CUDA device"

// A created (non-blocking) stream, destroyed at scope exit.
class Stream {
public:
    Stream() { FM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking)); }
    ~Stream() { (void)cudaStreamDestroy(stream_); }
    Stream(const Stream&) = delete;
    Stream& operator=(const Stream&) = delete;
    cudaStream_t get() const { return stream_; }

private:
    cudaStream_t stream_ = nullptr;
};

template <typename T>
class DeviceBuffer {
public:
    explicit DeviceBuffer(std::size_t count) : count_(count) {
        FM_CUDA_CHECK(cudaMalloc(&data_, count * sizeof(T) + 1));
    }
    explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) {
        FM_CUDA_CHECK(cudaMemcpy(data_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
        // From pageable memory cudaMemcpy may return before the DMA lands, and work on a
        // non-blocking stream does not wait for the legacy stream: finish it here.
        FM_CUDA_CHECK(cudaDeviceSynchronize());
    }
    ~DeviceBuffer() { cudaFree(data_); }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    DeviceBuffer(DeviceBuffer&& other) noexcept : data_(other.data_), count_(other.count_) { other.data_ = nullptr; }
    DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
        std::swap(data_, other.data_);
        std::swap(count_, other.count_);
        return *this;
    }

    T* get() const { return data_; }
    std::size_t size() const { return count_; }
    // Every byte 0xFF: NaN in float32, float16 and bfloat16, -1 in int32. An output element still
    // holding it after a call was never written.
    // Finished before it returns, so that no later work on any stream can race with it.
    void poison() const {
        FM_CUDA_CHECK(cudaMemset(data_, 0xFF, count_ * sizeof(T)));
        FM_CUDA_CHECK(cudaDeviceSynchronize());
    }
    std::vector<T> to_host() const {
        std::vector<T> host(count_);
        FM_CUDA_CHECK(cudaMemcpy(host.data(), data_, count_ * sizeof(T), cudaMemcpyDeviceToHost));
        return host;
    }

private:
    T* data_ = nullptr;
    std::size_t count_;
};

// Bit-for-bit equal block summaries (device against host).
inline bool same_summary(const BlockSummary& a, const BlockSummary& b) { return std::memcmp(&a, &b, sizeof a) == 0; }

}  // namespace flashmask::testing
