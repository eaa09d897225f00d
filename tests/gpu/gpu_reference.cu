// The float32 GPU reference and the naive in-dtype computation (see gpu_reference.hpp). Plain
// loops, no tiling, no tensor cores: every thread block owns one query row (forward, dQ) or one
// key (dK, dV) and walks the other axis in full; each (row, key) score is one warp's dot
// product. Shared memory holds that block's row of probabilities and score gradients.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <string>

#include "cuda/common/check.hpp"
#include "cuda/common/warp.hpp"
#include "gpu_reference.hpp"

namespace flashmask::testing {
namespace {

using cuda::check_launch;
using cuda::kFullWarpMask;
using cuda::kWarpSize;

constexpr int kThreads = 128;  // 4 warps: enough to hide the latency of a row's loads
constexpr int kWarps = kThreads / kWarpSize;
constexpr int kDimsPerThread = kReferenceMaxHeadDim / kThreads;  // a key block's dK/dV row in registers
static_assert(kReferenceMaxHeadDim % kThreads == 0, "each thread owns the same number of head-dim elements");

__device__ __forceinline__ float round_as(Rounding rounding, float x) {
    switch (rounding) {
        case Rounding::BFloat16: return __bfloat162float(__float2bfloat16_rn(x));
        case Rounding::Float16: return __half2float(__float2half_rn(x));
        default: return x;
    }
}

__device__ __forceinline__ float warp_sum(float x) {
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) x += __shfl_xor_sync(kFullWarpMask, x, offset);
    return x;
}
__device__ __forceinline__ float warp_max(float x) {
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) x = fmaxf(x, __shfl_xor_sync(kFullWarpMask, x, offset));
    return x;
}

// Sum (or max) of one value per thread over the block; every thread gets the result. Called by
// every thread of the block.
__device__ float block_reduce(float x, bool is_max) {
    __shared__ float partial[kWarps];
    x = is_max ? warp_max(x) : warp_sum(x);
    if (threadIdx.x % kWarpSize == 0) partial[threadIdx.x / kWarpSize] = x;
    __syncthreads();
    float total = partial[0];
    for (int w = 1; w < kWarps; ++w) total = is_max ? fmaxf(total, partial[w]) : total + partial[w];
    __syncthreads();  // `partial` is reused by the next reduction
    return total;
}

// <a, b> over n floats by one warp (every lane gets it). Both rows are contiguous.
__device__ __forceinline__ float warp_dot(const float* a, const float* b, int n) {
    float sum = 0.0f;
    for (int d = threadIdx.x % kWarpSize; d < n; d += kWarpSize) sum += a[d] * b[d];
    return warp_sum(sum);
}

// Row `s` of head `h` of a contiguous [B, S, H, D] float tensor.
__device__ __forceinline__ const float* bshd_row(const float* x, int b, int s, int h, int seq, int heads, int dim) {
    return x + ((int64_t(b) * seq + s) * heads + h) * int64_t(dim);
}

struct RowSoftmax {
    float max;  // -inf when the row sees no key
    float sum;  // sum over visible keys of exp(score - max)
    __device__ float lse() const { return max == -INFINITY ? -INFINITY : max + logf(sum); }
};

// Row i of (b, h): prob[j] = P_ij (rounded when naive; 0 for hidden keys) for every key, and the
// row's softmax statistics. The mask is read by column_intervals(), the one reading of a column.
__device__ RowSoftmax row_probabilities(const ReferenceProblem& p, Rounding rounding, int b, int h, int i,
                                        float* prob) {
    const int kvh = h / (p.q_heads / p.kv_heads), mask_head = p.mask.mask_head(h);
    const float* q_row = bshd_row(p.q, b, i, h, p.nq, p.q_heads, p.head_dim);
    for (int j = threadIdx.x / kWarpSize; j < p.nk; j += kWarps) {
        const bool visible = !column_intervals(p.mask, b, mask_head, j).masks(i);  // warp-uniform
        float score = -INFINITY;
        if (visible)
            score = round_as(rounding, p.scale * warp_dot(q_row, bshd_row(p.k, b, j, kvh, p.nk, p.kv_heads, p.head_dim),
                                                          p.head_dim));
        if (threadIdx.x % kWarpSize == 0) prob[j] = score;
    }
    __syncthreads();
    float local_max = -INFINITY;
    for (int j = threadIdx.x; j < p.nk; j += kThreads) local_max = fmaxf(local_max, prob[j]);
    RowSoftmax softmax{block_reduce(local_max, true), 0.0f};
    if (softmax.max == -INFINITY) {  // block-uniform: no key visible
        for (int j = threadIdx.x; j < p.nk; j += kThreads) prob[j] = 0.0f;
        __syncthreads();
        return softmax;
    }
    float local_sum = 0.0f;
    for (int j = threadIdx.x; j < p.nk; j += kThreads) local_sum += expf(prob[j] - softmax.max);  // exp(-inf) = 0
    softmax.sum = block_reduce(local_sum, false);
    __syncthreads();  // every thread has read the scores before they are overwritten
    for (int j = threadIdx.x; j < p.nk; j += kThreads)
        prob[j] = round_as(rounding, expf(prob[j] - softmax.max) / softmax.sum);
    __syncthreads();
    return softmax;
}

// grid (Nq, Hq, B); dynamic shared memory: Nk floats.
__global__ void __launch_bounds__(kThreads) reference_forward_kernel(ReferenceProblem p, Rounding rounding,
                                                                     float* out, float* lse) {
    extern __shared__ float prob[];
    const int i = blockIdx.x, h = blockIdx.y, b = blockIdx.z, kvh = h / (p.q_heads / p.kv_heads);
    const RowSoftmax softmax = row_probabilities(p, rounding, b, h, i, prob);
    float* out_row = out + ((int64_t(b) * p.nq + i) * p.q_heads + h) * int64_t(p.head_dim);
    for (int d = threadIdx.x; d < p.head_dim; d += kThreads) {
        float acc = 0.0f;
        for (int j = 0; j < p.nk; ++j)
            if (prob[j] != 0.0f) acc += prob[j] * bshd_row(p.v, b, j, kvh, p.nk, p.kv_heads, p.head_dim)[d];
        out_row[d] = round_as(rounding, acc);
    }
    if (threadIdx.x == 0) lse[(int64_t(b) * p.q_heads + h) * p.nq + i] = softmax.lse();
}

// dQ of row i of (b, h), and what the key-side kernel needs of the row: its LSE and
// delta = rowsum(P * dP) (softmax backward's internal reduction, never rounded).
// grid (Nq, Hq, B); dynamic shared memory: 2 Nk floats.
__global__ void __launch_bounds__(kThreads) reference_backward_rows_kernel(ReferenceProblem p, Rounding rounding,
                                                                           float* dq, float* lse, float* delta) {
    extern __shared__ float shared[];
    float* prob = shared;
    float* grad = shared + p.nk;  // dP, then dS
    const int i = blockIdx.x, h = blockIdx.y, b = blockIdx.z, kvh = h / (p.q_heads / p.kv_heads);
    const RowSoftmax softmax = row_probabilities(p, rounding, b, h, i, prob);
    const float* dout_row = bshd_row(p.dout, b, i, h, p.nq, p.q_heads, p.head_dim);
    for (int j = threadIdx.x / kWarpSize; j < p.nk; j += kWarps) {
        float dp = 0.0f;
        if (prob[j] != 0.0f)  // warp-uniform; hidden (or underflowed) keys carry no gradient
            dp = round_as(rounding, warp_dot(dout_row, bshd_row(p.v, b, j, kvh, p.nk, p.kv_heads, p.head_dim),
                                             p.head_dim));
        if (threadIdx.x % kWarpSize == 0) grad[j] = dp;
    }
    __syncthreads();
    float local = 0.0f;
    for (int j = threadIdx.x; j < p.nk; j += kThreads) local += prob[j] * grad[j];
    const float row_delta = block_reduce(local, false);
    for (int j = threadIdx.x; j < p.nk; j += kThreads)
        grad[j] = prob[j] != 0.0f ? round_as(rounding, prob[j] * (grad[j] - row_delta)) : 0.0f;
    __syncthreads();
    float* dq_row = dq + ((int64_t(b) * p.nq + i) * p.q_heads + h) * int64_t(p.head_dim);
    for (int d = threadIdx.x; d < p.head_dim; d += kThreads) {
        float acc = 0.0f;
        for (int j = 0; j < p.nk; ++j)
            if (grad[j] != 0.0f) acc += grad[j] * bshd_row(p.k, b, j, kvh, p.nk, p.kv_heads, p.head_dim)[d];
        dq_row[d] = round_as(rounding, p.scale * acc);
    }
    if (threadIdx.x == 0) {
        lse[(int64_t(b) * p.q_heads + h) * p.nq + i] = softmax.lse();
        delta[(int64_t(b) * p.q_heads + h) * p.nq + i] = row_delta;
    }
}

// dK and dV of key j of (b, kv head), summed over the query heads of its group (GQA), from the
// rows' LSE and delta. grid (Nk, Hk, B); dynamic shared memory: 2 Nq floats.
__global__ void __launch_bounds__(kThreads) reference_backward_keys_kernel(ReferenceProblem p, Rounding rounding,
                                                                           const float* lse, const float* delta,
                                                                           float* dk, float* dv,
                                                                           int32_t* key_visible_pairs) {
    extern __shared__ float shared[];
    float* prob = shared;         // P_ij over the rows i of one query head
    float* dscore = shared + p.nq;  // dS_ij
    const int j = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z, group = p.q_heads / p.kv_heads;
    const float* k_row = bshd_row(p.k, b, j, kvh, p.nk, p.kv_heads, p.head_dim);
    const float* v_row = bshd_row(p.v, b, j, kvh, p.nk, p.kv_heads, p.head_dim);
    float dk_acc[kDimsPerThread] = {}, dv_acc[kDimsPerThread] = {};
    int visible_pairs = 0;  // counted by lane 0 of each warp
    for (int h = kvh * group; h < (kvh + 1) * group; ++h) {
        const ColumnIntervals column = column_intervals(p.mask, b, p.mask.mask_head(h), j);
        for (int i = threadIdx.x / kWarpSize; i < p.nq; i += kWarps) {
            float pr = 0.0f, ds = 0.0f;
            if (!column.masks(i)) {  // warp-uniform; the row sees key j, so its LSE is finite
                const int64_t row = (int64_t(b) * p.q_heads + h) * p.nq + i;
                const float score = round_as(
                    rounding, p.scale * warp_dot(bshd_row(p.q, b, i, h, p.nq, p.q_heads, p.head_dim), k_row, p.head_dim));
                pr = round_as(rounding, expf(score - lse[row]));
                if (pr != 0.0f) {
                    const float dp = round_as(
                        rounding, warp_dot(bshd_row(p.dout, b, i, h, p.nq, p.q_heads, p.head_dim), v_row, p.head_dim));
                    ds = round_as(rounding, pr * (dp - delta[row]));
                }
                visible_pairs += threadIdx.x % kWarpSize == 0;
            }
            if (threadIdx.x % kWarpSize == 0) {
                prob[i] = pr;
                dscore[i] = ds;
            }
        }
        __syncthreads();
        for (int t = 0; t < kDimsPerThread; ++t) {
            const int d = threadIdx.x + t * kThreads;
            if (d >= p.head_dim) break;
            for (int i = 0; i < p.nq; ++i) {
                if (prob[i] != 0.0f) dv_acc[t] += prob[i] * bshd_row(p.dout, b, i, h, p.nq, p.q_heads, p.head_dim)[d];
                if (dscore[i] != 0.0f) dk_acc[t] += dscore[i] * bshd_row(p.q, b, i, h, p.nq, p.q_heads, p.head_dim)[d];
            }
        }
        __syncthreads();  // before the next head overwrites prob / dscore
    }
    const int64_t key = (int64_t(b) * p.nk + j) * p.kv_heads + kvh;
    for (int t = 0; t < kDimsPerThread; ++t) {
        const int d = threadIdx.x + t * kThreads;
        if (d >= p.head_dim) break;
        dk[key * p.head_dim + d] = round_as(rounding, p.scale * dk_acc[t]);
        dv[key * p.head_dim + d] = round_as(rounding, dv_acc[t]);
    }
    if (key_visible_pairs != nullptr && visible_pairs > 0) atomicAdd(key_visible_pairs + key, visible_pairs);
}

// Standard normals from (seed, index): splitmix64 for two uniforms, Box-Muller for the normal.
__device__ __forceinline__ uint64_t splitmix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

__global__ void fill_normal_kernel(DType dtype, void* data, int64_t count, uint64_t seed) {
    constexpr float kTwoPi = 6.28318530717958647692f;
    constexpr float kTwoToMinus24 = 1.0f / 16777216.0f;  // 24 random bits -> [0, 1)
    for (int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; n < count; n += int64_t(gridDim.x) * blockDim.x) {
        const uint64_t bits = splitmix64(seed ^ splitmix64(uint64_t(n)));
        const float u1 = (float(bits >> 40) + 1.0f) * kTwoToMinus24;  // (0, 1]: log(u1) is finite
        const float u2 = float(bits & 0xffffffu) * kTwoToMinus24;
        const float normal = sqrtf(-2.0f * logf(u1)) * cosf(kTwoPi * u2);
        switch (dtype) {
            case DType::BFloat16: static_cast<__nv_bfloat16*>(data)[n] = __float2bfloat16_rn(normal); break;
            case DType::Float16: static_cast<__half*>(data)[n] = __float2half_rn(normal); break;
            default: static_cast<float*>(data)[n] = normal; break;
        }
    }
}

struct Shape4 {
    int64_t extent[4], stride[4];
};

__global__ void to_float_kernel(DType dtype, const void* data, Shape4 s, float* out) {
    const int64_t count = s.extent[0] * s.extent[1] * s.extent[2] * s.extent[3];
    for (int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; n < count; n += int64_t(gridDim.x) * blockDim.x) {
        int64_t rest = n, offset = 0;
        for (int d = 3; d >= 0; --d) {
            offset += (rest % s.extent[d]) * s.stride[d];
            rest /= s.extent[d];
        }
        switch (dtype) {
            case DType::BFloat16: out[n] = __bfloat162float(static_cast<const __nv_bfloat16*>(data)[offset]); break;
            case DType::Float16: out[n] = __half2float(static_cast<const __half*>(data)[offset]); break;
            default: out[n] = static_cast<const float*>(data)[offset]; break;
        }
    }
}

constexpr int kElementwiseBlocks = 1024;  // grid-stride loops: enough blocks to fill any GPU

void check_problem(const ReferenceProblem& p) {
    auto refuse = [](const std::string& what) { throw Error(ErrorCode::InvalidArgument, "reference", what); };
    if (p.head_dim < 1 || p.head_dim > kReferenceMaxHeadDim)
        refuse("reference head dim " + std::to_string(p.head_dim) + ", expected 1.." + std::to_string(kReferenceMaxHeadDim));
    if (p.nq < 1 || p.nk < 1 || p.nq > kReferenceMaxSequence || p.nk > kReferenceMaxSequence)
        refuse("reference Nq " + std::to_string(p.nq) + " / Nk " + std::to_string(p.nk) + ", expected 1.." +
               std::to_string(kReferenceMaxSequence));
    if (p.kv_heads < 1 || p.q_heads % p.kv_heads != 0) refuse("reference heads: Hq % Hk != 0");
}

// Launches `kernel` with `shared_bytes` of dynamic shared memory (above the 48 KiB default
// when needed).
template <typename Kernel, typename... Args>
void launch(Kernel kernel, dim3 grid, std::size_t shared_bytes, cudaStream_t stream, const char* name, Args... args) {
    FM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(shared_bytes)));
    kernel<<<grid, kThreads, shared_bytes, stream>>>(args...);
    check_launch(name);
}

// A float32 scratch buffer freed at scope exit (after the stream's work on it is done).
struct Scratch {
    float* data = nullptr;
    cudaStream_t stream;
    Scratch(std::size_t count, cudaStream_t s) : stream(s) { FM_CUDA_CHECK(cudaMallocAsync(&data, count * sizeof(float), s)); }
    ~Scratch() { (void)cudaFreeAsync(data, stream); }
};

}  // namespace

Rounding naive_rounding(DType dtype) {
    if (dtype == DType::BFloat16) return Rounding::BFloat16;
    if (dtype == DType::Float16) return Rounding::Float16;
    throw Error(ErrorCode::InvalidArgument, "dtype", std::string("no naive rounding for ") + to_string(dtype));
}

void gpu_reference_forward(const ReferenceProblem& p, Rounding rounding, float* out, float* lse, cudaStream_t stream) {
    check_problem(p);
    launch(reference_forward_kernel, dim3(p.nq, p.q_heads, p.batch), sizeof(float) * p.nk, stream,
           "reference_forward_kernel", p, rounding, out, lse);
}

void gpu_reference_backward(const ReferenceProblem& p, Rounding rounding, float* dq, float* dk, float* dv,
                            int32_t* key_visible_pairs, cudaStream_t stream) {
    check_problem(p);
    const std::size_t rows = std::size_t(p.batch) * p.q_heads * p.nq;
    Scratch lse(rows, stream), delta(rows, stream);
    launch(reference_backward_rows_kernel, dim3(p.nq, p.q_heads, p.batch), 2 * sizeof(float) * p.nk, stream,
           "reference_backward_rows_kernel", p, rounding, dq, lse.data, delta.data);
    if (key_visible_pairs != nullptr)
        FM_CUDA_CHECK(cudaMemsetAsync(key_visible_pairs, 0, sizeof(int32_t) * std::size_t(p.batch) * p.nk * p.kv_heads,
                                      stream));
    launch(reference_backward_keys_kernel, dim3(p.nk, p.kv_heads, p.batch), 2 * sizeof(float) * p.nq, stream,
           "reference_backward_keys_kernel", p, rounding, static_cast<const float*>(lse.data),
           static_cast<const float*>(delta.data), dk, dv, key_visible_pairs);
}

void gpu_fill_normal(DType dtype, void* data, int64_t count, uint64_t seed, cudaStream_t stream) {
    if (count <= 0) return;
    fill_normal_kernel<<<kElementwiseBlocks, kThreads, 0, stream>>>(dtype, data, count, seed);
    check_launch("fill_normal_kernel");
}

void gpu_to_float(DType dtype, const void* data, const int64_t shape[4], const int64_t strides[4], float* out,
                  cudaStream_t stream) {
    Shape4 s;
    for (int d = 0; d < 4; ++d) {
        s.extent[d] = shape[d];
        s.stride[d] = strides[d];
        if (shape[d] <= 0) return;
    }
    to_float_kernel<<<kElementwiseBlocks, kThreads, 0, stream>>>(dtype, data, s, out);
    check_launch("to_float_kernel");
}

}  // namespace flashmask::testing
