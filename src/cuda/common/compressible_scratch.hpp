// The backward's dQ accumulator in compressible device memory (Compute Data Compression, sm_80 on:
// cuMemCreate with CU_MEM_ALLOCATION_COMP_GENERIC).
//
// Why: the backward zeroes a float32 accumulator of B * Hq * Nq * D floats before its dK/dV kernel
// adds into it (268 MB at SPEC §6's config (a)); the zeroing and the kernel's first read of each
// line run at the memory's rate and are several percent of a sparse mask's backward
// (bench/NOTES.md, sessions 25 and 31). In compressible memory, lines of zeros cross the L2 <-> DRAM
// interface compressed. Such memory comes only from the driver's virtual-memory calls, which are
// far too slow for every call, so each device keeps one buffer between calls, grown to the largest
// accumulator asked for and handed to one call at a time (a lease); cuda_cached_bytes() reports it
// and release_cuda_cache() gives it back (api.hpp).
//
// Opt-in (FLASHMASK_COMPRESSIBLE_SCRATCH=1) until an H100 measures it against the stream-ordered
// accumulator (bench/NOTES.md, session 31: the probe and scripts/env-ab.sh); the default becomes
// whatever that shows.
//
// A lease is empty, and the caller takes stream-ordered scratch instead, when: leases are off (the
// default: FLASHMASK_COMPRESSIBLE_SCRATCH unset or 0); the device or driver offers no compression;
// the driver does not grant it; the buffer cannot grow (out of memory: not asked again for that
// size or more until release_compressible_scratch()); or the stream is capturing a CUDA graph (a
// graph replays later, beside other calls that would share the buffer).
//
// Ordering: a lease is taken and dropped on the host around the launches of one call. Dropping it
// records an event on the call's stream; the next lease (on any stream) waits for that event on the
// device (cudaStreamWaitEvent), so two calls never use the buffer at once. Leases of one device
// are taken one at a time on the host (a mutex held for the lease's life, the few hundred
// microseconds of one call's launches).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <mutex>

namespace flashmask::cuda {

inline constexpr const char* kCompressibleScratchVariable = "FLASHMASK_COMPRESSIBLE_SCRATCH";

class CompressibleScratch {
public:
    // `bytes` of the current device's buffer for work queued on `stream`, or an empty lease (see
    // above). Throws Error(CudaError) only where a CUDA call that must succeed fails.
    static CompressibleScratch lease(std::size_t bytes, cudaStream_t stream);

    CompressibleScratch() = default;
    CompressibleScratch(CompressibleScratch&& other) noexcept;
    CompressibleScratch& operator=(CompressibleScratch&&) = delete;
    CompressibleScratch(const CompressibleScratch&) = delete;
    CompressibleScratch& operator=(const CompressibleScratch&) = delete;
    // Records the buffer's last use on the lease's stream.
    ~CompressibleScratch();

    explicit operator bool() const { return data_ != nullptr; }
    template <typename T> T* as() const { return static_cast<T*>(data_); }

    struct DeviceCache;  // compressible_scratch.cu

private:
    DeviceCache* cache_ = nullptr;
    std::unique_lock<std::mutex> lock_;
    void* data_ = nullptr;
    cudaStream_t stream_ = nullptr;
};

// Whether leases may be granted in this process: FLASHMASK_COMPRESSIBLE_SCRATCH (read once; on
// when set to anything but "0"), or the last set_compressible_scratch_enabled(). The GPU tests run
// both paths.
bool compressible_scratch_enabled();
void set_compressible_scratch_enabled(bool enabled);

// The current device's buffer: its bytes, and freeing it (after its last use completes).
std::size_t compressible_scratch_bytes();
void release_compressible_scratch();

}  // namespace flashmask::cuda
