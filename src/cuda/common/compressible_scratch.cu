// The per-device compressible buffer behind CompressibleScratch (compressible_scratch.hpp). Host
// code only. The driver's virtual-memory calls are reached through the runtime's driver entry
// points, so the library links no libcuda of its own (cudart_static finds the driver at run time).
#include "cuda/common/compressible_scratch.hpp"

#include <cuda.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "cuda/common/check.hpp"
#include "cuda/common/workspace.cuh"

namespace flashmask::cuda {
namespace {

// The driver ABI asked for: the virtual-memory calls as they are since CUDA 12.0.
constexpr unsigned kDriverAbiVersion = 12000;

struct DriverCalls {
    CUresult (*device_attribute)(int*, CUdevice_attribute, CUdevice) = nullptr;
    CUresult (*granularity)(size_t*, const CUmemAllocationProp*, CUmemAllocationGranularity_flags) = nullptr;
    CUresult (*create)(CUmemGenericAllocationHandle*, size_t, const CUmemAllocationProp*, unsigned long long) = nullptr;
    CUresult (*properties)(CUmemAllocationProp*, CUmemGenericAllocationHandle) = nullptr;
    CUresult (*release)(CUmemGenericAllocationHandle) = nullptr;
    CUresult (*reserve)(CUdeviceptr*, size_t, size_t, CUdeviceptr, unsigned long long) = nullptr;
    CUresult (*address_free)(CUdeviceptr, size_t) = nullptr;
    CUresult (*map)(CUdeviceptr, size_t, size_t, CUmemGenericAllocationHandle, unsigned long long) = nullptr;
    CUresult (*unmap)(CUdeviceptr, size_t) = nullptr;
    CUresult (*set_access)(CUdeviceptr, size_t, const CUmemAccessDesc*, size_t) = nullptr;
    bool loaded = false;
};

template <typename Function> bool load(const char* symbol, Function& function) {
    void* address = nullptr;
    cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
    const cudaError_t status =
        cudaGetDriverEntryPointByVersion(symbol, &address, kDriverAbiVersion, cudaEnableDefault, &found);
    if (status != cudaSuccess || found != cudaDriverEntryPointSuccess || address == nullptr) {
        (void)cudaGetLastError();
        return false;
    }
    function = reinterpret_cast<Function>(address);
    return true;
}

const DriverCalls& driver_calls() {
    static const DriverCalls calls = [] {
        DriverCalls c;
        c.loaded = load("cuDeviceGetAttribute", c.device_attribute) &&
                   load("cuMemGetAllocationGranularity", c.granularity) && load("cuMemCreate", c.create) &&
                   load("cuMemGetAllocationPropertiesFromHandle", c.properties) && load("cuMemRelease", c.release) &&
                   load("cuMemAddressReserve", c.reserve) && load("cuMemAddressFree", c.address_free) &&
                   load("cuMemMap", c.map) && load("cuMemUnmap", c.unmap) && load("cuMemSetAccess", c.set_access);
        return c;
    }();
    return calls;
}

std::atomic<bool>& enabled_flag() {
    static std::atomic<bool> enabled = [] {
        const char* value = std::getenv(kCompressibleScratchVariable);
        return value != nullptr && std::strcmp(value, "0") != 0;
    }();
    return enabled;
}

CUmemAllocationProp compressible_properties(int device) {
    CUmemAllocationProp prop{};
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = device;
    prop.allocFlags.compressionType = CU_MEM_ALLOCATION_COMP_GENERIC;
    return prop;
}

}  // namespace

struct CompressibleScratch::DeviceCache {
    std::mutex mutex;
    int device = 0;
    CUdeviceptr pointer = 0;
    std::size_t bytes = 0;  // mapped at pointer: a multiple of the allocation granularity
    CUmemGenericAllocationHandle handle{};
    cudaEvent_t last_use = nullptr;  // recorded when the last lease was dropped
    bool used = false;               // last_use holds a lease's end
    bool unavailable = false;        // no compression here: never ask the driver again
    // The smallest size the driver refused for want of memory (0: none): larger leases are not
    // asked for again, so that a device short of memory pays no failing cuMemCreate per call,
    // until release_compressible_scratch() clears it.
    std::size_t refused_bytes = 0;

    // With the mutex held: the buffer's last lease done on the device.
    void wait_for_last_use() {
        if (used) FM_CUDA_CHECK(cudaEventSynchronize(last_use));
        used = false;
    }
    // With the mutex held and the buffer idle.
    void free_buffer() {
        if (pointer == 0) return;
        const DriverCalls& d = driver_calls();
        d.unmap(pointer, bytes);
        d.address_free(pointer, bytes);
        d.release(handle);
        pointer = 0;
        bytes = 0;
    }
    // With the mutex held and no buffer: a compressible buffer of at least `wanted` bytes, or
    // false (and `unavailable` where asking again cannot help).
    bool allocate(std::size_t wanted) {
        const DriverCalls& d = driver_calls();
        int supported = 0;
        if (!d.loaded ||
            d.device_attribute(&supported, CU_DEVICE_ATTRIBUTE_GENERIC_COMPRESSION_SUPPORTED, device) != CUDA_SUCCESS ||
            supported == 0) {
            unavailable = true;
            return false;
        }
        const CUmemAllocationProp prop = compressible_properties(device);
        std::size_t granularity = 0;
        if (d.granularity(&granularity, &prop, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED) != CUDA_SUCCESS ||
            granularity == 0) {
            unavailable = true;
            return false;
        }
        const std::size_t rounded = (wanted + granularity - 1) / granularity * granularity;
        CUmemGenericAllocationHandle created{};
        const CUresult status = d.create(&created, rounded, &prop, 0);
        if (status != CUDA_SUCCESS) {
            // Out of memory may pass (after release_compressible_scratch()); anything else will not.
            if (status == CUDA_ERROR_OUT_OF_MEMORY)
                refused_bytes = refused_bytes == 0 ? wanted : std::min(refused_bytes, wanted);
            else
                unavailable = true;
            return false;
        }
        CUmemAllocationProp granted{};
        if (d.properties(&granted, created) != CUDA_SUCCESS ||
            granted.allocFlags.compressionType != CU_MEM_ALLOCATION_COMP_GENERIC) {
            // The driver may hand out plain memory for a compressible request: no better than the
            // stream-ordered scratch, and held between calls.
            d.release(created);
            unavailable = true;
            return false;
        }
        // Reserve, map, grant access; a failed step undoes the ones before it.
        CUdeviceptr address = 0;
        CUmemAccessDesc access{};
        access.location = prop.location;
        access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
        const bool reserved = d.reserve(&address, rounded, granularity, 0, 0) == CUDA_SUCCESS;
        const bool mapped = reserved && d.map(address, rounded, 0, created, 0) == CUDA_SUCCESS;
        if (!mapped || d.set_access(address, rounded, &access, 1) != CUDA_SUCCESS) {
            if (mapped) d.unmap(address, rounded);
            if (reserved) d.address_free(address, rounded);
            d.release(created);
            return false;
        }
        pointer = address;
        bytes = rounded;
        handle = created;
        return true;
    }
};

namespace {

// One cache per device, created on first use and kept for the process's life (freeing device
// memory while the runtime tears down at exit is not safe; the driver reclaims it).
CompressibleScratch::DeviceCache& device_cache(int device) {
    static std::mutex caches_mutex;
    static auto* caches = new std::vector<std::unique_ptr<CompressibleScratch::DeviceCache>>();
    const std::lock_guard<std::mutex> lock(caches_mutex);
    if (std::size_t(device) >= caches->size()) caches->resize(std::size_t(device) + 1);
    auto& cache = (*caches)[std::size_t(device)];
    if (!cache) {
        cache = std::make_unique<CompressibleScratch::DeviceCache>();
        cache->device = device;
    }
    return *cache;
}

int current_device() {
    int device = 0;
    FM_CUDA_CHECK(cudaGetDevice(&device));
    return device;
}

}  // namespace

bool compressible_scratch_enabled() { return enabled_flag().load(); }
void set_compressible_scratch_enabled(bool enabled) { enabled_flag() = enabled; }

CompressibleScratch CompressibleScratch::lease(std::size_t bytes, cudaStream_t stream) {
    if (bytes == 0 || !compressible_scratch_enabled()) return {};
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(stream, &capture) != cudaSuccess) {
        (void)cudaGetLastError();  // the call's own launches will report what is wrong with the stream
        return {};
    }
    if (capture != cudaStreamCaptureStatusNone) return {};
    DeviceCache& cache = device_cache(current_device());
    std::unique_lock<std::mutex> lock(cache.mutex);
    if (cache.unavailable || (cache.refused_bytes != 0 && bytes >= cache.refused_bytes)) return {};
    if (bytes > cache.bytes) {
        cache.wait_for_last_use();
        cache.free_buffer();
        if (!cache.allocate(bytes)) return {};
    }
    if (cache.last_use == nullptr) FM_CUDA_CHECK(cudaEventCreateWithFlags(&cache.last_use, cudaEventDisableTiming));
    // Even on the stream of the last lease: a stream handle freed and created again may compare
    // equal to it while the old stream's work still runs.
    if (cache.used) FM_CUDA_CHECK(cudaStreamWaitEvent(stream, cache.last_use, 0));
    void* const data = reinterpret_cast<void*>(cache.pointer);
    if (poison_scratch()) FM_CUDA_CHECK(cudaMemsetAsync(data, kPoisonByte, bytes, stream));
    CompressibleScratch scratch;
    scratch.cache_ = &cache;
    scratch.lock_ = std::move(lock);
    scratch.data_ = data;
    scratch.stream_ = stream;
    return scratch;
}

CompressibleScratch::CompressibleScratch(CompressibleScratch&& other) noexcept
    : cache_(std::exchange(other.cache_, nullptr)),
      lock_(std::move(other.lock_)),
      data_(std::exchange(other.data_, nullptr)),
      stream_(other.stream_) {}

CompressibleScratch::~CompressibleScratch() {
    if (cache_ == nullptr) return;
    if (cudaEventRecord(cache_->last_use, stream_) == cudaSuccess) {
        cache_->used = true;
        return;
    }
    // The stream is broken (its call is failing): wait for whatever it queued, so that the next
    // lease need not, and leave no error behind for the next check.
    (void)cudaGetLastError();
    (void)cudaStreamSynchronize(stream_);
    (void)cudaGetLastError();
    cache_->used = false;
}

std::size_t compressible_scratch_bytes() {
    CompressibleScratch::DeviceCache& cache = device_cache(current_device());
    const std::lock_guard<std::mutex> lock(cache.mutex);
    return cache.bytes;
}

void release_compressible_scratch() {
    CompressibleScratch::DeviceCache& cache = device_cache(current_device());
    const std::lock_guard<std::mutex> lock(cache.mutex);
    cache.wait_for_last_use();
    cache.free_buffer();
    cache.refused_bytes = 0;
}

}  // namespace flashmask::cuda
