/*
 * test_sim_cli.c - the kvrt-sim program as a user meets it: --help lists
 * every flag, bad flags and values exit 2 with a message naming them, a
 * bad trace names its line, and a small run prints one JSON object whose
 * figures add up.
 */
#include <cJSON.h>
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "support/tool_run.h"

typedef tool_output_t output_t;

static output_t run(const char *const *args) { return tool_run(KVRT_SIM_PATH, args); }
static void release(output_t *o) { tool_output_free(o); }

static void expect_usage_error(const char *const *args, const char *mentions)
{
    output_t o = run(args);
    cr_assert_eq(o.status, 2, "exit %d for %s; stderr: %s", o.status, args[0], o.err);
    cr_assert(strstr(o.err, mentions) != NULL, "stderr lacks '%s': %s", mentions, o.err);
    cr_assert_eq(o.out[0], '\0', "bad usage printed to stdout: %s", o.out);
    release(&o);
}

Test(sim_cli, help_lists_every_flag)
{
    output_t o = run((const char *const[]){"--help", NULL});
    cr_assert_eq(o.status, 0);
    const char *flags[] = {"--trace", "--trace-format", "--time-scale", "--requests", "--seed",
                           "--rate", "--system-prompts", "--system-len", "--turns",
                           "--user-len", "--output-len", "--max-output", "--max-prompt",
                           "--think-time", "--copy-prob", "--abort-prob", "--abort-after",
                           "--high-priority", "--deadline-ms", "--overhead-us", "--per-seq-us",
                           "--prefill-us-per-token", "--weights-ms", "--kv-read-ns",
                           "--attn-ns-per-pair", "--draft-us", "--kv-gb", "--layers",
                           "--kv-heads", "--head-dim", "--block-tokens", "--max-batch-tokens",
                           "--max-seqs", "--chunk", "--no-watermark", "--max-waiting",
                           "--cache", "--spec", "--spec-k", "--ngram-min", "--ngram-max",
                           "--no-adaptive-draft", "--draft-accept", "--json", "--no-progress",
                           "--host-gb", "--ssd-gb", "--host-gbps", "--host-latency-us",
                           "--ssd-gbps", "--ssd-latency-us", "--sliding-window",
                           "--window-layers", "--window-block-tokens", "--window-kv-gb"};
    for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++)
        cr_assert(strstr(o.out, flags[i]) != NULL, "--help does not mention %s", flags[i]);
    release(&o);
}

Test(sim_cli, bad_flags_and_values_exit_2)
{
    expect_usage_error((const char *const[]){"--bogus", NULL}, "unknown option '--bogus'");
    expect_usage_error((const char *const[]){"--rate", "fast", NULL}, "--rate");
    expect_usage_error((const char *const[]){"--requests", "0", NULL}, "--requests");
    expect_usage_error((const char *const[]){"--requests", "-5", NULL}, "--requests");
    expect_usage_error((const char *const[]){"--copy-prob", "1.5", NULL}, "--copy-prob");
    expect_usage_error((const char *const[]){"--block-tokens", "24", NULL}, "power of two");
    expect_usage_error((const char *const[]){"--spec", "magic", NULL}, "off, ngram or draft");
    expect_usage_error((const char *const[]){"--cache", "fifo", NULL}, "lru, lfu");
    expect_usage_error((const char *const[]){"--ngram-min", "4", "--ngram-max", "2", NULL},
                       "--ngram-min");
    expect_usage_error((const char *const[]){"--kv-gb", "0.001", NULL}, "fewer than 16");
    expect_usage_error((const char *const[]){"--ssd-gb", "10", NULL}, "host tier");
    expect_usage_error((const char *const[]){"--host-gbps", "0", NULL}, "--host-gbps");
    expect_usage_error((const char *const[]){"stray", NULL}, "unexpected argument 'stray'");
    expect_usage_error((const char *const[]){"--window-layers", "4", NULL}, "need --sliding-window");
    expect_usage_error((const char *const[]){"--shared-kv", NULL}, "need --sliding-window");
    expect_usage_error((const char *const[]){"--sliding-window", "0", NULL}, "--sliding-window");
    expect_usage_error((const char *const[]){"--sliding-window", "64", "--window-layers", "40",
                                             NULL}, "1..32 layers");
    expect_usage_error((const char *const[]){"--sliding-window", "64", "--window-kv-gb", "60",
                                             NULL}, "must be below");
    expect_usage_error((const char *const[]){"--sliding-window", "64", "--nodes", "2", NULL},
                       "single-node");
    expect_usage_error((const char *const[]){"--rate", NULL}, "needs a value");
    expect_usage_error((const char *const[]){"--trace", "/nonexistent/trace.jsonl", NULL},
                       "/nonexistent/trace.jsonl");
}

Test(sim_cli, malformed_trace_names_its_line)
{
    char path[] = "/tmp/kvrt-sim-cli-XXXXXX.jsonl";
    int fd = mkstemps(path, 6);
    const char *text =
        "{\"timestamp\": 0, \"input_length\": 10, \"output_length\": 1, \"hash_ids\": [0]}\n"
        "{\"timestamp\": 5, \"input_length\": 10, \"output_length\": 1}\n";
    cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    expect_usage_error((const char *const[]){"--trace", path, NULL}, ":2:");
    unlink(path);
}

Test(sim_cli, json_run_adds_up)
{
    output_t o = run((const char *const[]){"--requests", "60", "--json", "--seed", "4", NULL});
    cr_assert_eq(o.status, 0, "stderr: %s", o.err);
    cJSON *root = cJSON_Parse(o.out);
    cr_assert_not_null(root, "not JSON: %s", o.out);
    const cJSON *req = cJSON_GetObjectItem(root, "requests");
    double submitted = cJSON_GetObjectItem(req, "submitted")->valuedouble;
    double ended = cJSON_GetObjectItem(req, "finished")->valuedouble +
                   cJSON_GetObjectItem(req, "aborted")->valuedouble +
                   cJSON_GetObjectItem(req, "failed")->valuedouble +
                   cJSON_GetObjectItem(req, "rejected")->valuedouble;
    cr_assert_eq(submitted, 60.0);
    cr_assert_eq(ended, 60.0);
    const cJSON *ttft = cJSON_GetObjectItem(root, "ttft_ms");
    cr_assert_gt(cJSON_GetObjectItem(ttft, "p99")->valuedouble, 0.0);
    cr_assert_not_null(cJSON_GetObjectItem(root, "speculation"));
    cr_assert_not_null(cJSON_GetObjectItem(root, "prefix_cache"));
    cr_assert_not_null(cJSON_GetObjectItem(root, "simulator"));
    /* Not a terminal: no progress bar, nothing on stderr. */
    cr_assert_eq(o.err[0], '\0', "stderr: %s", o.err);
    cJSON_Delete(root);
    release(&o);
}

Test(sim_cli, summary_is_readable)
{
    output_t o = run((const char *const[]){"--requests", "40", NULL});
    cr_assert_eq(o.status, 0, "stderr: %s", o.err);
    const char *lines[] = {"requests", "throughput", "TTFT", "TPOT", "prefix cache",
                           "preemptions", "speculation", "simulator"};
    for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++)
        cr_assert(strstr(o.out, lines[i]) != NULL, "summary lacks '%s':\n%s", lines[i], o.out);
    cr_assert(strstr(o.out, "40 submitted") != NULL, "%s", o.out);
    release(&o);
}

Test(sim_cli, tiers_report_ttft_with_and_without)
{
    output_t o = run((const char *const[]){"--requests", "200", "--kv-gb", "1", "--system-len",
                                           "1500", "--host-gb", "2", "--ssd-gb", "20", "--json",
                                           NULL});
    cr_assert_eq(o.status, 0, "stderr: %s", o.err);
    cJSON *root = cJSON_Parse(o.out);
    cr_assert_not_null(root, "not JSON: %s", o.out);
    const cJSON *tiers = cJSON_GetObjectItem(root, "tiers");
    cr_assert_not_null(tiers, "no tiers object: %s", o.out);
    cr_assert_eq(cJSON_GetObjectItem(tiers, "host_blocks")->valuedouble, 953.0);
    const cJSON *without = cJSON_GetObjectItem(tiers, "ttft_ms_without_tiers");
    cr_assert_not_null(without);
    cr_assert_eq(cJSON_GetObjectItem(without, "count")->valuedouble,
                 cJSON_GetObjectItem(cJSON_GetObjectItem(root, "ttft_ms"), "count")->valuedouble);
    cr_assert_not_null(cJSON_GetObjectItem(tiers, "onloaded_blocks_by_tier"));
    cJSON_Delete(root);
    release(&o);
    o = run((const char *const[]){"--requests", "40", "--host-gb", "1", NULL});
    cr_assert_eq(o.status, 0, "stderr: %s", o.err);
    cr_assert(strstr(o.out, "TTFT no tier") && strstr(o.out, "onload"), "%s", o.out);
    release(&o);
}

Test(sim_cli, hybrid_models_report_each_group_and_the_full_size_run)
{
    output_t o = run((const char *const[]){"--requests", "100", "--kv-gb", "1", "--system-len",
                                           "1500", "--sliding-window", "256", "--window-layers",
                                           "24", "--window-kv-gb", "0.2", "--chunk", "512",
                                           "--abort-prob", "0", "--json", NULL});
    cr_assert_eq(o.status, 0, "stderr: %s", o.err);
    cJSON *root = cJSON_Parse(o.out);
    cr_assert_not_null(root, "not JSON: %s", o.out);
    const cJSON *h = cJSON_GetObjectItem(root, "hybrid");
    cr_assert_not_null(h, "no hybrid object: %s", o.out);
    cr_assert_eq(cJSON_GetObjectItem(h, "window_layers")->valuedouble, 24.0);
    /* 0.2 GB of 24 layers' 16-token blocks (1.5 MiB each), and the rest
     * for the other 8 layers' (0.5 MiB each). */
    cr_assert_eq(cJSON_GetObjectItem(h, "window_blocks")->valuedouble, 127.0);
    cr_assert_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(root, "kv"), "blocks")->valuedouble,
                 1526.0);
    /* Chunks of 512: each request needs 256 + 512 tokens' blocks of the
     * window group (+1), so every request runs. */
    cr_assert_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(root, "requests"), "rejected")
                     ->valuedouble, 0.0, "%s", o.out);
    const cJSON *full = cJSON_GetObjectItem(h, "full_kv");
    cr_assert_not_null(full);
    cr_assert_eq(cJSON_GetObjectItem(full, "blocks")->valuedouble, 476.0);
    /* Full-size K/V holds 476 * 16 tokens: a longer request cannot run. */
    double finished = cJSON_GetObjectItem(full, "finished")->valuedouble;
    cr_assert_eq(finished + cJSON_GetObjectItem(full, "rejected")->valuedouble, 100.0);
    cr_assert_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(full, "ttft_ms"), "count")->valuedouble,
                 finished);
    cJSON_Delete(root);
    release(&o);
    o = run((const char *const[]){"--requests", "40", "--sliding-window", "128", NULL});
    cr_assert_eq(o.status, 0, "stderr: %s", o.err);
    cr_assert(strstr(o.out, "window of 128 on 16 of 32 layers") && strstr(o.out, "full-size KV") &&
              strstr(o.out, "TTFT full KV"), "%s", o.out);
    release(&o);
    /* One pool for every group: Gemma 3's 5:1 in groups of 5 layers. */
    o = run((const char *const[]){"--requests", "40", "--sliding-window", "1024",
                                  "--window-layers", "27", "--shared-kv", NULL});
    cr_assert_eq(o.status, 0, "stderr: %s", o.err);
    cr_assert(strstr(o.out, "in 7 cache groups sharing one pool") &&
              strstr(o.out, "one shared KV pool 60.0 GB") &&
              strstr(o.out, "for 7 groups of 5 layers (3 padded)") && strstr(o.out, "full-size KV"),
              "%s", o.out);
    release(&o);
    o = run((const char *const[]){"--requests", "40", "--sliding-window", "128", "--shared-kv",
                                  "--json", NULL});
    cr_assert_eq(o.status, 0, "stderr: %s", o.err);
    root = cJSON_Parse(o.out);
    cr_assert_not_null(root, "not JSON: %s", o.out);
    h = cJSON_GetObjectItem(root, "hybrid");
    cr_assert(cJSON_IsTrue(cJSON_GetObjectItem(h, "shared_pool")), "%s", o.out);
    cr_assert_eq(cJSON_GetObjectItem(h, "groups")->valuedouble, 2.0);
    cr_assert_eq(cJSON_GetObjectItem(h, "shared_group_layers")->valuedouble, 16.0);
    /* 60 GB of 16 layers' 16-token blocks (1 MiB each). */
    cr_assert_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(root, "kv"), "blocks")->valuedouble,
                 57220.0);
    cJSON_Delete(root);
    release(&o);
}
