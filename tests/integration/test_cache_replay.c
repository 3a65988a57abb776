/*
 * test_cache_replay.c - kvrt-replay end to end on the shipped Mooncake
 * conversation trace: LRU reproduces the reference hit counts exactly
 * (bench/traces/README.md), LFU-DA beats LRU at small capacities, the
 * clairvoyant bound (belady) bounds every policy, a host tier adds hits
 * reported by tier, and a bad
 * trace gives exit status 1 and a message naming the line, never a crash.
 */
#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test_helpers.h"

/* Runs kvrt-replay with args; returns its exit status (-1 on a signal) and
 * its stdout (or stderr) in out. */
static int replay(const char *args, bool want_stderr, char *out, size_t size)
{
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "'%s' %s %s", KVRT_REPLAY_PATH, args,
             want_stderr ? "2>&1 >/dev/null" : "2>/dev/null");
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p);
    size_t n = fread(out, 1, size - 1, p);
    out[n] = '\0';
    int status = pclose(p);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static uint64_t hits_of(const cJSON *results, const char *policy, int capacity)
{
    const cJSON *r;
    cJSON_ArrayForEach(r, results) {
        const cJSON *cap = cJSON_GetObjectItem(r, "capacity");
        bool same_cap = capacity ? (cJSON_IsNumber(cap) && cap->valueint == capacity)
                                 : cJSON_IsNull(cap);
        if (same_cap && !strcmp(cJSON_GetObjectItem(r, "policy")->valuestring, policy)) {
            cr_assert_eq(cJSON_GetObjectItem(r, "total_blocks")->valuedouble, 288500);
            return (uint64_t)cJSON_GetObjectItem(r, "hit_blocks")->valuedouble;
        }
    }
    cr_assert_fail("no result for %s at %d", policy, capacity);
    return 0;
}

Test(cache_replay, lru_reproduces_the_reference_counts, .timeout = 120)
{
    static char out[1 << 16];
    int rc = replay("--json --capacity unbounded,10000,1000 --policy lru,lfu-aged", false, out,
                    sizeof(out));
    cr_assert_eq(rc, 0, "kvrt-replay failed: %s", out);
    cJSON *doc = cJSON_Parse(out);
    cr_assert_not_null(doc, "not JSON: %s", out);
    const cJSON *results = cJSON_GetObjectItem(doc, "results");
    cr_assert_eq(cJSON_GetArraySize(results), 6);
    cr_assert_eq(hits_of(results, "lru", 0), 105710);
    cr_assert_eq(hits_of(results, "lru", 10000), 60921);
    cr_assert_eq(hits_of(results, "lru", 1000), 12831);
    /* Unbounded, every policy sees the same hits: nothing is evicted. */
    cr_assert_eq(hits_of(results, "lfu-aged", 0), 105710);
    cr_assert_gt(hits_of(results, "lfu-aged", 10000), 60921);
    cr_assert_gt(hits_of(results, "lfu-aged", 1000), 12831);
    cJSON_Delete(doc);
}

Test(cache_replay, bad_traces_fail_cleanly_naming_the_line)
{
    char dir[] = "/tmp/kvrt-replay-XXXXXX", path[600], args[700], out[4096];
    cr_assert_not_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/bad.jsonl", dir);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs("{\"timestamp\": 0, \"input_length\": 600, \"output_length\": 5, \"hash_ids\": [1, 2]}\n"
          "{\"timestamp\": 1, \"input_length\": 600, \"output_length\": 5, \"hash_ids\": [1]}\n",
          f);
    fclose(f);
    snprintf(args, sizeof(args), "--trace '%s'", path);
    cr_assert_eq(replay(args, true, out, sizeof(out)), 1, "%s", out);
    cr_assert(strstr(out, "bad.jsonl:2:"), "%s", out);
    unlink(path);
    rmdir(dir);
    cr_assert_eq(replay("--capacity -5", true, out, sizeof(out)), 2, "%s", out);
    cr_assert_eq(replay("--policy mru", true, out, sizeof(out)), 2, "%s", out);
}

Test(cache_replay, azure_trace_replays_with_no_prefix_hits, .timeout = 60)
{
    static char out[1 << 14];
    int rc = replay("--json --trace " KVRT_TRACE_DIR "/AzureLLMInferenceTrace_code.csv "
                    "--capacity 1000", false, out, sizeof(out));
    cr_assert_eq(rc, 0, "%s", out);
    cJSON *doc = cJSON_Parse(out);
    cr_assert_not_null(doc, "%s", out);
    const cJSON *r = cJSON_GetArrayItem(cJSON_GetObjectItem(doc, "results"), 0);
    cr_assert_eq(cJSON_GetObjectItem(r, "hit_blocks")->valuedouble, 0);
    cr_assert_gt(cJSON_GetObjectItem(r, "total_blocks")->valuedouble, 8819);
    cJSON_Delete(doc);
}

Test(cache_replay, belady_bounds_every_policy_and_lru_leaf_never_loses_to_lru, .timeout = 120)
{
    static char out[1 << 16];
    int rc = replay("--json --capacity 10000,1000 --policy lru,lru-leaf,adaptive,belady", false,
                    out, sizeof(out));
    cr_assert_eq(rc, 0, "kvrt-replay failed: %s", out);
    cJSON *doc = cJSON_Parse(out);
    cr_assert_not_null(doc, "not JSON: %s", out);
    const cJSON *results = cJSON_GetObjectItem(doc, "results");
    int caps[] = {10000, 1000};
    for (int i = 0; i < 2; i++) {
        uint64_t bound = hits_of(results, "belady", caps[i]);
        cr_assert_geq(hits_of(results, "lru-leaf", caps[i]), hits_of(results, "lru", caps[i]));
        cr_assert_geq(bound, hits_of(results, "lru", caps[i]));
        cr_assert_geq(bound, hits_of(results, "lru-leaf", caps[i]));
        cr_assert_geq(bound, hits_of(results, "adaptive", caps[i]));
    }
    cr_assert_eq(hits_of(results, "belady", 1000), 55019, "the bound at 1,000 blocks moved");
    cJSON_Delete(doc);
}

Test(cache_replay, a_host_tier_adds_hits_and_reports_them_by_tier, .timeout = 120)
{
    static char out[1 << 16];
    int rc = replay("--json --capacity 10000 --host-capacity 50000", false, out, sizeof(out));
    cr_assert_eq(rc, 0, "kvrt-replay failed: %s", out);
    cJSON *doc = cJSON_Parse(out);
    cr_assert_not_null(doc, "not JSON: %s", out);
    const cJSON *r = cJSON_GetArrayItem(cJSON_GetObjectItem(doc, "results"), 0);
    const cJSON *by = cJSON_GetObjectItem(r, "hit_blocks_by_tier");
    cr_assert_not_null(by, "no hit_blocks_by_tier");
    double gpu = cJSON_GetObjectItem(by, "gpu")->valuedouble;
    double host = cJSON_GetObjectItem(by, "host")->valuedouble;
    double ssd = cJSON_GetObjectItem(by, "ssd")->valuedouble;
    double hits = cJSON_GetObjectItem(r, "hit_blocks")->valuedouble;
    cr_assert_eq(gpu + host + ssd, hits);
    cr_assert_eq(ssd, 0);
    cr_assert_gt(host, 0);
    cr_assert_gt(hits, 60921, "a host tier must add hits to LRU's 60,921");
    cJSON_Delete(doc);
}
