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

uint64_t bench_thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
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

bool bench_list_has(const char *list, const char *name)
{
    const size_t len = strlen(name);
    for (const char *p = list; p && *p;) {
        const char *comma = strchr(p, ',');
        const size_t item = comma ? (size_t)(comma - p) : strlen(p);
        if (item == len && strncmp(p, name, len) == 0)
            return true;
        p = comma ? comma + 1 : NULL;
    }
    return false;
}

/* A JSON string: quotes, backslashes and control characters escaped. */
static void json_string(const char *s)
{
    putchar('"');
    for (; s && *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
    putchar('"');
}

/* The table is kept within TEXT_COLUMNS: a figure's first line holds its
 * name, value and unit; what follows (baseline, target, note) goes on that
 * line while it fits and on indented continuation lines after, notes
 * broken between words. */
#define TEXT_COLUMNS 100
#define TEXT_INDENT "      "

typedef struct text_line {
    int column;
    int align; /* pieces on the first line start at this column at least */
} text_line_t;

static void text_piece(text_line_t *line, const char *piece)
{
    int len = (int)strlen(piece);
    int pad = line->column < line->align ? line->align - line->column : 0;
    if (line->column + pad + 2 + len > TEXT_COLUMNS) {
        printf("\n" TEXT_INDENT);
        line->column = (int)sizeof(TEXT_INDENT) - 1;
    } else {
        printf("%*s  ", pad, "");
        line->column += pad + 2;
    }
    line->align = 0;
    printf("%s", piece);
    line->column += len;
}

/* A note, word by word, so a long one wraps instead of running on. */
static void text_note(text_line_t *line, const char *note)
{
    char word[TEXT_COLUMNS];
    const char *p = note;
    bool first = true;
    while (*p) {
        size_t n = strcspn(p, " ");
        size_t take = n < sizeof(word) - 3 ? n : sizeof(word) - 3;
        snprintf(word, sizeof(word), "%s%.*s%s", first ? "[" : "", (int)take, p,
                 p[n] ? "" : "]");
        first = false;
        if (word[0] != '[' && line->column + 1 + (int)strlen(word) <= TEXT_COLUMNS) {
            printf(" %s", word);
            line->column += 1 + (int)strlen(word);
        } else {
            text_piece(line, word);
        }
        p += n;
        p += strspn(p, " ");
    }
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
    /* Name, value, unit; then the rest from column 70 on. */
    text_line_t line = {.align = 70};
    line.column = printf("  %-44s %12.4g %s", f->name, f->value, f->unit);
    char piece[TEXT_COLUMNS];
    if (has_baseline) {
        snprintf(piece, sizeof(piece), "%s %.4g (x%.3g)", f->baseline_name, f->baseline_value,
                 ratio);
        text_piece(&line, piece);
    }
    if (has_target) {
        snprintf(piece, sizeof(piece), "target %s %.4g: %s", f->lower_is_better ? "<=" : ">=",
                 f->target, meets ? "ok" : "MISSED");
        text_piece(&line, piece);
    }
    if (f->note)
        text_note(&line, f->note);
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
