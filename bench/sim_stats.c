/*
 * sim_stats.c - samples and percentiles for kvrt-sim (see sim_stats.h).
 */
#include "sim_stats.h"

#include <math.h>
#include <stdlib.h>

int sim_samples_add(sim_samples_t *samples, double value)
{
    if (samples->count == samples->capacity) {
        size_t capacity = samples->capacity ? samples->capacity * 2 : 1024;
        double *values = realloc(samples->values, capacity * sizeof(*values));
        if (!values)
            return -1;
        samples->values = values;
        samples->capacity = capacity;
    }
    samples->values[samples->count++] = value;
    return 0;
}

void sim_samples_free(sim_samples_t *samples)
{
    free(samples->values);
    *samples = (sim_samples_t){0};
}

double sim_samples_mean(const sim_samples_t *samples)
{
    if (samples->count == 0)
        return 0.0;
    double sum = 0.0;
    for (size_t i = 0; i < samples->count; i++)
        sum += samples->values[i];
    return sum / (double)samples->count;
}

static void swap(double *a, double *b)
{
    double t = *a;
    *a = *b;
    *b = t;
}

/*
 * Moves the k-th smallest of v[0..n) to v[k], smaller ones before it and
 * larger ones after (Hoare's selection with a median-of-three pivot, so
 * sorted and constant inputs stay O(n)).
 */
static void select_kth(double *v, size_t n, size_t k)
{
    size_t lo = 0, hi = n - 1;
    while (hi > lo) {
        size_t mid = lo + (hi - lo) / 2;
        if (v[mid] < v[lo])
            swap(&v[mid], &v[lo]);
        if (v[hi] < v[lo])
            swap(&v[hi], &v[lo]);
        if (v[hi] < v[mid])
            swap(&v[hi], &v[mid]);
        double pivot = v[mid];
        size_t i = lo, j = hi;
        while (i <= j) {
            while (v[i] < pivot)
                i++;
            while (v[j] > pivot)
                j--;
            if (i <= j) {
                swap(&v[i], &v[j]);
                i++;
                if (j == 0)
                    break;
                j--;
            }
        }
        /* Now v[lo..j] <= pivot <= v[i..hi], and j < i. */
        if (k <= j)
            hi = j;
        else if (k >= i)
            lo = i;
        else
            return; /* v[j+1..i-1] all equal the pivot */
    }
}

static double min_of(const double *v, size_t n)
{
    double m = v[0];
    for (size_t i = 1; i < n; i++)
        if (v[i] < m)
            m = v[i];
    return m;
}

double sim_percentile(double *values, size_t n, double p)
{
    if (n == 0)
        return 0.0;
    if (p <= 0.0)
        return min_of(values, n);
    if (p > 100.0)
        p = 100.0;
    double rank = p / 100.0 * (double)(n - 1);
    size_t i = (size_t)floor(rank);
    if (i >= n - 1) {
        select_kth(values, n, n - 1);
        return values[n - 1];
    }
    double frac = rank - (double)i;
    select_kth(values, n, i);
    double low = values[i];
    /* After selection everything right of i is >= values[i]: the next rank
     * is the minimum of that part. */
    double high = min_of(values + i + 1, n - i - 1);
    return low + frac * (high - low);
}

void sim_latency_summarize(sim_samples_t *samples, sim_latency_t *out)
{
    *out = (sim_latency_t){.count = samples->count};
    if (samples->count == 0)
        return;
    out->mean = sim_samples_mean(samples);
    out->p50 = sim_percentile(samples->values, samples->count, 50.0);
    out->p90 = sim_percentile(samples->values, samples->count, 90.0);
    out->p99 = sim_percentile(samples->values, samples->count, 99.0);
    out->max = sim_percentile(samples->values, samples->count, 100.0);
}
