// Running attention for the flashmask tool: the problem's host tensors (random inputs,
// poisoned outputs), their device copies, and timed forward/backward passes through the public
// API, split into chunks over batch and KV heads on the CPU so that long runs show progress.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <iterator>
#include <chrono>
#include <cmath>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "cli_args.hpp"
#include "cli_format.hpp"
#include "cli_progress.hpp"
#include "cli_tensors.hpp"
#include "flashmask/api.hpp"
#include "flashmask/mask.hpp"

#if FLASHMASK_WITH_CUDA
#include <cuda_runtime.h>

#include "cuda/common/check.hpp"
#endif

namespace flashmask::cli {

namespace fm = ::flashmask;

#if FLASHMASK_WITH_CUDA
inline constexpr bool kBuiltWithCuda = true;
#else
inline constexpr bool kBuiltWithCuda = false;
#endif

inline constexpr int kCudaWarmupRuns = 3;

// How a GPU pass is timed (--timing). Synced: each pass starts on an idle GPU and is waited for,
// so the host's launch sequence is inside its time: a call's latency. Queued: the passes are
// issued back to back and timed by the events between them, with the host ahead of the GPU: a
// call's throughput, what bench/bench_attention.py measures (bench/NOTES.md, session 25: a masked
// call's launches left the GPU idle for tens of microseconds between them in a single call).
enum class GpuTiming { Synced, Queued };

// The share of memory (host RAM, or the GPU's free memory) the tensors may take: the rest is
// left to the check's buffers or the kernels' scratch, and to everything else on the machine.
inline constexpr double kUsableMemoryFraction = 0.8;

// The CPU run is split into at most this many pieces (over batch and KV heads) so that
// progress can be shown; each piece is one library call on strided sub-views.
inline constexpr int64_t kMaxChunks = 64;

// Streams of the counter-based random inputs (cli_tensors.hpp): one per tensor.
enum InputStream : uint64_t { kStreamQ = 1, kStreamK, kStreamV, kStreamDout, kStreamRows };

struct Shape {
    int64_t batch = 1, nq = 0, nk = 0, q_heads = 1, kv_heads = 1, head_dim = 0;
    int64_t group() const { return q_heads / kv_heads; }  // query heads per KV head
};

struct Problem {
    Shape shape;
    fm::DType dtype = fm::DType::BFloat16;
    fm::MaskSpec mask;
    float scale = 1.0f;
    HostTensor mask_indices;  // [B, 1, Nk, C]: the catalogue mask repeated for every batch
    HostTensor q, k, v, out, lse, dout, dq, dk, dv;

    // The mask as the reference reads it for a one-batch, one-KV-group sub-problem.
    fm::MaskView group_mask_view() const {
        return fm::make_mask_view(mask.view(), mask.causal, shape.nq, shape.nk, shape.group());
    }
};

inline double bytes_needed(const Shape& s, fm::DType dtype, bool backward, int32_t slots) {
    const double e = double(fm::element_size(dtype));
    const double q = double(s.batch) * double(s.nq) * double(s.q_heads) * double(s.head_dim);
    const double kv = double(s.batch) * double(s.nk) * double(s.kv_heads) * double(s.head_dim);
    const double lse = double(s.batch) * double(s.q_heads) * double(s.nq) * 4.0;
    const double mask = double(s.batch) * double(s.nk) * double(slots) * 4.0;
    const double forward = e * (2 * q + 2 * kv) + lse + mask;  // q, out, k, v
    return backward ? forward + e * (2 * q + 2 * kv) : forward;  // dout, dq, dk, dv
}

inline double physical_memory_bytes() {
    const long pages = sysconf(_SC_PHYS_PAGES), page_size = sysconf(_SC_PAGE_SIZE);
    return pages > 0 && page_size > 0 ? double(pages) * double(page_size) : std::numeric_limits<double>::infinity();
}

// Refuses, before anything is allocated or printed, a problem whose tensors would not fit.
inline void check_memory(const Shape& s, fm::DType dtype, bool backward, int32_t slots) {
    const double needed = bytes_needed(s, dtype, backward, slots);
    if (needed > kUsableMemoryFraction * physical_memory_bytes())
        throw UsageError(format("the tensors need %.1f GiB, more than this machine's %.1f GiB of memory allows; "
                                "lower --batch, --seqlen, --heads or --dim",
                                needed / double(1ull << 30), physical_memory_bytes() / double(1ull << 30)));
}

// Allocates every tensor, fills the inputs with normals from `seed` and poisons the outputs
// with NaN, so that an element the library never wrote shows up in the check.
inline Problem make_problem(const Shape& s, fm::DType dtype, fm::MaskSpec mask, bool backward, uint64_t seed, int threads,
                            bool show_progress = false) {
    check_memory(s, dtype, backward, mask.slots);
    Problem p;
    p.shape = s;
    p.dtype = dtype;
    p.mask = std::move(mask);
    p.scale = float(1.0 / std::sqrt(double(s.head_dim)));
    if (p.mask.has_indices()) {
        p.mask_indices = HostTensor(fm::DType::Int32, {s.batch, 1, s.nk, p.mask.slots});
        auto* dst = static_cast<int32_t*>(p.mask_indices.data());
        for (int64_t b = 0; b < s.batch; ++b)
            std::copy(p.mask.indices.begin(), p.mask.indices.end(), dst + b * int64_t(p.mask.indices.size()));
    }
    const std::vector<int64_t> q_shape = {s.batch, s.nq, s.q_heads, s.head_dim};
    const std::vector<int64_t> kv_shape = {s.batch, s.nk, s.kv_heads, s.head_dim};
    const float poison = std::numeric_limits<float>::quiet_NaN();
    // Inputs get normals from their own stream of the seed; outputs get NaN poison.
    struct Fill { HostTensor* tensor; std::vector<int64_t> shape; DType dtype; std::optional<uint64_t> stream; const char* name; };
    std::vector<Fill> fills = {{&p.q, q_shape, dtype, kStreamQ, "q"},
                               {&p.k, kv_shape, dtype, kStreamK, "k"},
                               {&p.v, kv_shape, dtype, kStreamV, "v"},
                               {&p.out, q_shape, dtype, std::nullopt, "out"},
                               {&p.lse, {s.batch, s.q_heads, s.nq}, fm::DType::Float32, std::nullopt, "lse"}};
    if (backward) {
        fills.push_back({&p.dout, q_shape, dtype, kStreamDout, "dout"});
        fills.push_back({&p.dq, q_shape, dtype, std::nullopt, "dq"});
        fills.push_back({&p.dk, kv_shape, dtype, std::nullopt, "dk"});
        fills.push_back({&p.dv, kv_shape, dtype, std::nullopt, "dv"});
    }
    std::optional<Progress> progress;
    if (show_progress) progress.emplace("inputs", int64_t(fills.size()));
    for (Fill& f : fills) {
        *f.tensor = HostTensor(f.dtype, f.shape);
        if (f.stream) {
            f.tensor->fill_normal(seed, *f.stream, threads);
        } else {
            f.tensor->fill(poison, threads);
        }
        if (progress) progress->advance(f.name);
    }
    return p;
}

// ---------------------------------------------------------------------------------------------
// Running: the library's forward() / backward() on host or device views
// ---------------------------------------------------------------------------------------------

#if FLASHMASK_WITH_CUDA
// Refuses, before anything is copied to the GPU, a problem whose tensors would not fit in the
// current device's free memory (instead of a cudaMalloc failure halfway through the uploads).
inline void check_device_memory(const Shape& s, fm::DType dtype, bool backward, int32_t slots) {
    std::size_t free_bytes = 0, total_bytes = 0;
    FM_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    const double needed = bytes_needed(s, dtype, backward, slots);
    if (needed > kUsableMemoryFraction * double(free_bytes))
        throw UsageError(format("the tensors need %.1f GiB on the GPU, more than its %.1f GiB free allow; "
                                "lower --batch, --seqlen, --heads or --dim",
                                needed / double(1ull << 30), double(free_bytes) / double(1ull << 30)));
}

// The current CUDA device as the tool prints it: "cuda:0, NVIDIA H100 80GB HBM3" (so that every
// timing says which GPU gave it).
inline std::string cuda_device_description() {
    int device = 0;
    FM_CUDA_CHECK(cudaGetDevice(&device));
    cudaDeviceProp properties{};
    FM_CUDA_CHECK(cudaGetDeviceProperties(&properties, device));
    return format("cuda:%d, %s", device, properties.name);
}

// A CUDA event, destroyed however the timed pass ends (a refusal or a CUDA failure throws).
class CudaEvent {
public:
    CudaEvent() { FM_CUDA_CHECK(cudaEventCreate(&event_)); }
    ~CudaEvent() { (void)cudaEventDestroy(event_); }  // a destructor cannot throw; a failure here leaks one event
    CudaEvent(const CudaEvent&) = delete;
    CudaEvent& operator=(const CudaEvent&) = delete;
    cudaEvent_t get() const { return event_; }

private:
    cudaEvent_t event_ = nullptr;
};

// A device copy of a host tensor; the view describes the device memory.
class DeviceTensor {
public:
    DeviceTensor() = default;
    explicit DeviceTensor(const HostTensor& host) : host_(&host) {
        bytes_ = std::size_t(host.numel()) * fm::element_size(host.dtype());
        FM_CUDA_CHECK(cudaMalloc(&data_, std::max<std::size_t>(bytes_, 1)));
        FM_CUDA_CHECK(cudaMemcpy(data_, host.data(), bytes_, cudaMemcpyHostToDevice));
    }
    DeviceTensor(const DeviceTensor&) = delete;
    DeviceTensor& operator=(const DeviceTensor&) = delete;
    ~DeviceTensor() {
        if (data_) (void)cudaFree(data_);  // a destructor cannot throw
    }
    fm::TensorView view() const {
        fm::TensorView t = host_->view();
        t.data = data_;
        t.device = fm::Device::CUDA;
        FM_CUDA_CHECK(cudaGetDevice(&t.device_index));
        return t;
    }
    void download(HostTensor& host) const {
        FM_CUDA_CHECK(cudaMemcpy(host.data(), data_, bytes_, cudaMemcpyDeviceToHost));
    }

private:
    const HostTensor* host_ = nullptr;
    void* data_ = nullptr;
    std::size_t bytes_ = 0;
};
#endif

// Batches [batch_begin, batch_end) x KV heads [kv_begin, kv_end) with all their query heads:
// a self-contained piece of the problem (dK, dV of those KV heads sum only over them).
struct Chunk {
    int64_t batch_begin, batch_end, kv_begin, kv_end;

    std::string label() const {
        auto range = [](const char* what, int64_t begin, int64_t end) {
            return end - begin == 1 ? format("%s %lld", what, (long long)begin)
                                    : format("%ses %lld-%lld", what, (long long)begin, (long long)end - 1);
        };
        return range("batch", batch_begin, batch_end) + ", " +
               (kv_end - kv_begin == 1 ? format("kv head %lld", (long long)kv_begin)
                                       : format("kv heads %lld-%lld", (long long)kv_begin, (long long)kv_end - 1));
    }
};

inline std::vector<Chunk> make_chunks(const Shape& s, bool split) {
    if (!split) return {{0, s.batch, 0, s.kv_heads}};
    std::vector<Chunk> chunks;
    if (s.batch * s.kv_heads <= kMaxChunks) {
        for (int64_t b = 0; b < s.batch; ++b)
            for (int64_t h = 0; h < s.kv_heads; ++h) chunks.push_back({b, b + 1, h, h + 1});
    } else {
        const int64_t per_chunk = (s.batch + kMaxChunks - 1) / kMaxChunks;
        for (int64_t b = 0; b < s.batch; b += per_chunk) chunks.push_back({b, std::min(s.batch, b + per_chunk), 0, s.kv_heads});
    }
    return chunks;
}

class Executor {
public:
    // `deterministic`: the backward's identical-bits mode (BackwardArgs::deterministic);
    // `key_order`: the CUDA kernels' key order (ForwardArgs::key_order).
    // `gpu_timing`: how GPU passes are timed (the CPU's are wall-clock times).
    Executor(Problem& p, fm::Device device, int threads, bool deterministic, fm::KeyOrder key_order,
             GpuTiming gpu_timing = GpuTiming::Synced)
        : p_(p), device_(device), threads_(threads), deterministic_(deterministic), key_order_(key_order),
          gpu_timing_(gpu_timing) {
        // On the CPU the run is split for progress; a GPU call is one launch, split only at a cost.
        chunks_ = make_chunks(p.shape, device == fm::Device::CPU);
        if (device == fm::Device::CPU) {
            q_ = p.q.view(); k_ = p.k.view(); v_ = p.v.view(); out_ = p.out.view(); lse_ = p.lse.view();
            if (p.dout.numel()) { dout_ = p.dout.view(); dq_ = p.dq.view(); dk_ = p.dk.view(); dv_ = p.dv.view(); }
            if (p.mask.has_indices()) mask_ = p.mask_indices.view();
        } else {
#if FLASHMASK_WITH_CUDA
            check_device_memory(p.shape, p.dtype, p.dout.numel() > 0, p.mask.slots);
            auto upload = [&](HostTensor& host) {
                device_tensors_.emplace_back(&host, std::make_unique<DeviceTensor>(host));
                return device_tensors_.back().second->view();
            };
            q_ = upload(p.q); k_ = upload(p.k); v_ = upload(p.v); out_ = upload(p.out); lse_ = upload(p.lse);
            if (p.dout.numel()) { dout_ = upload(p.dout); dq_ = upload(p.dq); dk_ = upload(p.dk); dv_ = upload(p.dv); }
            if (p.mask.has_indices()) mask_ = upload(p.mask_indices);
#endif
        }
    }

    int64_t chunk_count() const { return int64_t(chunks_.size()); }

    // Whether passes are queued: forward() and backward() then return kQueuedPass, and
    // take_queued_seconds() the passes' times once they ran.
    bool queues_passes() const { return device_ == fm::Device::CUDA && gpu_timing_ == GpuTiming::Queued; }
    static constexpr double kQueuedPass = -1.0;

    // Waits for the passes queued since the last call and returns their seconds, in order.
    std::vector<double> take_queued_seconds() {
        std::vector<double> seconds;
#if FLASHMASK_WITH_CUDA
        if (!queued_.empty()) FM_CUDA_CHECK(cudaEventSynchronize(queued_.back().second->get()));
        for (const auto& [start, stop] : queued_) {
            float milliseconds = 0.0f;
            FM_CUDA_CHECK(cudaEventElapsedTime(&milliseconds, start->get(), stop->get()));
            seconds.push_back(milliseconds * 1e-3);
        }
        queued_.clear();
#endif
        return seconds;
    }

    // One timed forward pass over the whole problem; seconds (kQueuedPass when queued).
    // `step` prefixes each progress line (e.g. "repeat 2/3, ").
    double forward(Progress* progress, const std::string& step = "") {
        return timed_pass<fm::ForwardArgs>(progress, step, [](fm::ForwardArgs& a, const Chunk&) { fm::forward(a); });
    }

    // One timed backward pass (needs a forward pass first: it reads out and lse); seconds.
    double backward(Progress* progress, const std::string& step = "") {
        return timed_pass<fm::BackwardArgs>(progress, step, [&](fm::BackwardArgs& a, const Chunk& c) {
            a.dout = query_heads(dout_, c);
            a.dq = query_heads(dq_, c);
            a.dk = kv_heads(dk_, c);
            a.dv = kv_heads(dv_, c);
            a.deterministic = deterministic_;
            fm::backward(a);
        });
    }

    // Brings the outputs back to the host tensors (a no-op on the CPU).
    void fetch_outputs() {
#if FLASHMASK_WITH_CUDA
        if (device_ != fm::Device::CUDA) return;
        const HostTensor* outputs[] = {&p_.out, &p_.lse, &p_.dq, &p_.dk, &p_.dv};
        for (auto& [host, device] : device_tensors_)
            if (std::find(std::begin(outputs), std::end(outputs), host) != std::end(outputs)) device->download(*host);
#endif
    }

private:
    // Chunk c's part of a [B, N, Hq, X] tensor (its batches and the query heads of its KV heads) ...
    fm::TensorView query_heads(const fm::TensorView& t, const Chunk& c) const {
        const int64_t g = p_.shape.group();
        return slice_bshd(t, c.batch_begin, c.batch_end, c.kv_begin * g, c.kv_end * g);
    }
    // ... and of a [B, N, Hk, X] tensor (its batches and KV heads).
    fm::TensorView kv_heads(const fm::TensorView& t, const Chunk& c) const {
        return slice_bshd(t, c.batch_begin, c.batch_end, c.kv_begin, c.kv_end);
    }

    // Times one pass: for each chunk, the arguments forward and backward share (q, k, v, out,
    // lse, the mask and the options), then `call(args, chunk)`, which adds its own and runs.
    template <typename Args, typename Call>
    double timed_pass(Progress* progress, const std::string& step, Call call) {
        return timed([&] {
            for (const Chunk& c : chunks_) {
                Args a;
                const int64_t g = p_.shape.group();
                a.q = query_heads(q_, c);
                a.k = kv_heads(k_, c);
                a.v = kv_heads(v_, c);
                a.out = query_heads(out_, c);
                a.lse = slice_bhn(lse_, c.batch_begin, c.batch_end, c.kv_begin * g, c.kv_end * g);
                if (mask_) a.startend_row_indices = slice_dim(*mask_, 0, c.batch_begin, c.batch_end);
                a.causal = p_.mask.causal;
                a.scale = p_.scale;
                a.num_threads = threads_;
                a.key_order = key_order_;
                call(a, c);
                if (progress) progress->advance(step + c.label());
            }
        });
    }

    // Seconds of one pass. On the GPU: CUDA events around the calls, on the legacy default
    // stream where the calls run (their `stream` is left null); waiting for the end event also
    // brings any asynchronous kernel failure back here, as a CudaError (queued: in
    // take_queued_seconds()).
    template <typename Body>
    double timed(Body body) {
#if FLASHMASK_WITH_CUDA
        if (queues_passes()) {
            queued_.emplace_back(std::make_unique<CudaEvent>(), std::make_unique<CudaEvent>());
            FM_CUDA_CHECK(cudaEventRecord(queued_.back().first->get()));
            body();
            FM_CUDA_CHECK(cudaEventRecord(queued_.back().second->get()));
            return kQueuedPass;
        }
        if (device_ == fm::Device::CUDA) {
            const CudaEvent start, stop;
            FM_CUDA_CHECK(cudaEventRecord(start.get()));
            body();
            FM_CUDA_CHECK(cudaEventRecord(stop.get()));
            FM_CUDA_CHECK(cudaEventSynchronize(stop.get()));
            float milliseconds = 0.0f;
            FM_CUDA_CHECK(cudaEventElapsedTime(&milliseconds, start.get(), stop.get()));
            return milliseconds * 1e-3;
        }
#endif
        const auto start = std::chrono::steady_clock::now();
        body();
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    }

    Problem& p_;
    fm::Device device_;
    int threads_;
    bool deterministic_;
    fm::KeyOrder key_order_;
    GpuTiming gpu_timing_;
    std::vector<Chunk> chunks_;
    fm::TensorView q_, k_, v_, out_, lse_, dout_, dq_, dk_, dv_;
    std::optional<fm::TensorView> mask_;
#if FLASHMASK_WITH_CUDA
    std::vector<std::pair<HostTensor*, std::unique_ptr<DeviceTensor>>> device_tensors_;  // host -> its device copy
    std::vector<std::pair<std::unique_ptr<CudaEvent>, std::unique_ptr<CudaEvent>>> queued_;  // each queued pass's events
#endif
};

inline double median(std::vector<double> values) {
    std::sort(values.begin(), values.end());
    const std::size_t n = values.size();
    return n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

struct Timing {
    std::vector<double> seconds;
    double median_seconds = 0.0;
};

// Warm-up (GPU only) and `repeats` timed passes of forward or backward, with progress.
inline Timing time_passes(Executor& executor, fm::Device device, bool backward, int64_t repeats) {
    const char* label = backward ? "backward" : "forward";
    if (device == fm::Device::CUDA)
        for (int i = 0; i < kCudaWarmupRuns; ++i) backward ? executor.backward(nullptr) : executor.forward(nullptr);
    (void)executor.take_queued_seconds();  // the warm-up's, when queued: done before the timed passes
    Timing t;
    Progress progress(label, repeats * executor.chunk_count());
    for (int64_t r = 0; r < repeats; ++r) {
        const std::string step = repeats > 1 ? format("repeat %lld/%lld, ", (long long)r + 1, (long long)repeats) : "";
        t.seconds.push_back(backward ? executor.backward(&progress, step) : executor.forward(&progress, step));
    }
    if (executor.queues_passes()) t.seconds = executor.take_queued_seconds();
    progress.finish();
    t.median_seconds = median(t.seconds);
    return t;
}

}  // namespace flashmask::cli
