#include "cpu/parallel.hpp"

#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace flashmask::cpu {

int worker_count(int requested, int64_t items) {
    int64_t workers = requested > 0 ? requested : int64_t(std::thread::hardware_concurrency());
    workers = std::min<int64_t>(workers, items);
    return int(std::max<int64_t>(workers, 1));
}

void parallel_for(int64_t items, int workers, const std::function<void(int worker, int64_t item)>& body) {
    std::atomic<int64_t> next_item{0};
    std::atomic<bool> failed{false};
    std::exception_ptr first_error;
    std::mutex error_mutex;
    auto run = [&](int worker) {
        try {
            for (int64_t item = next_item++; item < items && !failed; item = next_item++) body(worker, item);
        } catch (...) {
            std::lock_guard<std::mutex> lock(error_mutex);
            if (!first_error) first_error = std::current_exception();
            failed = true;
        }
    };
    std::vector<std::thread> threads;
    threads.reserve(std::size_t(std::max(workers - 1, 0)));
    try {
        for (int w = 1; w < workers; ++w) threads.emplace_back(run, w);
    } catch (...) {
        // Could not start a thread: the ones that did start, and this one, do all the work.
    }
    run(0);
    for (auto& thread : threads) thread.join();
    if (first_error) std::rethrow_exception(first_error);
}

}  // namespace flashmask::cpu
