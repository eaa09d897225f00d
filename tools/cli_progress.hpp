// Progress for long runs of the flashmask tool: "[k/n] what | elapsed, eta" on stderr, shown
// only once a run has lasted progress_delay_seconds(), redrawn in place on a terminal and printed
// as occasional plain lines otherwise (logs, CI).
#pragma once

#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace flashmask::cli {

// Runs shorter than this print nothing ("a run longer than a couple of seconds shows progress").
// The environment variable FLASHMASK_PROGRESS_AFTER (seconds) overrides it, e.g. 0 in tests.
inline constexpr double kProgressDelaySeconds = 1.0;

inline double progress_delay_seconds() {
    static const double delay = [] {
        const char* text = std::getenv("FLASHMASK_PROGRESS_AFTER");
        char* end = nullptr;
        const double value = text ? std::strtod(text, &end) : 0.0;
        return text && end != text && *end == '\0' && value >= 0.0 ? value : kProgressDelaySeconds;
    }();
    return delay;
}
// Without a terminal every update is a new line: at most one line per this many seconds.
inline constexpr double kProgressLineIntervalSeconds = 5.0;

class Progress {
public:
    using Clock = std::chrono::steady_clock;

    Progress(std::string label, int64_t total)
        : label_(std::move(label)), total_(total), start_(Clock::now()), terminal_(isatty(STDERR_FILENO) != 0) {}
    Progress(const Progress&) = delete;
    Progress& operator=(const Progress&) = delete;
    ~Progress() { finish(); }

    // One more unit is done; `detail` says which (e.g. "batch 0, kv heads 0-3").
    void advance(const std::string& detail) {
        ++done_;
        const double elapsed = seconds_since(start_);
        if (elapsed < progress_delay_seconds() || done_ >= total_) return;
        if (!terminal_ && printed_ && seconds_since(last_print_) < kProgressLineIntervalSeconds) return;
        const double eta = elapsed / double(done_) * double(total_ - done_);
        char line[256];
        std::snprintf(line, sizeof line, "[%lld/%lld] %s: %s | %.1f s elapsed, eta %.1f s", (long long)done_,
                      (long long)total_, label_.c_str(), detail.c_str(), elapsed, eta);
        if (terminal_) {
            std::fprintf(stderr, "\r%s\033[K", line);  // \033[K: erase the rest of the old line
        } else {
            std::fprintf(stderr, "%s\n", line);
        }
        std::fflush(stderr);
        printed_ = true;
        last_print_ = Clock::now();
    }

    // Clears the in-place line, so that the results start on a clean terminal line.
    void finish() {
        if (terminal_ && printed_) std::fprintf(stderr, "\r\033[K");
        printed_ = false;
    }

private:
    static double seconds_since(Clock::time_point t) {
        return std::chrono::duration<double>(Clock::now() - t).count();
    }

    std::string label_;
    int64_t total_;
    int64_t done_ = 0;
    Clock::time_point start_, last_print_;
    bool terminal_;
    bool printed_ = false;
};

}  // namespace flashmask::cli
