// The accuracy contract of SPEC §5, in one place for every checker (the C++ tests and
// `flashmask run --check`): relative errors against the float64 reference, rounding to a storage
// dtype, the naive in-dtype attention that the bfloat16/float16 bound is measured against, and
// the bound itself.
//
// "The same computation done naively in the input dtype" is read as strictly as it can be:
// every tensor that attention's graph materialises is rounded to the dtype once, and nothing
// else is. Forward: S = scale * Q K^T, P = softmax(S) over the visible keys, O = P V. Backward
// (autograd through that graph): dV = P^T dO, dP = dO V^T, dS = P * (dP - rowsum(P * dP)),
// dQ = scale * dS K, dK = scale * dS^T Q. Products accumulate in float64, softmax's max and sum
// and softmax-backward's row sum are internal reductions (never stored in the dtype), and GQA
// sums dK and dV over the query heads of a group before their one rounding. Any real in-dtype
// implementation (eager PyTorch rounds q * scale too, and accumulates in float32) rounds at
// least this often, so this naive error is the smallest one can claim and the bound the tightest.
#pragma once

#include <cstdint>
#include <vector>

#include "cpu/reference.hpp"
#include "flashmask/float16.hpp"
#include "flashmask/types.hpp"

namespace flashmask::cpu {

// SPEC §5 bounds on ||x - ref|| / ||ref|| for O, dQ, dK and dV.
inline constexpr double kFloat32Bound = 1e-5;        // float32 inputs
// float64 inputs (the CPU path's exact dtype, beyond SPEC §5): float64 arithmetic on both sides,
// so only a few hundred ulps of summation-order difference remain.
inline constexpr double kFloat64Bound = 1e-12;
inline constexpr double kHalfBoundNaiveFactor = 2.0;  // 16-bit inputs: this many times the naive error ...
inline constexpr double kHalfBoundCap = 2e-2;         // ... and never above this

// x rounded to the nearest value of a storage dtype (round to nearest even, through float);
// float32 rounds to float, float64 keeps x, Int32 is not a storage dtype of attention and also
// rounds to float.
inline double round_to(DType dtype, double x) {
    if (dtype == DType::Float64) return x;
    const float f = float(x);
    switch (dtype) {
        case DType::BFloat16: return bfloat16_to_float(float_to_bfloat16(f));
        case DType::Float16: return float16_to_float(float_to_float16(f));
        default: return f;
    }
}

// Half an ulp at 1 of a 16-bit dtype (2^-8 bfloat16, 2^-11 float16), 0 for float32: the error of
// rounding a result to the dtype once.
double unit_roundoff(DType dtype);

// The SPEC §5 bound for one tensor, given the naive in-dtype error (ignored for float32, and
// kFloat64Bound for float64):
// min(kHalfBoundCap, max(kHalfBoundNaiveFactor * naive, unit_roundoff(dtype))). The floor is
// there because the naive computation can be exact where no rounding implementation can be
// asked to be: where every row sees a single key (Nq = Nk = 1, say), the naive P is exactly 1,
// so its O and dV are V and dO exactly and its dQ and dK exactly 0, and its error is 0; the
// tiled path recomputes P = exp(S - LSE) in float32, which can miss 1 by an ulp, and so misses
// those values by a rounding. A bound of 0 would demand bit-exact agreement, which SPEC §5 does
// not; one rounding of the dtype is the least a 16-bit result can be asked for.
double spec_bound(DType dtype, double naive_relative_error);

// Accumulates ||x - ref||^2 and ||ref||^2 over any number of elements and calls.
struct ErrorAccumulator {
    double squared_difference = 0.0, squared_reference = 0.0;
    int64_t count = 0;

    void add(double value, double reference) {
        squared_difference += (value - reference) * (value - reference);
        squared_reference += reference * reference;
        ++count;
    }
    // ||x - ref|| / ||ref||; the absolute norm ||x - ref|| when the reference is all zeros
    // (fully masked rows), so that exact zeros give 0 and anything else shows.
    double relative() const;
};

// ||got - want|| / ||want|| over equal-sized arrays (ErrorAccumulator's rule for want = 0).
double relative_error(const std::vector<double>& got, const std::vector<double>& want);

// Naive in-dtype forward O, [B, Nq, Hq, Dv], on `rows` (every row when null) of every (batch,
// head); 0 elsewhere and on rows that see no key. Same inputs and layout as reference_forward();
// q, k and v hold values already rounded to `dtype`.
std::vector<double> naive_forward(DType dtype, const ReferenceShape& shape, const MaskView& mask, double scale,
                                  const double* q, const double* k, const double* v,
                                  const std::vector<int32_t>* rows = nullptr);

// Naive in-dtype dQ, dK, dV (recomputing its own forward), as reference_backward() lays them out.
ReferenceBackward naive_backward(DType dtype, const ReferenceShape& shape, const MaskView& mask, double scale,
                                 const double* q, const double* k, const double* v, const double* dout);

}  // namespace flashmask::cpu
