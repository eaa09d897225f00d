// The vocabulary of the public API: dtypes, devices, non-owning tensor views and the one
// exception type through which every refused input and every runtime failure is reported.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

namespace flashmask {

// Float64 is a CPU-only storage and arithmetic dtype: the exact path for gradcheck and checks.
enum class DType { Float32, Float16, BFloat16, Int32, Float64 };
enum class Device { CPU, CUDA };

const char* to_string(DType dtype);
const char* to_string(Device device);
std::size_t element_size(DType dtype);

// What kind of failure an Error reports; bindings map these onto their own exception types
// (InvalidArgument/BadMaskValue -> ValueError, WrongDType -> TypeError, ...).
enum class ErrorCode {
    InvalidArgument,  // a shape, stride, size or option that the contract does not allow
    WrongDType,       // a tensor of a dtype the contract does not allow
    BadMaskValue,     // validate_mask(): a row index outside [0, Nq]
    Unsupported,      // allowed by the contract but not by this build or device
    CudaError,        // a CUDA runtime call or kernel launch failed; message is CUDA's
};

class Error : public std::runtime_error {
public:
    Error(ErrorCode code, std::string argument, const std::string& message)
        : std::runtime_error(message), code_(code), argument_(std::move(argument)) {}
    ErrorCode code() const noexcept { return code_; }
    // The argument the error is about ("q", "startend_row_indices", ...); empty when none.
    const std::string& argument() const noexcept { return argument_; }

private:
    ErrorCode code_;
    std::string argument_;
};

inline constexpr int kMaxRank = 4;

// A non-owning, strided view of a tensor. Strides are in elements, not bytes.
struct TensorView {
    void* data = nullptr;
    DType dtype = DType::Float32;
    Device device = Device::CPU;
    int device_index = 0;
    int rank = 0;
    std::array<int64_t, kMaxRank> shape{};
    std::array<int64_t, kMaxRank> strides{};

    // The element count; 0 when an extent is 0 (or negative, which every check refuses), and
    // saturated at INT64_MAX where the product overflows: extents are checked one by one, so
    // their product can exceed int64 (four of 2^16), and a wrapped count of 0 would pass for empty.
    int64_t numel() const {
        for (int d = 0; d < rank; ++d)
            if (shape[d] <= 0) return 0;
        int64_t n = 1;
        for (int d = 0; d < rank; ++d) {
            if (n > std::numeric_limits<int64_t>::max() / shape[d]) return std::numeric_limits<int64_t>::max();
            n *= shape[d];
        }
        return n;
    }
    bool last_dim_contiguous() const { return rank == 0 || strides[rank - 1] == 1 || shape[rank - 1] <= 1; }
};

// Builds a contiguous (row-major) view over `data`.
TensorView make_contiguous_view(void* data, DType dtype, std::initializer_list<int64_t> shape,
                                Device device = Device::CPU, int device_index = 0);
// The same for a shape held in a vector (std::span would not do: CUDA code includes this header as C++17).
TensorView make_contiguous_view(void* data, DType dtype, const std::vector<int64_t>& shape,
                                Device device = Device::CPU, int device_index = 0);

// "[2, 8192, 32, 128]"
std::string shape_string(const TensorView& t);

// The order in which the CUDA kernels read the keys. Attention is exact under any permutation of
// the keys, and a mask whose column intervals jump from key to key (random eviction) leaves most
// of its tiles Partial in the keys' own order, where sorting the keys by their intervals inside
// windows of 1024 makes most of them Skipped or Full (bench/NOTES.md, session 6: 0.75 -> 0.94 of
// the computed pairs visible at 32K). The sort needs one key order per KV head, so it applies
// only to a mask with an index tensor and Hm in {1, Hk}; otherwise the keys' own order is used.
// The CPU path always reads the keys in their own order. Results are equal either way up to the
// order of floating-point sums.
enum class KeyOrder : int32_t {
    // From Nk >= 16384 (src/cuda/common/key_order.cuh): sorted when that computes at most 0.9 of
    // the natural order's tiles, counted and decided on the device (no host synchronisation).
    Automatic,
    Natural,    // the keys' own order
    Sorted,     // sorted whenever the mask allows it (an index tensor and Hm in {1, Hk})
};

}  // namespace flashmask
