/*
 * sim_report.h - what kvrt-sim prints: a summary a person reads at a
 * glance, the same figures as one JSON object for machines, and a progress
 * bar on stderr while it runs (only when stderr is a terminal).
 */
#ifndef KVRT_BENCH_SIM_REPORT_H
#define KVRT_BENCH_SIM_REPORT_H

#include <stdbool.h>
#include <stdio.h>

#include "sim_engine.h"

/* workload: one line saying what ran, e.g. "synthetic: 3000 requests ...". */
void sim_report_text(FILE *out, const char *workload, const sim_config_t *config,
                     const sim_results_t *results);

/* One JSON object (and a newline). Returns 0, or -1 when memory runs out. */
int sim_report_json(FILE *out, const char *workload, const sim_config_t *config,
                    const sim_results_t *results);

struct cJSON;
/* A latency summary as a JSON object {count, p50, p90, p99, mean, max};
 * NULL when memory runs out (cJSON's add functions then skip it). */
struct cJSON *sim_report_latency_json(const sim_latency_t *latency);

typedef struct sim_progress_bar {
    FILE *out;
    bool enabled;
    double last_wall_s;
    bool drawn;
} sim_progress_bar_t;

/* Enabled when `out` is a terminal and `wanted` is set. */
void sim_progress_bar_init(sim_progress_bar_t *bar, FILE *out, bool wanted);

/* A sim_progress_fn (user = the bar): redraws at most ten times a second,
 * and clears the line when every request has ended. */
void sim_progress_bar_update(void *bar, const sim_progress_t *progress);

#endif /* KVRT_BENCH_SIM_REPORT_H */
