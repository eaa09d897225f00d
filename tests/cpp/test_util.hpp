// Shared test helpers: the per-run random seed and fresh random data.
//
// Every run draws a new seed (or takes FLASHMASK_SEED from the environment, to replay a
// failure) and prints it once; each test derives its own stream from the seed and its name,
// so a failing test can be replayed alone with the printed seed.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace flashmask::testing {

uint64_t run_seed();  // printed once per process

// A generator seeded from run_seed() and the current test's full name.
std::mt19937_64 test_rng();

std::vector<float> random_normals(std::mt19937_64& rng, std::size_t count);

}  // namespace flashmask::testing
