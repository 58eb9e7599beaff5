// A stand-alone driver for fuzz targets where libFuzzer is not available
// (GCC builds, CI): runs the target on seeded random mutations of a few
// seed inputs, so every CI run exercises the parsers with bad input.
//
// Usage: <target> [iterations] [seed]
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

int main(int argc, char** argv) {
  long iterations = argc > 1 ? std::atol(argv[1]) : 2000;
  uint64_t seed = argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 1;
  std::mt19937_64 rng(seed);
  for (long i = 0; i < iterations; i++) {
    size_t size = 2 + rng() % 600;
    std::vector<uint8_t> input(size, 0);
    // Sparse mutations look like bit rot; dense ones like a stray write.
    int mode = static_cast<int>(rng() % 3);
    input[0] = static_cast<uint8_t>(rng());
    for (size_t j = 1; j < size; j++) {
      if (mode == 0 && rng() % 64 != 0) continue;
      if (mode == 1 && j > 64) break;
      input[j] = static_cast<uint8_t>(rng());
    }
    LLVMFuzzerTestOneInput(input.data(), input.size());
  }
  std::printf("fuzz driver: %ld inputs, seed %llu, no crash\n", iterations, static_cast<unsigned long long>(seed));
  return 0;
}
