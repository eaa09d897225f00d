#include "gpu_attention_check.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <sstream>

#include "cpu/accuracy.hpp"
#include "cpu/elements.hpp"
#include "cpu/reference.hpp"
#include "cuda/common/workspace.cuh"
#include "gpu_reference.hpp"

namespace flashmask::testing {
namespace {

// Every scratch allocation of the library in this test binary is filled with NaN bytes first
// (workspace.cuh): a kernel that reads scratch before anything wrote it (a dQ accumulator left
// unzeroed, a Di never written) fails the checks instead of passing on memory that happened to be zero.
const bool kScratchPoisoned = [] { return setenv(cuda::kPoisonScratchVariable, "1", 0) == 0; }();

constexpr double kInf = std::numeric_limits<double>::infinity();
// LSE against the reference: float32 arithmetic on the same inputs, but the kernel sums up to
// 8192 exponentials in its own order (and may use exp2/log2 approximations), as does the float32
// reference: a few float32 ulps of the row's sum, scaled by the LSE's magnitude.
constexpr double kLseTolerance = 1e-4;
// The GPU reference against the float64 one: SPEC §5's float32 bound (the reference is float32
// arithmetic on exactly representable inputs).
constexpr double kGpuReferenceBound = cpu::kFloat32Bound;
// The GPU naive computation against the CPU naive one: the same roundings at the same places, so
// they differ only where a float32 intermediate lands on the other side of a 16-bit rounding
// boundary than the float64 one (rare); far below the naive error itself.
constexpr double kNaiveAgreementFraction = 0.25;

int current_device() {
    int device = 0;
    FM_CUDA_CHECK(cudaGetDevice(&device));
    return device;
}

void synchronize(cudaStream_t stream) { FM_CUDA_CHECK(cudaStreamSynchronize(stream)); }

// Position of element `n` of a row-major tensor of `shape`, e.g. "[0, 17, 3, 5]".
std::string position(int64_t n, const std::vector<int64_t>& shape) {
    std::vector<int64_t> index(shape.size());
    for (std::size_t d = shape.size(); d-- > 0;) {
        index[d] = n % shape[d];
        n /= shape[d];
    }
    std::string s = "[";
    for (std::size_t d = 0; d < index.size(); ++d) s += (d ? ", " : "") + std::to_string(index[d]);
    return s + "]";
}

// Where got and want differ most, for a failure message.
std::string worst_element(const std::vector<double>& got, const std::vector<double>& want,
                          const std::vector<int64_t>& shape) {
    std::size_t worst = 0;
    double worst_difference = -1.0;
    for (std::size_t n = 0; n < want.size(); ++n) {
        const double difference = std::isnan(got[n]) ? kInf : std::abs(got[n] - want[n]);
        if (difference > worst_difference) worst_difference = difference, worst = n;
    }
    if (want.empty()) return "";
    std::ostringstream s;
    s << "; worst element " << position(int64_t(worst), shape) << ": " << got[worst] << " vs " << want[worst];
    return s.str();
}

void expect_within_bound(const char* what, DType dtype, const std::vector<double>& got, const std::vector<double>& ref,
                         const std::vector<double>& naive, const std::vector<int64_t>& shape,
                         const std::string& reference_name) {
    const double error = cpu::relative_error(got, ref);
    const double naive_error = cpu::relative_error(naive, ref);
    const double bound = cpu::spec_bound(dtype, naive_error);
    EXPECT_LT(error, bound) << what << ": relative error " << error << " against the " << reference_name
                            << " reference, bound " << bound << " (naive " << to_string(dtype) << " error "
                            << naive_error << ")" << worst_element(got, ref, shape);
}

int64_t count_nan(const std::vector<double>& x) {
    return std::count_if(x.begin(), x.end(), [](double v) { return std::isnan(v); });
}

// Rows of a [B, S, H, W] tensor that must be exactly 0: those (b, s, h) for which `zero` holds.
template <class Predicate>
void expect_zero_rows(const char* what, const std::vector<double>& got, const std::vector<int64_t>& shape,
                      Predicate zero) {
    const int64_t batch = shape[0], seq = shape[1], heads = shape[2], width = shape[3];
    int64_t nonzero = 0, rows = 0;
    for (int64_t b = 0; b < batch; ++b)
        for (int64_t s = 0; s < seq; ++s)
            for (int64_t h = 0; h < heads; ++h) {
                if (!zero(b, s, h)) continue;
                ++rows;
                for (int64_t d = 0; d < width; ++d) nonzero += got[((b * seq + s) * heads + h) * width + d] != 0.0;
            }
    EXPECT_EQ(nonzero, 0) << what << ": " << nonzero << " elements of " << rows << " rows that must be exactly 0 are not";
}

std::vector<double> to_doubles(const std::vector<float>& x) { return std::vector<double>(x.begin(), x.end()); }

// One case's reference results, all in contiguous host doubles.
struct Reference {
    std::string name;
    std::vector<double> out, lse, naive_out;
    std::vector<double> dq, dk, dv, naive_dq, naive_dk, naive_dv;
    std::vector<uint8_t> key_unseen;  // [B, Nk, Hk]: 1 = no query row of the group sees the key
};

Reference float64_reference(const GpuCase& c, const DeviceMask& mask, float scale, const DeviceTensor& q,
                            const DeviceTensor& k, const DeviceTensor& v, const DeviceTensor* dout) {
    const AttentionSizes& s = c.sizes;
    const cpu::ReferenceShape shape = s.reference_shape();
    const std::vector<double> qd = q.values(), kd = k.values(), vd = v.values();
    Reference r{"float64 CPU"};
    cpu::ReferenceForward forward = cpu::reference_forward(shape, mask.host_view, scale, qd.data(), kd.data(), vd.data());
    r.out = std::move(forward.out);
    r.lse = std::move(forward.lse);
    r.naive_out = cpu::naive_forward(c.dtype, shape, mask.host_view, scale, qd.data(), kd.data(), vd.data());
    if (!dout) return r;
    const std::vector<double> dd = dout->values();
    cpu::ReferenceBackward grad = cpu::reference_backward(shape, mask.host_view, scale, qd.data(), kd.data(), vd.data(), dd.data());
    cpu::ReferenceBackward naive = cpu::naive_backward(c.dtype, shape, mask.host_view, scale, qd.data(), kd.data(), vd.data(), dd.data());
    r.dq = std::move(grad.dq), r.dk = std::move(grad.dk), r.dv = std::move(grad.dv);
    r.naive_dq = std::move(naive.dq), r.naive_dk = std::move(naive.dk), r.naive_dv = std::move(naive.dv);
    const int32_t group = s.q_heads / s.kv_heads;
    r.key_unseen.assign(std::size_t(s.batch) * s.nk * s.kv_heads, 1);
    for (int32_t b = 0; b < s.batch; ++b)
        for (int32_t j = 0; j < s.nk; ++j)
            for (int32_t kvh = 0; kvh < s.kv_heads; ++kvh) {
                uint8_t& unseen = r.key_unseen[(std::size_t(b) * s.nk + j) * s.kv_heads + kvh];
                for (int32_t h = kvh * group; h < (kvh + 1) * group && unseen; ++h)
                    for (int32_t i = 0; i < s.nq && unseen; ++i)
                        if (!cpu::reference_masked(mask.host_view, b, h, i, j)) unseen = 0;
            }
    return r;
}

Reference float32_reference(const GpuCase& c, const DeviceMask& mask, float scale, const DeviceTensor& q,
                            const DeviceTensor& k, const DeviceTensor& v, const DeviceTensor* dout) {
    const AttentionSizes& s = c.sizes;
    const DeviceBuffer<float> qf = q.to_float(), kf = k.to_float(), vf = v.to_float();
    std::optional<DeviceBuffer<float>> doutf;
    if (dout) doutf.emplace(dout->to_float());
    ReferenceProblem p;
    p.batch = s.batch, p.nq = s.nq, p.nk = s.nk, p.q_heads = s.q_heads, p.kv_heads = s.kv_heads, p.head_dim = s.head_dim;
    p.scale = scale;
    p.mask = mask.device_view;
    p.q = qf.get(), p.k = kf.get(), p.v = vf.get(), p.dout = doutf ? doutf->get() : nullptr;
    const std::size_t q_elements = std::size_t(s.batch) * s.nq * s.q_heads * s.head_dim;
    const std::size_t kv_elements = std::size_t(s.batch) * s.nk * s.kv_heads * s.head_dim;
    const std::size_t rows = std::size_t(s.batch) * s.q_heads * s.nq;
    Reference r{"float32 GPU"};
    {
        DeviceBuffer<float> out(q_elements), lse(rows), naive_out(q_elements), naive_lse(rows);
        gpu_reference_forward(p, Rounding::None, out.get(), lse.get());
        gpu_reference_forward(p, naive_rounding(c.dtype), naive_out.get(), naive_lse.get());
        synchronize(nullptr);
        r.out = to_doubles(out.to_host()), r.lse = to_doubles(lse.to_host()), r.naive_out = to_doubles(naive_out.to_host());
    }
    if (!dout) return r;
    DeviceBuffer<float> dq(q_elements), dk(kv_elements), dv(kv_elements);
    DeviceBuffer<int32_t> visible_pairs(std::size_t(s.batch) * s.nk * s.kv_heads);
    gpu_reference_backward(p, Rounding::None, dq.get(), dk.get(), dv.get(), visible_pairs.get());
    synchronize(nullptr);
    r.dq = to_doubles(dq.to_host()), r.dk = to_doubles(dk.to_host()), r.dv = to_doubles(dv.to_host());
    for (int32_t count : visible_pairs.to_host()) r.key_unseen.push_back(count == 0);
    gpu_reference_backward(p, naive_rounding(c.dtype), dq.get(), dk.get(), dv.get());
    synchronize(nullptr);
    r.naive_dq = to_doubles(dq.to_host()), r.naive_dk = to_doubles(dk.to_host()), r.naive_dv = to_doubles(dv.to_host());
    return r;
}

bool use_float64(const GpuCase& c) {
    if (c.reference != ReferenceKind::Auto) return c.reference == ReferenceKind::Float64Cpu;
    const AttentionSizes& s = c.sizes;
    return int64_t(s.batch) * s.q_heads * s.nq * s.nk * s.head_dim <= kFloat64ReferenceBudget;
}

// The four operands every call reads (q, k, v, and dout for the backward) with fresh normals.
struct Inputs {
    DeviceTensor q, k, v, dout;
    Inputs(const AttentionSizes& s, DType dtype, Layout layout, std::mt19937_64& rng)
        : q(dtype, {s.batch, s.nq, s.q_heads, s.head_dim}, layout),
          k(dtype, {s.batch, s.nk, s.kv_heads, s.head_dim}, layout),
          v(dtype, {s.batch, s.nk, s.kv_heads, s.value_dim}, layout),
          dout(dtype, {s.batch, s.nq, s.q_heads, s.value_dim}, layout) {
        for (DeviceTensor* t : {&q, &k, &v, &dout}) t->fill_normal(rng());
    }
};

}  // namespace

const char* to_string(Layout layout) {
    switch (layout) {
        case Layout::Bshd: return "BSHD";
        case Layout::Bhsd: return "BHSD (transposed view)";
        case Layout::PaddedBshd: return "BSHD with padded rows";
        case Layout::UnalignedBshd: return "BSHD with rows off 16-byte addresses";
        case Layout::OffsetBshd: return "BSHD with its data pointer off a 16-byte address";
    }
    return "?";
}

float default_scale(int32_t head_dim) { return float(1.0 / std::sqrt(double(head_dim))); }

DeviceTensor::DeviceTensor(DType dtype, std::vector<int64_t> shape, Layout layout)
    : DeviceTensor(dtype, std::move(shape), layout,
                   layout == Layout::PaddedBshd      ? kRowPadding
                   : layout == Layout::UnalignedBshd ? kUnalignedRowPadding
                                                     : 0) {}

DeviceTensor::DeviceTensor(DType dtype, std::vector<int64_t> shape, Layout layout, int64_t row_padding)
    : dtype_(dtype), shape_(std::move(shape)), strides_(shape_.size()), numel_(1), storage_elements_(1),
      base_offset_(layout == Layout::OffsetBshd ? kUnalignedBaseOffset : 0), storage_(0) {
    for (int64_t e : shape_) numel_ *= e;
    // Memory order of the dimensions, outermost first: BHSD swaps S (1) and H (2).
    std::vector<int> order(shape_.size());
    for (std::size_t d = 0; d < order.size(); ++d) order[d] = int(d);
    if (layout == Layout::Bhsd && shape_.size() == 4) std::swap(order[1], order[2]);
    int64_t stride = 1;
    for (std::size_t o = order.size(); o-- > 0;) {
        strides_[order[o]] = stride;
        stride *= shape_[order[o]] + (o + 1 == order.size() ? row_padding : 0);
    }
    storage_elements_ = base_offset_ + stride;
    storage_ = DeviceBuffer<uint8_t>(std::size_t(storage_elements_) * element_size(dtype));
}

uint8_t* DeviceTensor::first_element() const { return storage_.get() + base_offset_ * element_size(dtype_); }

TensorView DeviceTensor::view() const {
    TensorView t = make_contiguous_view(first_element(), dtype_, shape_, Device::CUDA, current_device());
    for (std::size_t d = 0; d < shape_.size(); ++d) t.strides[d] = strides_[d];
    return t;
}

void DeviceTensor::fill_normal(uint64_t seed) {
    gpu_fill_normal(dtype_, storage_.get(), storage_elements_, seed);  // padding too: never NaN
    synchronize(nullptr);
}

std::vector<int64_t> DeviceTensor::storage_offsets() const {
    std::vector<int64_t> offsets(static_cast<std::size_t>(numel_));
    std::vector<int64_t> index(shape_.size(), 0);  // odometer over the logical shape
    int64_t offset = base_offset_;
    for (int64_t n = 0; n < numel_; ++n) {
        offsets[std::size_t(n)] = offset;
        for (std::size_t d = shape_.size(); d-- > 0;) {
            offset += strides_[d];
            if (++index[d] < shape_[d]) break;
            offset -= strides_[d] * shape_[d];
            index[d] = 0;
        }
    }
    return offsets;
}

std::vector<double> DeviceTensor::values() const {
    const std::vector<uint8_t> raw = bytes();
    const std::vector<int64_t> offsets = storage_offsets();
    std::vector<double> out(offsets.size());
    for (std::size_t n = 0; n < offsets.size(); ++n) out[n] = cpu::load_element(dtype_, raw.data(), offsets[n]);
    return out;
}

int64_t DeviceTensor::padding_written() const {
    if (storage_elements_ == numel_) return 0;
    std::vector<uint8_t> in_view(std::size_t(storage_elements_), 0);
    for (int64_t offset : storage_offsets()) in_view[std::size_t(offset)] = 1;
    const std::vector<uint8_t> raw = bytes();
    const std::size_t size = element_size(dtype_);
    int64_t written = 0;
    for (std::size_t e = 0; e < in_view.size(); ++e)
        if (!in_view[e])
            written += std::any_of(raw.begin() + e * size, raw.begin() + (e + 1) * size, [](uint8_t b) { return b != 0xFF; });
    return written;
}

DeviceBuffer<float> DeviceTensor::to_float() const {
    if (shape_.size() != 4) throw Error(ErrorCode::InvalidArgument, "tensor", "to_float() takes rank-4 tensors");
    DeviceBuffer<float> out(static_cast<std::size_t>(numel_));
    gpu_to_float(dtype_, first_element(), shape_.data(), strides_.data(), out.get());
    synchronize(nullptr);
    return out;
}

DeviceMask::DeviceMask(TestMask& mask, const AttentionSizes& s) {
    host_view = mask.mask_view(s);
    device_view = host_view;
    if (!mask.indices) return;
    indices.emplace(mask.indices->storage);
    TensorView t = mask.indices->view();
    t.data = indices->get();
    t.device = Device::CUDA;
    t.device_index = current_device();
    view = t;
    device_view.indices = indices->get();
}

std::string GpuCase::describe() const {
    std::ostringstream s;
    s << sizes.describe() << " " << flashmask::to_string(dtype) << " " << to_string(layout)
      << (gradient_layout ? std::string(", gradients ") + to_string(*gradient_layout) : std::string()) << " scale "
      << (scale ? std::to_string(*scale) : "default") << (backward ? (deterministic ? " +backward(deterministic)" : " +backward") : "")
      << (stream ? " on a created stream" : "")
      << (key_order == KeyOrder::Sorted ? ", keys sorted" : key_order == KeyOrder::Natural ? ", keys in order" : "");
    return s.str();
}

void check_gpu_attention(const GpuCase& c, TestMask& mask, std::mt19937_64& rng) {
    const AttentionSizes& s = c.sizes;
    const bool float64 = use_float64(c);
    SCOPED_TRACE(mask.name + (mask.causal ? " (causal)" : "") + " " + c.describe() +
                 (float64 ? ", float64 CPU reference" : ", float32 GPU reference"));
    ASSERT_EQ(s.head_dim, s.value_dim) << "the CUDA kernels take Dv == D only";
    const DeviceMask device_mask(mask, s);
    Inputs in(s, c.dtype, c.layout, rng);
    const std::vector<int64_t> q_shape{s.batch, s.nq, s.q_heads, s.head_dim}, kv_shape{s.batch, s.nk, s.kv_heads, s.head_dim},
        lse_shape{s.batch, s.q_heads, s.nq};
    DeviceTensor out(c.dtype, q_shape, c.layout),
        lse(DType::Float32, lse_shape, Layout::Bshd, c.layout == Layout::Bshd ? 0 : kLseRowPadding);
    out.poison();
    lse.poison();
    auto set_shared_args = [&](auto& args) {
        args.q = in.q.view(), args.k = in.k.view(), args.v = in.v.view(), args.out = out.view(), args.lse = lse.view();
        args.startend_row_indices = device_mask.view;
        args.causal = mask.causal;
        args.scale = c.scale;
        args.stream = c.stream;
        args.key_order = c.key_order;
    };
    ForwardArgs fa;
    set_shared_args(fa);
    forward(fa);
    synchronize(c.stream);

    // Backward from this forward's O and LSE, before any reference work (so that a fault shows
    // against the call that made it).
    std::optional<DeviceTensor> dq, dk, dv;
    if (c.backward) {
        const Layout gradient_layout = c.gradient_layout.value_or(c.layout);
        dq.emplace(c.dtype, q_shape, gradient_layout), dk.emplace(c.dtype, kv_shape, gradient_layout),
            dv.emplace(c.dtype, kv_shape, gradient_layout);
        auto run_backward = [&](DeviceTensor& gq, DeviceTensor& gk, DeviceTensor& gv) {
            gq.poison(), gk.poison(), gv.poison();
            BackwardArgs ba;
            set_shared_args(ba);
            ba.dout = in.dout.view(), ba.dq = gq.view(), ba.dk = gk.view(), ba.dv = gv.view();
            ba.deterministic = c.deterministic;
            backward(ba);
            synchronize(c.stream);
        };
        run_backward(*dq, *dk, *dv);
        if (c.deterministic) {
            DeviceTensor dq2(c.dtype, q_shape, gradient_layout), dk2(c.dtype, kv_shape, gradient_layout),
                dv2(c.dtype, kv_shape, gradient_layout);
            run_backward(dq2, dk2, dv2);
            EXPECT_TRUE(dq->bytes() == dq2.bytes()) << "deterministic backward: dq differs between two runs";
            EXPECT_TRUE(dk->bytes() == dk2.bytes()) << "deterministic backward: dk differs between two runs";
            EXPECT_TRUE(dv->bytes() == dv2.bytes()) << "deterministic backward: dv differs between two runs";
        }
    }

    const float scale = c.scale ? *c.scale : default_scale(s.head_dim);
    const Reference ref = float64 ? float64_reference(c, device_mask, scale, in.q, in.k, in.v, c.backward ? &in.dout : nullptr)
                                  : float32_reference(c, device_mask, scale, in.q, in.k, in.v, c.backward ? &in.dout : nullptr);

    // Forward: everything written, O within the bound, LSE close, empty rows exactly 0 / -inf.
    const std::vector<double> out_values = out.values(), lse_values = lse.values();
    ASSERT_EQ(count_nan(out_values), 0) << "out not fully written (or NaN)";
    ASSERT_EQ(count_nan(lse_values), 0) << "lse not fully written (or NaN)";
    EXPECT_EQ(out.padding_written(), 0) << "out: elements written between rows (padding of the strided view)";
    EXPECT_EQ(lse.padding_written(), 0) << "lse: elements written between rows (padding of the strided view)";
    expect_within_bound("out", c.dtype, out_values, ref.out, ref.naive_out, q_shape, ref.name);
    int64_t lse_mismatches = 0;
    for (std::size_t n = 0; n < ref.lse.size(); ++n) {
        const double want = ref.lse[n], got = lse_values[n];
        const bool ok = want == -kInf ? got == -kInf : std::abs(got - want) <= kLseTolerance * std::max(1.0, std::abs(want));
        if (!ok && lse_mismatches++ < 5)
            ADD_FAILURE() << "lse" << position(int64_t(n), lse_shape) << " = " << got << ", reference " << want;
    }
    EXPECT_EQ(lse_mismatches, 0) << "lse elements off the reference";
    auto row_sees_nothing = [&](int64_t b, int64_t i, int64_t h) {
        return ref.lse[std::size_t((b * s.q_heads + h) * s.nq + i)] == -kInf;
    };
    expect_zero_rows("out of rows that see no key", out_values, q_shape, row_sees_nothing);
    if (!c.backward) return;

    const std::vector<double> dq_values = dq->values(), dk_values = dk->values(), dv_values = dv->values();
    ASSERT_EQ(count_nan(dq_values), 0) << "dq not fully written (or NaN)";
    ASSERT_EQ(count_nan(dk_values), 0) << "dk not fully written (or NaN)";
    ASSERT_EQ(count_nan(dv_values), 0) << "dv not fully written (or NaN)";
    for (const auto& [name, t] : {std::pair{"dq", &*dq}, std::pair{"dk", &*dk}, std::pair{"dv", &*dv}})
        EXPECT_EQ(t->padding_written(), 0) << name << ": elements written between rows (padding of the strided view)";
    expect_within_bound("dq", c.dtype, dq_values, ref.dq, ref.naive_dq, q_shape, ref.name);
    expect_within_bound("dk", c.dtype, dk_values, ref.dk, ref.naive_dk, kv_shape, ref.name);
    expect_within_bound("dv", c.dtype, dv_values, ref.dv, ref.naive_dv, kv_shape, ref.name);
    expect_zero_rows("dq of rows that see no key", dq_values, q_shape, row_sees_nothing);
    auto key_unseen = [&](int64_t b, int64_t j, int64_t kvh) {
        return ref.key_unseen[std::size_t((b * s.nk + j) * s.kv_heads + kvh)] != 0;
    };
    expect_zero_rows("dk of keys no row sees", dk_values, kv_shape, key_unseen);
    expect_zero_rows("dv of keys no row sees", dv_values, kv_shape, key_unseen);
}

void check_gpu_reference(const AttentionSizes& s, DType dtype, TestMask& mask, std::mt19937_64& rng) {
    GpuCase c{s, dtype};
    SCOPED_TRACE(mask.name + (mask.causal ? " (causal)" : "") + " " + c.describe());
    const DeviceMask device_mask(mask, s);
    Inputs in(s, dtype, Layout::Bshd, rng);
    const float scale = default_scale(s.head_dim);
    const Reference want = float64_reference(c, device_mask, scale, in.q, in.k, in.v, &in.dout);
    const Reference got = float32_reference(c, device_mask, scale, in.q, in.k, in.v, &in.dout);
    const std::vector<int64_t> q_shape{s.batch, s.nq, s.q_heads, s.head_dim}, kv_shape{s.batch, s.nk, s.kv_heads, s.head_dim};
    const struct {
        const char* name;
        const std::vector<double>&got, &want, &got_naive, &want_naive;
        const std::vector<int64_t>& shape;
    } tensors[] = {{"out", got.out, want.out, got.naive_out, want.naive_out, q_shape},
                   {"dq", got.dq, want.dq, got.naive_dq, want.naive_dq, q_shape},
                   {"dk", got.dk, want.dk, got.naive_dk, want.naive_dk, kv_shape},
                   {"dv", got.dv, want.dv, got.naive_dv, want.naive_dv, kv_shape}};
    for (const auto& t : tensors) {
        ASSERT_EQ(count_nan(t.got), 0) << t.name << ": NaN in the GPU reference";
        const double error = cpu::relative_error(t.got, t.want);
        EXPECT_LT(error, kGpuReferenceBound) << t.name << ": GPU reference off the float64 one by " << error
                                             << worst_element(t.got, t.want, t.shape);
        const double naive_error = cpu::relative_error(t.want_naive, t.want);
        const double disagreement = cpu::relative_error(t.got_naive, t.want_naive);
        EXPECT_LE(disagreement, kNaiveAgreementFraction * std::max(naive_error, cpu::unit_roundoff(dtype)))
            << t.name << ": GPU naive " << to_string(dtype) << " computation off the CPU one by " << disagreement
            << " (the naive error itself is " << naive_error << ")" << worst_element(t.got_naive, t.want_naive, t.shape);
    }
    int64_t lse_mismatches = 0;
    for (std::size_t n = 0; n < want.lse.size(); ++n) {
        const bool ok = want.lse[n] == -kInf ? got.lse[n] == -kInf
                                             : std::abs(got.lse[n] - want.lse[n]) <= kGpuReferenceBound * std::max(1.0, std::abs(want.lse[n]));
        lse_mismatches += !ok;
    }
    EXPECT_EQ(lse_mismatches, 0) << "GPU reference lse elements off the float64 one";
    EXPECT_EQ(got.key_unseen, want.key_unseen) << "GPU reference: keys that no row sees differ from reference_masked()";
}

}  // namespace flashmask::testing
