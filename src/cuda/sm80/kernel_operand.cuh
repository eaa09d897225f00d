// Operands whose rows are not 16-byte aligned, for both sm80 directions (launch_forward in
// forward_kernel.cuh, run_backward in backward_host.cuh).
//
// cp.async and the 16-byte loads and stores of the sm80 kernels need every row of every 16-bit
// operand at a 16-byte address. SPEC §1 accepts any strides with a contiguous last dimension, so
// an operand that breaks this (a data pointer or a stride of a dimension longer than 1 that is
// not a multiple of 8 elements) is repacked into contiguous scratch memory around the kernels:
// correct for every view, and free for the aligned ones every framework produces.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "cuda/common/check.hpp"
#include "cuda/common/workspace.cuh"
#include "cuda/sm80/ptx.cuh"
#include "cuda/sm80/smem_tile.cuh"
#include "flashmask/problem.hpp"

namespace flashmask::cuda::sm80 {

constexpr int kRepackThreads = 256;       // one element per thread per step: a plain copy kernel
constexpr int kRepackMaxBlocks = 4096;    // grid-stride beyond this; enough to saturate the copy

// A [B, N, H, X] view of 16-bit values in BSHD index order (element strides, last dim contiguous).
struct RowsView {
    uint16_t* data;
    int64_t stride[3];
};

// A template only so that the instantiation units that include this header (forward and
// backward, one per dtype x D) share one definition (a plain __global__ here would be defined
// in each of them).
template <typename RowsViewT>
__global__ void repack_rows_kernel(const RowsViewT from, const RowsViewT to, const int32_t n, const int32_t heads,
                                   const int32_t dim, const int64_t elements) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < elements; i += int64_t(gridDim.x) * blockDim.x) {
        const int64_t row = i / dim, b_n = row / heads, b = b_n / n;
        const int64_t d = i % dim, h = row % heads, s = b_n % n;
        to.data[b * to.stride[0] + s * to.stride[1] + h * to.stride[2] + d] =
            from.data[b * from.stride[0] + s * from.stride[1] + h * from.stride[2] + d];
    }
}

// A contiguous [batch, n, heads, dim] operand at `data` (element strides).
inline Operand contiguous_operand(void* data, int32_t n, int32_t heads, int32_t dim) {
    Operand t;
    t.data = data;
    t.stride[3] = 1;
    t.stride[2] = dim;
    t.stride[1] = int64_t(heads) * dim;
    t.stride[0] = int64_t(n) * heads * dim;
    return t;
}

// One operand of extents [batch, n, heads, dim] as the kernel sees it: the caller's own when its
// rows are aligned, else a contiguous copy in scratch memory (copied in, or out, on `stream`).
// Inputs call copy_in() before the kernels, outputs copy_out() after them; the scratch is freed
// on `stream` when this object goes out of scope, behind the work already queued there.
class KernelOperand {
public:
    KernelOperand(const Operand& caller, int32_t batch, int32_t n, int32_t heads, int32_t dim, cudaStream_t stream)
        : caller_(caller), extents_{batch, n, heads, dim}, stream_(stream),
          repacked_(!rows_aligned(caller, extents_)),
          scratch_(repacked_ ? sizeof(uint16_t) * std::size_t(batch) * n * heads * dim : 0, stream),
          operand_(caller) {
        if (!repacked_) return;
        operand_ = contiguous_operand(scratch_.as<void>(), n, heads, dim);
    }
    const Operand& operand() const { return operand_; }
    void copy_in() const { if (repacked_) repack(caller_, operand_); }
    void copy_out() const { if (repacked_) repack(operand_, caller_); }

private:
    static bool rows_aligned(const Operand& t, const int32_t (&extents)[4]) {
        if (reinterpret_cast<std::uintptr_t>(t.data) % kCopyBytes != 0) return false;
        for (int d = 0; d < 3; ++d)
            if (extents[d] > 1 && t.stride[d] % kChunkElements != 0) return false;  // 16-byte chunks
        return true;
    }
    void repack(const Operand& from, const Operand& to) const {
        const int64_t elements = int64_t(extents_[0]) * extents_[1] * extents_[2] * extents_[3];
        if (elements == 0) return;
        const RowsView source{static_cast<uint16_t*>(from.data), {from.stride[0], from.stride[1], from.stride[2]}};
        const RowsView destination{static_cast<uint16_t*>(to.data), {to.stride[0], to.stride[1], to.stride[2]}};
        const int64_t blocks = std::min<int64_t>(kRepackMaxBlocks, (elements + kRepackThreads - 1) / kRepackThreads);
        repack_rows_kernel<RowsView><<<unsigned(blocks), kRepackThreads, 0, stream_>>>(source, destination, extents_[1],
                                                                             extents_[2], extents_[3], elements);
        check_launch("flashmask sm80 repack_rows_kernel");
    }

    Operand caller_;
    int32_t extents_[4];
    cudaStream_t stream_;
    bool repacked_;
    DeviceScratch scratch_;
    Operand operand_;
};

}  // namespace flashmask::cuda::sm80
