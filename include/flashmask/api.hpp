// The C++ entry points. forward() and backward() validate every argument once, then dispatch
// on where the tensors live (CPU now; CUDA where the build and the device allow). Nothing is
// written to any output when an argument is refused: refusal is an Error thrown before work.
//
// Layouts (SPEC §1), any strides with a contiguous last dimension:
//   q [B, Nq, Hq, D]   k [B, Nk, Hk, D]   v [B, Nk, Hk, Dv]
//   out [B, Nq, Hq, Dv]   lse [B, Hq, Nq] (float32)   startend_row_indices [B, Hm, Nk, C] (int32)
// dtypes: bfloat16 and float16 everywhere; float32 and float64 on the CPU only (float64 computes
// in float64 throughout, for gradient checks). The LSE is float32 in every case.
#pragma once

#include <cstddef>
#include <optional>

#include "flashmask/mask.hpp"
#include "flashmask/types.hpp"

namespace flashmask {

struct ForwardArgs {
    TensorView q, k, v;
    TensorView out;  // written
    TensorView lse;  // written (float32)
    std::optional<TensorView> startend_row_indices;
    bool causal = false;
    std::optional<float> scale;  // default 1 / sqrt(D)
    int num_threads = 0;         // CPU path: 0 = all hardware threads
    void* stream = nullptr;      // CUDA path: a cudaStream_t; null = the default stream
    KeyOrder key_order = KeyOrder::Automatic;  // CUDA path
};

struct BackwardArgs {
    TensorView q, k, v, out, lse, dout;
    TensorView dq, dk, dv;  // written, in the dtypes of q, k, v
    std::optional<TensorView> startend_row_indices;
    bool causal = false;
    std::optional<float> scale;
    bool deterministic = false;  // identical bits on every run (the CPU path always is)
    int num_threads = 0;
    void* stream = nullptr;
    KeyOrder key_order = KeyOrder::Automatic;  // CUDA path
};

void forward(const ForwardArgs& args);
void backward(const BackwardArgs& args);

// Is a CUDA device usable by this build? (false in a CPU-only build or without a GPU)
bool cuda_available();

// Device memory the CUDA path keeps between calls on the current device: with
// FLASHMASK_COMPRESSIBLE_SCRATCH=1 in the environment (opt-in, being measured), the backward's dQ
// accumulator in compressible memory, grown to the largest one asked for (B * Hq * Nq * D floats,
// rounded up to the driver's granularity), where the device supports compression. Otherwise none:
// each call allocates its accumulator on its stream and frees it. 0 in a CPU-only build.
std::size_t cuda_cached_bytes();
// Gives that memory back, after the calls that use it finish (waits for them on the host).
void release_cuda_cache();

}  // namespace flashmask
