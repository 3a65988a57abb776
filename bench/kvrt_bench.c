/*
 * kvrt_bench.c - kvrt-bench: runs the registered microbenchmark suites.
 *
 *   kvrt-bench                 default suites, a readable table
 *   kvrt-bench --json          the same as a JSON array of figures
 *   kvrt-bench --suite pool    one suite (repeatable, or comma-separated)
 *   kvrt-bench --list          the suites
 *   kvrt-bench --quick         fewer repetitions (CI smoke run)
 *   kvrt-bench --help          all of it, with the suites and their run times
 *
 * Exit status (tool_cli.h): 0 when every suite ran (targets missed are
 * reported, and counted in the summary, but are not failures unless
 * --strict), 1 when a suite failed or --strict saw a target missed, 2 on
 * bad usage.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "tool_cli.h"

#define MAX_SUITE_ARGS 32

/* Wall seconds of each suite on the reference machine (docs/benchmarks.md:
 * 2 cores), by default and with --quick, for --help. A suite not listed
 * here shows "?". */
static const struct {
    const char *suite;
    int full_s, quick_s;
} run_times[] = {
    {"cache", 6, 2},   {"cluster", 19, 1}, {"core", 15, 1}, {"kernels", 6, 5},
    {"pool", 1, 1},    {"sched", 5, 1},    {"tier", 36, 10}, {"xfer", 19, 4},
    {"sched_hybrid", 6, 2}, {"memory", 25, 5},
};

static void run_time(const char *suite, char *out, size_t size)
{
    for (size_t i = 0; i < sizeof(run_times) / sizeof(run_times[0]); i++)
        if (!strcmp(run_times[i].suite, suite)) {
            snprintf(out, size, "~%d s (--quick ~%d s)", run_times[i].full_s,
                     run_times[i].quick_s);
            return;
        }
    snprintf(out, size, "?");
}

/* The suites, two lines each (within 100 columns): for --list and --help. */
static void print_suites(FILE *out)
{
    for (bench_suite_t *s = bench_suites(); s; s = s->next) {
        char t[64];
        run_time(s->name, t, sizeof(t));
        fprintf(out, "  %c %-10s %s\n      %s\n", s->default_on ? '*' : ' ', s->name, t,
                s->description);
    }
}

static void usage(FILE *out)
{
    fprintf(out,
"usage: kvrt-bench [--suite NAME[,NAME...]]... [--quick] [--repeats N] [--strict]\n"
"                  [--json] [--list]\n"
"Runs kvrt's microbenchmarks. Each figure is a median, printed next to a\n"
"baseline measured in the same run (the ratio is what compares across\n"
"machines) and, where kvrt sets one, a target with ok or MISSED; the targets\n"
"and where each comes from are in docs/benchmarks.md.\n"
"\n"
"  --suite NAMES   run these suites (comma-separated or repeated; 'all' for every\n"
"                  one) instead of the default set below\n"
"  --quick         fewer samples per figure (3) and smaller sizes: a smoke run\n"
"  --repeats N     samples per figure, 1..1000 [9; 3 with --quick]\n"
"  --strict        exit 1 when a target is missed (otherwise only reported)\n"
"  --json          a JSON array of figures on stdout instead of the table\n"
"  --list          list the suites and exit\n"
"  --help          this text\n"
"\n"
"Suites, with their run time on the 2-core reference machine (* = in the\n"
"default set, which runs when no --suite is given; all of it: ~40 s, ~15 s\n"
"with --quick):\n");
    print_suites(out);
    fprintf(out,
"\n"
"Exit status: 0 every suite ran, 1 a suite failed (or, with --strict, a target\n"
"was missed), 2 bad usage (an unknown option, suite or value).\n");
}

static bool selected(const char *name, char **wanted, int n_wanted, bool default_on)
{
    if (n_wanted == 0)
        return default_on;
    for (int i = 0; i < n_wanted; i++)
        if (bench_list_has(wanted[i], name) || bench_list_has(wanted[i], "all"))
            return true;
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
    char *wanted[MAX_SUITE_ARGS];
    int n_wanted = 0;
    bool json = false, list = false, strict = false;
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, TOOL_GETOPT_QUIET "jqs:lr:Sh", long_options, NULL)) !=
           -1) {
        switch (c) {
        case 'j': json = true; break;
        case 'q': options.quick = true; break;
        case 's':
            if (n_wanted == MAX_SUITE_ARGS) {
                fprintf(stderr, "kvrt-bench: more than %d --suite options; give one "
                                "comma-separated list\n", MAX_SUITE_ARGS);
                return TOOL_EXIT_USAGE;
            }
            wanted[n_wanted++] = optarg;
            break;
        case 'l': list = true; break;
        case 'S': strict = true; break;
        case 'r': {
            char *end;
            long n = strtol(optarg, &end, 10);
            if (*optarg < '0' || *optarg > '9' || *end || n < 1 || n > 1000) {
                fprintf(stderr, "kvrt-bench: --repeats wants an integer in 1..1000, got '%s' "
                                "(see --help)\n", optarg);
                return TOOL_EXIT_USAGE;
            }
            options.repeats = (int)n;
            break;
        }
        case 'h': usage(stdout); return TOOL_EXIT_OK;
        default: return tool_option_error("kvrt-bench", c, argv);
        }
    }
    if (optind < argc) {
        fprintf(stderr, "kvrt-bench: unexpected argument '%s' (see --help)\n", argv[optind]);
        return TOOL_EXIT_USAGE;
    }
    if (options.repeats == 0)
        options.repeats = options.quick ? 3 : 9;
    if (list) {
        print_suites(stdout);
        return TOOL_EXIT_OK;
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
                return TOOL_EXIT_USAGE;
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
        printf("\n%d suite(s) failed, %d target(s) missed (targets: docs/benchmarks.md)\n",
               failed, missed);
    if (failed)
        return TOOL_EXIT_FAILURE;
    return strict && missed ? TOOL_EXIT_FAILURE : TOOL_EXIT_OK;
}
