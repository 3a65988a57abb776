/*
 * soak_report.c - kvrt-soak's verdict and its three forms (soak_report.h).
 */
#include "soak_report.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

const char *const soak_fault_names[SOAK_FAULT_KINDS] = {
    "kill", "link", "netem", "slow", "corrupt", "diskfull", "etcd", "stop", "loss"};

/* Seconds per window of the time series in --json and the plots. */
#define WINDOW_S 10u

soak_bucket_t *soak_bucket_at(soak_report_t *r, double t)
{
    if (!(t >= 0.0) || t >= SOAK_SERIES_MAX)
        return NULL;
    uint32_t i = (uint32_t)t;
    if (i + 1 > r->num_buckets)
        r->num_buckets = i + 1;
    return &r->series[i];
}

int soak_report_ok(const soak_report_t *r, FILE *out)
{
    struct {
        int broken;
        const char *what;
    } checks[] = {
        {r->finished + r->aborted + r->failed + r->lost != r->submitted || r->lost > 0,
         "every submitted request ended exactly once"},
        {r->ended_twice > 0, "no request ended twice"},
        {r->hung > 0, "no request outlived its timeout"},
        {r->counters.corrupt_used > 0, "no corrupt KV used"},
        {r->counters.handoff_bad > 0, "every handed-over block held its content"},
        {r->counters.onload_bad > 0, "every onloaded block held its content"},
        {r->handoffs_left > 0, "no hand-off or send left at the end"},
        {r->leaked_blocks > 0, "no blocks in use at the end (apart from the caches)"},
        {r->leaked_registrations > 0, "no transfer registrations at the end"},
        {r->outstanding_transfers > 0, "no outstanding transfers at the end"},
        {r->unfinished > 0, "no request left inside a node"},
        {r->verify_failures > 0, "pool and cache verify pass on every node"},
        {r->missing_reports > 0, "every surviving node reported"},
        {r->node_crashes > 0, "no node died unless killed"},
        {r->max_rss_bytes > r->rss_limit_bytes, "every node's RSS within its bound"},
        {r->stale_directory_nodes > 0,
         "no directory entry for a dead node after its lease expired"},
    };
    int ok = 1;
    for (size_t i = 0; i < sizeof(checks) / sizeof(checks[0]); i++) {
        if (out)
            fprintf(out, "  [%s] %s\n", checks[i].broken ? "FAIL" : " ok ", checks[i].what);
        ok &= !checks[i].broken;
    }
    return ok;
}

typedef struct window {
    double t0, req_per_s, hit_rate;
    sim_latency_t ttft;
} window_t;

/* Folds the per-second buckets into WINDOW_S windows; returns how many. */
static uint32_t windows(const soak_report_t *r, window_t *out, uint32_t max)
{
    uint32_t n = 0;
    for (uint32_t b = 0; b < r->num_buckets && n < max; b += WINDOW_S, n++) {
        sim_samples_t s = {0};
        uint64_t fin = 0, hit = 0, prompt = 0;
        uint32_t end = b + WINDOW_S < r->num_buckets ? b + WINDOW_S : r->num_buckets;
        for (uint32_t i = b; i < end; i++) {
            fin += r->series[i].finished;
            hit += r->series[i].hit_tokens;
            prompt += r->series[i].prompt_tokens;
            for (size_t k = 0; k < r->series[i].ttft_ms.count; k++)
                sim_samples_add(&s, r->series[i].ttft_ms.values[k]);
        }
        out[n] = (window_t){.t0 = b, .req_per_s = (double)fin / (double)(end - b),
                            .hit_rate = prompt ? (double)hit / (double)prompt : 0.0};
        sim_latency_summarize(&s, &out[n].ttft);
        sim_samples_free(&s);
    }
    return n;
}

void soak_report_print(const soak_report_t *r, FILE *out)
{
    fprintf(out, "kvrt-soak: %u nodes over %s, %.0f s\n", r->nodes, r->network, r->duration_s);
    fprintf(out, "requests: %llu submitted, %llu finished, %llu aborted, %llu failed "
                 "(%llu on a lost node), %llu lost, %llu hung\n",
            (unsigned long long)r->submitted, (unsigned long long)r->finished,
            (unsigned long long)r->aborted, (unsigned long long)r->failed,
            (unsigned long long)r->failed_node_lost, (unsigned long long)r->lost,
            (unsigned long long)r->hung);
    fprintf(out, "faults:");
    for (int k = 0; k < SOAK_FAULT_KINDS; k++) {
        if (!r->available[k] && r->why_not[k])
            fprintf(out, " %s=not available (%s)", soak_fault_names[k], r->why_not[k]);
        else if (!r->available[k])
            fprintf(out, " %s=not available", soak_fault_names[k]);
        else if (!r->enabled[k])
            fprintf(out, " %s=off", soak_fault_names[k]);
        else
            fprintf(out, " %s=%llu", soak_fault_names[k], (unsigned long long)r->faults[k]);
    }
    if (r->faults[SOAK_FAULT_LOSS])
        fprintf(out, " (loss: %llu packets dropped, %llu delayed and reordered)",
                (unsigned long long)r->loss_dropped, (unsigned long long)r->loss_delayed);
    const soak_node_counters_t *c = &r->counters;
    fprintf(out, "\npulls: %llu (%llu failed), %llu blocks pulled, %llu stale; corrupt "
                 "blocks: %llu injected, %llu rejected, %llu used; %llu blocks verified at use\n",
            (unsigned long long)c->pulls, (unsigned long long)c->pull_failures,
            (unsigned long long)c->blocks_pulled, (unsigned long long)c->blocks_stale,
            (unsigned long long)c->corrupt_injected, (unsigned long long)c->corrupt_rejected,
            (unsigned long long)c->corrupt_used, (unsigned long long)c->blocks_checked);
    fprintf(out, "SSD tier: %llu blocks offloaded, %llu dropped, %llu errors\n",
            (unsigned long long)c->ssd_offloads, (unsigned long long)c->ssd_drops,
            (unsigned long long)c->ssd_errors);
    fprintf(out, "onloads: %llu admissions, %llu blocks from host, %llu from SSD (%llu with "
                 "the disk full, while it had %llu SSD errors), %llu given up at their "
                 "deadline, %llu bad\n",
            (unsigned long long)c->onloads, (unsigned long long)c->onload_host_blocks,
            (unsigned long long)c->onload_ssd_blocks,
            (unsigned long long)r->diskfull_ssd_onloads,
            (unsigned long long)r->diskfull_ssd_errors,
            (unsigned long long)c->onload_timeouts, (unsigned long long)c->onload_bad);
    fprintf(out, "hand-offs: %llu accepted, %llu landed, %llu recomputed, %llu failed; %llu "
                 "blocks verified, %llu bad; %llu tickets relayed (%llu undeliverable); "
                 "prefills %llu, sends %llu ok, %llu failed, %llu past their deadline; %llu "
                 "kill/stop faults struck a prefill node mid-hand-off\n",
            (unsigned long long)c->handoffs, (unsigned long long)c->handoffs_landed,
            (unsigned long long)c->handoffs_recomputed, (unsigned long long)c->handoffs_failed,
            (unsigned long long)c->handoff_blocks, (unsigned long long)c->handoff_bad,
            (unsigned long long)r->tickets_relayed, (unsigned long long)r->tickets_dropped,
            (unsigned long long)c->prefills, (unsigned long long)c->prefill_sends_ok,
            (unsigned long long)c->prefill_sends_failed,
            (unsigned long long)c->prefills_expired, (unsigned long long)r->handoff_fault_hits);
    fprintf(out, "cluster: %llu requests routed by the directory's router, %llu KV events "
                 "applied, %llu resyncs, %llu dead-node directory checks\n",
            (unsigned long long)r->routed, (unsigned long long)r->events_applied,
            (unsigned long long)r->resyncs, (unsigned long long)r->directory_checks);
    sim_samples_t all = r->ttft_all;
    sim_latency_t t;
    sim_latency_summarize(&all, &t);
    fprintf(out, "TTFT ms: p50 %.1f p99 %.1f max %.1f; max RSS %.1f MiB (bound %.0f MiB)\n",
            t.p50, t.p99, t.max, (double)r->max_rss_bytes / 1048576.0,
            (double)r->rss_limit_bytes / 1048576.0);
    fprintf(out, "invariants:\n");
    int ok = soak_report_ok(r, out);
    fprintf(out, "%s\n", ok ? "PASS: every invariant held" : "FAIL: an invariant broke");
}

void soak_report_json(const soak_report_t *r, FILE *out)
{
    const soak_node_counters_t *c = &r->counters;
    fprintf(out, "{\n  \"network\": \"%s\",\n  \"nodes\": %u,\n  \"duration_s\": %.1f,\n",
            r->network, r->nodes, r->duration_s);
    fprintf(out, "  \"requests\": {\"submitted\": %llu, \"finished\": %llu, \"aborted\": %llu, "
                 "\"failed\": %llu, \"failed_node_lost\": %llu, \"lost\": %llu, \"hung\": %llu, "
                 "\"ended_twice\": %llu},\n",
            (unsigned long long)r->submitted, (unsigned long long)r->finished,
            (unsigned long long)r->aborted, (unsigned long long)r->failed,
            (unsigned long long)r->failed_node_lost, (unsigned long long)r->lost,
            (unsigned long long)r->hung, (unsigned long long)r->ended_twice);
    fprintf(out, "  \"faults_injected\": {");
    for (int k = 0; k < SOAK_FAULT_KINDS; k++) {
        fprintf(out, "%s\"%s\": ", k ? ", " : "", soak_fault_names[k]);
        if (r->available[k])
            fprintf(out, "%llu", (unsigned long long)r->faults[k]);
        else
            fprintf(out, "\"not available\"");
    }
    fprintf(out, "},\n  \"faults_not_available\": {");
    for (int k = 0, first = 1; k < SOAK_FAULT_KINDS; k++)
        if (!r->available[k]) {
            fprintf(out, "%s\"%s\": \"%s\"", first ? "" : ", ", soak_fault_names[k],
                    r->why_not[k] ? r->why_not[k] : "");
            first = 0;
        }
    fprintf(out, "},\n  \"loss\": {\"packets_dropped\": %llu, \"packets_delayed\": %llu",
            (unsigned long long)r->loss_dropped, (unsigned long long)r->loss_delayed);
    fprintf(out, "},\n  \"leaked_blocks\": %llu,\n  \"leaked_registrations\": %llu,\n"
                 "  \"outstanding_transfers\": %llu,\n  \"corrupt_deliveries\": %llu,\n"
                 "  \"corrupt_rejected\": %llu,\n  \"corrupt_injected\": %llu,\n"
                 "  \"blocks_verified_at_use\": %llu,\n  \"verify_failures\": %llu,\n"
                 "  \"pulls\": {\"started\": %llu, \"failed\": %llu, \"blocks\": %llu, "
                 "\"stale\": %llu},\n  \"block_copies\": %llu,\n  \"max_rss_bytes\": %llu,\n"
                 "  \"rss_limit_bytes\": %llu,\n"
                 "  \"cluster\": {\"routed\": %llu, \"events_applied\": %llu, \"resyncs\": %llu, "
                 "\"directory_checks\": %llu, \"stale_directory_nodes\": %llu},\n"
                 "  \"ssd_tier\": {\"offloads\": %llu, \"drops\": %llu, \"errors\": %llu},\n",
            (unsigned long long)r->leaked_blocks, (unsigned long long)r->leaked_registrations,
            (unsigned long long)r->outstanding_transfers, (unsigned long long)c->corrupt_used,
            (unsigned long long)c->corrupt_rejected, (unsigned long long)c->corrupt_injected,
            (unsigned long long)c->blocks_checked, (unsigned long long)r->verify_failures,
            (unsigned long long)c->pulls, (unsigned long long)c->pull_failures,
            (unsigned long long)c->blocks_pulled, (unsigned long long)c->blocks_stale,
            (unsigned long long)c->block_copies, (unsigned long long)r->max_rss_bytes,
            (unsigned long long)r->rss_limit_bytes,
            (unsigned long long)r->routed, (unsigned long long)r->events_applied,
            (unsigned long long)r->resyncs, (unsigned long long)r->directory_checks,
            (unsigned long long)r->stale_directory_nodes, (unsigned long long)c->ssd_offloads,
            (unsigned long long)c->ssd_drops, (unsigned long long)c->ssd_errors);
    fprintf(out, "  \"onloads\": {\"admissions\": %llu, \"host_blocks\": %llu, "
                 "\"ssd_blocks\": %llu, \"ssd_blocks_disk_full\": %llu, "
                 "\"ssd_errors_disk_full\": %llu, \"timeouts\": %llu, "
                 "\"bad_blocks\": %llu},\n",
            (unsigned long long)c->onloads, (unsigned long long)c->onload_host_blocks,
            (unsigned long long)c->onload_ssd_blocks,
            (unsigned long long)r->diskfull_ssd_onloads,
            (unsigned long long)r->diskfull_ssd_errors,
            (unsigned long long)c->onload_timeouts, (unsigned long long)c->onload_bad);
    fprintf(out, "  \"handoffs\": {\"accepted\": %llu, \"landed\": %llu, \"recomputed\": "
                 "%llu, \"failed\": %llu, \"blocks_verified\": %llu, \"bad_blocks\": %llu, "
                 "\"tickets_relayed\": %llu, \"tickets_dropped\": %llu, \"prefills\": %llu, "
                 "\"sends_ok\": %llu, \"sends_failed\": %llu, \"expired\": %llu, "
                 "\"fault_hits\": %llu, "
                 "\"left\": %llu},\n",
            (unsigned long long)c->handoffs, (unsigned long long)c->handoffs_landed,
            (unsigned long long)c->handoffs_recomputed, (unsigned long long)c->handoffs_failed,
            (unsigned long long)c->handoff_blocks, (unsigned long long)c->handoff_bad,
            (unsigned long long)r->tickets_relayed, (unsigned long long)r->tickets_dropped,
            (unsigned long long)c->prefills, (unsigned long long)c->prefill_sends_ok,
            (unsigned long long)c->prefill_sends_failed, (unsigned long long)c->prefills_expired,
            (unsigned long long)r->handoff_fault_hits, (unsigned long long)r->handoffs_left);
    window_t w[SOAK_SERIES_MAX / WINDOW_S + 1];
    uint32_t nw = windows(r, w, SOAK_SERIES_MAX / WINDOW_S + 1);
    fprintf(out, "  \"window_s\": %u,\n  \"series\": [", WINDOW_S);
    for (uint32_t i = 0; i < nw; i++)
        fprintf(out, "%s\n    {\"t\": %.0f, \"req_per_s\": %.3f, \"hit_rate\": %.4f, "
                     "\"ttft_p50_ms\": %.2f, \"ttft_p99_ms\": %.2f}",
                i ? "," : "", w[i].t0, w[i].req_per_s, w[i].hit_rate, w[i].ttft.p50,
                w[i].ttft.p99);
    fprintf(out, "\n  ],\n  \"fault_events\": [");
    for (uint32_t i = 0; i < r->num_events; i++)
        fprintf(out, "%s{\"t\": %.2f, \"kind\": \"%s\", \"node\": %u}", i ? ", " : "",
                r->events[i].t, soak_fault_names[r->events[i].kind], r->events[i].node);
    fprintf(out, "],\n  \"ok\": %s\n}\n", soak_report_ok(r, NULL) ? "true" : "false");
}

int soak_report_plot(const soak_report_t *r, const char *dir, const char *script)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/soak.json", dir);
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "kvrt-soak: cannot write %s\n", path);
        return -1;
    }
    soak_report_json(r, f);
    fclose(f);
    /* The child shares stdout: what is buffered goes first. */
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        execl("/usr/bin/python3", "python3", script, path, dir, (char *)NULL);
        _exit(127);
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
        WEXITSTATUS(status) != 0) {
        fprintf(stderr, "kvrt-soak: plotting with %s failed (python3-matplotlib?)\n", script);
        return -1;
    }
    return 0;
}

void soak_report_free(soak_report_t *r)
{
    for (uint32_t i = 0; i < SOAK_SERIES_MAX; i++)
        sim_samples_free(&r->series[i].ttft_ms);
    sim_samples_free(&r->ttft_all);
}
