// A minimal fork-join loop for the CPU path: independent work items handed out one at a time
// (dynamic scheduling, since masked tiles make items very unequal) to a few std::threads.
#pragma once

#include <cstdint>
#include <functional>

namespace flashmask::cpu {

// The number of workers for `items` work items: `requested` (0 = hardware concurrency),
// never more than the items, at least 1.
int worker_count(int requested, int64_t items);

// Runs body(worker, item) for every item in [0, items) on `workers` threads (the caller is
// worker 0). `worker` in [0, workers) lets bodies use per-worker scratch without locks. The
// first exception thrown by a body is rethrown here after all workers stop.
void parallel_for(int64_t items, int workers, const std::function<void(int worker, int64_t item)>& body);

}  // namespace flashmask::cpu
