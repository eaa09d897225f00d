#include "test_util.hpp"

#include <cstdio>
#include <cstdlib>
#include <functional>

namespace flashmask::testing {

uint64_t run_seed() {
    static const uint64_t seed = [] {
        uint64_t s;
        if (const char* env = std::getenv("FLASHMASK_SEED")) {
            s = std::strtoull(env, nullptr, 0);
        } else {
            std::random_device device;
            s = (uint64_t(device()) << 32) ^ device();
        }
        std::printf("[flashmask] random seed %llu (replay with FLASHMASK_SEED=%llu)\n",
                    static_cast<unsigned long long>(s), static_cast<unsigned long long>(s));
        std::fflush(stdout);
        return s;
    }();
    return seed;
}

std::mt19937_64 test_rng() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = info ? std::string(info->test_suite_name()) + "." + info->name() : "";
    return std::mt19937_64(run_seed() ^ std::hash<std::string>{}(name));
}

std::vector<float> random_normals(std::mt19937_64& rng, std::size_t count) {
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> values(count);
    for (auto& v : values) v = normal(rng);
    return values;
}

// Print the seed before the first test, so it is in the log even if a test crashes.
namespace {
struct SeedPrinter : ::testing::Environment {
    void SetUp() override { run_seed(); }
};
const auto* const kSeedPrinter = ::testing::AddGlobalTestEnvironment(new SeedPrinter);
}  // namespace

}  // namespace flashmask::testing
