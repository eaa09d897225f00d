// The GPU attention tests' one checker: runs forward (and backward) of one case through the
// public API (flashmask::forward / backward on CUDA TensorViews), then compares every output with
// a reference under SPEC §5:
//   * small cases: the float64 CPU reference (cpu/reference.hpp) and the naive in-dtype
//     computation (cpu/accuracy.hpp), exactly as the CPU tests do;
//   * large cases (4099, 8192, ...): the float32 GPU reference and its naive in-dtype twin
//     (gpu_reference.hpp). The bound is SPEC §5's with the float32 reference standing in for the
//     float64 one: its own error (~1e-6) is far below any 16-bit bound (>= 2^-11).
// Inputs are fresh normals (seeded from the test's rng), outputs are poisoned with NaN first and
// checked to be written everywhere; rows that see no key must give O = 0, LSE = -inf and dQ = 0
// exactly, keys that no row sees dK = dV = 0 exactly.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "gpu_test_util.hpp"
#include "test_cpu_common.hpp"

namespace flashmask::testing {

// How a [B, S, H, D] operand lies in memory: BSHD (contiguous); a contiguous [B, H, S, D]
// buffer passed as a transposed view (SPEC §1: "a [B, H, N, D] tensor passed as a transposed
// view works unchanged"); or BSHD rows of D elements kRowPadding apart (a slice of a wider
// buffer, e.g. q out of a fused qkv tensor), with the LSE's rows padded too.
// Rows off 16-byte addresses, which the CUDA path copies through contiguous scratch around its
// kernels (KernelOperand, src/cuda/sm80/kernel_operand.cuh): UnalignedBshd has rows
// kUnalignedRowPadding apart (a stride that is not a multiple of 8 elements), OffsetBshd is
// contiguous BSHD whose data pointer is kUnalignedBaseOffset elements past a 16-byte address.
// Neither is in kLayouts: the copy path has its own tests.
enum class Layout { Bshd, Bhsd, PaddedBshd, UnalignedBshd, OffsetBshd };
inline constexpr Layout kLayouts[] = {Layout::Bshd, Layout::Bhsd, Layout::PaddedBshd};
const char* to_string(Layout layout);
// Padding after each D-element row of PaddedBshd: 8 elements keeps every row 16-byte aligned for
// 16-bit dtypes (what vectorised loads need), while no stride equals D.
inline constexpr int64_t kRowPadding = 8;
// Padding after each D-element row of UnalignedBshd: row r starts 2 r bytes past a 16-byte
// boundary (mod 16), so 7 rows in 8 are off one (a slice of a buffer whose rows hold D + 1 values).
inline constexpr int64_t kUnalignedRowPadding = 1;
// Storage elements before element 0 of an OffsetBshd tensor: its data pointer is 2 bytes past the
// allocation (cudaMalloc gives 256-byte addresses), and with D a multiple of 8 so is every row.
inline constexpr int64_t kUnalignedBaseOffset = 1;
// Padding after each LSE row [Nq] whenever the operands are not plain BSHD (4 floats: 16 bytes).
inline constexpr int64_t kLseRowPadding = 4;

// An owning device tensor (rank 3 or 4) of any float dtype, with its view and host read-back.
// `row_padding` elements follow each innermost row in memory (none for Bshd / Bhsd by default);
// for OffsetBshd the view starts kUnalignedBaseOffset elements into the storage.
class DeviceTensor {
public:
    DeviceTensor(DType dtype, std::vector<int64_t> shape, Layout layout = Layout::Bshd);
    DeviceTensor(DType dtype, std::vector<int64_t> shape, Layout layout, int64_t row_padding);

    const std::vector<int64_t>& shape() const { return shape_; }
    DType dtype() const { return dtype_; }
    int64_t numel() const { return numel_; }
    TensorView view() const;

    void fill_normal(uint64_t seed);
    void poison() const { storage_.poison(); }
    // Every element as a double, in logical row-major order (contiguous BSHD / [B, H, N]).
    std::vector<double> values() const;
    // The raw storage, for bit-for-bit comparisons.
    std::vector<uint8_t> bytes() const { return storage_.to_host(); }
    // A contiguous float32 device copy (rank 4 only), for the GPU reference.
    DeviceBuffer<float> to_float() const;
    // Storage elements outside the view (padding) that no longer hold poison() bytes: an output
    // written out of bounds.
    int64_t padding_written() const;

private:
    std::vector<int64_t> storage_offsets() const;  // of every element, in logical row-major order
    uint8_t* first_element() const;                // the view's data pointer

    DType dtype_;
    std::vector<int64_t> shape_, strides_;
    int64_t numel_, storage_elements_;
    int64_t base_offset_;  // storage elements before element 0 (padding, like row_padding's)
    DeviceBuffer<uint8_t> storage_;
};

// A TestMask's index tensor copied to the device (same padded strides), as the API and the GPU
// reference read it.
struct DeviceMask {
    std::optional<DeviceBuffer<int32_t>> indices;
    std::optional<TensorView> view;  // device view for ForwardArgs / BackwardArgs; none without indices
    MaskView device_view;            // for the GPU reference
    MaskView host_view;              // for the CPU reference

    DeviceMask(TestMask& mask, const AttentionSizes& sizes);
};

enum class ReferenceKind {
    Auto,        // float64 CPU when the problem is small (kFloat64ReferenceBudget), else float32 GPU
    Float64Cpu,
    Float32Gpu,
};
// B * Hq * Nq * Nk * D up to which Auto takes the float64 CPU reference: the reference and naive
// forward + backward of 10M (77 x 130, 4 heads, D = 256) took 0.035 s single-threaded on the
// build machine, so this budget costs at most about a quarter of a second per case.
inline constexpr int64_t kFloat64ReferenceBudget = int64_t(1) << 26;

struct GpuCase {
    AttentionSizes sizes;
    DType dtype = DType::BFloat16;
    Layout layout = Layout::Bshd;  // of q, k, v, out, dout, and of dq, dk, dv unless gradient_layout
    std::optional<Layout> gradient_layout;  // of dq, dk, dv when not `layout`
    std::optional<float> scale;    // none: the default 1 / sqrt(D)
    bool backward = true;
    bool deterministic = false;  // backward in deterministic mode, run twice: identical bits
    cudaStream_t stream = nullptr;
    ReferenceKind reference = ReferenceKind::Auto;
    KeyOrder key_order = KeyOrder::Automatic;  // the CUDA path's key order (src/cuda/common/key_order.cuh)

    std::string describe() const;
};

// Runs one case through the API and checks every output (gtest failures; no return value).
void check_gpu_attention(const GpuCase& c, TestMask& mask, std::mt19937_64& rng);

// A test's float32 GPU reference checked against the float64 CPU one on the same inputs (the
// reference of the large cases must itself be right): out, lse, dq, dk, dv within the float32
// bound of SPEC §5, the naive in-dtype results equal to the CPU's naive ones up to rare
// rounding ties, and the keys that no row sees.
void check_gpu_reference(const AttentionSizes& sizes, DType dtype, TestMask& mask, std::mt19937_64& rng);

// The default scale as the API computes it (dispatch.cpp): float(1 / sqrt(D)).
float default_scale(int32_t head_dim);

// Query heads and mask heads of the GPU cases: Hq / Hk = 4 (GQA) unless a test says otherwise.
inline constexpr int32_t kGqaGroup = 4;

}  // namespace flashmask::testing
