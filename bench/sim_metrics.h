/*
 * sim_metrics.h - kvrt-sim's Prometheus output: --metrics-out FILE (the
 * final metrics, written after the run) and --metrics-port N (GET /metrics
 * on 127.0.0.1 while the simulation runs, refreshed at each progress call,
 * and for --metrics-hold seconds after it ends).
 */
#ifndef KVRT_BENCH_SIM_METRICS_H
#define KVRT_BENCH_SIM_METRICS_H

#include <stdbool.h>
#include <stddef.h>

#include "metrics_http.h"
#include "sim_report.h"

typedef struct sim_metrics {
    sim_progress_bar_t *bar; /* drawn by the same progress callback */
    metrics_http_t *http;    /* NULL without --metrics-port */
    char *latest;            /* the last rendering, NULL before the first */
    size_t latest_length;
    bool wanted;             /* a file or an endpoint asked for metrics */
    bool failed;             /* a rendering failed (out of memory) */
} sim_metrics_t;

/* Starts serving when port >= 0 (0 picks a free port, printed to stderr).
 * With neither a port nor an output file, only the bar is drawn. Returns 0,
 * or -1 after printing why. */
int sim_metrics_open(sim_metrics_t *m, sim_progress_bar_t *bar, int port, bool to_file);
/* A sim_progress_fn: draws the bar, renders and publishes the metrics. */
void sim_metrics_progress(void *metrics, const sim_progress_t *progress);
/* Writes the last rendering to path (when non-NULL), keeps serving for
 * hold_s seconds (SIGINT or SIGTERM end the wait), stops and frees.
 * Returns 0, or -1 after printing why. */
int sim_metrics_close(sim_metrics_t *m, const char *path, double hold_s);

#endif /* KVRT_BENCH_SIM_METRICS_H */
