// Counter-based random numbers shared by the CPU and CUDA random_init kernels.
//
// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011):
// a keyed bijection of a 128-bit counter, so any element's numbers can be computed
// independently of the others and of the thread layout. random_init draws, for element k
// of sample b, the words of philox(counter = (k / 4 low, k / 4 high, b, stream),
// key = seed) and uses word k % 4; stream 0 holds per-element numbers, stream 1 the
// per-sample L2 radius. CPU and CUDA therefore draw the same numbers for a seed.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define HF_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define HF_HOST_DEVICE inline
#endif

namespace heat_fast::rng {

struct Words {
  uint32_t w[4];
};

HF_HOST_DEVICE Words philox(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint64_t seed) {
  uint32_t k0 = static_cast<uint32_t>(seed);
  uint32_t k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0;
    const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2;
    const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(p1);
    c3 = static_cast<uint32_t>(p0);
    c0 = n0;
    c2 = n2;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return Words{{c0, c1, c2, c3}};
}

// The four words for elements 4q .. 4q + 3 of sample b.
HF_HOST_DEVICE Words element_words(uint64_t seed, int64_t sample, int64_t q) {
  const auto uq = static_cast<uint64_t>(q);
  return philox(static_cast<uint32_t>(uq), static_cast<uint32_t>(uq >> 32),
                static_cast<uint32_t>(sample), 0u, seed);
}

// Uniform in [0, 1) with 24 random bits.
HF_HOST_DEVICE float uniform(uint32_t word) {
  return static_cast<float>(word >> 8) * 5.9604644775390625e-8f;
}

// Uniform in (0, 1], safe for log.
HF_HOST_DEVICE float uniform_open0(uint32_t word) {
  return static_cast<float>((word >> 8) + 1u) * 5.9604644775390625e-8f;
}

// The L2 radius fraction U(0, 1) of sample b.
HF_HOST_DEVICE float sample_radius(uint64_t seed, int64_t sample) {
  return uniform(philox(0u, 0u, static_cast<uint32_t>(sample), 1u, seed).w[0]);
}

// Four standard normals from one Philox draw (Box-Muller on word pairs (0, 1) and (2, 3)).
HF_HOST_DEVICE void normals4(const Words& r, float out[4]) {
  constexpr float kTwoPi = 6.283185307179586f;
  for (int pair = 0; pair < 2; ++pair) {
    const float radius = sqrtf(-2.0f * logf(uniform_open0(r.w[2 * pair])));
    const float angle = kTwoPi * uniform(r.w[2 * pair + 1]);
    out[2 * pair] = radius * cosf(angle);
    out[2 * pair + 1] = radius * sinf(angle);
  }
}

}  // namespace heat_fast::rng
