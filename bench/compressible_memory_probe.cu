// On a GPU: does compressible memory (Compute Data Compression, cuMemCreate with
// CU_MEM_ALLOCATION_COMP_GENERIC) shorten the backward's fixed passes? A probe, not a benchmark
// and not part of the library.
//
// Why: at SPEC §6's config (a) the backward's passes around the dK/dV kernel (the preprocess: read
// O and dO, 268 MB, and zero the float32 dQ accumulator, 268 MB; the conversion: read the
// accumulator, 268 MB, write dQ, 134 MB) run at the memory's rate and are ~11.5 % of
// share_question's backward (bench/NOTES.md, session 25). Every way of moving them beside or into
// the dK/dV kernel lost (sessions 13-15, 26). Compression is the one way left to move fewer bytes:
// lines of zeros should cross the L2 <-> DRAM interface compressed, so the zeroing, and the dK/dV
// kernel's first reduction into each line, would cost a fraction of their bytes.
//
// What it times (CUDA events, median of kReps), on a plain cudaMalloc buffer and a compressible
// one of the same size (config (a): 524,288 rows of 128 floats):
//   zero            16-byte zero stores over the accumulator
//   preprocess      Di = rowsum(dO * O) from two bf16 tensors + the zero stores (the library's pass)
//   preprocess-no-zero  the same without the zero stores (what is left if zeroing were free)
//   reduce x1 / x4  red.global.add.v4.f32 of distinct values over the whole accumulator, once and
//                   four times (each round sweeps 268 MB, past the 50 MB L2), after zeroing
//   convert         the accumulator to bf16 dQ (the library's pass)
//   sequence        preprocess + reduce x4 + convert, back to back
// and checks that both buffers hold the same bits after the same preprocess and reductions.
//
//   nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a bench/compressible_memory_probe.cu -lcuda -o /tmp/probe
//   /tmp/probe [rows]
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <utility>
#include <vector>

namespace {

constexpr int kHeadDim = 128;
constexpr int kThreads = 256;
constexpr int kReps = 20;
constexpr int64_t kConfigARows = int64_t{2} * 32 * 8192;  // B * H * N of SPEC §6's config (a)
constexpr int kChunk = 8;                                 // bf16 elements in 16 bytes

#define PROBE_CHECK_CUDA(call)                                                                        \
    do {                                                                                              \
        const cudaError_t status_ = (call);                                                           \
        if (status_ != cudaSuccess) {                                                                 \
            std::fprintf(stderr, "%s failed: %s (%s:%d)\n", #call, cudaGetErrorString(status_), __FILE__, \
                         __LINE__);                                                                   \
            std::exit(1);                                                                             \
        }                                                                                             \
    } while (0)
#define PROBE_CHECK_DRIVER(call)                                                                      \
    do {                                                                                              \
        const CUresult status_ = (call);                                                              \
        if (status_ != CUDA_SUCCESS) {                                                                \
            const char* text_ = nullptr;                                                              \
            cuGetErrorString(status_, &text_);                                                        \
            std::fprintf(stderr, "%s failed: %s (%s:%d)\n", #call, text_ ? text_ : "?", __FILE__, __LINE__); \
            std::exit(1);                                                                             \
        }                                                                                             \
    } while (0)

__global__ void zero_kernel(float4* accumulator, int64_t quads) {
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < quads; i += int64_t(gridDim.x) * blockDim.x)
        accumulator[i] = make_float4(0.f, 0.f, 0.f, 0.f);
}

// One group of 16 threads per row, as backward_preprocess_kernel.
__global__ void preprocess_kernel(const uint4* out, const uint4* dout, float* di, float4* accumulator, int64_t rows,
                                  bool zero) {
    constexpr int kThreadsPerRow = kHeadDim / kChunk;
    const int64_t row = int64_t(blockIdx.x) * (kThreads / kThreadsPerRow) + threadIdx.x / kThreadsPerRow;
    const int chunk = threadIdx.x % kThreadsPerRow;
    const bool in_range = row < rows;
    float sum = 0.f;
    if (in_range) {
        const uint4 o = out[row * kThreadsPerRow + chunk], d = dout[row * kThreadsPerRow + chunk];
        const __nv_bfloat16* oe = reinterpret_cast<const __nv_bfloat16*>(&o);
        const __nv_bfloat16* de = reinterpret_cast<const __nv_bfloat16*>(&d);
        for (int i = 0; i < kChunk; ++i) sum += __bfloat162float(oe[i]) * __bfloat162float(de[i]);
    }
    for (int offset = kThreadsPerRow / 2; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    if (!in_range) return;
    if (chunk == 0) di[row] = sum;
    if (zero) {
        float4* zeros = accumulator + (row * kHeadDim + chunk * kChunk) / 4;
        zeros[0] = make_float4(0.f, 0.f, 0.f, 0.f);
        zeros[1] = make_float4(0.f, 0.f, 0.f, 0.f);
    }
}

__device__ __forceinline__ float distinct_value(int64_t i, int round) {
    // Values that differ along a line, as dQ's do: uniform lines would compress too.
    uint32_t h = uint32_t(i) * 2654435761u ^ uint32_t(round) * 40503u;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    return float(h & 0xffffu) * (1.0f / 65536.0f) - 0.5f;
}

__global__ void reduce_kernel(float* accumulator, int64_t quads, int rounds) {
    for (int round = 0; round < rounds; ++round)
        for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < quads;
             i += int64_t(gridDim.x) * blockDim.x) {
            float* address = accumulator + 4 * i;
            asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"l"(address),
                         "f"(distinct_value(4 * i, round)), "f"(distinct_value(4 * i + 1, round)),
                         "f"(distinct_value(4 * i + 2, round)), "f"(distinct_value(4 * i + 3, round))
                         : "memory");
        }
}

__global__ void convert_kernel(const float4* accumulator, uint4* dq, int64_t chunks, float scale) {
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < chunks; i += int64_t(gridDim.x) * blockDim.x) {
        const float4 a = accumulator[2 * i], b = accumulator[2 * i + 1];
        const __nv_bfloat162 p0 = __floats2bfloat162_rn(scale * a.x, scale * a.y);
        const __nv_bfloat162 p1 = __floats2bfloat162_rn(scale * a.z, scale * a.w);
        const __nv_bfloat162 p2 = __floats2bfloat162_rn(scale * b.x, scale * b.y);
        const __nv_bfloat162 p3 = __floats2bfloat162_rn(scale * b.z, scale * b.w);
        uint4 packed;
        packed.x = *reinterpret_cast<const uint32_t*>(&p0);
        packed.y = *reinterpret_cast<const uint32_t*>(&p1);
        packed.z = *reinterpret_cast<const uint32_t*>(&p2);
        packed.w = *reinterpret_cast<const uint32_t*>(&p3);
        dq[i] = packed;
    }
}

// Counts the floats whose bits differ between a and b, and the nonzero floats of a.
__global__ void compare_kernel(const uint32_t* a, const uint32_t* b, int64_t n, unsigned long long* counts) {
    unsigned long long differ = 0, nonzero = 0;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
        differ += a[i] != b[i];
        nonzero += a[i] != 0u;
    }
    atomicAdd(counts, differ);
    atomicAdd(counts + 1, nonzero);
}

// A compressible allocation through the driver's virtual memory calls; `compressed` says whether
// the driver granted compression (it may not).
struct CompressibleBuffer {
    CUdeviceptr pointer = 0;
    size_t bytes = 0;
    CUmemGenericAllocationHandle handle{};
    bool compressed = false;

    CompressibleBuffer(size_t wanted, int device) {
        CUmemAllocationProp prop{};
        prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
        prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
        prop.location.id = device;
        prop.allocFlags.compressionType = CU_MEM_ALLOCATION_COMP_GENERIC;
        size_t granularity = 0;
        PROBE_CHECK_DRIVER(cuMemGetAllocationGranularity(&granularity, &prop, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED));
        bytes = (wanted + granularity - 1) / granularity * granularity;
        PROBE_CHECK_DRIVER(cuMemCreate(&handle, bytes, &prop, 0));
        CUmemAllocationProp granted{};
        PROBE_CHECK_DRIVER(cuMemGetAllocationPropertiesFromHandle(&granted, handle));
        compressed = granted.allocFlags.compressionType == CU_MEM_ALLOCATION_COMP_GENERIC;
        PROBE_CHECK_DRIVER(cuMemAddressReserve(&pointer, bytes, granularity, 0, 0));
        PROBE_CHECK_DRIVER(cuMemMap(pointer, bytes, 0, handle, 0));
        CUmemAccessDesc access{};
        access.location = prop.location;
        access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
        PROBE_CHECK_DRIVER(cuMemSetAccess(pointer, bytes, &access, 1));
    }
    ~CompressibleBuffer() {
        cuMemUnmap(pointer, bytes);
        cuMemAddressFree(pointer, bytes);
        cuMemRelease(handle);
    }
};

// `prepare` runs before each rep's start event (on the same stream, so it is done when timing starts).
template <typename Prepare, typename Launch>
float median_ms(Prepare&& prepare, Launch&& launch, cudaStream_t stream) {
    cudaEvent_t start, stop;
    PROBE_CHECK_CUDA(cudaEventCreate(&start));
    PROBE_CHECK_CUDA(cudaEventCreate(&stop));
    std::vector<float> times;
    for (int rep = 0; rep < kReps + 2; ++rep) {  // two warm-up reps
        prepare();
        PROBE_CHECK_CUDA(cudaEventRecord(start, stream));
        launch();
        PROBE_CHECK_CUDA(cudaEventRecord(stop, stream));
        PROBE_CHECK_CUDA(cudaEventSynchronize(stop));
        PROBE_CHECK_CUDA(cudaGetLastError());
        float ms = 0.f;
        PROBE_CHECK_CUDA(cudaEventElapsedTime(&ms, start, stop));
        if (rep >= 2) times.push_back(ms);
    }
    std::sort(times.begin(), times.end());
    PROBE_CHECK_CUDA(cudaEventDestroy(start));
    PROBE_CHECK_CUDA(cudaEventDestroy(stop));
    return times[times.size() / 2];
}

struct Inputs {
    uint4 *out, *dout, *dq;
    float* di;
    unsigned long long* counts;
    int64_t rows;
};

struct Row {
    const char* name;
    double bytes;  // DRAM bytes the pass needs without compression
    float plain_ms, compressible_ms;
};

// {floats that differ between a and b, nonzero floats of a}
std::pair<unsigned long long, unsigned long long> compare(const Inputs& in, const float* a, const float* b,
                                                          cudaStream_t stream, int sms) {
    PROBE_CHECK_CUDA(cudaMemsetAsync(in.counts, 0, 2 * sizeof(unsigned long long), stream));
    compare_kernel<<<sms * 4, kThreads, 0, stream>>>(reinterpret_cast<const uint32_t*>(a),
                                                     reinterpret_cast<const uint32_t*>(b), in.rows * kHeadDim,
                                                     in.counts);
    PROBE_CHECK_CUDA(cudaGetLastError());
    unsigned long long counts[2] = {0, 0};
    PROBE_CHECK_CUDA(cudaMemcpyAsync(counts, in.counts, sizeof(counts), cudaMemcpyDeviceToHost, stream));
    PROBE_CHECK_CUDA(cudaStreamSynchronize(stream));
    return {counts[0], counts[1]};
}

}  // namespace

int main(int argc, char** argv) {
    const int64_t rows = argc > 1 ? std::atoll(argv[1]) : kConfigARows;
    if (rows <= 0 || rows % 16 != 0) {
        std::fprintf(stderr, "rows: got %lld, expected a positive multiple of 16\n", static_cast<long long>(rows));
        return 2;
    }
    PROBE_CHECK_CUDA(cudaSetDevice(0));
    PROBE_CHECK_CUDA(cudaFree(nullptr));  // the runtime's primary context, which the driver calls use
    int device = 0, sms = 0, supported = 0;
    PROBE_CHECK_CUDA(cudaGetDevice(&device));
    PROBE_CHECK_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    PROBE_CHECK_DRIVER(cuDeviceGetAttribute(&supported, CU_DEVICE_ATTRIBUTE_GENERIC_COMPRESSION_SUPPORTED, device));
    cudaDeviceProp prop{};
    PROBE_CHECK_CUDA(cudaGetDeviceProperties(&prop, device));
    std::printf("device: %s, %d SMs, generic compression supported: %d\n", prop.name, sms, supported);

    const size_t accumulator_bytes = size_t(rows) * kHeadDim * sizeof(float);
    const size_t tensor_bytes = size_t(rows) * kHeadDim * 2;
    Inputs in{};
    in.rows = rows;
    PROBE_CHECK_CUDA(cudaMalloc(&in.out, tensor_bytes));
    PROBE_CHECK_CUDA(cudaMalloc(&in.dout, tensor_bytes));
    PROBE_CHECK_CUDA(cudaMalloc(&in.dq, tensor_bytes));
    PROBE_CHECK_CUDA(cudaMalloc(&in.di, size_t(rows) * sizeof(float)));
    PROBE_CHECK_CUDA(cudaMalloc(&in.counts, 2 * sizeof(unsigned long long)));
    PROBE_CHECK_CUDA(cudaMemset(in.out, 0x3c, tensor_bytes));   // bf16 0x3c3c ~ 0.0115: nonzero, uniform
    PROBE_CHECK_CUDA(cudaMemset(in.dout, 0x3d, tensor_bytes));  // they are read from plain memory on both sides
    float* plain = nullptr;
    PROBE_CHECK_CUDA(cudaMalloc(&plain, accumulator_bytes));
    CompressibleBuffer compressible(accumulator_bytes, device);
    std::printf("compressible allocation: %zu bytes, compression granted: %s\n", compressible.bytes,
                compressible.compressed ? "yes" : "no");

    cudaStream_t stream;
    PROBE_CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    const int64_t quads = rows * kHeadDim / 4;
    const unsigned grid = unsigned(sms) * 8;
    const unsigned preprocess_grid = unsigned((rows + kThreads / 16 - 1) / (kThreads / 16));
    const double mb = 1e6;

    auto zero = [&](float* a) { zero_kernel<<<grid, kThreads, 0, stream>>>(reinterpret_cast<float4*>(a), quads); };
    auto preprocess = [&](float* a, bool with_zero) {
        preprocess_kernel<<<preprocess_grid, kThreads, 0, stream>>>(in.out, in.dout, in.di, reinterpret_cast<float4*>(a),
                                                                    rows, with_zero);
    };
    auto reduce = [&](float* a, int rounds) { reduce_kernel<<<grid, kThreads, 0, stream>>>(a, quads, rounds); };
    auto convert = [&](float* a) {
        convert_kernel<<<grid, kThreads, 0, stream>>>(reinterpret_cast<const float4*>(a), in.dq, quads / 2, 0.125f);
    };

    std::vector<Row> table;
    auto both = [&](const char* name, double bytes, auto&& prepare, auto&& pass) {
        Row row{name, bytes, 0.f, 0.f};
        row.plain_ms = median_ms([&] { prepare(plain); }, [&] { pass(plain); }, stream);
        float* const c = reinterpret_cast<float*>(compressible.pointer);
        row.compressible_ms = median_ms([&] { prepare(c); }, [&] { pass(c); }, stream);
        table.push_back(row);
    };
    const double acc = double(accumulator_bytes), tensor = double(tensor_bytes);
    // Before a zeroing the accumulator holds the last backward's sums (dense lines), as in training.
    auto dirty = [&](float* a) { reduce(a, 1); };
    auto zeroed = [&](float* a) { zero(a); };
    auto summed = [&](float* a) {
        zero(a);
        reduce(a, 4);
    };
    both("zero", acc, dirty, [&](float* a) { zero(a); });
    both("cudaMemsetAsync 0", acc, dirty,
         [&](float* a) { PROBE_CHECK_CUDA(cudaMemsetAsync(a, 0, accumulator_bytes, stream)); });
    both("preprocess", 2 * tensor + acc, dirty, [&](float* a) { preprocess(a, true); });
    both("preprocess-no-zero", 2 * tensor, dirty, [&](float* a) { preprocess(a, false); });
    both("reduce x1 (after zero)", 2 * acc, zeroed, [&](float* a) { reduce(a, 1); });
    both("reduce x4 (after zero)", 8 * acc, zeroed, [&](float* a) { reduce(a, 4); });
    both("convert (after reduce x4)", acc + tensor, summed, [&](float* a) { convert(a); });
    both("sequence", 2 * tensor + acc + 8 * acc + acc + tensor, dirty, [&](float* a) {
        preprocess(a, true);
        reduce(a, 4);
        convert(a);
    });

    // The sequence leaves the same values in both buffers (same adds in the same order per element).
    preprocess(plain, true);
    reduce(plain, 4);
    preprocess(reinterpret_cast<float*>(compressible.pointer), true);
    reduce(reinterpret_cast<float*>(compressible.pointer), 4);
    const auto [differ, nonzero] = compare(in, plain, reinterpret_cast<float*>(compressible.pointer), stream, sms);
    // Each float's four adds come from one thread in round order, so both buffers hold the same bits.
    const bool same = differ == 0 && nonzero > 0;

    std::printf("\n| pass (%lld rows x %d floats) | bytes without compression (MB) | plain (us) | compressible (us) | "
                "plain TB/s | compressible / plain |\n|---|---|---|---|---|---|\n",
                static_cast<long long>(rows), kHeadDim);
    for (const Row& row : table)
        std::printf("| %s | %.0f | %.1f | %.1f | %.2f | %.3f |\n", row.name, row.bytes / mb, row.plain_ms * 1e3,
                    row.compressible_ms * 1e3, row.bytes / (row.plain_ms * 1e-3) / 1e12,
                    row.compressible_ms / row.plain_ms);
    std::printf("\nafter preprocess + reduce x4: %llu of %lld floats differ between the buffers, %llu nonzero (%s)\n",
                differ, static_cast<long long>(rows * kHeadDim), nonzero, same ? "same bits" : "FAILED");
    PROBE_CHECK_CUDA(cudaStreamDestroy(stream));
    PROBE_CHECK_CUDA(cudaFree(plain));
    PROBE_CHECK_CUDA(cudaFree(in.out));
    PROBE_CHECK_CUDA(cudaFree(in.dout));
    PROBE_CHECK_CUDA(cudaFree(in.dq));
    PROBE_CHECK_CUDA(cudaFree(in.di));
    PROBE_CHECK_CUDA(cudaFree(in.counts));
    return same ? 0 : 1;
}
