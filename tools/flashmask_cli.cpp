// flashmask: the command-line tool. Builds a catalogue mask (SPEC §3), prints its density and
// tile counts (SPEC §4), runs attention forward (and backward) on the GPU when there is one,
// else on the CPU, times it, reports effective TFLOP/s (SPEC §6), and with --check compares
// against the float64 reference (SPEC §5).
//
//   flashmask run   --mask NAME --seqlen N [options]   attention, timing, optional check
//   flashmask tiles --mask NAME --seqlen N [options]   mask, density and tile counts only
//
// Exit status: 0 success, 1 a --check failed, 2 a bad argument or a refused input (one line
// on stderr, "flashmask: error: ...").
#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <limits>
#include <new>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

#include "cli_args.hpp"
#include "cli_check.hpp"
#include "cli_npy.hpp"
#include "cli_progress.hpp"
#include "cli_tensors.hpp"
#include "cpu/reference.hpp"
#include "cpu/tiled.hpp"
#include "flashmask/api.hpp"
#include "flashmask/mask.hpp"

#if FLASHMASK_WITH_CUDA
#include <cuda_runtime.h>

#include "cuda/common/check.hpp"
#endif

namespace fm = flashmask;
using namespace flashmask::cli;

namespace {

#if FLASHMASK_WITH_CUDA
constexpr bool kBuiltWithCuda = true;
#else
constexpr bool kBuiltWithCuda = false;
#endif

constexpr int kExitSuccess = 0;
constexpr int kExitCheckFailed = 1;
constexpr int kExitUsage = 2;

// Tile counts are printed for the CPU path's blocks (the tiles its kernels skip or mask).
constexpr int32_t kDefaultBlockM = fm::cpu::kBlockM;
constexpr int32_t kDefaultBlockN = fm::cpu::kBlockN;

constexpr int64_t kMaxSequenceLength = std::numeric_limits<int32_t>::max();  // int32 row indices
constexpr int64_t kMaxCount = std::numeric_limits<int32_t>::max();           // batch, heads, dim

// CPU runs are long: one timed run unless asked. GPU runs are short: warm up, then a median.
constexpr int64_t kCpuDefaultRepeats = 1;
constexpr int64_t kCudaDefaultRepeats = 20;
constexpr int kCudaWarmupRuns = 3;
constexpr int64_t kMaxRepeats = 100000;

// The CPU run is split into at most this many pieces (over batch and KV heads) so that
// progress can be shown; each piece is one library call on strided sub-views.
constexpr int64_t kMaxChunks = 64;

// --check: forward rows sampled per checked (batch, KV head) group, and the float64 work
// (multiply-adds) the check may spend, a few seconds of the reference on one core. A backward
// check that would cost more runs on a reduced problem of the same kind.
constexpr int64_t kCheckRows = 64;
constexpr double kCheckBudgetMultiplyAdds = 1e10;
// The reference backward (scores, P.V recomputed, dP, dS.K, dS^T.Q) plus the naive in-dtype
// emulation, in units of one forward pass over the same pairs.
constexpr double kBackwardCheckCostFactor = 6.0;
// LSE is float32 whatever the input dtype; SPEC §5 bounds O, dQ, dK, dV only. Our tolerance
// for LSE: |lse - ref| <= kLseTolerance * max(1, |ref|), and -inf exactly where ref is -inf.
constexpr double kLseTolerance = 1e-4;

// SPEC §6: effective FLOPs count visible pairs only; backward is 2.5x forward.
constexpr double kForwardFlopsPerPairPerDim = 4.0;
constexpr double kBackwardFlopsFactor = 2.5;

// Streams of the counter-based random inputs (cli_tensors.hpp): one per tensor.
enum InputStream : uint64_t { kStreamQ = 1, kStreamK, kStreamV, kStreamDout, kStreamRows };

// ---------------------------------------------------------------------------------------------
// Small formatting helpers
// ---------------------------------------------------------------------------------------------

std::string format(const char* fmt, auto... args) {
    char buffer[512];
    std::snprintf(buffer, sizeof buffer, fmt, args...);
    return buffer;
}

// 12345678 -> "12,345,678"
std::string with_commas(int64_t value) {
    std::string digits = std::to_string(value < 0 ? -value : value), out;
    for (std::size_t i = 0; i < digits.size(); ++i) {
        if (i && (digits.size() - i) % 3 == 0) out += ',';
        out += digits[i];
    }
    return value < 0 ? "-" + out : out;
}

std::string format_seconds(double seconds) {
    if (seconds < 1e-3) return format("%.1f us", seconds * 1e6);
    if (seconds < 1.0) return format("%.3f ms", seconds * 1e3);
    return format("%.3f s", seconds);
}

std::string join_numbers(const std::vector<int64_t>& values) {
    std::string out;
    for (std::size_t i = 0; i < values.size(); ++i) out += (i ? " " : "") + std::to_string(values[i]);
    return out;
}

std::string json_string(const std::string& s) {
    std::string out = "\"";
    for (char c : s) {
        if (c == '"' || c == '\\') out += '\\';
        if (c == '\n') { out += "\\n"; continue; }
        out += c;
    }
    return out + "\"";
}

std::string json_number(double value) {
    if (!std::isfinite(value)) return "null";
    return format("%.6g", value);
}

// A flat, ordered JSON object; values are already JSON text.
struct JsonObject {
    std::vector<std::pair<std::string, std::string>> fields;
    JsonObject& add(const std::string& key, const std::string& json) { fields.emplace_back(key, json); return *this; }
    JsonObject& text(const std::string& key, const std::string& value) { return add(key, json_string(value)); }
    JsonObject& number(const std::string& key, double value) { return add(key, json_number(value)); }
    JsonObject& integer(const std::string& key, int64_t value) { return add(key, std::to_string(value)); }
    JsonObject& boolean(const std::string& key, bool value) { return add(key, value ? "true" : "false"); }
    std::string str() const {
        std::string out = "{";
        for (std::size_t i = 0; i < fields.size(); ++i)
            out += (i ? ", " : "") + json_string(fields[i].first) + ": " + fields[i].second;
        return out + "}";
    }
};

std::string json_array(const std::vector<std::string>& items) {
    std::string out = "[";
    for (std::size_t i = 0; i < items.size(); ++i) out += (i ? ", " : "") + items[i];
    return out + "]";
}

// ---------------------------------------------------------------------------------------------
// The mask
// ---------------------------------------------------------------------------------------------

std::string mask_names_list() { return ParsedArgs::join(fm::catalogue_names(), ", "); }

void check_mask_name(const std::string& name) {
    const auto& names = fm::catalogue_names();
    if (std::find(names.begin(), names.end(), name) == names.end())
        throw UsageError("--mask: unknown mask '" + name + "' (expected one of: " + mask_names_list() + ")");
}

// The Nq x Nk mask the tool runs. The catalogue defines square masks; for Nq != Nk the tool
// takes the bottom-right Nq x Nk corner of the N x N catalogue mask, N = max(Nq, Nk): the
// queries are the last Nq rows (a prefill chunk or decoding step over a longer context), or
// the keys the last Nk columns. That is the alignment SPEC §2 gives `causal`, so the corner's
// own causal diagonal is the square mask's.
fm::MaskSpec catalogue_corner(const std::string& name, int64_t nq, int64_t nk, uint64_t seed) {
    const int64_t n = std::max(nq, nk);
    fm::MaskSpec square = fm::catalogue_mask(name, n, seed);
    if (nq == nk) return square;
    fm::MaskSpec corner;
    corner.causal = square.causal;
    corner.nq = nq;
    corner.nk = nk;
    corner.slots = square.slots;
    if (!square.has_indices()) return corner;
    const int64_t row_offset = n - nq, column_offset = n - nk;  // one of the two is 0
    corner.indices.resize(std::size_t(nk * corner.slots));
    for (int64_t j = 0; j < nk; ++j)
        for (int32_t slot = 0; slot < corner.slots; ++slot) {
            // A masked row interval [a, b) of the square is [a - offset, b - offset) of the corner,
            // clamped to its rows; every slot value is a row bound, so each shifts alike.
            const int64_t value = square.indices[std::size_t((j + column_offset) * square.slots + slot)];
            corner.indices[std::size_t(j * corner.slots + slot)] = int32_t(std::clamp<int64_t>(value - row_offset, 0, nq));
        }
    return corner;
}

// The natural parameters of a catalogue mask, in words.
std::string describe_parameters(const std::string& name, int64_t n, uint64_t seed) {
    if (name == "full" || name == "causal") return "none";
    const fm::CatalogueParameters p = fm::catalogue_parameters(n, seed);
    const std::string documents = std::to_string(p.document_lengths.size()) + " documents, lengths " +
                                  join_numbers(p.document_lengths);
    if (name == "sliding_window") return "window " + std::to_string(p.window);
    if (name == "causal_document" || name == "document") return documents;
    if (name == "causal_blockwise") return documents + " (the last sees all earlier ones)";
    if (name == "global_sliding_window")
        return std::to_string(p.global_tokens) + " global tokens, window " + std::to_string(p.window);
    if (name == "prefix_lm_causal") return "prefix " + std::to_string(p.prefix_length);
    if (name == "prefix_lm_document") return documents + "; prefixes " + join_numbers(p.prefix_lengths);
    if (name == "share_question") {
        std::string out = documents + "; question + answers:";
        for (std::size_t d = 0; d < p.question_lengths.size(); ++d)
            out += " " + std::to_string(p.question_lengths[d]) + "+(" + join_numbers(p.answer_lengths[d]) + ")";
        return out;
    }
    if (name == "qk_sparse") {
        std::string out = std::to_string(p.dropped_spans.size()) + " dropped spans:";
        for (const auto& span : p.dropped_spans) out += format(" [%lld, %lld)", (long long)span.start, (long long)span.end);
        return out;
    }
    if (name == "random_eviction") return "eviction rows uniform in [j + 1, N], seed " + std::to_string(p.eviction_seed);
    return "";
}

// Density and tile counts of a mask, summed over `heads` (batch, query head) pairs.
struct MaskStats {
    int64_t heads = 1, nq = 0, nk = 0;
    int64_t visible_pairs = 0;
    double density = 0.0;
    int32_t block_m = 0, block_n = 0;
    fm::TileCounts tiles;
};

MaskStats mask_stats(const fm::MaskView& view, int32_t batch, int32_t q_heads, int32_t block_m, int32_t block_n) {
    MaskStats st;
    st.heads = int64_t(batch) * q_heads;
    st.nq = view.nq;
    st.nk = view.nk;
    st.visible_pairs = fm::visible_pairs(view, batch, q_heads);
    st.density = double(st.visible_pairs) / (double(st.heads) * double(view.nq) * double(view.nk));
    st.block_m = block_m;
    st.block_n = block_n;
    st.tiles = fm::count_tiles(view, batch, q_heads, block_m, block_n);
    return st;
}

double percent(int64_t part, int64_t total) { return total ? 100.0 * double(part) / double(total) : 0.0; }

void print_stats(const MaskStats& st, const std::string& block_origin) {
    const std::string scope = st.heads == 1 ? "per head" : "over " + with_commas(st.heads) + " (batch, query head) pairs";
    std::printf("density      %.4f (%s of %s pairs visible %s)\n", st.density, with_commas(st.visible_pairs).c_str(),
                with_commas(st.heads * st.nq * st.nk).c_str(), scope.c_str());
    const int64_t total = st.tiles.total();
    std::printf("tiles        %d x %d blocks (%s), %s tile%s %s\n", st.block_m, st.block_n, block_origin.c_str(),
                with_commas(total).c_str(), total == 1 ? "" : "s", scope.c_str());
    const std::string width = std::to_string(std::max<std::size_t>(1, with_commas(total).size()));
    const std::string row = "               %-8s %" + width + "s  %5.1f %%\n";
    std::printf(row.c_str(), "skipped", with_commas(st.tiles.skipped).c_str(), percent(st.tiles.skipped, total));
    std::printf(row.c_str(), "partial", with_commas(st.tiles.partial).c_str(), percent(st.tiles.partial, total));
    std::printf(row.c_str(), "full", with_commas(st.tiles.full).c_str(), percent(st.tiles.full, total));
}

void add_stats_json(JsonObject& j, const MaskStats& st) {
    j.integer("heads_counted", st.heads).integer("visible_pairs", st.visible_pairs).number("density", st.density);
    JsonObject tiles;
    tiles.integer("block_m", st.block_m).integer("block_n", st.block_n).integer("total", st.tiles.total());
    tiles.integer("skipped", st.tiles.skipped).integer("partial", st.tiles.partial).integer("full", st.tiles.full);
    j.add("tiles", tiles.str());
}

// A catalogue mask and its statistics per (batch, head): the mask is the same for every one.
struct MaskReport {
    std::string name, parameters, corner_note;
    fm::MaskSpec spec;
    MaskStats stats;
};

MaskReport analyse_mask(const std::string& name, int64_t nq, int64_t nk, uint64_t seed, int32_t block_m,
                        int32_t block_n) {
    MaskReport r;
    r.name = name;
    r.spec = catalogue_corner(name, nq, nk, seed);
    r.parameters = describe_parameters(name, std::max(nq, nk), seed);
    if (nq != nk)
        r.corner_note = format("bottom-right %lld x %lld corner of the %lld x %lld mask", (long long)nq, (long long)nk,
                               (long long)std::max(nq, nk), (long long)std::max(nq, nk));
    r.stats = mask_stats(r.spec.mask_view(), 1, 1, block_m, block_n);
    return r;
}

void print_mask_report(const MaskReport& r, const std::string& block_origin) {
    const fm::MaskSpec& m = r.spec;
    const std::string layout = m.has_indices() ? "C = " + std::to_string(m.slots) : std::string("no index tensor");
    std::printf("mask         %s (causal = %s, %s)\n", r.name.c_str(), m.causal ? "true" : "false", layout.c_str());
    std::printf("parameters   %s\n", r.parameters.c_str());
    if (!r.corner_note.empty()) std::printf("             %s\n", r.corner_note.c_str());
    std::printf("sizes        Nq = %lld, Nk = %lld\n", (long long)m.nq, (long long)m.nk);
    print_stats(r.stats, block_origin);
}

JsonObject mask_json(const MaskReport& r) {
    JsonObject j;
    j.text("name", r.name).boolean("causal", r.spec.causal).integer("slots", r.spec.slots);
    j.text("parameters", r.parameters).integer("nq", r.spec.nq).integer("nk", r.spec.nk);
    if (!r.corner_note.empty()) j.text("corner", r.corner_note);
    add_stats_json(j, r.stats);
    return j;
}

// ---------------------------------------------------------------------------------------------
// The attention problem: shapes, host tensors
// ---------------------------------------------------------------------------------------------

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

double bytes_needed(const Shape& s, fm::DType dtype, bool backward, int32_t slots) {
    const double e = double(fm::element_size(dtype));
    const double q = double(s.batch) * double(s.nq) * double(s.q_heads) * double(s.head_dim);
    const double kv = double(s.batch) * double(s.nk) * double(s.kv_heads) * double(s.head_dim);
    const double lse = double(s.batch) * double(s.q_heads) * double(s.nq) * 4.0;
    const double mask = double(s.batch) * double(s.nk) * double(slots) * 4.0;
    const double forward = e * (2 * q + 2 * kv) + lse + mask;  // q, out, k, v
    return backward ? forward + e * (2 * q + 2 * kv) : forward;  // dout, dq, dk, dv
}

double physical_memory_bytes() {
    const long pages = sysconf(_SC_PHYS_PAGES), page_size = sysconf(_SC_PAGE_SIZE);
    return pages > 0 && page_size > 0 ? double(pages) * double(page_size) : std::numeric_limits<double>::infinity();
}

// Allocates every tensor, fills the inputs with normals from `seed` and poisons the outputs
// with NaN, so that an element the library never wrote shows up in the check.
// Refuses, before anything is allocated or printed, a problem whose tensors would not fit.
void check_memory(const Shape& s, fm::DType dtype, bool backward, int32_t slots) {
    const double needed = bytes_needed(s, dtype, backward, slots);
    // Leave room for the check's own buffers and the rest of the machine.
    constexpr double kUsableMemoryFraction = 0.8;
    if (needed > kUsableMemoryFraction * physical_memory_bytes())
        throw UsageError(format("the tensors need %.1f GiB, more than this machine's %.1f GiB of memory allows; "
                                "lower --batch, --seqlen, --heads or --dim",
                                needed / double(1ull << 30), physical_memory_bytes() / double(1ull << 30)));
}

Problem make_problem(const Shape& s, fm::DType dtype, fm::MaskSpec mask, bool backward, uint64_t seed, int threads) {
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
    p.q = HostTensor(dtype, {s.batch, s.nq, s.q_heads, s.head_dim});
    p.k = HostTensor(dtype, {s.batch, s.nk, s.kv_heads, s.head_dim});
    p.v = HostTensor(dtype, {s.batch, s.nk, s.kv_heads, s.head_dim});
    p.out = HostTensor(dtype, {s.batch, s.nq, s.q_heads, s.head_dim});
    p.lse = HostTensor(fm::DType::Float32, {s.batch, s.q_heads, s.nq});
    p.q.fill_normal(seed, kStreamQ, threads);
    p.k.fill_normal(seed, kStreamK, threads);
    p.v.fill_normal(seed, kStreamV, threads);
    const float poison = std::numeric_limits<float>::quiet_NaN();
    p.out.fill(poison, threads);
    p.lse.fill(poison, threads);
    if (backward) {
        p.dout = HostTensor(dtype, {s.batch, s.nq, s.q_heads, s.head_dim});
        p.dq = HostTensor(dtype, {s.batch, s.nq, s.q_heads, s.head_dim});
        p.dk = HostTensor(dtype, {s.batch, s.nk, s.kv_heads, s.head_dim});
        p.dv = HostTensor(dtype, {s.batch, s.nk, s.kv_heads, s.head_dim});
        p.dout.fill_normal(seed, kStreamDout, threads);
        p.dq.fill(poison, threads);
        p.dk.fill(poison, threads);
        p.dv.fill(poison, threads);
    }
    return p;
}

// ---------------------------------------------------------------------------------------------
// Running: the library's forward() / backward() on host or device views
// ---------------------------------------------------------------------------------------------

#if FLASHMASK_WITH_CUDA
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
        if (data_) cudaFree(data_);
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

std::vector<Chunk> make_chunks(const Shape& s, bool split) {
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
    Executor(Problem& p, fm::Device device, int threads) : p_(p), device_(device), threads_(threads) {
        // On the CPU the run is split for progress; a GPU call is one launch, split only at a cost.
        chunks_ = make_chunks(p.shape, device == fm::Device::CPU);
        if (device == fm::Device::CPU) {
            q_ = p.q.view(); k_ = p.k.view(); v_ = p.v.view(); out_ = p.out.view(); lse_ = p.lse.view();
            if (p.dout.numel()) { dout_ = p.dout.view(); dq_ = p.dq.view(); dk_ = p.dk.view(); dv_ = p.dv.view(); }
            if (p.mask.has_indices()) mask_ = p.mask_indices.view();
        } else {
#if FLASHMASK_WITH_CUDA
            auto upload = [&](const HostTensor& host) {
                device_tensors_.push_back(std::make_unique<DeviceTensor>(host));
                return device_tensors_.back()->view();
            };
            q_ = upload(p.q); k_ = upload(p.k); v_ = upload(p.v); out_ = upload(p.out); lse_ = upload(p.lse);
            if (p.dout.numel()) { dout_ = upload(p.dout); dq_ = upload(p.dq); dk_ = upload(p.dk); dv_ = upload(p.dv); }
            if (p.mask.has_indices()) mask_ = upload(p.mask_indices);
#endif
        }
    }

    int64_t chunk_count() const { return int64_t(chunks_.size()); }

    // One timed forward pass over the whole problem; seconds.
    double forward(Progress* progress) {
        return timed([&] {
            for (const Chunk& c : chunks_) {
                fm::ForwardArgs a;
                const int64_t g = p_.shape.group();
                a.q = slice_bshd(q_, c.batch_begin, c.batch_end, c.kv_begin * g, c.kv_end * g);
                a.k = slice_bshd(k_, c.batch_begin, c.batch_end, c.kv_begin, c.kv_end);
                a.v = slice_bshd(v_, c.batch_begin, c.batch_end, c.kv_begin, c.kv_end);
                a.out = slice_bshd(out_, c.batch_begin, c.batch_end, c.kv_begin * g, c.kv_end * g);
                a.lse = slice_bhn(lse_, c.batch_begin, c.batch_end, c.kv_begin * g, c.kv_end * g);
                if (mask_) a.startend_row_indices = slice_dim(*mask_, 0, c.batch_begin, c.batch_end);
                a.causal = p_.mask.causal;
                a.scale = p_.scale;
                a.num_threads = threads_;
                fm::forward(a);
                if (progress) progress->advance(c.label());
            }
        });
    }

    // One timed backward pass (needs a forward pass first: it reads out and lse); seconds.
    double backward(Progress* progress) {
        return timed([&] {
            for (const Chunk& c : chunks_) {
                fm::BackwardArgs a;
                const int64_t g = p_.shape.group();
                a.q = slice_bshd(q_, c.batch_begin, c.batch_end, c.kv_begin * g, c.kv_end * g);
                a.k = slice_bshd(k_, c.batch_begin, c.batch_end, c.kv_begin, c.kv_end);
                a.v = slice_bshd(v_, c.batch_begin, c.batch_end, c.kv_begin, c.kv_end);
                a.out = slice_bshd(out_, c.batch_begin, c.batch_end, c.kv_begin * g, c.kv_end * g);
                a.lse = slice_bhn(lse_, c.batch_begin, c.batch_end, c.kv_begin * g, c.kv_end * g);
                a.dout = slice_bshd(dout_, c.batch_begin, c.batch_end, c.kv_begin * g, c.kv_end * g);
                a.dq = slice_bshd(dq_, c.batch_begin, c.batch_end, c.kv_begin * g, c.kv_end * g);
                a.dk = slice_bshd(dk_, c.batch_begin, c.batch_end, c.kv_begin, c.kv_end);
                a.dv = slice_bshd(dv_, c.batch_begin, c.batch_end, c.kv_begin, c.kv_end);
                if (mask_) a.startend_row_indices = slice_dim(*mask_, 0, c.batch_begin, c.batch_end);
                a.causal = p_.mask.causal;
                a.scale = p_.scale;
                a.num_threads = threads_;
                fm::backward(a);
                if (progress) progress->advance(c.label());
            }
        });
    }

    // Brings the outputs back to the host tensors (a no-op on the CPU).
    void fetch_outputs() {
#if FLASHMASK_WITH_CUDA
        if (device_ != fm::Device::CUDA) return;
        // The device tensors were uploaded in this order: q, k, v, out, lse, [dout, dq, dk, dv].
        device_tensors_[3]->download(p_.out);
        device_tensors_[4]->download(p_.lse);
        if (p_.dout.numel()) {
            device_tensors_[6]->download(p_.dq);
            device_tensors_[7]->download(p_.dk);
            device_tensors_[8]->download(p_.dv);
        }
#endif
    }

private:
    template <typename Body>
    double timed(Body body) {
#if FLASHMASK_WITH_CUDA
        if (device_ == fm::Device::CUDA) {
            cudaEvent_t start, stop;
            FM_CUDA_CHECK(cudaEventCreate(&start));
            FM_CUDA_CHECK(cudaEventCreate(&stop));
            FM_CUDA_CHECK(cudaEventRecord(start));
            body();
            FM_CUDA_CHECK(cudaEventRecord(stop));
            FM_CUDA_CHECK(cudaEventSynchronize(stop));
            float milliseconds = 0.0f;
            FM_CUDA_CHECK(cudaEventElapsedTime(&milliseconds, start, stop));
            cudaEventDestroy(start);
            cudaEventDestroy(stop);
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
    std::vector<Chunk> chunks_;
    fm::TensorView q_, k_, v_, out_, lse_, dout_, dq_, dk_, dv_;
    std::optional<fm::TensorView> mask_;
#if FLASHMASK_WITH_CUDA
    std::vector<std::unique_ptr<DeviceTensor>> device_tensors_;
#endif
};

double median(std::vector<double> values) {
    std::sort(values.begin(), values.end());
    const std::size_t n = values.size();
    return n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

struct Timing {
    std::vector<double> seconds;
    double median_seconds = 0.0;
};

// Warm-up (GPU only) and `repeats` timed passes of forward or backward, with progress.
Timing time_passes(Executor& executor, fm::Device device, bool backward, int64_t repeats) {
    const char* label = backward ? "backward" : "forward";
    if (device == fm::Device::CUDA)
        for (int i = 0; i < kCudaWarmupRuns; ++i) backward ? executor.backward(nullptr) : executor.forward(nullptr);
    Timing t;
    Progress progress(label, repeats * executor.chunk_count());
    for (int64_t r = 0; r < repeats; ++r) t.seconds.push_back(backward ? executor.backward(&progress) : executor.forward(&progress));
    progress.finish();
    t.median_seconds = median(t.seconds);
    return t;
}

// ---------------------------------------------------------------------------------------------
// The check (SPEC §5)
// ---------------------------------------------------------------------------------------------

struct CheckLine {
    std::string tensor;
    double error = 0.0, bound = 0.0;
    std::optional<double> naive_error;  // 16-bit inputs: the naive in-dtype error behind the bound
    bool pass = false;
};

struct CheckSection {
    std::string pass;   // "forward" or "backward"
    std::string scope;  // what was compared, in words
    std::vector<CheckLine> lines;
};

struct Group {
    int64_t batch, kv_head;
};

// The (batch, KV head) groups the check compares: the first and, when different, the last,
// so that batch and head offsets are exercised.
std::vector<Group> check_groups(const Shape& s) {
    std::vector<Group> groups{{0, 0}};
    if (s.batch > 1 || s.kv_heads > 1) groups.push_back({s.batch - 1, s.kv_heads - 1});
    return groups;
}

std::string describe_groups(const Shape& s, const std::vector<Group>& groups) {
    std::string out;
    for (std::size_t i = 0; i < groups.size(); ++i)
        out += (i ? " and " : "") + format("(batch %lld, kv head %lld)", (long long)groups[i].batch, (long long)groups[i].kv_head);
    return out + format(", %lld query head%s each", (long long)s.group(), s.group() == 1 ? "" : "s");
}

// Sorted, distinct rows: the first and last, and random others from the seed.
std::vector<int32_t> sample_rows(int64_t nq, uint64_t seed) {
    std::vector<int32_t> rows;
    if (nq <= kCheckRows) {
        for (int64_t i = 0; i < nq; ++i) rows.push_back(int32_t(i));
        return rows;
    }
    std::vector<char> chosen(std::size_t(nq), 0);
    chosen[0] = chosen[std::size_t(nq - 1)] = 1;
    int64_t count = 2;
    for (uint64_t draw = 0; count < kCheckRows; ++draw) {
        const int64_t row = int64_t(mix64(seed ^ mix64(kStreamRows + draw)) % uint64_t(nq));
        if (!chosen[std::size_t(row)]) { chosen[std::size_t(row)] = 1; ++count; }
    }
    for (int64_t i = 0; i < nq; ++i)
        if (chosen[std::size_t(i)]) rows.push_back(int32_t(i));
    return rows;
}

// The doubles of one group of a problem, in the reference's layout.
struct GroupInputs {
    std::vector<double> q, k, v, dout;
    CheckInputs view;

    GroupInputs(const Problem& p, const Group& g, bool backward) {
        const int64_t heads = p.shape.group(), h0 = g.kv_head * heads;
        q = bshd_to_double(p.q, g.batch, h0, h0 + heads);
        k = bshd_to_double(p.k, g.batch, g.kv_head, g.kv_head + 1);
        v = bshd_to_double(p.v, g.batch, g.kv_head, g.kv_head + 1);
        if (backward) dout = bshd_to_double(p.dout, g.batch, h0, h0 + heads);
        const Shape& s = p.shape;
        view.shape = {1, int32_t(s.nq), int32_t(s.nk), int32_t(heads), 1, int32_t(s.head_dim), int32_t(s.head_dim)};
        view.q = q.data();
        view.k = k.data();
        view.v = v.data();
        view.dout = backward ? dout.data() : nullptr;
    }
};

CheckLine finish_line(const std::string& tensor, fm::DType dtype, const ErrorAccumulator& error,
                      const ErrorAccumulator& naive) {
    CheckLine line;
    line.tensor = tensor;
    line.error = error.relative();
    if (dtype != fm::DType::Float32) line.naive_error = naive.relative();
    line.bound = spec_bound(dtype, naive.relative());
    line.pass = line.error <= line.bound;
    return line;
}

// Forward: sampled rows of the check groups of the timed run's own outputs.
CheckSection check_forward(const Problem& p, uint64_t seed) {
    const Shape& s = p.shape;
    const std::vector<Group> groups = check_groups(s);
    const std::vector<int32_t> rows = sample_rows(s.nq, seed);
    const int64_t heads = s.group(), d = s.head_dim;
    const fm::MaskView mask = p.group_mask_view();
    ErrorAccumulator out_error, naive_error;
    double lse_worst = 0.0;
    bool lse_infinities_match = true;
    for (const Group& g : groups) {
        const GroupInputs in(p, g, false);
        const fm::cpu::ReferenceForward ref =
            fm::cpu::reference_forward(in.view.shape, mask, p.scale, in.q.data(), in.k.data(), in.v.data(), &rows);
        const int64_t h0 = g.kv_head * heads;
        const std::vector<double> out = bshd_to_double(p.out, g.batch, h0, h0 + heads);
        const std::vector<double> lse = bhn_to_double(p.lse, g.batch, h0, h0 + heads);
        std::vector<double> naive;
        if (p.dtype != fm::DType::Float32) naive = naive_forward_rows(in.view, mask, p.dtype, p.scale, rows);
        for (int32_t row : rows)
            for (int64_t h = 0; h < heads; ++h) {
                for (int64_t e = 0; e < d; ++e) {
                    const std::size_t i = std::size_t((row * heads + h) * d + e);
                    out_error.add(out[i], ref.out[i]);
                    if (!naive.empty()) naive_error.add(naive[i], ref.out[i]);
                }
                const std::size_t li = std::size_t(h * s.nq + row);
                const double ours = lse[li], expected = ref.lse[li];
                if (std::isinf(expected) || std::isinf(ours) || std::isnan(ours)) {
                    lse_infinities_match = lse_infinities_match && ours == expected;
                } else {
                    lse_worst = std::max(lse_worst, std::abs(ours - expected) / std::max(1.0, std::abs(expected)));
                }
            }
    }
    CheckSection section;
    section.pass = "forward";
    section.scope = format("%s; %lld of %lld rows", describe_groups(s, groups).c_str(), (long long)rows.size(),
                           (long long)s.nq);
    section.lines.push_back(finish_line("out", p.dtype, out_error, naive_error));
    CheckLine lse_line;
    lse_line.tensor = "lse";
    lse_line.error = lse_infinities_match ? lse_worst : std::numeric_limits<double>::infinity();
    lse_line.bound = kLseTolerance;
    lse_line.pass = lse_infinities_match && lse_worst <= kLseTolerance;
    section.lines.push_back(lse_line);
    return section;
}

// Backward: every row of the given groups, dQ of their query heads, dK and dV of their KV head.
std::vector<CheckLine> compare_backward(const Problem& p, const std::vector<Group>& groups) {
    const int64_t heads = p.shape.group();
    const fm::MaskView mask = p.group_mask_view();
    ErrorAccumulator error[3], naive_error[3];
    for (const Group& g : groups) {
        const GroupInputs in(p, g, true);
        const fm::cpu::ReferenceBackward ref = fm::cpu::reference_backward(in.view.shape, mask, p.scale, in.q.data(),
                                                                           in.k.data(), in.v.data(), in.dout.data());
        fm::cpu::ReferenceBackward naive;
        if (p.dtype != fm::DType::Float32) naive = naive_backward(in.view, mask, p.dtype, p.scale);
        const int64_t h0 = g.kv_head * heads;
        const std::vector<double> ours[3] = {bshd_to_double(p.dq, g.batch, h0, h0 + heads),
                                             bshd_to_double(p.dk, g.batch, g.kv_head, g.kv_head + 1),
                                             bshd_to_double(p.dv, g.batch, g.kv_head, g.kv_head + 1)};
        const std::vector<double>* refs[3] = {&ref.dq, &ref.dk, &ref.dv};
        const std::vector<double>* naives[3] = {&naive.dq, &naive.dk, &naive.dv};
        for (int t = 0; t < 3; ++t)
            for (std::size_t i = 0; i < ours[t].size(); ++i) {
                error[t].add(ours[t][i], (*refs[t])[i]);
                if (!naives[t]->empty()) naive_error[t].add((*naives[t])[i], (*refs[t])[i]);
            }
    }
    const char* names[3] = {"dq", "dk", "dv"};
    std::vector<CheckLine> lines;
    for (int t = 0; t < 3; ++t) lines.push_back(finish_line(names[t], p.dtype, error[t], naive_error[t]));
    return lines;
}

// Multiply-adds of the reference backward (plus the naive emulation) over one group.
double backward_check_cost(const Shape& s) {
    return kBackwardCheckCostFactor * double(s.group()) * double(s.nq) * double(s.nk) * 2.0 * double(s.head_dim);
}

struct RunSettings {
    std::string mask_name;
    Shape shape;
    fm::DType dtype = fm::DType::BFloat16;
    fm::Device device = fm::Device::CPU;
    bool backward = false, check = false, json = false;
    uint64_t seed = 0;
    int64_t repeats = 1;
    int threads = 0;
    int32_t block_m = kDefaultBlockM, block_n = kDefaultBlockN;
    std::string device_note;  // why --device auto did not pick cuda on a machine with a GPU
};

// The backward check of the timed run when the reference can afford it; otherwise the same
// mask kind, dtype, head dim and GQA group on the largest halved sequence length it can
// afford, run through the library on the same device.
CheckSection check_backward(const Problem& p, const RunSettings& settings) {
    CheckSection section;
    section.pass = "backward";
    std::vector<Group> groups = check_groups(p.shape);
    const double per_group = backward_check_cost(p.shape);
    if (per_group * double(groups.size()) > kCheckBudgetMultiplyAdds) groups.resize(1);
    if (per_group <= kCheckBudgetMultiplyAdds) {
        section.scope = describe_groups(p.shape, groups) + "; every row";
        section.lines = compare_backward(p, groups);
        return section;
    }
    Shape reduced = p.shape;
    reduced.batch = 1;
    reduced.q_heads = p.shape.group();
    reduced.kv_heads = 1;
    const int64_t n = std::max(p.shape.nq, p.shape.nk);
    int64_t reduced_n = n;
    while (reduced_n > 1 && backward_check_cost(reduced) > kCheckBudgetMultiplyAdds) {
        reduced_n /= 2;
        reduced.nq = std::max<int64_t>(1, p.shape.nq * reduced_n / n);
        reduced.nk = std::max<int64_t>(1, p.shape.nk * reduced_n / n);
    }
    Problem small = make_problem(reduced, p.dtype, catalogue_corner(settings.mask_name, reduced.nq, reduced.nk, settings.seed),
                                 true, mix64(settings.seed), settings.threads);
    Executor executor(small, settings.device, settings.threads);
    executor.forward(nullptr);
    executor.backward(nullptr);
    executor.fetch_outputs();
    section.scope = format("a reduced %s problem, Nq = %lld, Nk = %lld, batch 1, kv head 0 with its %lld "
                           "query head%s, fresh inputs (the full size would cost the reference ~%.0f G multiply-adds)",
                           settings.mask_name.c_str(), (long long)reduced.nq, (long long)reduced.nk,
                           (long long)reduced.q_heads, reduced.q_heads == 1 ? "" : "s", per_group / 1e9);
    section.lines = compare_backward(small, {{0, 0}});
    if (small.dq.has_nan(settings.threads) || small.dk.has_nan(settings.threads) || small.dv.has_nan(settings.threads)) {
        CheckLine unwritten{"unwritten (reduced)", 1.0, 0.0, std::nullopt, false};
        section.lines.push_back(unwritten);
    }
    return section;
}

// ---------------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------------

const std::vector<OptionSpec>& mask_options() {
    static const std::vector<OptionSpec> specs = {
        {"mask", "NAME", "catalogue mask (SPEC §3): one of the names listed below"},
        {"seqlen", "N", "query sequence length Nq"},
        {"seqlen-k", "NK", "key sequence length Nk (default: N)"},
        {"seed", "S", "seed of the mask's random parameters and of the inputs (default: fresh, printed)"},
        {"block-m", "M", "query rows per tile for the tile counts (default: " + std::to_string(kDefaultBlockM) + ", the CPU path's)"},
        {"block-n", "N", "keys per tile for the tile counts (default: " + std::to_string(kDefaultBlockN) + ", the CPU path's)"},
        {"json", "", "print one JSON object instead of the table"},
    };
    return specs;
}

const std::vector<OptionSpec>& run_options() {
    static const std::vector<OptionSpec> specs = [] {
        std::vector<OptionSpec> list = mask_options();
        const std::vector<OptionSpec> more = {
            {"batch", "B", "batch size (default: 1)"},
            {"heads", "H", "query heads Hq (default: 8)"},
            {"kv-heads", "HK", "key/value heads Hk, dividing Hq (default: Hq)"},
            {"dim", "D", "head dim of q, k and v (default: 128)"},
            {"dtype", "bf16|fp16|fp32", "input dtype (default: bf16)"},
            {"device", "auto|cpu|cuda", "where to run; auto = cuda when usable, else cpu (default: auto)"},
            {"backward", "", "also run and time the backward pass"},
            {"check", "", "compare with the float64 reference (SPEC §5); exit status 1 on FAIL"},
            {"repeats", "R", "timed passes, median reported (default: 1 on cpu, 20 on cuda)"},
            {"threads", "T", "CPU threads (default: 0 = all)"},
        };
        list.insert(list.end(), more.begin(), more.end());
        return list;
    }();
    return specs;
}

const std::vector<OptionSpec>& validate_options() {
    static const std::vector<OptionSpec> specs = {
        {"indices", "FILE", "startend_row_indices as a NumPy .npy file, int32 [B, Hm, Nk, C] (numpy.save)"},
        {"seqlen", "N", "query sequence length Nq (row indices must lie in [0, Nq])"},
        {"causal", "", "the mask is causal (C = 1 or 2); without it C = 2 or 4"},
        {"seqlen-k", "NK", "key sequence length Nk (default: the file's dimension 2)"},
        {"batch", "B", "batch size (default: the file's dimension 0)"},
        {"heads", "H", "query heads Hq (default: the file's dimension 1)"},
        {"kv-heads", "HK", "key/value heads Hk, dividing Hq (default: Hq)"},
        {"block-m", "M", "query rows per tile for the tile counts (default: " + std::to_string(kDefaultBlockM) + ")"},
        {"block-n", "N", "keys per tile for the tile counts (default: " + std::to_string(kDefaultBlockN) + ")"},
        {"json", "", "print one JSON object instead of the table"},
    };
    return specs;
}

void print_main_help() {
    std::printf(
        "flashmask: exact attention with FlashMask column-interval masks.\n\n"
        "usage:\n"
        "  flashmask run   --mask NAME --seqlen N [options]   run attention, time it, optionally --check it\n"
        "  flashmask tiles --mask NAME --seqlen N [options]   print the mask's density and tile counts only\n"
        "  flashmask validate --indices FILE --seqlen N [options]\n"
        "                                                     check a startend_row_indices tensor (SPEC §2)\n"
        "  flashmask --help | flashmask COMMAND --help\n\n"
        "masks: %s\n\n"
        "exit status: 0 success, 1 a --check failed, 2 a bad argument or a refused input\n",
        mask_names_list().c_str());
}

void print_command_help(const std::string& command) {
    if (command == "validate") {
        std::printf("usage: flashmask validate --indices FILE --seqlen N [options]\n\n"
                    "Checks a startend_row_indices tensor against an attention problem as forward() would\n"
                    "(dtype, rank, C for --causal, B, Hm in {1, Hk, Hq}, Nk, then every value in [0, Nq]) and\n"
                    "prints its density and tile counts. A refused tensor is one line on stderr, exit status 2.\n\n"
                    "options:\n%s",
                    options_help(validate_options()).c_str());
        return;
    }
    const bool run = command == "run";
    std::printf("usage: flashmask %s --mask NAME --seqlen N [options]\n\n", command.c_str());
    std::printf("%s\n\n", run ? "Builds the mask, prints its density and tile counts, runs attention forward (and "
                                "backward)\non the GPU when there is one, else the CPU, prints the median time and "
                                "effective TFLOP/s\n(SPEC §6: 4*D*Hq*visible pairs forward, 2.5x that backward) and, "
                                "with --check, the error\nagainst the float64 reference on a sample of rows."
                              : "Builds the mask and prints its density and tile counts (no attention is run).");
    std::printf("options:\n%s\n", options_help(run ? run_options() : mask_options()).c_str());
    std::printf("masks: %s\n", mask_names_list().c_str());
    std::printf("With --seqlen-k NK != N the mask is the bottom-right N x NK corner of the catalogue mask of\n"
                "size max(N, NK) (the alignment of causal).\n");
}

struct MaskArgs {
    std::string name;
    int64_t nq, nk;
    uint64_t seed;
    int32_t block_m, block_n;
};

uint64_t fresh_seed() {
    std::random_device device;
    return (uint64_t(device()) << 32) ^ uint64_t(device());
}

MaskArgs parse_mask_args(const ParsedArgs& args) {
    MaskArgs m;
    m.name = args.required_text("mask");
    check_mask_name(m.name);
    if (!args.has("seqlen")) throw UsageError("option '--seqlen' is required (see --help)");
    m.nq = args.integer("seqlen", 0, 1, kMaxSequenceLength);
    m.nk = args.integer("seqlen-k", m.nq, 1, kMaxSequenceLength);
    const auto seed_text = args.text("seed");
    m.seed = seed_text ? ParsedArgs::parse_unsigned("seed", *seed_text) : fresh_seed();
    m.block_m = int32_t(args.integer("block-m", kDefaultBlockM, 1, kMaxSequenceLength));
    m.block_n = int32_t(args.integer("block-n", kDefaultBlockN, 1, kMaxSequenceLength));
    return m;
}

std::string block_origin(const MaskArgs& m) {
    return m.block_m == kDefaultBlockM && m.block_n == kDefaultBlockN ? "the CPU path's blocks" : "--block-m x --block-n";
}

int command_tiles(const std::vector<std::string>& argv) {
    const ParsedArgs args(mask_options(), argv);
    const MaskArgs m = parse_mask_args(args);
    const MaskReport report = analyse_mask(m.name, m.nq, m.nk, m.seed, m.block_m, m.block_n);
    if (args.has("json")) {
        JsonObject j;
        j.text("command", "tiles").add("mask", mask_json(report).str()).add("seed", std::to_string(m.seed));
        std::printf("%s\n", j.str().c_str());
    } else {
        print_mask_report(report, block_origin(m));
        std::printf("seed         %" PRIu64 "\n", m.seed);
    }
    return kExitSuccess;
}

fm::DType parse_dtype(const ParsedArgs& args) {
    const std::string name = args.choice("dtype", "bf16", {"bf16", "fp16", "fp32", "bfloat16", "float16", "float32"});
    if (name == "bf16" || name == "bfloat16") return fm::DType::BFloat16;
    if (name == "fp16" || name == "float16") return fm::DType::Float16;
    return fm::DType::Float32;
}

const char* short_dtype(fm::DType dtype) {
    return dtype == fm::DType::BFloat16 ? "bf16" : dtype == fm::DType::Float16 ? "fp16" : "fp32";
}

// Why the library cannot run this dtype and head dim on the GPU, or nullopt when it can. A GPU
// alone is not enough: the build may lack kernels for it, so a one-token forward pass is tried.
std::optional<std::string> cuda_unusable_reason(fm::DType dtype, int64_t head_dim) {
    if (!fm::cuda_available())
        return std::string(kBuiltWithCuda ? "no usable CUDA device was found" : "this build of flashmask has no CUDA support");
#if FLASHMASK_WITH_CUDA
    try {
        Shape one_token;
        one_token.nq = one_token.nk = 1;
        one_token.head_dim = head_dim;
        Problem probe = make_problem(one_token, dtype, fm::full_mask(1), false, 0, 1);
        Executor(probe, fm::Device::CUDA, 1).forward(nullptr);
    } catch (const fm::Error& e) {
        return std::string(e.what());
    }
#else
    (void)dtype;
    (void)head_dim;
#endif
    return std::nullopt;
}

// --device: cpu, cuda (refused with the reason when the GPU path cannot run), or auto (cuda
// when it can, else cpu; `note` says why not).
fm::Device parse_device(const ParsedArgs& args, fm::DType dtype, int64_t head_dim, std::string& note) {
    const std::string name = args.choice("device", "auto", {"auto", "cpu", "cuda"});
    if (name == "cpu") return fm::Device::CPU;
    const std::optional<std::string> reason = cuda_unusable_reason(dtype, head_dim);
    if (!reason) return fm::Device::CUDA;
    if (name == "cuda") throw UsageError("--device cuda: " + *reason);
    if (fm::cuda_available()) note = "cuda not used: " + *reason;
    return fm::Device::CPU;
}

RunSettings parse_run_args(const ParsedArgs& args, MaskArgs& m) {
    RunSettings r;
    m = parse_mask_args(args);
    r.mask_name = m.name;
    r.seed = m.seed;
    r.block_m = m.block_m;
    r.block_n = m.block_n;
    Shape& s = r.shape;
    s.nq = m.nq;
    s.nk = m.nk;
    s.batch = args.integer("batch", 1, 1, kMaxCount);
    s.q_heads = args.integer("heads", 8, 1, kMaxCount);
    s.kv_heads = args.integer("kv-heads", s.q_heads, 1, kMaxCount);
    if (s.q_heads % s.kv_heads != 0)
        throw UsageError(format("--heads %lld is not divisible by --kv-heads %lld (grouped-query attention needs Hq %% Hk == 0)",
                                (long long)s.q_heads, (long long)s.kv_heads));
    s.head_dim = args.integer("dim", 128, 1, kMaxCount);
    r.dtype = parse_dtype(args);
    r.threads = int(args.integer("threads", 0, 0, 1 << 16));
    r.backward = args.has("backward");
    r.check = args.has("check");
    r.json = args.has("json");
    r.device = parse_device(args, r.dtype, s.head_dim, r.device_note);
    const int64_t default_repeats = r.device == fm::Device::CUDA ? kCudaDefaultRepeats : kCpuDefaultRepeats;
    r.repeats = args.integer("repeats", default_repeats, 1, kMaxRepeats);
    return r;
}

void print_checks(const std::vector<CheckSection>& sections, fm::DType dtype, bool all_written, bool pass) {
    std::printf("\ncheck against the float64 reference (SPEC §5)\n");
    for (const CheckSection& section : sections) std::printf("  %-9s %s\n", (section.pass + ":").c_str(), section.scope.c_str());
    const std::string naive_header = dtype == fm::DType::Float32 ? "" : std::string("naive ") + short_dtype(dtype);
    std::printf("\n  %-9s %-6s %11s %11s %11s  %s\n", "pass", "tensor", "rel. error", "bound", naive_header.c_str(), "result");
    for (const CheckSection& section : sections)
        for (std::size_t i = 0; i < section.lines.size(); ++i) {
            const CheckLine& line = section.lines[i];
            const std::string naive = line.naive_error ? format("%.2e", *line.naive_error) : std::string("");
            std::printf("  %-9s %-6s %11.2e %11.2e %11s  %s\n", i ? "" : section.pass.c_str(), line.tensor.c_str(),
                        line.error, line.bound, naive.c_str(), line.pass ? "PASS" : "FAIL");
        }
    std::printf("  every output element written (no NaN poison left): %s\n", all_written ? "yes" : "NO");
    std::printf("%s\n", pass ? "PASS" : "FAIL");
}

JsonObject check_json(const CheckSection& section) {
    std::vector<std::string> lines;
    for (const CheckLine& line : section.lines) {
        JsonObject l;
        l.text("tensor", line.tensor).number("relative_error", line.error).number("bound", line.bound);
        if (line.naive_error) l.number("naive_error", *line.naive_error);
        l.boolean("pass", line.pass);
        lines.push_back(l.str());
    }
    JsonObject j;
    j.text("pass", section.pass).text("scope", section.scope).add("tensors", json_array(lines));
    return j;
}

int command_run(const std::vector<std::string>& argv) {
    const ParsedArgs args(run_options(), argv);
    MaskArgs mask_args;
    const RunSettings settings = parse_run_args(args, mask_args);
    const Shape& s = settings.shape;
    const MaskReport report = analyse_mask(settings.mask_name, s.nq, s.nk, settings.seed, settings.block_m, settings.block_n);
    check_memory(s, settings.dtype, settings.backward, report.spec.slots);
    const int cpu_threads = fm::cpu::worker_count(settings.threads, std::numeric_limits<int32_t>::max());
    const std::string device_text = settings.device == fm::Device::CPU
                                        ? format("cpu, %d thread%s", cpu_threads, cpu_threads == 1 ? "" : "s")
                                        : std::string("cuda");
    if (!settings.json) {
        print_mask_report(report, block_origin(mask_args));
        std::printf("problem      batch %lld, query heads %lld, kv heads %lld, head dim %lld, %s\n", (long long)s.batch,
                    (long long)s.q_heads, (long long)s.kv_heads, (long long)s.head_dim, fm::to_string(settings.dtype));
        std::printf("device       %s\n", device_text.c_str());
        if (!settings.device_note.empty()) std::printf("             (%s)\n", settings.device_note.c_str());
        std::printf("seed         %" PRIu64 "\n", settings.seed);
        std::fflush(stdout);
    }

    Problem problem = make_problem(s, settings.dtype, report.spec, settings.backward, settings.seed, settings.threads);
    Executor executor(problem, settings.device, settings.threads);
    const double pairs = double(report.stats.visible_pairs) * double(s.batch) * double(s.q_heads);
    const double forward_flops = kForwardFlopsPerPairPerDim * double(s.head_dim) * pairs;
    struct Pass { const char* name; Timing timing; double flops; };
    std::vector<Pass> passes;
    passes.push_back({"forward", time_passes(executor, settings.device, false, settings.repeats), forward_flops});
    if (settings.backward)
        passes.push_back({"backward", time_passes(executor, settings.device, true, settings.repeats),
                          kBackwardFlopsFactor * forward_flops});

    if (!settings.json) {
        std::printf("\n%-10s %14s %12s   (median of %lld)\n", "pass", "time", "TFLOP/s", (long long)settings.repeats);
        for (const Pass& p : passes)
            std::printf("%-10s %14s %12.4g\n", p.name, format_seconds(p.timing.median_seconds).c_str(),
                        p.flops / p.timing.median_seconds / 1e12);
        std::fflush(stdout);
    }

    std::vector<CheckSection> checks;
    bool all_written = true;
    if (settings.check) {
        executor.fetch_outputs();
        const int t = settings.threads;
        all_written = !problem.out.has_nan(t) && !problem.lse.has_nan(t) &&
                      (!settings.backward || (!problem.dq.has_nan(t) && !problem.dk.has_nan(t) && !problem.dv.has_nan(t)));
        checks.push_back(check_forward(problem, settings.seed));
        if (settings.backward) checks.push_back(check_backward(problem, settings));
    }
    bool pass = all_written;
    for (const CheckSection& c : checks)
        for (const CheckLine& line : c.lines) pass = pass && line.pass;

    if (settings.json) {
        JsonObject j;
        j.text("command", "run").add("mask", mask_json(report).str());
        JsonObject shape;
        shape.integer("batch", s.batch).integer("nq", s.nq).integer("nk", s.nk).integer("q_heads", s.q_heads);
        shape.integer("kv_heads", s.kv_heads).integer("head_dim", s.head_dim);
        j.add("problem", shape.str()).text("dtype", short_dtype(settings.dtype));
        j.text("device", fm::to_string(settings.device));
        if (settings.device == fm::Device::CPU) j.integer("threads", cpu_threads);
        if (!settings.device_note.empty()) j.text("device_note", settings.device_note);
        j.add("seed", std::to_string(settings.seed)).integer("repeats", settings.repeats);
        std::vector<std::string> pass_json;
        for (const Pass& p : passes) {
            JsonObject o;
            o.text("pass", p.name).number("median_seconds", p.timing.median_seconds).number("effective_flops", p.flops);
            o.number("tflops", p.flops / p.timing.median_seconds / 1e12);
            pass_json.push_back(o.str());
        }
        j.add("timings", json_array(pass_json));
        if (settings.check) {
            std::vector<std::string> check_items;
            for (const CheckSection& c : checks) check_items.push_back(check_json(c).str());
            j.add("check", json_array(check_items)).boolean("outputs_written", all_written).boolean("pass", pass);
        }
        std::printf("%s\n", j.str().c_str());
    } else if (settings.check) {
        print_checks(checks, settings.dtype, all_written, pass);
    }
    return settings.check && !pass ? kExitCheckFailed : kExitSuccess;
}

int command_validate(const std::vector<std::string>& argv) {
    const ParsedArgs args(validate_options(), argv);
    const std::string path = args.required_text("indices");
    if (!args.has("seqlen")) throw UsageError("option '--seqlen' is required (see --help)");
    const int64_t nq = args.integer("seqlen", 0, 1, kMaxSequenceLength);
    const bool causal = args.has("causal");
    const int32_t block_m = int32_t(args.integer("block-m", kDefaultBlockM, 1, kMaxSequenceLength));
    const int32_t block_n = int32_t(args.integer("block-n", kDefaultBlockN, 1, kMaxSequenceLength));

    NpyArray array = read_npy(path, "--indices");
    constexpr int kIndicesRank = 4;  // [B, Hm, Nk, C]
    if (array.shape.size() > std::size_t(kIndicesRank))
        throw UsageError(format("--indices %s: a rank-%zu array; startend_row_indices is [B, Hm, Nk, C]", path.c_str(),
                                array.shape.size()));
    const auto dtype = npy_dtype(array.descr);
    if (!dtype)
        throw UsageError("--indices " + path + ": dtype '" + array.descr +
                         "' is not supported; startend_row_indices must be int32 ('<i4')");
    fm::TensorView view;
    view.data = array.data.data();
    view.dtype = *dtype;
    view.rank = int(array.shape.size());
    int64_t stride = 1;
    for (int d = view.rank - 1; d >= 0; --d) {
        view.shape[d] = array.shape[std::size_t(d)];
        view.strides[d] = stride;
        stride *= view.shape[d];
    }
    // Defaults come from the file, so only what the user states can disagree with it.
    auto file_dim = [&](int d) { return view.rank == kIndicesRank ? std::max<int64_t>(1, view.shape[d]) : 1; };
    const int64_t nk = args.integer("seqlen-k", file_dim(2), 1, kMaxSequenceLength);
    const int64_t batch = args.integer("batch", file_dim(0), 1, kMaxCount);
    const int64_t q_heads = args.integer("heads", file_dim(1), 1, kMaxCount);
    const int64_t kv_heads = args.integer("kv-heads", q_heads, 1, kMaxCount);
    if (q_heads % kv_heads != 0)
        throw UsageError(format("--heads %lld is not divisible by --kv-heads %lld (grouped-query attention needs Hq %% Hk == 0)",
                                (long long)q_heads, (long long)kv_heads));

    fm::check_mask_shape(view, causal, batch, nq, nk, q_heads, kv_heads);
    fm::validate_mask(view, causal, nq);
    const fm::MaskView mask = fm::make_mask_view(view, causal, nq, nk, q_heads);
    const MaskStats stats = mask_stats(mask, int32_t(batch), int32_t(q_heads), block_m, block_n);
    const std::string origin = block_m == kDefaultBlockM && block_n == kDefaultBlockN ? "the CPU path's blocks"
                                                                                      : "--block-m x --block-n";
    if (args.has("json")) {
        JsonObject j;
        j.text("command", "validate").boolean("valid", true).text("shape", fm::shape_string(view)).boolean("causal", causal);
        j.integer("nq", nq).integer("nk", nk).integer("batch", batch).integer("q_heads", q_heads).integer("kv_heads", kv_heads);
        add_stats_json(j, stats);
        std::printf("%s\n", j.str().c_str());
    } else {
        std::printf("valid        startend_row_indices %s int32, causal = %s, C = %lld\n", fm::shape_string(view).c_str(),
                    causal ? "true" : "false", (long long)view.shape[3]);
        std::printf("problem      batch %lld, Nq = %lld, Nk = %lld, query heads %lld, kv heads %lld\n", (long long)batch,
                    (long long)nq, (long long)nk, (long long)q_heads, (long long)kv_heads);
        print_stats(stats, origin);
    }
    return kExitSuccess;
}

int dispatch(const std::vector<std::string>& argv) {
    if (argv.empty()) throw UsageError("missing command (run, tiles or validate; see --help)");
    const std::string& command = argv[0];
    if (command == "--help" || command == "-h" || command == "help") {
        print_main_help();
        return kExitSuccess;
    }
    if (command != "run" && command != "tiles" && command != "validate")
        throw UsageError("unknown command '" + command + "' (expected run, tiles or validate; see --help)");
    const std::vector<std::string> rest(argv.begin() + 1, argv.end());
    if (std::find(rest.begin(), rest.end(), "--help") != rest.end() || std::find(rest.begin(), rest.end(), "-h") != rest.end()) {
        print_command_help(command);
        return kExitSuccess;
    }
    if (command == "validate") return command_validate(rest);
    return command == "run" ? command_run(rest) : command_tiles(rest);
}

// One line on stderr: messages from the library may carry newlines; keep the first line.
int fail(const std::string& message) {
    std::fflush(stdout);
    std::string line = message.substr(0, message.find('\n'));
    std::fprintf(stderr, "flashmask: error: %s\n", line.c_str());
    return kExitUsage;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        return dispatch(std::vector<std::string>(argv + 1, argv + argc));
    } catch (const UsageError& e) {
        return fail(e.what());
    } catch (const fm::Error& e) {
        return fail(e.what());
    } catch (const std::bad_alloc&) {
        return fail("out of memory (lower --batch, --seqlen, --heads or --dim)");
    } catch (const std::exception& e) {
        return fail(std::string("internal error: ") + e.what());
    }
}
