/*
 * test_tools_cli.c - what kvrt-sim, kvrt-replay and kvrt-bench share on the
 * command line: one exit-status convention (0 ok, 1 failure, 2 bad usage or
 * input) stated in every --help, help text within 100 columns, one style
 * of message for an unknown option or a missing value; and kvrt-replay's
 * own rough edges: it needs --trace, escapes the path in --json, reads
 * long --capacity/--policy lists whole, stops at an oversized line and
 * replays prompts of 0 tokens.
 */
#include <cJSON.h>
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "support/tool_run.h"

static const char *const tools[] = {KVRT_SIM_PATH, KVRT_REPLAY_PATH, KVRT_BENCH_PATH};
static const char *const names[] = {"kvrt-sim", "kvrt-replay", "kvrt-bench"};
/* An option of each tool that takes a value. */
static const char *const valued[] = {"--rate", "--capacity", "--repeats"};
#define NUM_TOOLS 3

static char dir[] = "/tmp/kvrt-tools-XXXXXX";
static char files[8][600];
static int num_files;

static void setup(void) { cr_assert_not_null(mkdtemp(dir)); }
static void teardown(void)
{
    for (int i = 0; i < num_files; i++)
        unlink(files[i]);
    rmdir(dir);
}
TestSuite(tools_cli, .init = setup, .fini = teardown);

static const char *write_file(const char *name, const char *text)
{
    cr_assert_lt(num_files, 8);
    char *path = files[num_files++];
    snprintf(path, sizeof(files[0]), "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

static void expect(const char *program, const char *const *args, int status,
                   const char *stderr_has)
{
    tool_output_t o = tool_run(program, args);
    cr_assert_eq(o.status, status, "%s %s: exit %d, wanted %d; stderr: %s", program, args[0],
                 o.status, status, o.err);
    if (stderr_has)
        cr_assert(strstr(o.err, stderr_has), "%s %s: stderr lacks '%s': %s", program, args[0],
                  stderr_has, o.err);
    tool_output_free(&o);
}

Test(tools_cli, every_help_states_the_exit_statuses_within_100_columns)
{
    for (int t = 0; t < NUM_TOOLS; t++) {
        tool_output_t o = tool_run(tools[t], (const char *const[]){"--help", NULL});
        cr_assert_eq(o.status, 0, "%s --help: exit %d", names[t], o.status);
        cr_assert(strstr(o.out, "Exit status: 0 "), "%s --help: no exit statuses", names[t]);
        cr_assert(strstr(o.out, ", 2 bad usage"), "%s --help: no status 2", names[t]);
        int line = 1;
        for (const char *p = o.out; *p; line++) {
            size_t len = strcspn(p, "\n");
            cr_assert_leq(len, 100, "%s --help line %d is %zu columns", names[t], line, len);
            p += len + (p[len] == '\n');
        }
        tool_output_free(&o);
    }
}

Test(tools_cli, unknown_options_and_missing_values_read_the_same_everywhere)
{
    for (int t = 0; t < NUM_TOOLS; t++) {
        char want[128];
        snprintf(want, sizeof(want), "%s: unknown option '--bogus' (see --help)\n", names[t]);
        tool_output_t o = tool_run(tools[t], (const char *const[]){"--bogus", NULL});
        cr_assert_eq(o.status, 2);
        cr_assert_str_eq(o.err, want);
        cr_assert_str_eq(o.out, "");
        tool_output_free(&o);
        snprintf(want, sizeof(want), "%s: unknown option '-Z' (see --help)\n", names[t]);
        o = tool_run(tools[t], (const char *const[]){"-Z", NULL});
        cr_assert_eq(o.status, 2);
        cr_assert_str_eq(o.err, want);
        tool_output_free(&o);
        snprintf(want, sizeof(want), "%s: option '%s' needs a value (see --help)\n", names[t],
                 valued[t]);
        o = tool_run(tools[t], (const char *const[]){valued[t], NULL});
        cr_assert_eq(o.status, 2);
        cr_assert_str_eq(o.err, want);
        tool_output_free(&o);
        expect(tools[t], (const char *const[]){"stray", NULL}, 2, "unexpected argument 'stray'");
    }
}

Test(tools_cli, missing_empty_or_garbage_traces_exit_2_from_both_trace_tools)
{
    const char *empty = write_file("empty.jsonl", "");
    const char *garbage = write_file("garbage.jsonl", "\x01\x02 not json\n");
    const char *tools_with_traces[] = {KVRT_SIM_PATH, KVRT_REPLAY_PATH};
    for (int t = 0; t < 2; t++) {
        expect(tools_with_traces[t], (const char *const[]){"--trace", "/nonexistent.jsonl", NULL},
               2, "/nonexistent.jsonl: cannot open");
        expect(tools_with_traces[t], (const char *const[]){"--trace", empty, NULL}, 2,
               "no requests");
        expect(tools_with_traces[t], (const char *const[]){"--trace", garbage, NULL}, 2,
               "garbage.jsonl:1: malformed JSON");
    }
}

Test(tools_cli, replay_asks_for_a_trace)
{
    expect(KVRT_REPLAY_PATH, (const char *const[]){NULL}, 2, "--trace");
}

Test(tools_cli, replay_json_escapes_the_trace_path)
{
    const char *path = write_file("a \"quoted\" \\ name.jsonl",
                                  "{\"timestamp\": 0, \"input_length\": 600, "
                                  "\"output_length\": 5, \"hash_ids\": [1, 2]}\n");
    tool_output_t o = tool_run(KVRT_REPLAY_PATH,
                               (const char *const[]){"--json", "--capacity", "10", "--trace",
                                                     path, NULL});
    cr_assert_eq(o.status, 0, "%s", o.err);
    cJSON *doc = cJSON_Parse(o.out);
    cr_assert_not_null(doc, "not JSON: %s", o.out);
    cr_assert_str_eq(cJSON_GetObjectItem(doc, "trace")->valuestring, path);
    cJSON_Delete(doc);
    tool_output_free(&o);
}

Test(tools_cli, replay_reads_long_lists_whole)
{
    /* Past 255 characters: the last item used to be cut off unseen. */
    char capacities[400], policies[400];
    snprintf(capacities, sizeof(capacities), "1000%0300d", 0);
    memset(capacities + 4, ',', 300);
    strcpy(capacities + 304, "5");
    snprintf(policies, sizeof(policies), "lru%0300dbogus", 0);
    memset(policies + 3, ',', 300);
    const char *trace = KVRT_TRACE_DIR "/conversation_trace.jsonl";
    tool_output_t o = tool_run(KVRT_REPLAY_PATH,
                               (const char *const[]){"--json", "--capacity", capacities,
                                                     "--trace", trace, NULL});
    cr_assert_eq(o.status, 0, "%s", o.err);
    cJSON *doc = cJSON_Parse(o.out);
    cr_assert_not_null(doc, "not JSON: %s", o.out);
    const cJSON *results = cJSON_GetObjectItem(doc, "results");
    cr_assert_eq(cJSON_GetArraySize(results), 2, "both capacities replayed");
    cr_assert_eq(cJSON_GetObjectItem(cJSON_GetArrayItem(results, 1), "capacity")->valueint, 5);
    cJSON_Delete(doc);
    tool_output_free(&o);
    expect(KVRT_REPLAY_PATH, (const char *const[]){"--policy", policies, "--trace", trace, NULL},
           2, "--policy");
}

Test(tools_cli, replay_stops_at_an_oversized_line)
{
    expect(KVRT_REPLAY_PATH,
           (const char *const[]){"--format", "mooncake", "--trace", "/dev/zero", NULL}, 2,
           "/dev/zero:1: line longer than");
}

Test(tools_cli, replay_of_prompts_of_zero_tokens_reports_zero_blocks)
{
    const char *path = write_file("zero.jsonl", "{\"timestamp\": 0, \"input_length\": 0, "
                                                "\"output_length\": 3, \"hash_ids\": []}\n");
    tool_output_t o = tool_run(KVRT_REPLAY_PATH,
                               (const char *const[]){"--json", "--policy", "all", "--trace",
                                                     path, NULL});
    cr_assert_eq(o.status, 0, "%s", o.err);
    cJSON *doc = cJSON_Parse(o.out);
    cr_assert_not_null(doc, "not JSON: %s", o.out);
    const cJSON *r;
    cJSON_ArrayForEach(r, cJSON_GetObjectItem(doc, "results"))
        cr_assert_eq(cJSON_GetObjectItem(r, "total_blocks")->valueint, 0);
    cJSON_Delete(doc);
    tool_output_free(&o);
}

Test(tools_cli, bench_help_lists_every_suite_and_its_options)
{
    tool_output_t list = tool_run(KVRT_BENCH_PATH, (const char *const[]){"--list", NULL});
    tool_output_t help = tool_run(KVRT_BENCH_PATH, (const char *const[]){"--help", NULL});
    cr_assert_eq(list.status, 0);
    cr_assert_eq(help.status, 0);
    int suites = 0;
    for (const char *p = list.out; *p; suites++) {
        char name[32];
        cr_assert_eq(sscanf(p, " %*c %31s", name), 1, "--list: %s", p);
        char *in_help = strstr(help.out, name);
        cr_assert_not_null(in_help, "--help does not list suite %s", name);
        cr_assert_null(strstr(in_help, " ?\n"), "--help: no run time for %s", name);
        p = strchr(p, '\n') + 1; /* the description line */
        p = strchr(p, '\n') + 1;
    }
    cr_assert_geq(suites, 5);
    const char *mentions[] = {"--quick", "--strict", "--repeats", "default", "docs/benchmarks.md"};
    for (size_t i = 0; i < sizeof(mentions) / sizeof(mentions[0]); i++)
        cr_assert(strstr(help.out, mentions[i]), "--help does not mention %s", mentions[i]);
    cr_assert_null(strstr(help.out, "issue"));
    tool_output_free(&list);
    tool_output_free(&help);
    expect(KVRT_BENCH_PATH, (const char *const[]){"--suite", "nope", NULL}, 2, "no suite 'nope'");
    expect(KVRT_BENCH_PATH, (const char *const[]){"--repeats", "0", NULL}, 2, "1..1000");
}
