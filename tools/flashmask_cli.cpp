// flashmask: the command-line tool. Builds a catalogue mask (SPEC §3), prints its density and
// tile counts (SPEC §4), runs attention forward (and backward) on the GPU when there is one,
// else on the CPU, times it, reports effective TFLOP/s (SPEC §6), and with --check compares
// against the float64 reference (SPEC §5).
//
//   flashmask run   --mask NAME --seqlen N [options]   attention, timing, optional check
//   flashmask tiles --mask NAME --seqlen N [options]   mask, density and tile counts only
//   flashmask validate --indices FILE --seqlen N [...]  check a startend_row_indices tensor
//
// The pieces live beside this file: cli_args (parsing), cli_mask (masks, density, tiles),
// cli_run (tensors, device copies, timed passes, progress), cli_check (--check).
//
// Exit status: 0 success, 1 a --check failed, 2 a bad argument, a refused input or a failure
// such as a CUDA error or running out of memory (one line on stderr, "flashmask: error: ...").
#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <limits>
#include <new>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "cli_args.hpp"
#include "cli_check.hpp"
#include "cli_format.hpp"
#include "cli_mask.hpp"
#include "cli_npy.hpp"
#include "cli_run.hpp"
#include "cli_tensors.hpp"
#include "flashmask/api.hpp"
#include "flashmask/mask.hpp"

namespace fm = flashmask;
using namespace flashmask::cli;

namespace {

constexpr int kExitSuccess = 0;
constexpr int kExitCheckFailed = 1;
constexpr int kExitUsage = 2;

constexpr int64_t kMaxSequenceLength = std::numeric_limits<int32_t>::max();  // int32 row indices
constexpr int64_t kMaxCount = std::numeric_limits<int32_t>::max();           // batch, heads, dim

// CPU runs are long: one timed run unless asked. GPU runs are short: warm up, then a median.
constexpr int64_t kCpuDefaultRepeats = 1;
constexpr int64_t kCudaDefaultRepeats = 20;
constexpr int64_t kMaxRepeats = 100000;

// SPEC §6: effective FLOPs count visible pairs only; backward is 2.5x forward.
constexpr double kForwardFlopsPerPairPerDim = 4.0;
constexpr double kBackwardFlopsFactor = 2.5;

struct RunSettings {
    std::string mask_name;
    Shape shape;
    fm::DType dtype = fm::DType::BFloat16;
    fm::Device device = fm::Device::CPU;
    bool backward = false, check = false, json = false, deterministic = false;
    uint64_t seed = 0;
    int64_t repeats = 1;
    GpuTiming gpu_timing = GpuTiming::Synced;
    int threads = 0;
    int32_t block_m = kDefaultBlockM, block_n = kDefaultBlockN;
    std::string device_note;  // why --device auto did not pick cuda on a machine with a GPU
};

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
        {"key-order", "natural|sorted", "count the tiles with the keys sorted as the CUDA path's key order 'sorted' "
                                        "does (windows of 1024), or in their own order; run: also the CUDA kernels' key "
                                        "order (default: natural counts; run leaves the kernels' automatic choice)"},
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
            {"deterministic", "", "with --backward: identical bits on every run (the CPU path always is)"},
            {"check", "", "compare with the float64 reference (SPEC §5); exit status 1 on FAIL"},
            {"repeats", "R", "timed passes, median reported (default: 1 on cpu, 20 on cuda)"},
            {"timing", "synced|queued",
             "GPU passes: synced = each on an idle GPU, the host's launches inside (latency); queued = back to "
             "back, the host ahead, as the benchmark times them (throughput) (default: synced)"},
            {"threads", "T", "CPU threads (default: 0 = all)"},
        };
        // After the sizes (mask, seqlen, seqlen-k), before the rest (seed, blocks, json).
        constexpr std::ptrdiff_t kSizeOptions = 3;
        list.insert(list.begin() + kSizeOptions, more.begin(), more.end());
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
        "exit status: 0 success, 1 a --check failed, 2 a bad argument, a refused input or a failure\n"
        "(a CUDA error, out of memory)\n",
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
    std::optional<fm::KeyOrder> key_order;  // --key-order; none: natural counts, the kernels' automatic choice
    bool keys_sorted() const { return key_order == fm::KeyOrder::Sorted; }
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
    if (args.has("key-order"))
        m.key_order = args.choice("key-order", "natural", {"natural", "sorted"}) == "sorted" ? fm::KeyOrder::Sorted
                                                                                          : fm::KeyOrder::Natural;
    return m;
}

// Where the tile counts' block sizes come from, for the tiles line.
std::string block_origin(int32_t block_m, int32_t block_n) {
    return block_m == kDefaultBlockM && block_n == kDefaultBlockN ? "the CPU path's blocks" : "--block-m x --block-n";
}

int command_tiles(const std::vector<std::string>& argv) {
    const ParsedArgs args(mask_options(), argv);
    const MaskArgs m = parse_mask_args(args);
    const MaskReport report = analyse_mask(m.name, m.nq, m.nk, m.seed, m.block_m, m.block_n, m.keys_sorted());
    if (args.has("json")) {
        JsonObject j;
        j.text("command", "tiles").add("mask", mask_json(report).str()).add("seed", std::to_string(m.seed));
        std::printf("%s\n", j.str().c_str());
    } else {
        print_mask_report(report, block_origin(m.block_m, m.block_n));
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
        Executor(probe, fm::Device::CUDA, 1, /*deterministic=*/false, fm::KeyOrder::Automatic).forward(nullptr);
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
    r.deterministic = args.has("deterministic");
    if (r.deterministic && !r.backward)
        throw UsageError("--deterministic selects the backward pass's mode, but --backward is not given; add --backward");
    r.check = args.has("check");
    r.json = args.has("json");
    r.device = parse_device(args, r.dtype, s.head_dim, r.device_note);
    const int64_t default_repeats = r.device == fm::Device::CUDA ? kCudaDefaultRepeats : kCpuDefaultRepeats;
    r.repeats = args.integer("repeats", default_repeats, 1, kMaxRepeats);
    r.gpu_timing = args.choice("timing", "synced", {"synced", "queued"}) == "queued" ? GpuTiming::Queued : GpuTiming::Synced;
    if (r.gpu_timing == GpuTiming::Queued && r.device != fm::Device::CUDA)
        throw UsageError("--timing queued times GPU passes, which queue on a stream; this run is on the CPU "
                         "(--device cuda on a machine with a GPU)");
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
    const MaskReport report = analyse_mask(settings.mask_name, s.nq, s.nk, settings.seed, settings.block_m, settings.block_n,
                                           mask_args.keys_sorted());
    check_memory(s, settings.dtype, settings.backward, report.spec.slots);
    const int cpu_threads = fm::cpu::worker_count(settings.threads, std::numeric_limits<int32_t>::max());
    std::string gpu;  // which GPU gave the timings: "cuda:0, NVIDIA H100 80GB HBM3"
#if FLASHMASK_WITH_CUDA
    if (settings.device == fm::Device::CUDA) gpu = cuda_device_description();
#endif
    const std::string device_text = settings.device == fm::Device::CPU
                                        ? format("cpu, %d thread%s", cpu_threads, cpu_threads == 1 ? "" : "s")
                                        : gpu;
    if (!settings.json) {
        print_mask_report(report, block_origin(mask_args.block_m, mask_args.block_n));
        std::printf("problem      batch %lld, query heads %lld, kv heads %lld, head dim %lld, %s\n", (long long)s.batch,
                    (long long)s.q_heads, (long long)s.kv_heads, (long long)s.head_dim, fm::to_string(settings.dtype));
        std::printf("device       %s\n", device_text.c_str());
        if (!settings.device_note.empty()) std::printf("             (%s)\n", settings.device_note.c_str());
        std::printf("seed         %" PRIu64 "\n", settings.seed);
        std::fflush(stdout);
    }

    Problem problem = make_problem(s, settings.dtype, report.spec, settings.backward, settings.seed, settings.threads,
                                   /*show_progress=*/true);
    Executor executor(problem, settings.device, settings.threads, settings.deterministic,
                      mask_args.key_order.value_or(fm::KeyOrder::Automatic), settings.gpu_timing);
    const double pairs = double(report.stats.visible_pairs) * double(s.batch) * double(s.q_heads);
    const double forward_flops = kForwardFlopsPerPairPerDim * double(s.head_dim) * pairs;
    struct Pass { const char* name; Timing timing; double flops; };
    std::vector<Pass> passes;
    passes.push_back({"forward", time_passes(executor, settings.device, false, settings.repeats), forward_flops});
    if (settings.backward)
        passes.push_back({"backward", time_passes(executor, settings.device, true, settings.repeats),
                          kBackwardFlopsFactor * forward_flops});

    if (!settings.json) {
        std::printf("\n%-10s %14s %12s   (median of %lld%s)\n", "pass", "time", "TFLOP/s", (long long)settings.repeats,
                    settings.gpu_timing == GpuTiming::Queued ? ", queued" : "");
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
        Progress progress("check", check_progress_units(s, settings.backward));
        checks.push_back(check_forward(problem, settings.seed, &progress));
        if (settings.backward)
            checks.push_back(check_backward(problem, settings.mask_name, settings.seed, settings.device, settings.threads,
                                            settings.deterministic, mask_args.key_order.value_or(fm::KeyOrder::Automatic),
                                            &progress));
        progress.finish();
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
        if (!gpu.empty()) j.text("gpu", gpu);
        if (settings.backward) j.boolean("deterministic", settings.deterministic);
        if (!settings.device_note.empty()) j.text("device_note", settings.device_note);
        j.add("seed", std::to_string(settings.seed)).integer("repeats", settings.repeats);
        if (settings.device == fm::Device::CUDA)
            j.text("timing", settings.gpu_timing == GpuTiming::Queued ? "queued" : "synced");
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
    const fm::TensorView view = fm::make_contiguous_view(array.data.data(), *dtype, array.shape);
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
        print_stats(stats, block_origin(block_m, block_n));
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
