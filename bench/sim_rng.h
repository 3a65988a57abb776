/*
 * sim_rng.h - kvrt-sim's seeded random numbers: SplitMix64 to derive
 * independent streams from (seed, stream id), xorshift64* within a stream.
 * Every random choice of a simulation comes from here, so one seed replays
 * a run exactly.
 */
#ifndef KVRT_BENCH_SIM_RNG_H
#define KVRT_BENCH_SIM_RNG_H

#include <math.h>
#include <stdint.h>

typedef struct sim_rng {
    uint64_t state; /* never 0 */
} sim_rng_t;

static inline uint64_t sim_splitmix64(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* An independent stream for (seed, stream). */
static inline sim_rng_t sim_rng_stream(uint64_t seed, uint64_t stream)
{
    uint64_t s = sim_splitmix64(seed ^ sim_splitmix64(stream));
    return (sim_rng_t){.state = s ? s : 0x2545F4914F6CDD1Dull};
}

static inline uint64_t sim_rng_next(sim_rng_t *rng)
{
    uint64_t x = rng->state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng->state = x;
    return x * 0x2545F4914F6CDD1Dull;
}

/* Uniform in [0, bound); 0 when bound is 0. Lemire's multiply-shift. */
static inline uint32_t sim_rng_below(sim_rng_t *rng, uint32_t bound)
{
    return (uint32_t)(((sim_rng_next(rng) >> 32) * (uint64_t)bound) >> 32);
}

/* Uniform in (0, 1): never 0, so log() of it is finite. */
static inline double sim_rng_unit(sim_rng_t *rng)
{
    return ((double)(sim_rng_next(rng) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

/* Exponential with the given mean. */
static inline double sim_rng_exponential(sim_rng_t *rng, double mean)
{
    return -mean * log(sim_rng_unit(rng));
}

/* Log-normal with the given mean and log-space deviation sigma. */
static inline double sim_rng_lognormal(sim_rng_t *rng, double mean, double sigma)
{
    /* Box-Muller; mu chosen so that E[X] = exp(mu + sigma^2 / 2) = mean. */
    double z = sqrt(-2.0 * log(sim_rng_unit(rng))) *
               cos(6.283185307179586 * sim_rng_unit(rng));
    return exp(log(mean) - sigma * sigma / 2.0 + sigma * z);
}

#endif /* KVRT_BENCH_SIM_RNG_H */
