#include "flashmask/types.hpp"

#include <sstream>

namespace flashmask {

const char* to_string(DType dtype) {
    switch (dtype) {
        case DType::Float32: return "float32";
        case DType::Float16: return "float16";
        case DType::BFloat16: return "bfloat16";
        case DType::Int32: return "int32";
        case DType::Float64: return "float64";
    }
    return "unknown";
}

const char* to_string(Device device) { return device == Device::CPU ? "cpu" : "cuda"; }

std::size_t element_size(DType dtype) {
    switch (dtype) {
        case DType::Float16:
        case DType::BFloat16: return 2;
        case DType::Float32:
        case DType::Int32: return 4;
        case DType::Float64: return 8;
    }
    return 0;
}

namespace {

TensorView contiguous_view(void* data, DType dtype, const int64_t* extents, std::size_t rank, Device device,
                           int device_index) {
    if (rank > std::size_t(kMaxRank))
        throw Error(ErrorCode::InvalidArgument, "shape",
                    "make_contiguous_view: shape has rank " + std::to_string(rank) + ", expected at most " +
                        std::to_string(kMaxRank));
    TensorView t;
    t.data = data;
    t.dtype = dtype;
    t.device = device;
    t.device_index = device_index;
    t.rank = int(rank);
    int64_t stride = 1;
    for (int d = t.rank - 1; d >= 0; --d) {
        t.shape[d] = extents[d];
        t.strides[d] = stride;
        stride *= t.shape[d];
    }
    return t;
}

}  // namespace

TensorView make_contiguous_view(void* data, DType dtype, std::initializer_list<int64_t> shape, Device device,
                                int device_index) {
    return contiguous_view(data, dtype, shape.begin(), shape.size(), device, device_index);
}

TensorView make_contiguous_view(void* data, DType dtype, const std::vector<int64_t>& shape, Device device,
                                int device_index) {
    return contiguous_view(data, dtype, shape.data(), shape.size(), device, device_index);
}

std::string shape_string(const TensorView& t) {
    std::ostringstream out;
    out << '[';
    for (int d = 0; d < t.rank; ++d) out << (d ? ", " : "") << t.shape[d];
    out << ']';
    return out.str();
}

}  // namespace flashmask
