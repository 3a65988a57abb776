/*
 * test_sim_stats.c - kvrt-sim's percentiles against a naive sort, on random,
 * sorted, reversed and constant data, with the edge cases a summary meets
 * (one sample, none, p0 and p100).
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sim_rng.h"
#include "sim_stats.h"

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The definition, straight: sort, then interpolate between closest ranks. */
static double naive_percentile(const double *values, size_t n, double p)
{
    double *v = malloc(n * sizeof(*v));
    memcpy(v, values, n * sizeof(*v));
    qsort(v, n, sizeof(*v), cmp_double);
    double rank = p / 100.0 * (double)(n - 1);
    size_t i = (size_t)floor(rank);
    double r = i + 1 < n ? v[i] + (rank - (double)i) * (v[i + 1] - v[i]) : v[n - 1];
    free(v);
    return r;
}

static void check_all(const double *values, size_t n)
{
    const double ps[] = {0, 1, 10, 25, 50, 75, 90, 99, 99.9, 100};
    double *work = malloc(n * sizeof(*work));
    for (size_t k = 0; k < sizeof(ps) / sizeof(ps[0]); k++) {
        memcpy(work, values, n * sizeof(*work));
        double want = naive_percentile(values, n, ps[k]);
        double got = sim_percentile(work, n, ps[k]);
        cr_assert(fabs(got - want) <= 1e-9 * (fabs(want) + 1.0),
                  "n=%zu p=%g: got %.17g, want %.17g", n, ps[k], got, want);
    }
    free(work);
}

Test(sim_stats, random_data_matches_a_naive_sort)
{
    sim_rng_t rng = sim_rng_stream(42, 1);
    double *v = malloc(2000 * sizeof(*v));
    for (size_t n = 1; n <= 2000; n = n < 40 ? n + 1 : n * 3 / 2) {
        for (size_t i = 0; i < n; i++)
            v[i] = sim_rng_exponential(&rng, 100.0);
        check_all(v, n);
        /* Heavy duplicates: values from a set of 5. */
        for (size_t i = 0; i < n; i++)
            v[i] = (double)sim_rng_below(&rng, 5);
        check_all(v, n);
    }
    free(v);
}

Test(sim_stats, ordered_and_constant_data)
{
    enum { N = 1001 };
    double v[N];
    for (int i = 0; i < N; i++)
        v[i] = i;
    check_all(v, N);
    for (int i = 0; i < N; i++)
        v[i] = N - i;
    check_all(v, N);
    for (int i = 0; i < N; i++)
        v[i] = 7.5;
    check_all(v, N);
    /* Sorted 0..1000: the p-th percentile is exactly 10 * p. */
    for (int i = 0; i < N; i++)
        v[i] = i;
    cr_assert_eq(sim_percentile(v, N, 50.0), 500.0);
    cr_assert_eq(sim_percentile(v, N, 99.0), 990.0);
}

Test(sim_stats, edge_cases)
{
    double one = 3.25;
    cr_assert_eq(sim_percentile(&one, 1, 0.0), 3.25);
    cr_assert_eq(sim_percentile(&one, 1, 50.0), 3.25);
    cr_assert_eq(sim_percentile(&one, 1, 100.0), 3.25);
    cr_assert_eq(sim_percentile(NULL, 0, 50.0), 0.0);
    double two[2] = {10.0, 20.0};
    cr_assert_eq(sim_percentile(two, 2, 50.0), 15.0);
}

Test(sim_stats, latency_summary)
{
    sim_samples_t s = {0};
    sim_latency_t lat;
    sim_latency_summarize(&s, &lat);
    cr_assert_eq(lat.count, 0u);
    cr_assert_eq(lat.p99, 0.0);
    for (int i = 100; i >= 1; i--)
        cr_assert_eq(sim_samples_add(&s, i), 0);
    sim_latency_summarize(&s, &lat);
    cr_assert_eq(lat.count, 100u);
    cr_assert_eq(lat.mean, 50.5);
    cr_assert_eq(lat.max, 100.0);
    cr_assert(fabs(lat.p50 - 50.5) < 1e-12);
    cr_assert(fabs(lat.p90 - 90.1) < 1e-9);
    cr_assert(fabs(lat.p99 - 99.01) < 1e-9);
    sim_samples_free(&s);
    cr_assert_null(s.values);
}
