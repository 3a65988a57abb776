/*
 * sim_report.c - kvrt-sim's summary, JSON and progress bar (sim_report.h).
 */
#include "sim_report.h"

#include "sim_kv.h"

#include <cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *policy_name(kvrt_cache_policy_t p)
{
    switch (p) {
    case KVRT_CACHE_LFU: return "lfu";
    case KVRT_CACHE_LFU_AGED: return "lfu-aged";
    default: return "lru";
    }
}

static const char *spec_name(sim_spec_mode_t m)
{
    switch (m) {
    case SIM_SPEC_NGRAM: return "ngram";
    case SIM_SPEC_DRAFT: return "draft";
    default: return "off";
    }
}

/* 1234567 -> "1,234,567" (buf of 32). */
static const char *count(char *buf, double value)
{
    char digits[32];
    snprintf(digits, sizeof digits, "%.0f", value);
    size_t n = strlen(digits), o = 0;
    for (size_t i = 0; i < n; i++) {
        if (i > 0 && digits[i - 1] != '-' && (n - i) % 3 == 0)
            buf[o++] = ',';
        buf[o++] = digits[i];
    }
    buf[o] = '\0';
    return buf;
}

static double ratio(double num, double den) { return den > 0.0 ? num / den : 0.0; }

/* Milliseconds below 10 s, seconds above: "12.3 ms", "4782.0 s". */
static const char *duration(char *buf, double ms)
{
    if (ms < 10000.0)
        snprintf(buf, 32, "%.1f ms", ms);
    else
        snprintf(buf, 32, "%.1f s", ms / 1000.0);
    return buf;
}

static void latency_line(FILE *out, const char *name, const sim_latency_t *l)
{
    char a[32], b[32], c[32], d[32];
    if (l->count == 0) {
        fprintf(out, "%-13s (no samples)\n", name);
        return;
    }
    fprintf(out, "%-13s p50 %10s   p90 %10s   p99 %10s   mean %10s\n", name,
            duration(a, l->p50), duration(b, l->p90), duration(c, l->p99),
            duration(d, l->mean));
}

/* The tiers' lines: what they held and brought back, and TTFT without them. */
static void tier_text(FILE *out, const sim_config_t *c, const sim_results_t *r)
{
    const sim_tier_results_t *t = &r->tier;
    char a[32], b[32], d[32], f[32], g[32];
    fprintf(out, "tiers         host %.0f GB (%s blocks, %g GB/s), SSD %.0f GB (%s blocks, "
                 "%g GB/s); %s offloaded, %s written back\n",
            c->tier.host_gb, count(a, t->host_blocks), c->tier.host_gbps, c->tier.ssd_gb,
            count(b, t->ssd_blocks), c->tier.ssd_gbps, count(d, (double)t->offloaded_blocks),
            count(f, (double)t->written_back_blocks));
    fprintf(out, "onload        %s requests waited for KV: %s blocks from host, %s from SSD, "
                 "%.1f ms mean (max %.1f); %s recomputed instead (faster), %s without room\n",
            count(a, (double)t->onloads), count(b, (double)t->host_hit_blocks),
            count(d, (double)t->ssd_hit_blocks), t->onload_ms_mean, t->onload_ms_max,
            count(f, (double)t->recompute_cheaper), count(g, (double)t->no_room));
    if (r->without_tiers) {
        latency_line(out, "TTFT no tier", &r->ttft_no_tier_ms);
        fprintf(out, "computed      %s prompt tokens with tiers, %s without (%.1f%% less)\n",
                count(a, (double)r->prefill_tokens), count(b, (double)r->prefill_tokens_no_tier),
                100.0 * (1.0 - ratio((double)r->prefill_tokens,
                                     (double)r->prefill_tokens_no_tier)));
    }
}

static double percent_used(uint32_t peak, uint32_t blocks)
{
    return 100.0 * ratio(peak, blocks > 0 ? blocks - 1 : 0); /* kvrt's null block */
}

/* A hybrid model's lines: each group's memory, and the run with full-size
 * K/V beside this one. */
static void hybrid_text(FILE *out, const sim_config_t *c, const sim_results_t *r)
{
    char a[32], b[32], d[32], f[32];
    if (r->shared_kv_groups) {
        const uint32_t per = r->shared_group_layers;
        const uint32_t padded = (r->shared_kv_groups * per) - c->num_layers;
        double gb = (double)r->kv_blocks * 1e-9 *
                    (double)sim_kv_block_bytes(c, per, r->block_tokens);
        fprintf(out, "hybrid        window of %u on %u of %u layers; one shared KV pool %.1f GB "
                     "= %s blocks x %u (peak %.1f%% in use) for %u groups of %u layers (%u "
                     "padded)\n",
                c->sliding_window, c->window_layers, c->num_layers, gb,
                count(a, r->kv_blocks), r->block_tokens,
                percent_used(r->peak_used_blocks, r->kv_blocks), r->shared_kv_groups, per,
                padded);
    } else if (r->window_blocks) {
        double full_gb = (double)r->kv_blocks * 1e-9 *
                         (double)sim_kv_block_bytes(c, c->num_layers - c->window_layers,
                                                    r->block_tokens);
        double win_gb = (double)r->window_blocks * 1e-9 *
                        (double)sim_kv_block_bytes(c, c->window_layers,
                                                   r->window_block_tokens);
        fprintf(out, "hybrid        window of %u on %u of %u layers; full-attention KV %.1f GB "
                     "= %s blocks x %u (peak %.1f%% in use), window KV %.1f GB = %s blocks x "
                     "%u (peak %.1f%%)\n",
                c->sliding_window, c->window_layers, c->num_layers, full_gb,
                count(a, r->kv_blocks), r->block_tokens,
                percent_used(r->peak_used_blocks, r->kv_blocks), win_gb,
                count(b, r->window_blocks), r->window_block_tokens,
                percent_used(r->window_peak_used_blocks, r->window_blocks));
    } else {
        fprintf(out, "hybrid        window of %u on all %u layers, one window group\n",
                c->sliding_window, c->num_layers);
    }
    if (!r->without_hybrid)
        return;
    const struct sim_full_kv_run *k = &r->full_kv;
    double tps = ratio((double)r->output_tokens, r->sim_s);
    fprintf(out, "full-size KV  the same run holding every layer's KV for every token (%s "
                 "blocks x %u, peak %.1f%%): %s output tok/s (hybrid %+.1f%%), %.1f seqs per "
                 "step (hybrid %.1f), %s preemptions (hybrid %s), %llu rejected (hybrid "
                 "%llu)\n",
            count(a, k->kv_blocks), c->block_tokens,
            percent_used(k->peak_used_blocks, k->kv_blocks), count(b, k->output_tokens_per_s),
            100.0 * (ratio(tps, k->output_tokens_per_s) - 1.0), k->mean_batch_seqs,
            r->mean_batch_seqs, count(d, (double)k->preemptions),
            count(f, (double)r->preemptions), (unsigned long long)k->rejected,
            (unsigned long long)r->rejected);
    latency_line(out, "TTFT full KV", &k->ttft_ms);
    latency_line(out, "TPOT full KV", &k->tpot_ms);
}

void sim_report_text(FILE *out, const char *workload, const sim_config_t *c,
                     const sim_results_t *r)
{
    char a[32], b[32], d[32], f[32], g[32];
    fprintf(out, "kvrt-sim      %s\n", workload);
    fprintf(out, "model         %u layers x %u KV heads x %u fp16 (Llama-3.1-8B shape), "
                 "one H100 by the cost model; KV %.0f GB", c->num_layers, c->num_kv_heads,
            c->head_dim, c->kv_gb);
    if (r->shared_kv_groups)
        fprintf(out, " in %u cache groups sharing one pool (hybrid, below)\n",
                r->shared_kv_groups);
    else if (r->window_blocks)
        fprintf(out, " in two cache groups (hybrid, below)\n");
    else
        fprintf(out, " = %s blocks x %u tokens\n", count(a, r->kv_blocks), r->block_tokens);
    fprintf(out, "scheduler     %u tokens/step, %u seqs; prefix cache %s; speculation %s",
            c->max_batch_tokens, c->max_seqs, c->prefix_cache ? policy_name(c->cache_policy)
                                                               : "off",
            spec_name(c->spec));
    if (c->spec != SIM_SPEC_OFF)
        fprintf(out, " k=%u", c->spec_k);
    fprintf(out, "\n\n");
    fprintf(out, "requests      %s submitted: %s finished (%s stop, %s length), %s aborted, "
                 "%llu failed, %llu rejected\n",
            count(a, (double)r->submitted), count(b, (double)(r->finished_stop +
                                                              r->finished_length)),
            count(d, (double)r->finished_stop), count(f, (double)r->finished_length),
            count(g, (double)r->aborted),
            (unsigned long long)r->failed, (unsigned long long)r->rejected);
    fprintf(out, "time          %.1f s simulated, GPU busy %.1f%%, %s steps (%.2f ms, %.1f "
                 "seqs each)\n",
            r->sim_s, 100.0 * ratio(r->busy_s, r->sim_s), count(a, (double)r->steps),
            r->mean_step_ms, r->mean_batch_seqs);
    fprintf(out, "throughput    %s prompt tok/s (%s computed), %s output tok/s\n",
            count(a, ratio((double)r->prompt_tokens, r->sim_s)),
            count(b, ratio((double)r->prefill_tokens, r->sim_s)),
            count(d, ratio((double)r->output_tokens, r->sim_s)));
    latency_line(out, "TTFT", &r->ttft_ms);
    latency_line(out, "TPOT", &r->tpot_ms);
    latency_line(out, "end to end", &r->e2e_ms);
    if (c->prefix_cache)
        fprintf(out, "prefix cache  %.1f%% hit (%s of %s tokens offered at admission), %s "
                     "evictions\n",
                100.0 * ratio((double)r->prefix_hit_tokens, (double)r->prefix_query_tokens),
                count(a, (double)r->prefix_hit_tokens), count(b, (double)r->prefix_query_tokens),
                count(d, (double)r->cache_evictions));
    fprintf(out, "KV blocks     peak %.1f%% in use, %s preemptions",
            percent_used(r->peak_used_blocks, r->kv_blocks), count(a, (double)r->preemptions));
    if (r->deadline_misses)
        fprintf(out, ", %s TTFT deadlines missed", count(b, (double)r->deadline_misses));
    fprintf(out, "\n");
    if (r->tier.enabled)
        tier_text(out, c, r);
    if (c->sliding_window)
        hybrid_text(out, c, r);
    if (c->spec != SIM_SPEC_OFF)
        fprintf(out, "speculation   %s drafts verified, %s accepted (%.1f%%), %.2f accepted per "
                     "verification\n",
                count(a, (double)r->spec_proposed), count(b, (double)r->spec_accepted),
                100.0 * ratio((double)r->spec_accepted, (double)r->spec_proposed),
                ratio((double)r->spec_accepted, (double)r->spec_verifications));
    fprintf(out, "simulator     %.2f s wall, %s steps/s, kvrt step+commit %.2f us/step\n",
            r->wall_s, count(a, ratio((double)r->steps, r->wall_s)), r->sched_cpu_us_per_step);
}

cJSON *sim_report_latency_json(const sim_latency_t *l)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "count", (double)l->count);
    cJSON_AddNumberToObject(o, "p50", l->p50);
    cJSON_AddNumberToObject(o, "p90", l->p90);
    cJSON_AddNumberToObject(o, "p99", l->p99);
    cJSON_AddNumberToObject(o, "mean", l->mean);
    cJSON_AddNumberToObject(o, "max", l->max);
    return o;
}

static cJSON *config_json(const sim_config_t *c)
{
    cJSON *o = cJSON_CreateObject();
    cJSON *cost = cJSON_AddObjectToObject(o, "cost_model");
    cJSON_AddNumberToObject(cost, "overhead_us", c->cost.overhead_us);
    cJSON_AddNumberToObject(cost, "per_seq_us", c->cost.per_seq_us);
    cJSON_AddNumberToObject(cost, "prefill_us_per_token", c->cost.prefill_us_per_token);
    cJSON_AddNumberToObject(cost, "weights_ms", c->cost.weights_ms);
    cJSON_AddNumberToObject(cost, "kv_read_ns_per_token", c->cost.kv_read_ns_per_token);
    cJSON_AddNumberToObject(cost, "attn_ns_per_pair", c->cost.attn_ns_per_pair);
    cJSON_AddNumberToObject(cost, "draft_us_per_position", c->cost.draft_us_per_position);
    cJSON_AddNumberToObject(o, "kv_gb", c->kv_gb);
    cJSON_AddNumberToObject(o, "block_tokens", c->block_tokens);
    cJSON_AddStringToObject(o, "prefix_cache", c->prefix_cache ? policy_name(c->cache_policy)
                                                               : "off");
    cJSON_AddNumberToObject(o, "max_batch_tokens", c->max_batch_tokens);
    cJSON_AddNumberToObject(o, "max_seqs", c->max_seqs);
    cJSON_AddNumberToObject(o, "chunk_tokens", c->chunk_tokens ? c->chunk_tokens
                                                               : c->max_batch_tokens);
    cJSON_AddBoolToObject(o, "watermark", c->watermark);
    cJSON_AddNumberToObject(o, "max_waiting", c->max_waiting);
    cJSON_AddNumberToObject(o, "shared_prefill_min_tokens", c->shared_prefill_min_tokens);
    cJSON_AddStringToObject(o, "speculation", spec_name(c->spec));
    cJSON_AddNumberToObject(o, "spec_k", c->spec_k);
    return o;
}

static void hybrid_json(cJSON *root, const sim_config_t *c, const sim_results_t *r)
{
    cJSON *h = cJSON_AddObjectToObject(root, "hybrid");
    cJSON_AddNumberToObject(h, "sliding_window", c->sliding_window);
    cJSON_AddNumberToObject(h, "window_layers", c->window_layers);
    cJSON_AddNumberToObject(h, "layers", c->num_layers);
    /* Two groups: "kv" above is the full-attention group's pool; shared:
     * the one pool, of shared_group_layers layers a block. */
    cJSON_AddBoolToObject(h, "shared_pool", r->shared_kv_groups > 0);
    cJSON_AddNumberToObject(h, "groups", r->shared_kv_groups ? r->shared_kv_groups
                                         : r->window_blocks ? 2 : 1);
    cJSON_AddNumberToObject(h, "shared_group_layers", r->shared_group_layers);
    cJSON_AddNumberToObject(h, "window_blocks", r->window_blocks);
    cJSON_AddNumberToObject(h, "window_block_tokens", r->window_block_tokens);
    cJSON_AddNumberToObject(h, "window_peak_used_blocks", r->window_peak_used_blocks);
    if (!r->without_hybrid)
        return;
    const struct sim_full_kv_run *k = &r->full_kv;
    cJSON *f = cJSON_AddObjectToObject(h, "full_kv");
    cJSON_AddNumberToObject(f, "blocks", k->kv_blocks);
    cJSON_AddNumberToObject(f, "peak_used_blocks", k->peak_used_blocks);
    cJSON_AddNumberToObject(f, "simulated_s", k->sim_s);
    cJSON_AddNumberToObject(f, "output_tokens_per_s", k->output_tokens_per_s);
    cJSON_AddNumberToObject(f, "mean_batch_seqs", k->mean_batch_seqs);
    cJSON_AddNumberToObject(f, "preemptions", (double)k->preemptions);
    cJSON_AddNumberToObject(f, "finished", (double)k->finished);
    cJSON_AddNumberToObject(f, "rejected", (double)k->rejected);
    cJSON_AddNumberToObject(f, "prefill_computed_tokens", (double)k->prefill_tokens);
    cJSON_AddItemToObject(f, "ttft_ms", sim_report_latency_json(&k->ttft_ms));
    cJSON_AddItemToObject(f, "tpot_ms", sim_report_latency_json(&k->tpot_ms));
}

int sim_report_json(FILE *out, const char *workload, const sim_config_t *c,
                    const sim_results_t *r)
{
    cJSON *root = cJSON_CreateObject();
    if (!root)
        return -1;
    cJSON_AddStringToObject(root, "workload", workload);
    cJSON_AddItemToObject(root, "config", config_json(c));
    cJSON *req = cJSON_AddObjectToObject(root, "requests");
    cJSON_AddNumberToObject(req, "submitted", (double)r->submitted);
    cJSON_AddNumberToObject(req, "finished", (double)(r->finished_stop + r->finished_length));
    cJSON_AddNumberToObject(req, "finished_stop", (double)r->finished_stop);
    cJSON_AddNumberToObject(req, "finished_length", (double)r->finished_length);
    cJSON_AddNumberToObject(req, "aborted", (double)r->aborted);
    cJSON_AddNumberToObject(req, "failed", (double)r->failed);
    cJSON_AddNumberToObject(req, "rejected", (double)r->rejected);
    cJSON *t = cJSON_AddObjectToObject(root, "time");
    cJSON_AddNumberToObject(t, "simulated_s", r->sim_s);
    cJSON_AddNumberToObject(t, "gpu_busy_s", r->busy_s);
    cJSON_AddNumberToObject(t, "steps", (double)r->steps);
    cJSON_AddNumberToObject(t, "mean_step_ms", r->mean_step_ms);
    cJSON_AddNumberToObject(t, "mean_batch_seqs", r->mean_batch_seqs);
    cJSON *tp = cJSON_AddObjectToObject(root, "throughput");
    cJSON_AddNumberToObject(tp, "prompt_tokens", (double)r->prompt_tokens);
    cJSON_AddNumberToObject(tp, "prefill_computed_tokens", (double)r->prefill_tokens);
    cJSON_AddNumberToObject(tp, "output_tokens", (double)r->output_tokens);
    cJSON_AddNumberToObject(tp, "prompt_tokens_per_s", ratio((double)r->prompt_tokens, r->sim_s));
    cJSON_AddNumberToObject(tp, "output_tokens_per_s", ratio((double)r->output_tokens, r->sim_s));
    cJSON_AddItemToObject(root, "ttft_ms", sim_report_latency_json(&r->ttft_ms));
    cJSON_AddItemToObject(root, "tpot_ms", sim_report_latency_json(&r->tpot_ms));
    cJSON_AddItemToObject(root, "e2e_ms", sim_report_latency_json(&r->e2e_ms));
    cJSON_AddNumberToObject(root, "deadline_misses", (double)r->deadline_misses);
    cJSON *pc = cJSON_AddObjectToObject(root, "prefix_cache");
    cJSON_AddNumberToObject(pc, "hit_rate", ratio((double)r->prefix_hit_tokens,
                                                  (double)r->prefix_query_tokens));
    cJSON_AddNumberToObject(pc, "hit_tokens", (double)r->prefix_hit_tokens);
    cJSON_AddNumberToObject(pc, "query_tokens", (double)r->prefix_query_tokens);
    cJSON_AddNumberToObject(pc, "evictions", (double)r->cache_evictions);
    cJSON *kv = cJSON_AddObjectToObject(root, "kv");
    cJSON_AddNumberToObject(kv, "blocks", r->kv_blocks);
    cJSON_AddNumberToObject(kv, "block_tokens", r->block_tokens);
    cJSON_AddNumberToObject(kv, "peak_used_blocks", r->peak_used_blocks);
    cJSON_AddNumberToObject(kv, "preemptions", (double)r->preemptions);
    if (r->tier.enabled) {
        const sim_tier_results_t *tr = &r->tier;
        cJSON *ti = cJSON_AddObjectToObject(root, "tiers");
        cJSON_AddNumberToObject(ti, "host_gb", c->tier.host_gb);
        cJSON_AddNumberToObject(ti, "ssd_gb", c->tier.ssd_gb);
        cJSON_AddNumberToObject(ti, "host_gbps", c->tier.host_gbps);
        cJSON_AddNumberToObject(ti, "host_latency_us", c->tier.host_latency_us);
        cJSON_AddNumberToObject(ti, "ssd_gbps", c->tier.ssd_gbps);
        cJSON_AddNumberToObject(ti, "ssd_latency_us", c->tier.ssd_latency_us);
        cJSON_AddNumberToObject(ti, "host_blocks", tr->host_blocks);
        cJSON_AddNumberToObject(ti, "ssd_blocks", tr->ssd_blocks);
        cJSON_AddNumberToObject(ti, "offloaded_blocks", (double)tr->offloaded_blocks);
        cJSON_AddNumberToObject(ti, "written_back_blocks", (double)tr->written_back_blocks);
        cJSON *hb = cJSON_AddObjectToObject(ti, "onloaded_blocks_by_tier");
        cJSON_AddNumberToObject(hb, "host", (double)tr->host_hit_blocks);
        cJSON_AddNumberToObject(hb, "ssd", (double)tr->ssd_hit_blocks);
        cJSON_AddNumberToObject(ti, "onloads", (double)tr->onloads);
        cJSON_AddNumberToObject(ti, "recompute_cheaper", (double)tr->recompute_cheaper);
        cJSON_AddNumberToObject(ti, "no_room", (double)tr->no_room);
        cJSON_AddNumberToObject(ti, "onload_ms_mean", tr->onload_ms_mean);
        cJSON_AddNumberToObject(ti, "onload_ms_max", tr->onload_ms_max);
        if (r->without_tiers) {
            cJSON_AddItemToObject(ti, "ttft_ms_without_tiers",
                                  sim_report_latency_json(&r->ttft_no_tier_ms));
            cJSON_AddNumberToObject(ti, "prefill_computed_tokens_without_tiers",
                                    (double)r->prefill_tokens_no_tier);
        }
    }
    if (c->sliding_window)
        hybrid_json(root, c, r);
    cJSON *sp = cJSON_AddObjectToObject(root, "speculation");
    cJSON_AddStringToObject(sp, "mode", spec_name(c->spec));
    cJSON_AddNumberToObject(sp, "proposed", (double)r->spec_proposed);
    cJSON_AddNumberToObject(sp, "accepted", (double)r->spec_accepted);
    cJSON_AddNumberToObject(sp, "verifications", (double)r->spec_verifications);
    cJSON_AddNumberToObject(sp, "acceptance", ratio((double)r->spec_accepted,
                                                    (double)r->spec_proposed));
    cJSON_AddNumberToObject(sp, "mean_accepted", ratio((double)r->spec_accepted,
                                                       (double)r->spec_verifications));
    cJSON *sim = cJSON_AddObjectToObject(root, "simulator");
    cJSON_AddNumberToObject(sim, "wall_s", r->wall_s);
    cJSON_AddNumberToObject(sim, "steps_per_s", ratio((double)r->steps, r->wall_s));
    cJSON_AddNumberToObject(sim, "sched_cpu_us_per_step", r->sched_cpu_us_per_step);
    char *text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!text)
        return -1;
    fprintf(out, "%s\n", text);
    cJSON_free(text);
    return 0;
}

static double wall_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void sim_progress_bar_init(sim_progress_bar_t *bar, FILE *out, bool wanted)
{
    *bar = (sim_progress_bar_t){.out = out,
                                .enabled = wanted && isatty(fileno(out)),
                                .last_wall_s = 0.0};
}

void sim_progress_bar_update(void *user, const sim_progress_t *p)
{
    sim_progress_bar_t *bar = user;
    if (!bar->enabled)
        return;
    bool done = p->planned > 0 && p->ended >= p->planned;
    if (done) {
        if (bar->drawn)
            fprintf(bar->out, "\r\033[K");
        fflush(bar->out);
        bar->drawn = false;
        return;
    }
    double now = wall_s();
    if (bar->drawn && now - bar->last_wall_s < 0.1)
        return;
    bar->last_wall_s = now;
    enum { WIDTH = 30 };
    double frac = p->planned ? (double)p->ended / (double)p->planned : 0.0;
    int filled = (int)(frac * WIDTH);
    char cells[WIDTH + 1];
    for (int i = 0; i < WIDTH; i++)
        cells[i] = i < filled ? '#' : '.';
    cells[WIDTH] = '\0';
    fprintf(bar->out, "\r[%s] %3.0f%%  %llu/%llu requests  %.1f s simulated  %llu steps\033[K",
            cells, 100.0 * frac, (unsigned long long)p->ended,
            (unsigned long long)p->planned, p->sim_s, (unsigned long long)p->steps);
    fflush(bar->out);
    bar->drawn = true;
}
