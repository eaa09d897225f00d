// flashmask._flashmask: the C++ library seen from Python. Thin by design: every function here
// turns NumPy arrays into TensorViews (or MaskSpecs into NumPy arrays), calls the library and
// maps flashmask::Error onto a Python exception. Decisions (defaults, dtype policy, output
// allocation) live in python/flashmask; validation lives in the library.
//
// Arrays arrive as nanobind ndarrays (NumPy arrays, or anything with DLPack: torch tensors,
// DLPack capsules), any dtype, any strides (in elements). The attention calls take them on the
// CPU or on a CUDA device (the DLPack device id becomes TensorView::device_index) with the
// caller's cudaStream_t; everything else reads host memory and takes CPU arrays only.
// bfloat16 cannot travel through NumPy's DLPack export, so the Python layer passes bfloat16
// tensors as uint16 views of the same memory and sets `bfloat16_bits`; a framework that
// exports real bfloat16 through DLPack (e.g. a torch tensor) works without it.

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "cpu/accuracy.hpp"
#include "cpu/reference.hpp"
#include "cpu/tiled.hpp"
#include "flashmask/api.hpp"
#include "flashmask/mask.hpp"

#ifdef FLASHMASK_WITH_CUDA
#include "cuda/attention.hpp"
#include "cuda/common/check.hpp"
#endif

namespace nb = nanobind;
namespace fm = flashmask;

namespace {

using InputArray = nb::ndarray<nb::ro, nb::device::cpu>;   // read on the host; read-only arrays welcome
// The attention calls' operands: any DLPack device here; set_library_device() takes CPU and
// CUDA, and the library checks that a call's tensors share one device.
using AttentionInput = nb::ndarray<nb::ro>;  // read by the call
using AttentionOutput = nb::ndarray<>;       // written by the call
using Float64Array = nb::ndarray<const double, nb::c_contig, nb::device::cpu>;

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

PyObject* python_exception_type(fm::ErrorCode code) {
    switch (code) {
        case fm::ErrorCode::WrongDType: return PyExc_TypeError;
        case fm::ErrorCode::InvalidArgument:
        case fm::ErrorCode::BadMaskValue: return PyExc_ValueError;
        case fm::ErrorCode::Unsupported: return PyExc_NotImplementedError;
        case fm::ErrorCode::CudaError: return PyExc_RuntimeError;
    }
    return PyExc_RuntimeError;
}

// Raises the mapped exception with the library's message, and the argument it names as the
// exception's `argument` attribute (empty when none) so callers can tell which input was refused.
void raise_flashmask_error(const fm::Error& error) {
    PyObject* type = python_exception_type(error.code());
    PyObject* exception = PyObject_CallFunction(type, "s", error.what());
    if (exception == nullptr) return;  // the failed call left its own exception set
    PyObject* argument = PyUnicode_FromString(error.argument().c_str());
    if (argument != nullptr) {
        PyObject_SetAttrString(exception, "argument", argument);
        Py_DECREF(argument);
    }
    PyErr_SetObject(type, exception);
    Py_DECREF(exception);
}

// ---------------------------------------------------------------------------------------------
// NumPy arrays -> TensorViews
// ---------------------------------------------------------------------------------------------

std::string dlpack_dtype_name(nb::dlpack::dtype dtype) {
    const char* kind = "unknown";
    switch (nb::dlpack::dtype_code(dtype.code)) {
        case nb::dlpack::dtype_code::Int: kind = "int"; break;
        case nb::dlpack::dtype_code::UInt: kind = "uint"; break;
        case nb::dlpack::dtype_code::Float: kind = "float"; break;
        case nb::dlpack::dtype_code::Bfloat: kind = "bfloat"; break;
        case nb::dlpack::dtype_code::Complex: kind = "complex"; break;
        case nb::dlpack::dtype_code::Bool: return "bool";
        default: break;
    }
    return kind + std::to_string(int(dtype.bits));
}

// The library dtype of an array, or an Error(WrongDType) naming the argument when the library
// has no such dtype (int64, complex, ...). Whether the dtype suits the argument is the
// library's call, not this function's.
fm::DType library_dtype(nb::dlpack::dtype dtype, const char* argument, const char* expected, bool bfloat16_bits) {
    using Code = nb::dlpack::dtype_code;
    const Code code = Code(dtype.code);
    if (dtype.lanes == 1) {
        if (code == Code::Float && dtype.bits == 64) return fm::DType::Float64;
        if (code == Code::Float && dtype.bits == 32) return fm::DType::Float32;
        if (code == Code::Float && dtype.bits == 16) return fm::DType::Float16;
        if (code == Code::Bfloat && dtype.bits == 16) return fm::DType::BFloat16;
        if (code == Code::Int && dtype.bits == 32) return fm::DType::Int32;
        if (code == Code::UInt && dtype.bits == 16 && bfloat16_bits) return fm::DType::BFloat16;
    }
    throw fm::Error(fm::ErrorCode::WrongDType, argument,
                    std::string(argument) + " has dtype " + dlpack_dtype_name(dtype) + "; expected " + expected);
}

// DLPack's device type codes, by name, for the refusal of a device the library has no path for.
const char* dlpack_device_name(int device_type) {
    switch (device_type) {
        case nb::device::cpu::value: return "cpu";
        case nb::device::cuda::value: return "cuda";
        case nb::device::cuda_host::value: return "cuda_host";
        case nb::device::cuda_managed::value: return "cuda_managed";
        case nb::device::rocm::value: return "rocm";
        case nb::device::metal::value: return "metal";
        case nb::device::oneapi::value: return "oneapi";
        default: return "unknown";
    }
}

// Where an array lives, as the library names it (device id -> device_index on CUDA), or an
// Error(Unsupported) naming the argument for any other DLPack device.
void set_library_device(fm::TensorView& view, int device_type, int device_id, const char* argument) {
    if (device_type == nb::device::cpu::value) {
        view.device = fm::Device::CPU;
        view.device_index = 0;
        return;
    }
    if (device_type == nb::device::cuda::value) {
        view.device = fm::Device::CUDA;
        view.device_index = device_id;
        return;
    }
    throw fm::Error(fm::ErrorCode::Unsupported, argument,
                    std::string(argument) + " is on DLPack device " + dlpack_device_name(device_type) + " (type " +
                        std::to_string(device_type) + "); expected cpu or cuda");
}

template <typename Array>
fm::TensorView tensor_view(const Array& array, const char* argument, const char* expected_dtype,
                           bool bfloat16_bits = false) {
    fm::TensorView view;
    // Only what a TensorView cannot hold is refused here; the library states each tensor's own rank.
    if (array.ndim() > std::size_t(fm::kMaxRank))
        throw fm::Error(fm::ErrorCode::InvalidArgument, argument,
                        std::string(argument) + " has rank " + std::to_string(array.ndim()) + "; expected at most " +
                            std::to_string(fm::kMaxRank) + " (lse 3, every other tensor 4)");
    view.dtype = library_dtype(array.dtype(), argument, expected_dtype, bfloat16_bits);
    view.data = const_cast<void*>(static_cast<const void*>(array.data()));  // inputs are only read
    set_library_device(view, array.device_type(), array.device_id(), argument);
    view.rank = int(array.ndim());
    for (int d = 0; d < view.rank; ++d) {
        view.shape[d] = int64_t(array.shape(d));
        view.strides[d] = array.stride(d);
    }
    // NumPy (and torch) may report zero strides for an array with no elements. No element is ever
    // addressed, so any strides are equivalent: use row-major ones, which every check accepts.
    if (array.size() == 0) {
        int64_t stride = 1;
        for (int d = view.rank - 1; d >= 0; --d) {
            view.strides[d] = stride;
            stride *= std::max<int64_t>(view.shape[d], 1);
        }
    }
    return view;
}

constexpr const char* kFloatDTypes = "bfloat16, float16, float32 or float64 (float32 and float64 on the CPU only)";
constexpr const char* kIndexDType = "int32";
constexpr const char* kIndexArgument = "startend_row_indices";

// key_order= of forward_into / backward_into: "auto", "natural" or "sorted" (fm::KeyOrder).
fm::KeyOrder key_order_option(const std::string& name) {
    if (name == "auto") return fm::KeyOrder::Automatic;
    if (name == "natural") return fm::KeyOrder::Natural;
    if (name == "sorted") return fm::KeyOrder::Sorted;
    throw fm::Error(fm::ErrorCode::InvalidArgument, "key_order",
                    "key_order = '" + name + "'; expected 'auto', 'natural' or 'sorted'");
}

template <typename Array>
std::optional<fm::TensorView> index_view(const std::optional<Array>& indices) {
    if (!indices) return std::nullopt;
    return tensor_view(*indices, kIndexArgument, kIndexDType);
}

// A Python int holding a cudaStream_t (0 = the legacy default stream) as the API takes it.
void* cuda_stream(std::uintptr_t handle) { return reinterpret_cast<void*>(handle); }

void require_in_range(int64_t value, int64_t lowest, int64_t end, const char* argument) {
    if (value < lowest || value >= end)
        throw fm::Error(fm::ErrorCode::InvalidArgument, argument,
                        std::string(argument) + " = " + std::to_string(value) + "; expected a value in [" +
                            std::to_string(lowest) + ", " + std::to_string(end) + ")");
}

// A checked mask for an attention problem of the given sizes (the index array, if any, must
// outlive the returned view).
template <typename Array>
fm::MaskView checked_mask_view(const std::optional<Array>& index_array, bool causal, int64_t batch, int64_t nq,
                               int64_t nk, int64_t q_heads, int64_t kv_heads) {
    const std::optional<fm::TensorView> indices = index_view(index_array);
    // Sizes the library stores as int32 in MaskView; the upper bound keeps the cast exact.
    constexpr int64_t kSizeEnd = int64_t(INT32_MAX) + 1;
    require_in_range(batch, 1, kSizeEnd, "batch");
    require_in_range(nq, 0, kSizeEnd, "nq");
    require_in_range(nk, 0, kSizeEnd, "nk");
    require_in_range(q_heads, 1, kSizeEnd, "q_heads");
    require_in_range(kv_heads, 1, kSizeEnd, "kv_heads");
    if (indices) fm::check_mask_shape(*indices, causal, batch, nq, nk, q_heads, kv_heads);
    return fm::make_mask_view(indices, causal, nq, nk, q_heads);
}

// The same for calls that address mask heads 0 .. mask_heads - 1 themselves (to_dense,
// block_summaries): the index tensor must hold exactly that many. checked_mask_view() accepts
// Hm = 1 for any head count (an attention call broadcasts it), but head 1 of such a tensor
// would be read past its end.
fm::MaskView checked_mask_heads_view(const std::optional<InputArray>& index_array, bool causal, int64_t batch,
                                     int64_t mask_heads, int64_t nq, int64_t nk) {
    const fm::MaskView mask = checked_mask_view(index_array, causal, batch, nq, nk, mask_heads, mask_heads);
    if (index_array && int64_t(index_array->shape(1)) != mask_heads)
        throw fm::Error(fm::ErrorCode::InvalidArgument, kIndexArgument,
                        std::string(kIndexArgument) + " has " + std::to_string(index_array->shape(1)) +
                            " mask heads; expected mask_heads = " + std::to_string(mask_heads));
    return mask;
}

// ---------------------------------------------------------------------------------------------
// Owned C++ buffers -> NumPy arrays
// ---------------------------------------------------------------------------------------------

template <typename T>
nb::object numpy_array(std::vector<T>&& values, std::vector<std::size_t> shape) {
    auto* owned = new std::vector<T>(std::move(values));
    nb::capsule owner(owned, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
    return nb::cast(nb::ndarray<nb::numpy, T>(owned->data(), shape.size(), shape.data(), owner));
}

// A builder's result as (startend_row_indices [1, 1, Nk, C] int32 or None, causal).
nb::tuple mask_result(fm::MaskSpec&& spec) {
    nb::object indices = nb::none();
    if (spec.has_indices())
        indices = numpy_array(std::move(spec.indices),
                              {1, 1, std::size_t(spec.nk), std::size_t(spec.slots)});
    return nb::make_tuple(indices, spec.causal);
}

// ---------------------------------------------------------------------------------------------
// The float64 reference (for tests): C-contiguous BSHD float64 operands
// ---------------------------------------------------------------------------------------------

void require_rank4(const Float64Array& array, const char* argument) {
    if (array.ndim() != 4)
        throw fm::Error(fm::ErrorCode::InvalidArgument, argument,
                        std::string(argument) + " has rank " + std::to_string(array.ndim()) + "; expected 4");
}

void require_extent(const Float64Array& array, int dim, int64_t expected, const char* argument, const char* what) {
    if (int64_t(array.shape(dim)) != expected)
        throw fm::Error(fm::ErrorCode::InvalidArgument, argument,
                        std::string(argument) + " has " + what + " " + std::to_string(array.shape(dim)) +
                            "; expected " + std::to_string(expected));
}

// Checks q [B, Nq, Hq, D], k [B, Nk, Hk, D], v [B, Nk, Hk, Dv] against one another.
fm::cpu::ReferenceShape reference_shape(const Float64Array& q, const Float64Array& k, const Float64Array& v) {
    require_rank4(q, "q");
    require_rank4(k, "k");
    require_rank4(v, "v");
    const int64_t batch = int64_t(q.shape(0));
    require_extent(k, 0, batch, "k", "batch size");
    require_extent(v, 0, batch, "v", "batch size");
    require_extent(v, 1, int64_t(k.shape(1)), "v", "key length");
    require_extent(v, 2, int64_t(k.shape(2)), "v", "head count");
    require_extent(k, 3, int64_t(q.shape(3)), "k", "head dim");
    if (k.shape(2) == 0 || q.shape(2) % k.shape(2) != 0)
        throw fm::Error(fm::ErrorCode::InvalidArgument, "k",
                        "k has " + std::to_string(k.shape(2)) + " heads; expected a divisor of q's " +
                            std::to_string(q.shape(2)));
    return fm::cpu::ReferenceShape{int32_t(batch),        int32_t(q.shape(1)), int32_t(k.shape(1)),
                                   int32_t(q.shape(2)),   int32_t(k.shape(2)), int32_t(q.shape(3)),
                                   int32_t(v.shape(3))};
}

// Checks dout [B, Nq, Hq, Dv] against the shape of q and v.
void require_dout_shape(const Float64Array& dout, const fm::cpu::ReferenceShape& shape) {
    require_rank4(dout, "dout");
    require_extent(dout, 0, shape.batch, "dout", "batch size");
    require_extent(dout, 1, shape.nq, "dout", "query length");
    require_extent(dout, 2, shape.q_heads, "dout", "head count");
    require_extent(dout, 3, shape.value_dim, "dout", "value dim");
}

// dQ, dK, dV as NumPy arrays shaped like q, k and v.
nb::tuple gradient_arrays(fm::cpu::ReferenceBackward&& grads, const fm::cpu::ReferenceShape& shape) {
    const auto b = std::size_t(shape.batch), nq = std::size_t(shape.nq), nk = std::size_t(shape.nk);
    const auto hq = std::size_t(shape.q_heads), hk = std::size_t(shape.kv_heads);
    return nb::make_tuple(numpy_array(std::move(grads.dq), {b, nq, hq, std::size_t(shape.head_dim)}),
                          numpy_array(std::move(grads.dk), {b, nk, hk, std::size_t(shape.head_dim)}),
                          numpy_array(std::move(grads.dv), {b, nk, hk, std::size_t(shape.value_dim)}));
}

// The checked mask of a reference call (the index array must outlive it).
fm::MaskView reference_mask(const std::optional<InputArray>& indices, bool causal, const fm::cpu::ReferenceShape& shape) {
    return checked_mask_view(indices, causal, shape.batch, shape.nq, shape.nk, shape.q_heads, shape.kv_heads);
}

double scale_or_default(std::optional<double> scale, int32_t head_dim) {
    return scale ? *scale : 1.0 / std::sqrt(double(head_dim));
}

// ---------------------------------------------------------------------------------------------
// The forward's per-call preprocessing alone (a benchmark hook)
// ---------------------------------------------------------------------------------------------

// What cuda::forward() runs before its kernel (cuda::forward_preprocessing()): the block
// summaries and tile order at the forward kernel's tile, and from 16K keys the key order's sort
// and comparison (KeyOrder::Automatic, forward_into's default), into stream-ordered scratch that
// is freed on the same stream. Only the mask is read. The benchmark (bench/bench_attention.py)
// times it against FlexAttention's create_block_mask (the preprocessing targets).
// Refused with Unsupported in a build without CUDA kernels.
void run_forward_preprocessing(const std::optional<fm::TensorView>& indices, const fm::MaskView& mask, int64_t batch,
                               int64_t q_heads, int64_t kv_heads, int64_t head_dim, std::uintptr_t stream) {
#ifdef FLASHMASK_WITH_CUDA
    if (indices && indices->device != fm::Device::CUDA)
        throw fm::Error(fm::ErrorCode::InvalidArgument, kIndexArgument,
                        std::string(kIndexArgument) + " is on the cpu; expected a CUDA tensor (the preprocessing "
                                                      "runs on the GPU)");
    if (!fm::cuda::supports(fm::DType::BFloat16, int32_t(head_dim), int32_t(head_dim)))
        throw fm::Error(fm::ErrorCode::Unsupported, "head_dim",
                        "head_dim = " + std::to_string(head_dim) + "; the CUDA kernels support 64, 128 and 256");
    // Runs on the current device: a hook has no reason to switch devices (forward() does, with
    // its device guard), so an index tensor elsewhere is refused.
    int current_device = 0;
    fm::cuda::check_cuda(cudaGetDevice(&current_device), "cudaGetDevice");
    if (indices && indices->device_index != current_device)
        throw fm::Error(fm::ErrorCode::InvalidArgument, kIndexArgument,
                        std::string(kIndexArgument) + " is on cuda:" + std::to_string(indices->device_index) +
                            "; expected the current device, cuda:" + std::to_string(current_device));
    // The problem's shape without tensors: the preprocessing reads the mask only.
    fm::AttentionProblem problem;
    problem.dtype = fm::DType::BFloat16;
    problem.batch = int32_t(batch);
    problem.nq = mask.nq;
    problem.nk = mask.nk;
    problem.q_heads = int32_t(q_heads);
    problem.kv_heads = int32_t(kv_heads);
    problem.head_dim = problem.value_dim = int32_t(head_dim);
    problem.mask = mask;
    fm::cuda::forward_preprocessing(problem, fm::KeyOrder::Automatic, reinterpret_cast<cudaStream_t>(stream));
#else
    (void)indices;
    (void)mask;
    (void)batch;
    (void)q_heads;
    (void)kv_heads;
    (void)head_dim;
    (void)stream;
    throw fm::Error(fm::ErrorCode::Unsupported, kIndexArgument,
                    "forward_preprocessing_cuda: this build has no CUDA kernels (configured without nvcc)");
#endif
}

// The arguments forward() and backward() share, filled alike into either's struct (the same
// member names in fm::ForwardArgs and fm::BackwardArgs).
template <typename Args>
void set_shared_arguments(Args& args, const AttentionInput& q, const AttentionInput& k, const AttentionInput& v,
                          const std::optional<AttentionInput>& indices, bool causal, std::optional<float> scale,
                          int num_threads, bool bfloat16_bits, std::uintptr_t stream, const std::string& key_order) {
    args.key_order = key_order_option(key_order);
    args.q = tensor_view(q, "q", kFloatDTypes, bfloat16_bits);
    args.k = tensor_view(k, "k", kFloatDTypes, bfloat16_bits);
    args.v = tensor_view(v, "v", kFloatDTypes, bfloat16_bits);
    args.startend_row_indices = index_view(indices);
    args.causal = causal;
    args.scale = scale;
    args.num_threads = num_threads;
    args.stream = cuda_stream(stream);
}

}  // namespace

NB_MODULE(_flashmask, m) {
    m.doc() = "flashmask C++ library bindings (use the flashmask package, not this module)";
    m.attr("__version__") = FLASHMASK_VERSION_STRING;
    // The CPU path's tile, the default for tile counts from Python.
    m.attr("cpu_block_m") = fm::cpu::kBlockM;
    m.attr("cpu_block_n") = fm::cpu::kBlockN;
    m.attr("key_order_window") = fm::kKeyOrderWindow;

    nb::register_exception_translator([](const std::exception_ptr& pending, void*) {
        try {
            std::rethrow_exception(pending);
        } catch (const fm::Error& error) {
            raise_flashmask_error(error);
        }
    });

    // --- validation -----------------------------------------------------------------------------
    m.def("validate_mask",
          [](const InputArray& indices, bool causal, int64_t nq) {
              fm::validate_mask(tensor_view(indices, kIndexArgument, kIndexDType), causal, nq);
          },
          nb::arg("startend_row_indices"), nb::arg("causal"), nb::arg("nq"));
    m.def("check_mask_shape",
          [](const InputArray& indices, bool causal, int64_t batch, int64_t nq, int64_t nk, int64_t q_heads,
             int64_t kv_heads) {
              fm::check_mask_shape(tensor_view(indices, kIndexArgument, kIndexDType), causal, batch, nq, nk, q_heads,
                                   kv_heads);
          },
          nb::arg("startend_row_indices"), nb::arg("causal"), nb::arg("batch"), nb::arg("nq"), nb::arg("nk"),
          nb::arg("q_heads"), nb::arg("kv_heads"));

    // --- the catalogue (SPEC §3); each returns (startend_row_indices or None, causal) ----------
    m.def("full", [](int64_t n) { return mask_result(fm::full_mask(n)); }, nb::arg("n"));
    m.def("causal", [](int64_t n) { return mask_result(fm::causal_mask(n)); }, nb::arg("n"));
    m.def("sliding_window", [](int64_t n, int64_t window) { return mask_result(fm::sliding_window_mask(n, window)); },
          nb::arg("n"), nb::arg("window"));
    m.def("causal_document",
          [](const std::vector<int64_t>& lengths) { return mask_result(fm::causal_document_mask(lengths)); },
          nb::arg("document_lengths"));
    m.def("document", [](const std::vector<int64_t>& lengths) { return mask_result(fm::document_mask(lengths)); },
          nb::arg("document_lengths"));
    m.def("share_question",
          [](const std::vector<int64_t>& questions, const std::vector<std::vector<int64_t>>& answers) {
              return mask_result(fm::share_question_mask(questions, answers));
          },
          nb::arg("question_lengths"), nb::arg("answer_lengths"));
    m.def("global_sliding_window",
          [](int64_t n, int64_t global_tokens, int64_t window) {
              return mask_result(fm::global_sliding_window_mask(n, global_tokens, window));
          },
          nb::arg("n"), nb::arg("global_tokens"), nb::arg("window"));
    m.def("causal_blockwise",
          [](const std::vector<int64_t>& lengths) { return mask_result(fm::causal_blockwise_mask(lengths)); },
          nb::arg("document_lengths"));
    m.def("prefix_lm_causal",
          [](int64_t n, int64_t prefix) { return mask_result(fm::prefix_lm_causal_mask(n, prefix)); }, nb::arg("n"),
          nb::arg("prefix_length"));
    m.def("prefix_lm_document",
          [](const std::vector<int64_t>& lengths, const std::vector<int64_t>& prefixes) {
              return mask_result(fm::prefix_lm_document_mask(lengths, prefixes));
          },
          nb::arg("document_lengths"), nb::arg("prefix_lengths"));
    m.def("qk_sparse",
          [](int64_t n, const std::vector<std::pair<int64_t, int64_t>>& spans) {
              std::vector<fm::RowSpan> row_spans;
              row_spans.reserve(spans.size());
              for (const auto& [start, end] : spans) row_spans.push_back(fm::RowSpan{start, end});
              return mask_result(fm::qk_sparse_mask(n, row_spans));
          },
          nb::arg("n"), nb::arg("dropped_spans"));
    m.def("random_eviction",
          [](int64_t n, uint64_t seed, double eviction_probability) {
              return mask_result(fm::random_eviction_mask(n, seed, eviction_probability));
          },
          nb::arg("n"), nb::arg("seed"), nb::arg("eviction_probability") = fm::kDefaultEvictionProbability);
    m.def("eviction",
          [](const std::vector<int32_t>& rows) { return mask_result(fm::random_eviction_mask(rows)); },
          nb::arg("eviction_rows"));
    m.def("window",
          [](int64_t nq, int64_t nk, int64_t left, int64_t right, bool causal) {
              return mask_result(fm::window_mask(nq, nk, left, right, causal));
          },
          nb::arg("nq"), nb::arg("nk"), nb::arg("left"), nb::arg("right"), nb::arg("causal"));
    m.def("catalogue_names", []() { return fm::catalogue_names(); });
    m.def("catalogue_mask",
          [](const std::string& name, int64_t n, uint64_t seed) { return mask_result(fm::catalogue_mask(name, n, seed)); },
          nb::arg("name"), nb::arg("n"), nb::arg("seed"));

    // --- dense converters -----------------------------------------------------------------------
    m.def("to_dense",
          [](const std::optional<InputArray>& indices, bool causal, int64_t batch, int64_t mask_heads, int64_t nq,
             int64_t nk, int64_t batch_index, int64_t head_index) {
              const fm::MaskView mask = checked_mask_heads_view(indices, causal, batch, mask_heads, nq, nk);
              require_in_range(batch_index, 0, batch, "batch_index");
              require_in_range(head_index, 0, mask_heads, "head");
              std::vector<uint8_t> dense = fm::to_dense(mask, int32_t(batch_index), int32_t(head_index));
              return numpy_array(std::move(dense), {std::size_t(nq), std::size_t(nk)});
          },
          nb::arg("startend_row_indices").none(), nb::arg("causal"), nb::arg("batch"), nb::arg("mask_heads"),
          nb::arg("nq"), nb::arg("nk"), nb::arg("batch_index"), nb::arg("head"));
    m.def("from_dense",
          [](const nb::ndarray<const uint8_t, nb::ndim<2>, nb::c_contig, nb::device::cpu>& dense, bool causal,
             int32_t slots) {
              return mask_result(
                  fm::from_dense(dense.data(), int64_t(dense.shape(0)), int64_t(dense.shape(1)), causal, slots));
          },
          nb::arg("dense_mask"), nb::arg("causal"), nb::arg("slots"));

    // --- block summaries, tile counts, visible pairs ---------------------------------------------
    m.def("block_summaries",
          [](const std::optional<InputArray>& indices, bool causal, int64_t batch, int64_t mask_heads, int64_t nq,
             int64_t nk, int32_t block_n) {
              const fm::MaskView mask = checked_mask_heads_view(indices, causal, batch, mask_heads, nq, nk);
              std::vector<fm::BlockSummary> summaries =
                  fm::block_summaries(mask, int32_t(batch), int32_t(mask_heads), block_n);
              constexpr std::size_t kFields = sizeof(fm::BlockSummary) / sizeof(int32_t);
              static_assert(kFields == 8, "BlockSummary is eight int32 bounds");
              const std::size_t blocks = summaries.size() / std::size_t(batch * mask_heads);
              std::vector<int32_t> flat(summaries.size() * kFields);
              std::memcpy(flat.data(), summaries.data(), flat.size() * sizeof(int32_t));
              return numpy_array(std::move(flat),
                                 {std::size_t(batch), std::size_t(mask_heads), blocks, kFields});
          },
          nb::arg("startend_row_indices").none(), nb::arg("causal"), nb::arg("batch"), nb::arg("mask_heads"),
          nb::arg("nq"), nb::arg("nk"), nb::arg("block_n"));
    m.def("sorted_key_order",
          [](const std::optional<InputArray>& indices, bool causal, int64_t batch, int64_t nq, int64_t nk,
             int64_t q_heads, int64_t kv_heads, int32_t window) {
              const fm::MaskView mask = checked_mask_view(indices, causal, batch, nq, nk, q_heads, kv_heads);
              const int32_t mask_heads = int32_t(q_heads) / mask.query_heads_per_mask_head;
              fm::SortedKeyOrder sorted = fm::sorted_key_order(mask, int32_t(batch), mask_heads, window);
              const auto b = std::size_t(batch), m = std::size_t(mask_heads), n = std::size_t(nk);
              return nb::make_tuple(numpy_array(std::move(sorted.order), {b, m, n}),
                                    numpy_array(std::move(sorted.indices), {b, m, n, std::size_t(fm::kSortedMaskSlots)}));
          },
          nb::arg("startend_row_indices").none(), nb::arg("causal"), nb::arg("batch"), nb::arg("nq"), nb::arg("nk"),
          nb::arg("q_heads"), nb::arg("kv_heads"), nb::arg("window"));
    m.def("count_tiles",
          [](const std::optional<InputArray>& indices, bool causal, int64_t batch, int64_t nq, int64_t nk,
             int64_t q_heads, int64_t kv_heads, int32_t block_m, int32_t block_n) {
              const fm::MaskView mask = checked_mask_view(indices, causal, batch, nq, nk, q_heads, kv_heads);
              const fm::TileCounts counts = fm::count_tiles(mask, int32_t(batch), int32_t(q_heads), block_m, block_n);
              return std::make_tuple(counts.skipped, counts.partial, counts.full);
          },
          nb::arg("startend_row_indices").none(), nb::arg("causal"), nb::arg("batch"), nb::arg("nq"), nb::arg("nk"),
          nb::arg("q_heads"), nb::arg("kv_heads"), nb::arg("block_m"), nb::arg("block_n"));
    m.def("visible_pairs",
          [](const std::optional<InputArray>& indices, bool causal, int64_t batch, int64_t nq, int64_t nk,
             int64_t q_heads, int64_t kv_heads) {
              const fm::MaskView mask = checked_mask_view(indices, causal, batch, nq, nk, q_heads, kv_heads);
              return fm::visible_pairs(mask, int32_t(batch), int32_t(q_heads));
          },
          nb::arg("startend_row_indices").none(), nb::arg("causal"), nb::arg("batch"), nb::arg("nq"), nb::arg("nk"),
          nb::arg("q_heads"), nb::arg("kv_heads"));

    // --- attention (outputs allocated by the caller, written in place) ---------------------------
    // Any device the library has a path for; `stream` is the cudaStream_t of a CUDA call
    // (ignored on the CPU). The GIL is released while the library runs.
    m.def("forward",
          [](const AttentionInput& q, const AttentionInput& k, const AttentionInput& v, const AttentionOutput& out,
             const AttentionOutput& lse, const std::optional<AttentionInput>& indices, bool causal,
             std::optional<float> scale, int num_threads, bool bfloat16_bits, std::uintptr_t stream,
             const std::string& key_order) {
              fm::ForwardArgs args;
              set_shared_arguments(args, q, k, v, indices, causal, scale, num_threads, bfloat16_bits, stream, key_order);
              args.out = tensor_view(out, "out", kFloatDTypes, bfloat16_bits);
              args.lse = tensor_view(lse, "lse", "float32");
              nb::gil_scoped_release unlocked;
              fm::forward(args);
          },
          nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("out").noconvert(), nb::arg("lse").noconvert(),
          nb::arg("startend_row_indices").none(), nb::arg("causal"), nb::arg("scale").none(),
          nb::arg("num_threads"), nb::arg("bfloat16_bits"), nb::arg("stream"), nb::arg("key_order") = "auto");
    m.def("backward",
          [](const AttentionInput& q, const AttentionInput& k, const AttentionInput& v, const AttentionInput& out,
             const AttentionInput& lse, const AttentionInput& dout, const AttentionOutput& dq,
             const AttentionOutput& dk, const AttentionOutput& dv, const std::optional<AttentionInput>& indices,
             bool causal, std::optional<float> scale, bool deterministic, int num_threads, bool bfloat16_bits,
             std::uintptr_t stream, const std::string& key_order) {
              fm::BackwardArgs args;
              set_shared_arguments(args, q, k, v, indices, causal, scale, num_threads, bfloat16_bits, stream, key_order);
              args.out = tensor_view(out, "out", kFloatDTypes, bfloat16_bits);
              args.lse = tensor_view(lse, "lse", "float32");
              args.dout = tensor_view(dout, "dout", kFloatDTypes, bfloat16_bits);
              args.dq = tensor_view(dq, "dq", kFloatDTypes, bfloat16_bits);
              args.dk = tensor_view(dk, "dk", kFloatDTypes, bfloat16_bits);
              args.dv = tensor_view(dv, "dv", kFloatDTypes, bfloat16_bits);
              args.deterministic = deterministic;
              nb::gil_scoped_release unlocked;
              fm::backward(args);
          },
          nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("out"), nb::arg("lse"), nb::arg("dout"),
          nb::arg("dq").noconvert(), nb::arg("dk").noconvert(), nb::arg("dv").noconvert(),
          nb::arg("startend_row_indices").none(), nb::arg("causal"), nb::arg("scale").none(),
          nb::arg("deterministic"), nb::arg("num_threads"), nb::arg("bfloat16_bits"), nb::arg("stream"),
          nb::arg("key_order") = "auto");
    m.def("cuda_available", &fm::cuda_available);
    m.def("cuda_cached_bytes", &fm::cuda_cached_bytes);
    m.def("release_cuda_cache", []() {
        nb::gil_scoped_release unlocked;  // waits for the device
        fm::release_cuda_cache();
    });
    // The forward's per-call preprocessing alone on `stream` (see run_forward_preprocessing);
    // B is the index tensor's (1 without one), Nk its key dimension (nq without one).
    m.def("forward_preprocessing_cuda",
          [](const std::optional<AttentionInput>& index_array, bool causal, int64_t nq, int64_t q_heads,
             std::uintptr_t stream, std::optional<int64_t> nk, std::optional<int64_t> kv_heads, int64_t head_dim) {
              // Read from the tensor only at rank 4; checked_mask_view() refuses any other rank.
              constexpr std::size_t kIndexRank = 4;
              const bool rank4 = index_array && index_array->ndim() == kIndexRank;
              const int64_t batch = rank4 ? int64_t(index_array->shape(0)) : 1;
              const int64_t keys = nk ? *nk : rank4 ? int64_t(index_array->shape(2)) : nq;
              const fm::MaskView mask =
                  checked_mask_view(index_array, causal, batch, nq, keys, q_heads, kv_heads ? *kv_heads : q_heads);
              const std::optional<fm::TensorView> indices = index_view(index_array);
              nb::gil_scoped_release unlocked;
              run_forward_preprocessing(indices, mask, batch, q_heads, kv_heads ? *kv_heads : q_heads, head_dim, stream);
          },
          nb::arg("startend_row_indices").none(), nb::kw_only(), nb::arg("causal"), nb::arg("nq"), nb::arg("q_heads"),
          nb::arg("stream") = 0, nb::arg("nk").none() = nb::none(), nb::arg("kv_heads").none() = nb::none(),
          nb::arg("head_dim") = 128);

    // --- the float64 reference (tests): returns new float64 arrays -------------------------------
    m.def("reference_forward",
          [](const Float64Array& q, const Float64Array& k, const Float64Array& v,
             const std::optional<InputArray>& indices, bool causal, std::optional<double> scale) {
              const fm::cpu::ReferenceShape shape = reference_shape(q, k, v);
              const fm::MaskView mask = reference_mask(indices, causal, shape);
              fm::cpu::ReferenceForward result;
              {
                  nb::gil_scoped_release unlocked;
                  result = fm::cpu::reference_forward(shape, mask, scale_or_default(scale, shape.head_dim), q.data(),
                                                      k.data(), v.data());
              }
              const auto b = std::size_t(shape.batch), nq = std::size_t(shape.nq), hq = std::size_t(shape.q_heads);
              return nb::make_tuple(numpy_array(std::move(result.out), {b, nq, hq, std::size_t(shape.value_dim)}),
                                    numpy_array(std::move(result.lse), {b, hq, nq}));
          },
          nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("startend_row_indices").none(), nb::arg("causal"),
          nb::arg("scale").none());
    m.def("reference_backward",
          [](const Float64Array& q, const Float64Array& k, const Float64Array& v, const Float64Array& dout,
             const std::optional<InputArray>& indices, bool causal, std::optional<double> scale) {
              const fm::cpu::ReferenceShape shape = reference_shape(q, k, v);
              require_dout_shape(dout, shape);
              const fm::MaskView mask = reference_mask(indices, causal, shape);
              fm::cpu::ReferenceBackward result;
              {
                  nb::gil_scoped_release unlocked;
                  result = fm::cpu::reference_backward(shape, mask, scale_or_default(scale, shape.head_dim), q.data(),
                                                       k.data(), v.data(), dout.data());
              }
              return gradient_arrays(std::move(result), shape);
          },
          nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("dout"), nb::arg("startend_row_indices").none(),
          nb::arg("causal"), nb::arg("scale").none());

    // --- SPEC §5's naive in-dtype attention and bound (tests; see src/cpu/accuracy.hpp) --------
    // Operands are float64 arrays holding values already rounded to `dtype`.
    nb::enum_<fm::DType>(m, "DType")
        .value("float64", fm::DType::Float64)
        .value("float32", fm::DType::Float32)
        .value("float16", fm::DType::Float16)
        .value("bfloat16", fm::DType::BFloat16);
    m.def("naive_forward",
          [](fm::DType dtype, const Float64Array& q, const Float64Array& k, const Float64Array& v,
             const std::optional<InputArray>& indices, bool causal, std::optional<double> scale) {
              const fm::cpu::ReferenceShape shape = reference_shape(q, k, v);
              const fm::MaskView mask = reference_mask(indices, causal, shape);
              std::vector<double> out;
              {
                  nb::gil_scoped_release unlocked;
                  out = fm::cpu::naive_forward(dtype, shape, mask, scale_or_default(scale, shape.head_dim), q.data(),
                                               k.data(), v.data());
              }
              return numpy_array(std::move(out), {std::size_t(shape.batch), std::size_t(shape.nq),
                                                  std::size_t(shape.q_heads), std::size_t(shape.value_dim)});
          },
          nb::arg("dtype"), nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("startend_row_indices").none(),
          nb::arg("causal"), nb::arg("scale").none());
    m.def("naive_backward",
          [](fm::DType dtype, const Float64Array& q, const Float64Array& k, const Float64Array& v,
             const Float64Array& dout, const std::optional<InputArray>& indices, bool causal,
             std::optional<double> scale) {
              const fm::cpu::ReferenceShape shape = reference_shape(q, k, v);
              require_dout_shape(dout, shape);
              const fm::MaskView mask = reference_mask(indices, causal, shape);
              fm::cpu::ReferenceBackward result;
              {
                  nb::gil_scoped_release unlocked;
                  result = fm::cpu::naive_backward(dtype, shape, mask, scale_or_default(scale, shape.head_dim),
                                                   q.data(), k.data(), v.data(), dout.data());
              }
              return gradient_arrays(std::move(result), shape);
          },
          nb::arg("dtype"), nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("dout"),
          nb::arg("startend_row_indices").none(), nb::arg("causal"), nb::arg("scale").none());
    m.def("spec_bound", &fm::cpu::spec_bound, nb::arg("dtype"), nb::arg("naive_relative_error"));
}
