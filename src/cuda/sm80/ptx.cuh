// Every inline-PTX instruction of the portable (sm80+) path, in one place: tensor-core
// mma.sync, ldmatrix, cp.async. Kernels call these and never write asm themselves.
//
// Fragment layouts of mma.m16n8k16 (PTX ISA, "Matrix Fragments for mma.m16n8k16"), with
// group = lane / 4 and quad = lane % 4:
//   A (16x16, row-major), 4 x b32 of two 16-bit values:
//       a[0] = (row group,     cols 2*quad, +1)   a[1] = (row group + 8, cols 2*quad, +1)
//       a[2] = (row group,     cols 2*quad + 8, +9) a[3] = (row group + 8, cols 2*quad + 8, +9)
//   B (16x8, "col": element (k, n)), 2 x b32:
//       b[0] = (k 2*quad, +1; n group)             b[1] = (k 2*quad + 8, +9; n group)
//   C/D (16x8, float32), 4 floats:
//       c[0], c[1] = (row group, cols 2*quad, +1)  c[2], c[3] = (row group + 8, cols 2*quad, +1)
// Two C tiles side by side (cols 0-7 and 8-15), packed to 16 bits, are exactly one A fragment of
// the next product: that is how P = softmax(S) feeds P*V without leaving registers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace flashmask::cuda::sm80 {

// --- element types ---------------------------------------------------------------------------

template <typename Element> struct ElementTraits;
template <> struct ElementTraits<__nv_bfloat16> {
    static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
        __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
        return *reinterpret_cast<uint32_t*>(&v);
    }
    static __device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
    static __device__ __forceinline__ __nv_bfloat16 from_float(float x) { return __float2bfloat16_rn(x); }
};
template <> struct ElementTraits<__half> {
    static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
        __half2 v = __floats2half2_rn(lo, hi);
        return *reinterpret_cast<uint32_t*>(&v);
    }
    static __device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
    static __device__ __forceinline__ __half from_float(float x) { return __float2half_rn(x); }
};

// --- tensor-core product ---------------------------------------------------------------------

// d += a * b, m16n8k16, float32 accumulators.
template <typename Element>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]);

template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

template <>
__device__ __forceinline__ void mma_16816<__half>(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// --- special functions -----------------------------------------------------------------------

// exp(x) = exp2(x * kLog2e): the kernels fold this factor into their scale and LSE so that every
// exponential is one exp2_approx().
constexpr float kLog2e = 1.4426950408889634f;

// 2^x by the SFU (ex2.approx, relative error about 2^-22): exp(x) is exp2(x * log2 e), one FMA
// folded into the operand. exp2_approx(-inf) = +0, which is how masked or fully masked rows
// (LSE = -inf, stored as +inf to subtract) give P = 0 without a branch.
__device__ __forceinline__ float exp2_approx(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

// --- global reductions -----------------------------------------------------------------------

// *address += (a, b, c, d) on four adjacent floats (address 16-byte aligned): one vector
// reduction on sm_90 (red.global.add.v4.f32), else four atomicAdds.
__device__ __forceinline__ void red_add_quad(float* address, float a, float b, float c, float d) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"l"(address), "f"(a), "f"(b), "f"(c), "f"(d)
                 : "memory");
#else
    atomicAdd(address, a);
    atomicAdd(address + 1, b);
    atomicAdd(address + 2, c);
    atomicAdd(address + 3, d);
#endif
}

// --- shared memory ---------------------------------------------------------------------------

__device__ __forceinline__ uint32_t shared_address(const void* pointer) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(pointer));
}

// Four 8x8 matrices of 16-bit values; lane l supplies the address of row l % 8 of matrix l / 8,
// and receives in r[i] its (row group, cols 2*quad, +1) pair of matrix i.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t address) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(address));
}

// The same, each 8x8 matrix transposed on the way: r[i] holds (rows 2*quad, +1; col group).
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t address) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(address));
}

// --- global stores -----------------------------------------------------------------------------

// One 16-byte store to global memory (16-byte aligned `global`). A uint4 assigned through a
// pointer cast from a 16-bit element type compiled to four 4-byte or two 8-byte stores (SASS of
// backward_dq_convert_kernel and zero_gradient_kernel, session 12).
__device__ __forceinline__ void store_global_16(void* global, uint32_t a, uint32_t b, uint32_t c, uint32_t d) {
    asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"l"(__cvta_generic_to_global(global)), "r"(a), "r"(b),
                 "r"(c), "r"(d)
                 : "memory");
}

// --- asynchronous global -> shared copies ----------------------------------------------------

constexpr int kCopyBytes = 16;  // one cp.async moves 16 bytes: 8 bf16/f16 values

// Copies 16 bytes, or writes 16 zero bytes when !valid (rows past the end of a tensor), so that
// padding rows hold zeros, never stale data that could be Inf or NaN. The source address is not
// read when !valid, but must still be a global address: pass the tensor's base.
__device__ __forceinline__ void cp_async_16(uint32_t shared, const void* global, bool valid) {
    const int source_bytes = valid ? kCopyBytes : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared), "l"(global), "r"(source_bytes));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

// Waits until at most `kPending` committed groups of this thread are still in flight.
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

}  // namespace flashmask::cuda::sm80
