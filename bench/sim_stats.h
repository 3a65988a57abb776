/*
 * sim_stats.h - the latency statistics of kvrt-sim: a growable array of
 * samples and its percentiles.
 *
 * Percentiles interpolate linearly between the two closest ranks (the
 * definition numpy.percentile and most dashboards use): for n sorted
 * samples x[0..n) the p-th percentile is x[i] + f * (x[i+1] - x[i]) with
 * r = p / 100 * (n - 1), i = floor(r), f = r - i. Selection runs in
 * expected O(n) (quickselect) instead of sorting.
 */
#ifndef KVRT_BENCH_SIM_STATS_H
#define KVRT_BENCH_SIM_STATS_H

#include <stddef.h>

typedef struct sim_samples {
    double *values;
    size_t count;
    size_t capacity;
} sim_samples_t;

/* Appends a sample. Returns 0, or -1 when memory runs out. */
int sim_samples_add(sim_samples_t *samples, double value);
void sim_samples_free(sim_samples_t *samples);
double sim_samples_mean(const sim_samples_t *samples);

/*
 * The p-th percentile (0 <= p <= 100) of values[0..n). Reorders values (a
 * partial sort). Returns 0.0 for n == 0; NaN samples are not allowed.
 */
double sim_percentile(double *values, size_t n, double p);

/* Summary of one latency: percentiles 50, 90, 99, mean and max. */
typedef struct sim_latency {
    size_t count;
    double p50, p90, p99, mean, max;
} sim_latency_t;

/* Fills *out from the samples (reorders them). */
void sim_latency_summarize(sim_samples_t *samples, sim_latency_t *out);

#endif /* KVRT_BENCH_SIM_STATS_H */
