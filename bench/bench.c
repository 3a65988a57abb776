/*
 * bench.c - suite registry, timing helpers and the two output formats.
 */
#include "bench.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static bench_suite_t *suites;
static bool json_output;
static bool first_json_figure = true;
static int targets_missed;

void bench_register(bench_suite_t *suite)
{
    /* Keep registration order stable: sorted by name. */
    bench_suite_t **at = &suites;
    while (*at && strcmp((*at)->name, suite->name) < 0)
        at = &(*at)->next;
    suite->next = *at;
    *at = suite;
}

bench_suite_t *bench_suites(void) { return suites; }
void bench_set_json(bool on) { json_output = on; }
int bench_targets_missed(void) { return targets_missed; }

uint64_t bench_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int compare_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double bench_median(double *samples, int n)
{
    if (n <= 0)
        return NAN;
    qsort(samples, (size_t)n, sizeof(double), compare_double);
    return n % 2 ? samples[n / 2] : (samples[n / 2 - 1] + samples[n / 2]) / 2;
}

void bench_consume(const void *p) { __asm__ volatile("" : : "r"(p) : "memory"); }

static void json_string(const char *s)
{
    putchar('"');
    for (; s && *s; s++) {
        if (*s == '"' || *s == '\\')
            putchar('\\');
        putchar(*s);
    }
    putchar('"');
}

void bench_report(const bench_figure_t *f)
{
    bool has_target = f->target > 0;
    bool meets = !has_target ||
                 (f->lower_is_better ? f->value <= f->target : f->value >= f->target);
    if (!meets)
        targets_missed++;
    bool has_baseline = f->baseline_name != NULL;
    double ratio = has_baseline && f->baseline_value != 0 ? f->value / f->baseline_value : NAN;
    if (json_output) {
        printf("%s\n  {\"name\": ", first_json_figure ? "" : ",");
        first_json_figure = false;
        json_string(f->name);
        printf(", \"unit\": ");
        json_string(f->unit);
        printf(", \"value\": %.6g", f->value);
        if (has_baseline) {
            printf(", \"baseline\": ");
            json_string(f->baseline_name);
            printf(", \"baseline_value\": %.6g", f->baseline_value);
            if (!isnan(ratio))
                printf(", \"ratio\": %.4g", ratio);
        }
        if (has_target)
            printf(", \"target\": %.6g, \"target_kind\": \"%s\", \"meets_target\": %s",
                   f->target, f->lower_is_better ? "max" : "min", meets ? "true" : "false");
        if (f->note) {
            printf(", \"note\": ");
            json_string(f->note);
        }
        printf("}");
        return;
    }
    printf("  %-44s %12.4g %-10s", f->name, f->value, f->unit);
    if (has_baseline)
        printf("  %s %.4g (x%.3g)", f->baseline_name, f->baseline_value, ratio);
    if (has_target)
        printf("  target %s %.4g: %s", f->lower_is_better ? "<=" : ">=", f->target,
               meets ? "ok" : "MISSED");
    if (f->note)
        printf("  [%s]", f->note);
    printf("\n");
}

void bench_json_begin(void)
{
    if (json_output)
        printf("[");
}

void bench_json_end(void)
{
    if (json_output)
        printf("\n]\n");
}
