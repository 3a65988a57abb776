/*
 * bench.h - the kvrt-bench harness: suites register themselves, figures are
 * reported with the baseline measured in the same run, output is a table
 * for people or JSON (--json) for machines.
 */
#ifndef KVRT_BENCH_H
#define KVRT_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct bench_options {
    bool quick;       /* --quick: fewer repetitions, for CI smoke runs */
    int repeats;      /* samples per figure; medians are reported */
} bench_options_t;

typedef struct bench_suite {
    const char *name;
    const char *description;
    /* Returns 0 on success; a failure is reported and the run exits non-zero. */
    int (*run)(const bench_options_t *options);
    bool default_on;  /* part of the default suite set */
    struct bench_suite *next;
} bench_suite_t;

void bench_register(bench_suite_t *suite);

/* Defines and registers a suite from a file of its own. */
#define KVRT_BENCH_SUITE(ident, desc, fn, on_by_default)                         \
    static bench_suite_t bench_suite_##ident = {#ident, desc, fn, on_by_default, \
                                                NULL};                          \
    __attribute__((constructor)) static void bench_register_##ident(void)       \
    {                                                                            \
        bench_register(&bench_suite_##ident);                                    \
    }

/* A figure. lower_is_better decides how the target reads. */
typedef struct bench_figure {
    const char *name;            /* e.g. "pool.alloc_free.batch1" */
    const char *unit;            /* e.g. "ns/block" */
    double value;                /* median */
    const char *baseline_name;   /* NULL when there is none */
    double baseline_value;       /* same unit, measured in the same run */
    double target;               /* 0 when there is none */
    bool lower_is_better;
    const char *note;            /* optional, NULL ok */
} bench_figure_t;

void bench_report(const bench_figure_t *figure);

/* Monotonic nanoseconds. */
uint64_t bench_now_ns(void);
/* This thread's CPU time in nanoseconds: on a shared machine the wall
 * clock also counts the time other processes hold the core. */
uint64_t bench_thread_cpu_ns(void);
/* Median of n samples (sorts them in place). */
double bench_median(double *samples, int n);
/* Defeats dead-code elimination of a benchmarked result. */
void bench_consume(const void *p);
/* Whether name is an item of list, a comma-separated list ("a,b,c"). */
bool bench_list_has(const char *list, const char *name);

/* For kvrt_bench.c (the runner) only. */
bench_suite_t *bench_suites(void);
void bench_set_json(bool on);
int bench_targets_missed(void);
void bench_json_begin(void);
void bench_json_end(void);

#endif /* KVRT_BENCH_H */
