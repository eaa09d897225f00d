#include "flashmask/types.hpp"

#include <sstream>

namespace flashmask {

const char* to_string(DType dtype) {
    switch (dtype) {
        case DType::Float32: return "float32";
        case DType::Float16: return "float16";
        case DType::BFloat16: return "bfloat16";
        case DType::Int32: return "int32";
    }
    return "unknown";
}

const char* to_string(Device device) { return device == Device::CPU ? "cpu" : "cuda"; }

std::size_t element_size(DType dtype) {
    return dtype == DType::Float16 || dtype == DType::BFloat16 ? 2 : 4;
}

TensorView make_contiguous_view(void* data, DType dtype, std::initializer_list<int64_t> shape, Device device,
                                int device_index) {
    if (shape.size() > std::size_t(kMaxRank))
        throw Error(ErrorCode::InvalidArgument, "shape", "make_contiguous_view: rank above 4");
    TensorView t;
    t.data = data;
    t.dtype = dtype;
    t.device = device;
    t.device_index = device_index;
    t.rank = int(shape.size());
    int d = 0;
    for (int64_t extent : shape) t.shape[d++] = extent;
    int64_t stride = 1;
    for (d = t.rank - 1; d >= 0; --d) {
        t.strides[d] = stride;
        stride *= t.shape[d];
    }
    return t;
}

std::string shape_string(const TensorView& t) {
    std::ostringstream out;
    out << '[';
    for (int d = 0; d < t.rank; ++d) out << (d ? ", " : "") << t.shape[d];
    out << ']';
    return out.str();
}

}  // namespace flashmask
