// forward() / backward(): validate every argument once (SPEC §1, §2), resolve them into an
// AttentionProblem, and run the path for the tensors' device. An argument is refused with an
// Error naming it, what was given and what was expected, before any output is written.
//
// Zero-size decisions (no error, nothing undefined):
//   * B = 0 or Nq = 0: forward writes nothing (the outputs are empty); backward writes dK = dV
//     = 0, since no query row contributes a gradient.
//   * Nk = 0: every row sees no key, so forward gives O = 0, LSE = -inf, and backward dQ = 0.
//   * Hq, Hk, D and Dv must be at least 1: a head of width 0 has no meaningful default scale,
//     and Hq % Hk needs Hk > 0.
#include <cmath>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "cpu/float64.hpp"
#include "cpu/tiled.hpp"
#include "flashmask/api.hpp"
#include "flashmask/problem.hpp"

#ifdef FLASHMASK_WITH_CUDA
#include <cuda_runtime_api.h>

#include "cuda/attention.hpp"
#include "cuda/common/check.hpp"
#include "cuda/common/compressible_scratch.hpp"
#endif

namespace flashmask {
namespace {

constexpr int64_t kMaxExtent = std::numeric_limits<int32_t>::max();  // kernels index in int32

// The operands of one call, by name, in the order they are checked and reported.
struct NamedTensor {
    const char* name;
    const TensorView* view;
    const char* layout;  // e.g. "[B, Nq, Hq, D]"
    bool is_output;
};

// The sizes every operand is checked against, read from q, k and v.
struct Sizes {
    int64_t batch, nq, nk, q_heads, kv_heads, head_dim, value_dim;
};

class Validator {
public:
    explicit Validator(const char* function) : function_(function) {}

    [[noreturn]] void refuse(ErrorCode code, const std::string& argument, const std::string& message) const {
        throw Error(code, argument, std::string("flashmask::") + function_ + ": " + argument + ": " + message);
    }

    // Rank, extents, data pointer and strides: everything that can be judged from one tensor.
    void check_structure(const NamedTensor& t, int expected_rank) const {
        const TensorView& v = *t.view;
        if (v.rank != expected_rank)
            refuse(ErrorCode::InvalidArgument, t.name,
                   "expected rank " + std::to_string(expected_rank) + " " + t.layout + ", got rank " +
                       std::to_string(v.rank) + " " + (v.rank >= 0 && v.rank <= kMaxRank ? shape_string(v) : ""));
        for (int d = 0; d < v.rank; ++d) {
            if (v.shape[d] < 0)
                refuse(ErrorCode::InvalidArgument, t.name,
                       "negative extent in shape " + shape_string(v) + "; expected " + t.layout);
            if (v.shape[d] > kMaxExtent)
                refuse(ErrorCode::InvalidArgument, t.name,
                       "extent " + std::to_string(v.shape[d]) + " of dimension " + std::to_string(d) +
                           " does not fit int32; expected at most " + std::to_string(kMaxExtent));
        }
        if (v.numel() > 0 && !v.last_dim_contiguous())  // an empty tensor's strides are never used
            refuse(ErrorCode::InvalidArgument, t.name,
                   "strides " + strides_string(v) + ", expected stride 1 in the last dimension (contiguous rows)");
        if (v.data == nullptr && v.numel() > 0)
            refuse(ErrorCode::InvalidArgument, t.name,
                   "data pointer is null for shape " + shape_string(v) + ", expected the address of its elements");
        if (t.is_output && v.numel() > 0)  // an empty output has no elements to overlap
            for (int d = 0; d < v.rank; ++d)
                if (v.strides[d] == 0 && v.shape[d] > 1)
                    refuse(ErrorCode::InvalidArgument, t.name,
                           "output with stride 0 in dimension " + std::to_string(d) + " (strides " +
                               strides_string(v) + "): its elements would overlap; expected non-zero strides");
    }

    void check_device(const char* name, const TensorView& v, const TensorView& q) const {
        if (v.device != q.device || (v.device == Device::CUDA && v.device_index != q.device_index))
            refuse(ErrorCode::InvalidArgument, name,
                   std::string("is on ") + device_string(v) + ", expected " + device_string(q) +
                       " (the device of q): all tensors of a call must be on one device");
    }

    void check_dtype(const char* name, const TensorView& v, DType expected, const char* why) const {
        if (v.dtype != expected)
            refuse(ErrorCode::WrongDType, name,
                   std::string("dtype ") + to_string(v.dtype) + ", expected " + to_string(expected) + " (" + why + ")");
    }

    void check_shape(const NamedTensor& t, const std::vector<int64_t>& expected, const std::string& origin) const {
        const TensorView& v = *t.view;
        bool same = int(expected.size()) == v.rank;
        for (int d = 0; same && d < v.rank; ++d) same = v.shape[d] == expected[d];
        if (!same)
            refuse(ErrorCode::InvalidArgument, t.name,
                   "shape " + shape_string(v) + ", expected " + t.layout + " = " + extents_string(expected) + " (" +
                       origin + ")");
    }

    // The mask model's own shape check (one implementation), its message prefixed like ours.
    void check_mask(const TensorView& indices, bool causal, const Sizes& s) const {
        try {
            check_mask_shape(indices, causal, s.batch, s.nq, s.nk, s.q_heads, s.kv_heads);
        } catch (const Error& e) {
            throw Error(e.code(), e.argument(), std::string("flashmask::") + function_ + ": " + e.what());
        }
    }

    static std::string strides_string(const TensorView& v) {
        std::vector<int64_t> strides(v.strides.begin(), v.strides.begin() + v.rank);
        return extents_string(strides);
    }
    static std::string extents_string(const std::vector<int64_t>& extents) {
        std::string s = "[";
        for (std::size_t d = 0; d < extents.size(); ++d) s += (d ? ", " : "") + std::to_string(extents[d]);
        return s + "]";
    }
    static std::string device_string(const TensorView& v) {
        return v.device == Device::CPU ? "cpu" : "cuda:" + std::to_string(v.device_index);
    }

private:
    const char* function_;
};

// The tensors of one call, by name, in the order they are checked and reported: q, k, v, out
// and lse (outputs of forward, inputs of backward) followed by backward's `extra` ones.
std::vector<NamedTensor> call_tensors(const TensorView& q, const TensorView& k, const TensorView& v,
                                      const TensorView& out, const TensorView& lse,
                                      const std::vector<NamedTensor>& extra) {
    std::vector<NamedTensor> tensors = {{"q", &q, "[B, Nq, Hq, D]", false},
                                        {"k", &k, "[B, Nk, Hk, D]", false},
                                        {"v", &v, "[B, Nk, Hk, Dv]", false},
                                        {"out", &out, "[B, Nq, Hq, Dv]", extra.empty()},
                                        {"lse", &lse, "[B, Hq, Nq]", extra.empty()}};
    tensors.insert(tensors.end(), extra.begin(), extra.end());
    return tensors;
}

// Checks what forward and backward share: q, k, v, out, lse (+ dout, dq, dk, dv in `extra`),
// the index tensor, scale and num_threads. Returns the sizes.
Sizes validate(const Validator& check, const TensorView& q, const TensorView& k, const TensorView& v,
               const TensorView& out, const TensorView& lse, const std::vector<NamedTensor>& extra,
               const std::optional<TensorView>& indices, bool causal, const std::optional<float>& scale,
               int num_threads) {
    if (scale && !(std::isfinite(*scale) && *scale > 0.0f)) {
        std::ostringstream given;
        given << *scale;
        check.refuse(ErrorCode::InvalidArgument, "scale",
                     "got " + given.str() + ", expected a finite value > 0 (or none for 1/sqrt(D))");
    }
    if (num_threads < 0)
        check.refuse(ErrorCode::InvalidArgument, "num_threads",
                     "got " + std::to_string(num_threads) + ", expected >= 0 (0 = all hardware threads)");

    const std::vector<NamedTensor> tensors = call_tensors(q, k, v, out, lse, extra);
    for (const NamedTensor& t : tensors) check.check_structure(t, t.view == &lse ? 3 : 4);

    for (const NamedTensor& t : tensors) check.check_device(t.name, *t.view, q);
    if (indices) check.check_device("startend_row_indices", *indices, q);

    const bool cpu_only_dtype = q.dtype == DType::Float32 || q.dtype == DType::Float64;
    if (q.dtype != DType::BFloat16 && q.dtype != DType::Float16 && !cpu_only_dtype)
        check.refuse(ErrorCode::WrongDType, "q",
                     std::string("dtype ") + to_string(q.dtype) +
                         ", expected bfloat16, float16, float32 or float64 (float32 and float64 CPU only)");
    if (cpu_only_dtype && q.device != Device::CPU)
        check.refuse(ErrorCode::WrongDType, "q",
                     std::string("dtype ") + to_string(q.dtype) + " on cuda, expected bfloat16 or float16 (" +
                         to_string(q.dtype) + " is CPU only)");
    for (const NamedTensor& t : tensors) {
        if (t.view == &q) continue;
        if (t.view == &lse) check.check_dtype("lse", lse, DType::Float32, "the log-sum-exp is always float32");
        else check.check_dtype(t.name, *t.view, q.dtype, "the dtype of q");
    }

    const Sizes s{q.shape[0], q.shape[1], k.shape[1], q.shape[2], k.shape[2], q.shape[3], v.shape[3]};
    for (const auto& [name, extent] : {std::pair<const char*, int64_t>{"q", s.q_heads}, {"k", s.kv_heads}})
        if (extent < 1)
            check.refuse(ErrorCode::InvalidArgument, name,
                         std::string("has 0 heads (shape ") + shape_string(name[0] == 'q' ? q : k) + "), expected at least 1");
    if (s.head_dim < 1)
        check.refuse(ErrorCode::InvalidArgument, "q", "head dim D = 0 (shape " + shape_string(q) + "), expected D >= 1");
    if (s.value_dim < 1)
        check.refuse(ErrorCode::InvalidArgument, "v", "value dim Dv = 0 (shape " + shape_string(v) + "), expected Dv >= 1");
    // Where each expected extent comes from, for the messages.
    const std::string from_q = "B, Nq, Hq, D from q " + shape_string(q);
    const std::string from_qk = from_q + ", Nk, Hk from k";
    const std::string from_qkv = from_qk + ", Dv from v";
    for (const NamedTensor& t : tensors) {
        const std::string name = t.name;
        if (name == "k" || name == "dk") check.check_shape(t, {s.batch, s.nk, s.kv_heads, s.head_dim}, from_qk);
        if (name == "v" || name == "dv") check.check_shape(t, {s.batch, s.nk, s.kv_heads, s.value_dim}, from_qkv);
        if (name == "out" || name == "dout") check.check_shape(t, {s.batch, s.nq, s.q_heads, s.value_dim}, from_qkv);
        if (name == "lse") check.check_shape(t, {s.batch, s.q_heads, s.nq}, from_q);
        if (name == "dq") check.check_shape(t, {s.batch, s.nq, s.q_heads, s.head_dim}, "the shape of q");
    }
    if (s.q_heads % s.kv_heads != 0)
        check.refuse(ErrorCode::InvalidArgument, "k",
                     "Hk = " + std::to_string(s.kv_heads) + " does not divide Hq = " + std::to_string(s.q_heads) +
                         "; expected Hq % Hk == 0 (grouped-query attention)");
    if (indices) check.check_mask(*indices, causal, s);
    return s;
}

Operand operand(const TensorView& t) {
    Operand o;
    o.data = t.data;
    for (int d = 0; d < t.rank; ++d) o.stride[d] = t.strides[d];
    return o;
}

AttentionProblem make_problem(const Sizes& s, DType dtype, const std::optional<TensorView>& indices, bool causal,
                              const std::optional<float>& scale) {
    AttentionProblem p;
    p.dtype = dtype;
    p.batch = int32_t(s.batch);
    p.nq = int32_t(s.nq);
    p.nk = int32_t(s.nk);
    p.q_heads = int32_t(s.q_heads);
    p.kv_heads = int32_t(s.kv_heads);
    p.head_dim = int32_t(s.head_dim);
    p.value_dim = int32_t(s.value_dim);
    p.scale = scale ? *scale : float(1.0 / std::sqrt(double(s.head_dim)));
    p.mask = make_mask_view(indices, causal, s.nq, s.nk, s.q_heads);
    return p;
}

// CUDA tensors need a build with the kernels, a usable device, and a kernel for the problem's
// (dtype, D, Dv). Refused with Unsupported otherwise, before anything runs.
void check_cuda_path(const Validator& check, const AttentionProblem& p, const std::vector<NamedTensor>& tensors) {
#ifdef FLASHMASK_WITH_CUDA
    if (!cuda_available())
        check.refuse(ErrorCode::Unsupported, "q",
                     "a CUDA tensor, but no CUDA device is usable by this process; expected CPU tensors");
    if (!cuda::supports(p.dtype, p.head_dim, p.value_dim)) {
        const bool dv_differs = p.value_dim != p.head_dim;
        check.refuse(ErrorCode::Unsupported, dv_differs ? "v" : "q",
                     dv_differs ? "value dim Dv = " + std::to_string(p.value_dim) + " differs from D = " +
                                      std::to_string(p.head_dim) + "; the CUDA kernels expect Dv == D"
                                : "head dim D = " + std::to_string(p.head_dim) +
                                      ", the CUDA kernels support D in {64, 128, 256} (the CPU path takes any D)");
    }
    int devices = 0;
    FM_CUDA_CHECK(cudaGetDeviceCount(&devices));
    if (tensors.front().view->device_index < 0 || tensors.front().view->device_index >= devices)
        check.refuse(ErrorCode::InvalidArgument, tensors.front().name,
                     "is on " + Validator::device_string(*tensors.front().view) + ", but this process sees " +
                         std::to_string(devices) + " CUDA device(s); expected an index in [0, " +
                         std::to_string(devices) + ")");
    // A host pointer labelled CUDA would fault inside a kernel (and poison the CUDA context for
    // the rest of the process), so every operand's memory is asked where it lives first.
    for (const NamedTensor& t : tensors) {
        const TensorView& v = *t.view;
        if (v.numel() == 0) continue;
        cudaPointerAttributes where{};
        const cudaError_t status = cudaPointerGetAttributes(&where, v.data);
        (void)cudaGetLastError();  // an unknown pointer must not linger as the last error
        const bool on_device = status == cudaSuccess &&
                               (where.type == cudaMemoryTypeDevice || where.type == cudaMemoryTypeManaged);
        if (!on_device || where.device != v.device_index) {
            const std::string found = status != cudaSuccess ? std::string("unknown to CUDA (") + cudaGetErrorName(status) + ")"
                                      : where.type == cudaMemoryTypeUnregistered ? "ordinary host memory"
                                      : where.type == cudaMemoryTypeHost         ? "page-locked host memory"
                                      : "memory of cuda:" + std::to_string(where.device);
            check.refuse(ErrorCode::InvalidArgument, t.name,
                         "labelled " + Validator::device_string(v) + " but its data pointer is " + found +
                             "; expected memory allocated on " + Validator::device_string(v));
        }
    }
#else
    (void)p;
    (void)tensors;
    check.refuse(ErrorCode::Unsupported, "q",
                 "a CUDA tensor, but this build has no CUDA kernels (configured without nvcc); expected CPU "
                 "tensors (the CPU path takes float64, float32, float16 and bfloat16)");
#endif
}

#ifdef FLASHMASK_WITH_CUDA
// Runs the kernels on the tensors' device, restoring the caller's current device afterwards.
class CudaDeviceGuard {
public:
    explicit CudaDeviceGuard(int device) {
        FM_CUDA_CHECK(cudaGetDevice(&previous_));
        if (device != previous_) FM_CUDA_CHECK(cudaSetDevice(device));
    }
    ~CudaDeviceGuard() { (void)cudaSetDevice(previous_); }
    CudaDeviceGuard(const CudaDeviceGuard&) = delete;
    CudaDeviceGuard& operator=(const CudaDeviceGuard&) = delete;

private:
    int previous_ = 0;
};
#endif

// What forward() and backward() share: validates every argument of `a` (ForwardArgs or
// BackwardArgs) plus the backward-only tensors in `extra`, refuses CUDA problems no kernel runs, and returns
// the resolved problem with q, k, v, out and lse bound. Nothing is written before it returns.
template <class Args>
AttentionProblem resolve(const char* function, const Args& a, const std::vector<NamedTensor>& extra) {
    const Validator check(function);
    const Sizes s = validate(check, a.q, a.k, a.v, a.out, a.lse, extra, a.startend_row_indices, a.causal, a.scale,
                             a.num_threads);
    AttentionProblem p = make_problem(s, a.q.dtype, a.startend_row_indices, a.causal, a.scale);
    p.q = operand(a.q);
    p.k = operand(a.k);
    p.v = operand(a.v);
    p.out = operand(a.out);
    p.lse = operand(a.lse);
    if (a.q.device == Device::CUDA) {
        std::vector<NamedTensor> operands = call_tensors(a.q, a.k, a.v, a.out, a.lse, extra);
        if (a.startend_row_indices) operands.push_back({"startend_row_indices", &*a.startend_row_indices, "", false});
        check_cuda_path(check, p, operands);
    }
    return p;
}

}  // namespace

void forward(const ForwardArgs& a) {
    const AttentionProblem p = resolve("forward", a, {});
#ifdef FLASHMASK_WITH_CUDA
    if (a.q.device == Device::CUDA) {
        const CudaDeviceGuard on_device(a.q.device_index);
        cuda::forward(p, a.key_order, static_cast<cudaStream_t>(a.stream));
        return;
    }
#endif
    if (p.dtype == DType::Float64) cpu::float64_forward(p, a.num_threads);
    else cpu::tiled_forward(p, a.num_threads);
}

void backward(const BackwardArgs& a) {
    AttentionProblem p = resolve("backward", a,
                                 {{"dout", &a.dout, "[B, Nq, Hq, Dv]", false},
                                  {"dq", &a.dq, "[B, Nq, Hq, D]", true},
                                  {"dk", &a.dk, "[B, Nk, Hk, D]", true},
                                  {"dv", &a.dv, "[B, Nk, Hk, Dv]", true}});
    p.dout = operand(a.dout);
    p.dq = operand(a.dq);
    p.dk = operand(a.dk);
    p.dv = operand(a.dv);
#ifdef FLASHMASK_WITH_CUDA
    if (a.q.device == Device::CUDA) {
        const CudaDeviceGuard on_device(a.q.device_index);
        cuda::backward(p, a.deterministic, a.key_order, static_cast<cudaStream_t>(a.stream));
        return;
    }
#endif
    if (p.dtype == DType::Float64) cpu::float64_backward(p, a.num_threads);
    else cpu::tiled_backward(p, a.num_threads);
}

std::size_t cuda_cached_bytes() {
#ifdef FLASHMASK_WITH_CUDA
    return cuda_available() ? cuda::compressible_scratch_bytes() : 0;
#else
    return 0;
#endif
}

void release_cuda_cache() {
#ifdef FLASHMASK_WITH_CUDA
    if (cuda_available()) cuda::release_compressible_scratch();
#endif
}

bool cuda_available() {
#ifdef FLASHMASK_WITH_CUDA
    int devices = 0;
    const bool ok = cudaGetDeviceCount(&devices) == cudaSuccess && devices > 0;
    (void)cudaGetLastError();  // a failed query (no driver) must not linger as a sticky error
    return ok;
#else
    return false;
#endif
}

}  // namespace flashmask
