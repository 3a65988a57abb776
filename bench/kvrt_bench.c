/*
 * kvrt_bench.c - kvrt-bench: runs the registered microbenchmark suites.
 *
 *   kvrt-bench                 default suites, a readable table
 *   kvrt-bench --json          the same as a JSON array of figures
 *   kvrt-bench --suite pool    one suite (repeatable, or comma-separated)
 *   kvrt-bench --list          the suites
 *   kvrt-bench --quick         fewer repetitions (CI smoke run)
 *
 * Exit status: 0 when every suite ran (targets missed are reported, and
 * counted in the summary, but are not failures unless --strict), 1 when a
 * suite failed, 2 on bad usage.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: kvrt-bench [--json] [--quick] [--strict] [--repeats N] "
            "[--suite NAME[,NAME...]]... [--list]\n");
}

static bool selected(const char *name, char **wanted, int n_wanted, bool default_on)
{
    if (n_wanted == 0)
        return default_on;
    for (int i = 0; i < n_wanted; i++) {
        char *list = wanted[i];
        size_t len = strlen(name);
        for (char *p = list; p && *p;) {
            char *comma = strchr(p, ',');
            size_t item = comma ? (size_t)(comma - p) : strlen(p);
            if ((item == len && strncmp(p, name, len) == 0) || (item == 3 && !strncmp(p, "all", 3)))
                return true;
            p = comma ? comma + 1 : NULL;
        }
    }
    return false;
}

int main(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"json", no_argument, NULL, 'j'},   {"quick", no_argument, NULL, 'q'},
        {"suite", required_argument, NULL, 's'}, {"list", no_argument, NULL, 'l'},
        {"repeats", required_argument, NULL, 'r'}, {"strict", no_argument, NULL, 'S'},
        {"help", no_argument, NULL, 'h'},   {NULL, 0, NULL, 0}};
    bench_options_t options = {.quick = false, .repeats = 0};
    char *wanted[32];
    int n_wanted = 0;
    bool json = false, list = false, strict = false;
    int c;
    while ((c = getopt_long(argc, argv, "jqs:lr:Sh", long_options, NULL)) != -1) {
        switch (c) {
        case 'j': json = true; break;
        case 'q': options.quick = true; break;
        case 's':
            if (n_wanted < 32)
                wanted[n_wanted++] = optarg;
            break;
        case 'l': list = true; break;
        case 'S': strict = true; break;
        case 'r': {
            char *end;
            long n = strtol(optarg, &end, 10);
            if (*end || n < 1 || n > 1000) {
                fprintf(stderr, "kvrt-bench: --repeats wants 1..1000, got '%s'\n", optarg);
                return 2;
            }
            options.repeats = (int)n;
            break;
        }
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "kvrt-bench: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    if (options.repeats == 0)
        options.repeats = options.quick ? 3 : 9;
    if (list) {
        for (bench_suite_t *s = bench_suites(); s; s = s->next)
            printf("%-12s %s%s\n", s->name, s->description, s->default_on ? "" : " (not default)");
        return 0;
    }
    for (int i = 0; i < n_wanted; i++) {
        /* Refuse unknown names rather than silently running nothing. */
        for (char *p = wanted[i]; p && *p;) {
            char *comma = strchr(p, ',');
            size_t item = comma ? (size_t)(comma - p) : strlen(p);
            bool known = item == 3 && !strncmp(p, "all", 3);
            for (bench_suite_t *s = bench_suites(); s && !known; s = s->next)
                known = strlen(s->name) == item && !strncmp(s->name, p, item);
            if (!known) {
                fprintf(stderr, "kvrt-bench: no suite '%.*s' (try --list)\n", (int)item, p);
                return 2;
            }
            p = comma ? comma + 1 : NULL;
        }
    }
    bench_set_json(json);
    bench_json_begin();
    int failed = 0;
    for (bench_suite_t *s = bench_suites(); s; s = s->next) {
        if (!selected(s->name, wanted, n_wanted, s->default_on))
            continue;
        if (!json)
            printf("%s: %s\n", s->name, s->description);
        fflush(stdout);
        if (s->run(&options) != 0) {
            fprintf(stderr, "kvrt-bench: suite %s failed\n", s->name);
            failed++;
        }
    }
    bench_json_end();
    int missed = bench_targets_missed();
    if (!json)
        printf("\n%d suite(s) failed, %d target(s) missed\n", failed, missed);
    if (failed)
        return 1;
    return strict && missed ? 1 : 0;
}
