/*
 * sim_main.c - kvrt-sim: a simulated serving engine that drives kvrt's real
 * scheduler, prefix cache and speculation through a workload and reports
 * what a server would see. See docs/simulator.md and --help.
 *
 * Exit status: 0 when the run completed, 1 when it failed (kvrt refused the
 * configuration or an invariant broke), 2 on bad usage or bad input.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sim_cluster.h"
#include "sim_engine.h"
#include "sim_metrics.h"
#include "sim_report.h"
#include "tool_cli.h"
#include "trace.h"

typedef struct options {
    sim_config_t config;
    sim_synthetic_params_t synthetic;
    const char *trace_path;
    trace_format_t trace_format;
    double time_scale;
    uint32_t requests;          /* 0: the workload's default */
    double deadline_ms;
    bool json;
    bool progress;
    sim_cluster_config_t cluster; /* --nodes and the other cluster options */
    bool window_layers_set;     /* --window-layers given */
    const char *metrics_out;    /* NULL: no metrics file */
    int metrics_port;           /* -1: no endpoint */
    double metrics_hold_s;
} options_t;

static void usage(FILE *out)
{
    sim_config_t c = sim_config_default();
    sim_synthetic_params_t s = sim_synthetic_defaults();
    fprintf(out,
"usage: kvrt-sim [options]\n"
"Simulates an LLM serving engine (Llama-3.1-8B on one H100 by default) driving\n"
"kvrt's scheduler, prefix cache and speculative decoding through a workload,\n"
"and prints TTFT, TPOT, throughput, prefix hit rate, preemptions and\n"
"speculation acceptance. With no options: the synthetic workload below.\n"
"\n"
"workload\n"
"  --trace FILE            replay a Mooncake JSONL or Azure CSV trace instead\n"
"  --trace-format F        auto (by extension), mooncake or azure [auto]\n"
"  --time-scale X          multiply trace timestamps by X (0.5: twice the rate) [1]\n"
"  --requests N            requests to generate; with --trace, the first N [%u; all]\n"
"  --seed N                seed of every random choice [%llu]\n"
"  --rate R                synthetic: mean arrivals per second (Poisson) [%g]\n"
"  --system-prompts N      synthetic: system prompts shared by conversations [%u]\n"
"  --system-len N          synthetic: mean system prompt tokens [%u]\n"
"  --turns X               synthetic: mean turns per conversation [%g]\n"
"  --user-len N            synthetic: mean new user tokens per turn [%u]\n"
"  --output-len N          synthetic: mean answer tokens [%u]\n"
"  --max-output N          synthetic: max new tokens per request [%u]\n"
"  --max-prompt N          synthetic: a conversation ends before passing N tokens [%u]\n"
"  --think-time S          synthetic: mean seconds between a turn and the next [%g]\n"
"  --copy-prob P           chance an answer run quotes the prompt [%g]\n"
"  --abort-prob P          synthetic: chance a client aborts a request [%g]\n"
"  --abort-after S         synthetic: mean seconds after arrival of such an abort [%g]\n"
"  --high-priority F       synthetic: fraction of conversations at priority 1 [%g]\n"
"  --deadline-ms D         TTFT deadline of every request, 0 for none [0]\n"
"\n"
"model and GPU (cost model; docs/simulator.md)\n"
"  --overhead-us X         fixed cost of a step [%g]\n"
"  --per-seq-us X          cost per sequence in a step [%g]\n"
"  --prefill-us-per-token X  compute-bound cost per query token [%g]\n"
"  --weights-ms X          reading the weights: the floor of a step [%g]\n"
"  --kv-read-ns X          reading one token's KV, per context token [%g]\n"
"  --attn-ns-per-pair X    prefill attention per (query, key) pair [%g]\n"
"  --draft-us X            one draft-model step (--spec draft) [%g]\n"
"  --kv-gb X               GPU memory for KV, 10^9 bytes [%g]\n"
"  --layers N --kv-heads N --head-dim N   KV shape, fp16 [%u %u %u]\n"
"  --block-tokens N        tokens per KV block [%u]\n"
"\n"
"hybrid models (docs/simulator.md; the summary then also shows the same run\n"
"with every layer's KV held for every token)\n"
"  --sliding-window W      some layers read only the last W positions [0: none]\n"
"  --window-layers N       how many of the layers do [half of them]\n"
"  --window-block-tokens N tokens per block of those layers' KV [--block-tokens]\n"
"  --window-kv-gb X        their part of --kv-gb [their layers' share]\n"
"  --shared-kv             every group in one pool of --kv-gb (one eviction\n"
"                          order; window layers in groups of the full ones' size)\n"
"\n"
"tiers below the GPU (docs/simulator.md; the summary then also shows TTFT\n"
"of the same run without them)\n"
"  --host-gb X             host-DRAM tier, 10^9 bytes [0: none]\n"
"  --ssd-gb X              SSD tier under it, 10^9 bytes [0: none]\n"
"  --host-gbps X           host -> GPU bandwidth, 10^9 bytes/s [%g]\n"
"  --host-latency-us X     fixed cost of one onload from host [%g]\n"
"  --ssd-gbps X            SSD read bandwidth, 10^9 bytes/s [%g]\n"
"  --ssd-latency-us X      fixed cost of one SSD read [%g]\n"
"\n"
"scheduler\n"
"  --max-batch-tokens N    token budget per step [%u]\n"
"  --max-seqs N            sequences per step [%u]\n"
"  --chunk N               longest prefill chunk [the token budget]\n"
"  --no-watermark          admit new requests down to the last free block\n"
"  --max-waiting N         requests queued in kvrt; later ones wait in order [%u]\n"
"  --shared-prefill N      a request waits for the next N+ tokens of its prompt\n"
"                          that another is computing, then hits them; 0: never [%u]\n"
"  --cache P               prefix cache policy: lru, lfu, lfu-aged or off [lru]\n"
"  --spec M                speculation: off, ngram (kvrt's prompt lookup) or draft\n"
"                          (a simulated draft model) [ngram]\n"
"  --spec-k N              most draft tokens per sequence [%u]\n"
"  --ngram-min N --ngram-max N   n-gram lengths the proposer matches [%u %u]\n"
"  --no-adaptive-draft     always propose k drafts\n"
"  --draft-accept P        --spec draft: chance each draft token is right [%g]\n"
"\n"
"cluster (docs/cluster.md)\n"
"  --nodes N               simulate N engines behind kvrt's router [1]\n"
"  --router R              round-robin, least-loaded or cache-aware [cache-aware]\n"
"  --route-prefill-weight X  router cost of one prefill token [1]\n"
"  --route-decode-weight X   router cost of one running decode [20]\n"
"  --kv-sharing S          none, or pull (fetch a peer's prefix when cheaper) [none]\n"
"  --disaggregate P:D      P prefill nodes hand their KV to D decode nodes\n"
"  --net-gbps X            NIC bandwidth per node, Gb/s [200]\n"
"  --net-latency-us X      fixed cost of one transfer [20]\n"
"\n"
"output\n"
"  --json                  one JSON object on stdout instead of the summary\n"
"  --no-progress           no progress bar (it is drawn only on a terminal)\n"
"  --metrics-out FILE      write kvrt's final metrics there (Prometheus text)\n"
"  --metrics-port N        serve GET /metrics on 127.0.0.1:N during the run\n"
"                          (0: any free port, printed on stderr)\n"
"  --metrics-hold S        keep serving S seconds after the run [0]\n"
"  --help                  this text\n"
"\n"
"Exit status: 0 done, 1 the simulation failed, 2 bad usage or input.\n",
            s.num_requests, (unsigned long long)s.seed, s.rate, s.system_prompts,
            s.system_len, s.turns, s.user_len, s.output_len, s.max_output, s.max_prompt,
            s.think_s, s.copy_prob, s.abort_prob, s.abort_after_s, s.high_priority,
            c.cost.overhead_us, c.cost.per_seq_us, c.cost.prefill_us_per_token,
            c.cost.weights_ms, c.cost.kv_read_ns_per_token, c.cost.attn_ns_per_pair,
            c.cost.draft_us_per_position, c.kv_gb, c.num_layers, c.num_kv_heads, c.head_dim,
            c.block_tokens, c.tier.host_gbps, c.tier.host_latency_us, c.tier.ssd_gbps,
            c.tier.ssd_latency_us, c.max_batch_tokens, c.max_seqs, c.max_waiting,
            c.shared_prefill_min_tokens, c.spec_k,
            c.ngram_min, c.ngram_max, c.draft_accept);
}

static int bad_value(const char *flag, const char *want, const char *text)
{
    fprintf(stderr, "kvrt-sim: --%s wants %s, got '%s' (see --help)\n", flag, want, text);
    return -1;
}

static int parse_u32(const char *flag, const char *text, uint32_t min, uint32_t max,
                     uint32_t *out)
{
    char want[64], *end;
    snprintf(want, sizeof want, "an integer in %u..%u", min, max);
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno || end == text || *end || text[0] == '-' || v < min || v > max)
        return bad_value(flag, want, text);
    *out = (uint32_t)v;
    return 0;
}

static int parse_double(const char *flag, const char *text, double min, double max,
                        double *out)
{
    char want[64], *end;
    snprintf(want, sizeof want, "a number in [%g, %g]", min, max);
    errno = 0;
    double v = strtod(text, &end);
    if (errno || end == text || *end || !isfinite(v) || v < min || v > max)
        return bad_value(flag, want, text);
    *out = v;
    return 0;
}

enum {
    OPT_TRACE = 256, OPT_TRACE_FORMAT, OPT_TIME_SCALE, OPT_REQUESTS, OPT_SEED, OPT_RATE,
    OPT_SYSTEM_PROMPTS, OPT_SYSTEM_LEN, OPT_TURNS, OPT_USER_LEN, OPT_OUTPUT_LEN,
    OPT_MAX_OUTPUT, OPT_MAX_PROMPT, OPT_THINK, OPT_COPY, OPT_ABORT_PROB, OPT_ABORT_AFTER,
    OPT_HIGH_PRIORITY, OPT_DEADLINE, OPT_OVERHEAD, OPT_PER_SEQ, OPT_PREFILL, OPT_WEIGHTS,
    OPT_KV_READ, OPT_ATTN, OPT_DRAFT_US, OPT_KV_GB, OPT_LAYERS, OPT_KV_HEADS, OPT_HEAD_DIM,
    OPT_BLOCK_TOKENS, OPT_BATCH_TOKENS, OPT_MAX_SEQS, OPT_CHUNK, OPT_NO_WATERMARK,
    OPT_SHARED_PREFILL,
    OPT_MAX_WAITING, OPT_CACHE, OPT_SPEC, OPT_SPEC_K, OPT_NGRAM_MIN, OPT_NGRAM_MAX,
    OPT_NO_ADAPTIVE, OPT_DRAFT_ACCEPT, OPT_JSON, OPT_NO_PROGRESS, OPT_METRICS_OUT,
    OPT_METRICS_PORT, OPT_METRICS_HOLD, OPT_HELP,
    OPT_NODES, OPT_ROUTER, OPT_ROUTE_PREFILL, OPT_ROUTE_DECODE, OPT_SHARING, OPT_DISAGG,
    OPT_NET_GBPS, OPT_NET_LATENCY,
    OPT_HOST_GB, OPT_SSD_GB, OPT_HOST_GBPS, OPT_HOST_LATENCY, OPT_SSD_GBPS, OPT_SSD_LATENCY,
    OPT_WINDOW, OPT_WINDOW_LAYERS, OPT_WINDOW_BLOCK_TOKENS, OPT_WINDOW_KV_GB, OPT_SHARED_KV
};

static const struct option long_options[] = {
    {"trace", required_argument, NULL, OPT_TRACE},
    {"trace-format", required_argument, NULL, OPT_TRACE_FORMAT},
    {"time-scale", required_argument, NULL, OPT_TIME_SCALE},
    {"requests", required_argument, NULL, OPT_REQUESTS},
    {"seed", required_argument, NULL, OPT_SEED},
    {"rate", required_argument, NULL, OPT_RATE},
    {"system-prompts", required_argument, NULL, OPT_SYSTEM_PROMPTS},
    {"system-len", required_argument, NULL, OPT_SYSTEM_LEN},
    {"turns", required_argument, NULL, OPT_TURNS},
    {"user-len", required_argument, NULL, OPT_USER_LEN},
    {"output-len", required_argument, NULL, OPT_OUTPUT_LEN},
    {"max-output", required_argument, NULL, OPT_MAX_OUTPUT},
    {"max-prompt", required_argument, NULL, OPT_MAX_PROMPT},
    {"think-time", required_argument, NULL, OPT_THINK},
    {"copy-prob", required_argument, NULL, OPT_COPY},
    {"abort-prob", required_argument, NULL, OPT_ABORT_PROB},
    {"abort-after", required_argument, NULL, OPT_ABORT_AFTER},
    {"high-priority", required_argument, NULL, OPT_HIGH_PRIORITY},
    {"deadline-ms", required_argument, NULL, OPT_DEADLINE},
    {"overhead-us", required_argument, NULL, OPT_OVERHEAD},
    {"per-seq-us", required_argument, NULL, OPT_PER_SEQ},
    {"prefill-us-per-token", required_argument, NULL, OPT_PREFILL},
    {"weights-ms", required_argument, NULL, OPT_WEIGHTS},
    {"kv-read-ns", required_argument, NULL, OPT_KV_READ},
    {"attn-ns-per-pair", required_argument, NULL, OPT_ATTN},
    {"draft-us", required_argument, NULL, OPT_DRAFT_US},
    {"kv-gb", required_argument, NULL, OPT_KV_GB},
    {"layers", required_argument, NULL, OPT_LAYERS},
    {"kv-heads", required_argument, NULL, OPT_KV_HEADS},
    {"head-dim", required_argument, NULL, OPT_HEAD_DIM},
    {"block-tokens", required_argument, NULL, OPT_BLOCK_TOKENS},
    {"sliding-window", required_argument, NULL, OPT_WINDOW},
    {"window-layers", required_argument, NULL, OPT_WINDOW_LAYERS},
    {"window-block-tokens", required_argument, NULL, OPT_WINDOW_BLOCK_TOKENS},
    {"window-kv-gb", required_argument, NULL, OPT_WINDOW_KV_GB},
    {"shared-kv", no_argument, NULL, OPT_SHARED_KV},
    {"max-batch-tokens", required_argument, NULL, OPT_BATCH_TOKENS},
    {"max-seqs", required_argument, NULL, OPT_MAX_SEQS},
    {"chunk", required_argument, NULL, OPT_CHUNK},
    {"no-watermark", no_argument, NULL, OPT_NO_WATERMARK},
    {"shared-prefill", required_argument, NULL, OPT_SHARED_PREFILL},
    {"max-waiting", required_argument, NULL, OPT_MAX_WAITING},
    {"cache", required_argument, NULL, OPT_CACHE},
    {"spec", required_argument, NULL, OPT_SPEC},
    {"spec-k", required_argument, NULL, OPT_SPEC_K},
    {"ngram-min", required_argument, NULL, OPT_NGRAM_MIN},
    {"ngram-max", required_argument, NULL, OPT_NGRAM_MAX},
    {"no-adaptive-draft", no_argument, NULL, OPT_NO_ADAPTIVE},
    {"draft-accept", required_argument, NULL, OPT_DRAFT_ACCEPT},
    {"json", no_argument, NULL, OPT_JSON},
    {"no-progress", no_argument, NULL, OPT_NO_PROGRESS},
    {"metrics-out", required_argument, NULL, OPT_METRICS_OUT},
    {"metrics-port", required_argument, NULL, OPT_METRICS_PORT},
    {"metrics-hold", required_argument, NULL, OPT_METRICS_HOLD},
    {"help", no_argument, NULL, OPT_HELP},
    {"nodes", required_argument, NULL, OPT_NODES},
    {"router", required_argument, NULL, OPT_ROUTER},
    {"route-prefill-weight", required_argument, NULL, OPT_ROUTE_PREFILL},
    {"route-decode-weight", required_argument, NULL, OPT_ROUTE_DECODE},
    {"kv-sharing", required_argument, NULL, OPT_SHARING},
    {"disaggregate", required_argument, NULL, OPT_DISAGG},
    {"net-gbps", required_argument, NULL, OPT_NET_GBPS},
    {"net-latency-us", required_argument, NULL, OPT_NET_LATENCY},
    {"host-gb", required_argument, NULL, OPT_HOST_GB},
    {"ssd-gb", required_argument, NULL, OPT_SSD_GB},
    {"host-gbps", required_argument, NULL, OPT_HOST_GBPS},
    {"host-latency-us", required_argument, NULL, OPT_HOST_LATENCY},
    {"ssd-gbps", required_argument, NULL, OPT_SSD_GBPS},
    {"ssd-latency-us", required_argument, NULL, OPT_SSD_LATENCY},
    {NULL, 0, NULL, 0},
};

static int parse_block_tokens(const char *flag, const char *text, uint32_t *out)
{
    uint32_t u;
    if (parse_u32(flag, text, 1, 4096, &u) != 0)
        return -1;
    if (u & (u - 1))
        return bad_value(flag, "a power of two in 1..4096", text);
    *out = u;
    return 0;
}

static int parse_choice(const char *flag, const char *text, const char *const *names,
                        int count, const char *want)
{
    for (int i = 0; i < count; i++)
        if (strcmp(text, names[i]) == 0)
            return i;
    return bad_value(flag, want, text);
}

/* One option; 0 on success, -1 after printing what is wrong. */
static int apply_option(options_t *o, int opt, const char *arg)
{
    sim_config_t *c = &o->config;
    sim_synthetic_params_t *s = &o->synthetic;
    const double big = 1e9;
    uint32_t u;
    switch (opt) {
    case OPT_TRACE: o->trace_path = arg; return 0;
    case OPT_TRACE_FORMAT:
        return trace_format_parse(arg, &o->trace_format) == 0
                   ? 0 : bad_value("trace-format", "auto, mooncake or azure", arg);
    case OPT_TIME_SCALE: return parse_double("time-scale", arg, 1e-6, 1e6, &o->time_scale);
    case OPT_REQUESTS: return parse_u32("requests", arg, 1, 1u << 24, &o->requests);
    case OPT_SEED: {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(arg, &end, 0);
        if (errno || end == arg || *end || arg[0] == '-')
            return bad_value("seed", "an unsigned 64-bit integer", arg);
        s->seed = c->seed = v;
        return 0;
    }
    case OPT_RATE: return parse_double("rate", arg, 1e-6, 1e6, &s->rate);
    case OPT_SYSTEM_PROMPTS:
        return parse_u32("system-prompts", arg, 1, 4096, &s->system_prompts);
    case OPT_SYSTEM_LEN: return parse_u32("system-len", arg, 1, 1u << 22, &s->system_len);
    case OPT_TURNS: return parse_double("turns", arg, 1.0, 100.0, &s->turns);
    case OPT_USER_LEN: return parse_u32("user-len", arg, 1, 1u << 22, &s->user_len);
    case OPT_OUTPUT_LEN: return parse_u32("output-len", arg, 1, 1u << 22, &s->output_len);
    case OPT_MAX_OUTPUT: return parse_u32("max-output", arg, 1, 1u << 22, &s->max_output);
    case OPT_MAX_PROMPT: return parse_u32("max-prompt", arg, 64, 1u << 24, &s->max_prompt);
    case OPT_THINK: return parse_double("think-time", arg, 0.0, 1e6, &s->think_s);
    case OPT_COPY: return parse_double("copy-prob", arg, 0.0, 1.0, &s->copy_prob);
    case OPT_ABORT_PROB: return parse_double("abort-prob", arg, 0.0, 1.0, &s->abort_prob);
    case OPT_ABORT_AFTER: return parse_double("abort-after", arg, 0.0, 1e6, &s->abort_after_s);
    case OPT_HIGH_PRIORITY:
        return parse_double("high-priority", arg, 0.0, 1.0, &s->high_priority);
    case OPT_DEADLINE: return parse_double("deadline-ms", arg, 0.0, 1e9, &o->deadline_ms);
    case OPT_OVERHEAD: return parse_double("overhead-us", arg, 0.0, big, &c->cost.overhead_us);
    case OPT_PER_SEQ: return parse_double("per-seq-us", arg, 0.0, big, &c->cost.per_seq_us);
    case OPT_PREFILL:
        return parse_double("prefill-us-per-token", arg, 0.0, big,
                            &c->cost.prefill_us_per_token);
    case OPT_WEIGHTS: return parse_double("weights-ms", arg, 0.0, big, &c->cost.weights_ms);
    case OPT_KV_READ:
        return parse_double("kv-read-ns", arg, 0.0, big, &c->cost.kv_read_ns_per_token);
    case OPT_ATTN:
        return parse_double("attn-ns-per-pair", arg, 0.0, big, &c->cost.attn_ns_per_pair);
    case OPT_DRAFT_US:
        return parse_double("draft-us", arg, 0.0, big, &c->cost.draft_us_per_position);
    case OPT_KV_GB: return parse_double("kv-gb", arg, 1e-6, 1e6, &c->kv_gb);
    case OPT_HOST_GB: return parse_double("host-gb", arg, 0.0, 1e6, &c->tier.host_gb);
    case OPT_SSD_GB: return parse_double("ssd-gb", arg, 0.0, 1e7, &c->tier.ssd_gb);
    case OPT_HOST_GBPS: return parse_double("host-gbps", arg, 1e-3, 1e4, &c->tier.host_gbps);
    case OPT_HOST_LATENCY:
        return parse_double("host-latency-us", arg, 0.0, 1e9, &c->tier.host_latency_us);
    case OPT_SSD_GBPS: return parse_double("ssd-gbps", arg, 1e-3, 1e4, &c->tier.ssd_gbps);
    case OPT_SSD_LATENCY:
        return parse_double("ssd-latency-us", arg, 0.0, 1e9, &c->tier.ssd_latency_us);
    case OPT_LAYERS: return parse_u32("layers", arg, 1, 1024, &c->num_layers);
    case OPT_KV_HEADS: return parse_u32("kv-heads", arg, 1, 1024, &c->num_kv_heads);
    case OPT_HEAD_DIM: return parse_u32("head-dim", arg, 1, 1024, &c->head_dim);
    case OPT_BLOCK_TOKENS: return parse_block_tokens("block-tokens", arg, &c->block_tokens);
    case OPT_WINDOW:
        return parse_u32("sliding-window", arg, 1, KVRT_TABLE_MAX_TOKENS, &c->sliding_window);
    case OPT_WINDOW_LAYERS:
        o->window_layers_set = true;
        return parse_u32("window-layers", arg, 1, 1024, &c->window_layers);
    case OPT_WINDOW_BLOCK_TOKENS:
        return parse_block_tokens("window-block-tokens", arg, &c->window_block_tokens);
    case OPT_WINDOW_KV_GB: return parse_double("window-kv-gb", arg, 1e-6, 1e6, &c->window_kv_gb);
    case OPT_SHARED_KV: c->window_kv_shared = 1; return 0;
    case OPT_BATCH_TOKENS:
        return parse_u32("max-batch-tokens", arg, 1, 1u << 24, &c->max_batch_tokens);
    case OPT_MAX_SEQS: return parse_u32("max-seqs", arg, 1, 65536, &c->max_seqs);
    case OPT_CHUNK: return parse_u32("chunk", arg, 1, 1u << 24, &c->chunk_tokens);
    case OPT_NO_WATERMARK: c->watermark = 0; return 0;
    case OPT_SHARED_PREFILL:
        return parse_u32("shared-prefill", arg, 0, 1u << 30, &c->shared_prefill_min_tokens);
    case OPT_MAX_WAITING: return parse_u32("max-waiting", arg, 1, 1u << 22, &c->max_waiting);
    case OPT_CACHE: {
        static const char *const names[] = {"lru", "lfu", "lfu-aged", "off"};
        static const kvrt_cache_policy_t policies[] = {KVRT_CACHE_LRU, KVRT_CACHE_LFU,
                                                       KVRT_CACHE_LFU_AGED, KVRT_CACHE_LRU};
        int i = parse_choice("cache", arg, names, 4, "lru, lfu, lfu-aged or off");
        if (i < 0)
            return -1;
        c->prefix_cache = i != 3;
        c->cache_policy = policies[i];
        return 0;
    }
    case OPT_SPEC: {
        static const char *const names[] = {"off", "ngram", "draft"};
        int i = parse_choice("spec", arg, names, 3, "off, ngram or draft");
        if (i < 0)
            return -1;
        c->spec = (sim_spec_mode_t)i;
        return 0;
    }
    case OPT_SPEC_K: return parse_u32("spec-k", arg, 1, KVRT_SCHED_MAX_DRAFT, &c->spec_k);
    case OPT_NGRAM_MIN:
        return parse_u32("ngram-min", arg, 1, KVRT_SCHED_MAX_NGRAM, &c->ngram_min);
    case OPT_NGRAM_MAX:
        return parse_u32("ngram-max", arg, 1, KVRT_SCHED_MAX_NGRAM, &c->ngram_max);
    case OPT_NO_ADAPTIVE: c->adaptive_draft = 0; return 0;
    case OPT_DRAFT_ACCEPT: return parse_double("draft-accept", arg, 0.0, 1.0, &c->draft_accept);
    case OPT_NODES: return parse_u32("nodes", arg, 1, KVRT_CLUSTER_MAX_NODES, &o->cluster.nodes);
    case OPT_ROUTER: {
        static const char *const names[] = {"round-robin", "least-loaded", "cache-aware"};
        int i = parse_choice("router", arg, names, 3, "round-robin, least-loaded or cache-aware");
        if (i < 0)
            return -1;
        o->cluster.router = (kvrt_route_policy_t)i;
        return 0;
    }
    case OPT_ROUTE_PREFILL:
        return parse_double("route-prefill-weight", arg, 0.0, big, &o->cluster.prefill_weight);
    case OPT_ROUTE_DECODE:
        return parse_double("route-decode-weight", arg, 0.0, big, &o->cluster.decode_weight);
    case OPT_SHARING: {
        static const char *const names[] = {"none", "pull"};
        int i = parse_choice("kv-sharing", arg, names, 2, "none or pull");
        if (i < 0)
            return -1;
        o->cluster.sharing = (sim_kv_sharing_t)i;
        return 0;
    }
    case OPT_DISAGG: {
        unsigned p = 0, d = 0;
        char tail;
        if (sscanf(arg, "%u:%u%c", &p, &d, &tail) != 2 || p == 0 || d == 0 ||
            p + d > KVRT_CLUSTER_MAX_NODES)
            return bad_value("disaggregate", "P:D, both >= 1, P + D <= 64", arg);
        o->cluster.prefill_nodes = p;
        o->cluster.decode_nodes = d;
        return 0;
    }
    case OPT_NET_GBPS: return parse_double("net-gbps", arg, 1e-3, 1e6, &o->cluster.net_gbps);
    case OPT_NET_LATENCY:
        return parse_double("net-latency-us", arg, 0.0, 1e9, &o->cluster.net_latency_us);
    case OPT_JSON: o->json = true; return 0;
    case OPT_NO_PROGRESS: o->progress = false; return 0;
    case OPT_METRICS_OUT: o->metrics_out = arg; return 0;
    case OPT_METRICS_PORT:
        if (parse_u32("metrics-port", arg, 0, 65535, &u) != 0)
            return -1;
        o->metrics_port = (int)u;
        return 0;
    case OPT_METRICS_HOLD: return parse_double("metrics-hold", arg, 0.0, 86400.0, &o->metrics_hold_s);
    default: return -1;
    }
}

/* Returns 0 to run, 1 after --help, -1 on bad usage. */
static int parse_options(int argc, char **argv, options_t *o)
{
    *o = (options_t){.config = sim_config_default(),
                     .synthetic = sim_synthetic_defaults(),
                     .trace_format = TRACE_FORMAT_AUTO,
                     .time_scale = 1.0,
                     .progress = true,
                     .metrics_port = -1,
                     .cluster = sim_cluster_config_default()};
    int opt;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, TOOL_GETOPT_QUIET, long_options, NULL)) != -1) {
        if (opt == OPT_HELP) {
            usage(stdout);
            return 1;
        }
        if (opt == '?' || opt == ':') {
            tool_option_error("kvrt-sim", opt, argv);
            return -1;
        }
        if (apply_option(o, opt, optarg) != 0)
            return -1;
    }
    if (optind < argc) {
        fprintf(stderr, "kvrt-sim: unexpected argument '%s' (see --help)\n", argv[optind]);
        return -1;
    }
    if (o->config.ngram_min > o->config.ngram_max) {
        fprintf(stderr, "kvrt-sim: --ngram-min %u is above --ngram-max %u\n",
                o->config.ngram_min, o->config.ngram_max);
        return -1;
    }
    if (o->cluster.prefill_nodes && o->cluster.nodes == 1)
        o->cluster.nodes = o->cluster.prefill_nodes + o->cluster.decode_nodes;
    if (o->cluster.nodes > 1 && o->config.tier.host_gb > 0.0) {
        fprintf(stderr, "kvrt-sim: --host-gb/--ssd-gb are single-node only for now\n");
        return -1;
    }
    sim_config_t *c = &o->config;
    if ((o->window_layers_set || c->window_block_tokens || c->window_kv_gb > 0.0 ||
         c->window_kv_shared) &&
        !c->sliding_window) {
        fprintf(stderr, "kvrt-sim: --window-layers, --window-block-tokens, --window-kv-gb and "
                        "--shared-kv need --sliding-window\n");
        return -1;
    }
    if (c->sliding_window && !o->window_layers_set)
        c->window_layers = c->num_layers > 1 ? c->num_layers / 2 : 1;
    if (c->sliding_window && (o->cluster.nodes > 1 || c->tier.host_gb > 0.0)) {
        fprintf(stderr, "kvrt-sim: --sliding-window is single-node and without tiers for "
                        "now\n");
        return -1;
    }
    if (o->requests)
        o->synthetic.num_requests = o->requests;
    o->synthetic.deadline_ms = o->deadline_ms;
    return 0;
}

static int make_workload(const options_t *o, trace_t *trace, sim_workload_t **workload,
                         char *describe, size_t describe_size)
{
    char error[512];
    if (!o->trace_path) {
        const sim_synthetic_params_t *s = &o->synthetic;
        if (sim_workload_synthetic(s, workload, error, sizeof error) != 0) {
            fprintf(stderr, "kvrt-sim: %s\n", error);
            return -1;
        }
        snprintf(describe, describe_size,
                 "synthetic: %u requests at %g/s, conversations of %g turns over %u system "
                 "prompts, seed %llu",
                 s->num_requests, s->rate, s->turns, s->system_prompts,
                 (unsigned long long)s->seed);
        return 0;
    }
    if (trace_load(o->trace_path, o->trace_format, trace, error, sizeof error) != 0) {
        fprintf(stderr, "kvrt-sim: %s\n", error);
        return -1;
    }
    sim_trace_params_t tp = {.seed = o->synthetic.seed, .time_scale = o->time_scale,
                             .max_requests = o->requests,
                             .copy_prob = o->synthetic.copy_prob,
                             .deadline_ms = o->deadline_ms};
    if (sim_workload_trace(trace, &tp, workload, error, sizeof error) != 0) {
        fprintf(stderr, "kvrt-sim: %s: %s\n", o->trace_path, error);
        return -1;
    }
    snprintf(describe, describe_size, "trace %s (%s): %llu requests, time scale %g",
             o->trace_path, trace->format == TRACE_FORMAT_AZURE ? "azure" : "mooncake",
             (unsigned long long)sim_workload_planned(*workload), o->time_scale);
    return 0;
}

/* The same workload again under `config`, for a baseline beside the run
 * (deterministic: the same flags give the same baseline). */
static int run_again(const options_t *o, const sim_config_t *config, const char *what,
                     sim_results_t *out, char *error, size_t error_size)
{
    trace_t trace = {0};
    sim_workload_t *workload = NULL;
    char describe[512];
    if (make_workload(o, &trace, &workload, describe, sizeof describe) != 0) {
        trace_free(&trace);
        snprintf(error, error_size, "the workload again, for the run %s", what);
        return -1;
    }
    int rc = sim_run(config, workload, NULL, NULL, out, error, error_size);
    sim_workload_destroy(workload);
    trace_free(&trace);
    return rc;
}

/* With tiers: the run without them, for the TTFT they gain. */
static int run_without_tiers(const options_t *o, sim_results_t *with, char *error,
                             size_t error_size)
{
    sim_config_t plain = o->config;
    plain.tier.host_gb = plain.tier.ssd_gb = 0.0;
    sim_results_t without;
    int rc = run_again(o, &plain, "without tiers", &without, error, error_size);
    if (rc == 0) {
        with->without_tiers = 1;
        with->ttft_no_tier_ms = without.ttft_ms;
        with->prefill_tokens_no_tier = without.prefill_tokens;
    }
    return rc;
}

/* A hybrid model: the run with every layer's K/V held for every token, for
 * what the window groups gain. */
static int run_without_hybrid(const options_t *o, sim_results_t *with, char *error,
                              size_t error_size)
{
    sim_config_t full = o->config;
    full.window_kv_full = 1;
    sim_results_t r;
    int rc = run_again(o, &full, "with full-size K/V", &r, error, error_size);
    if (rc == 0) {
        with->without_hybrid = 1;
        with->full_kv = (struct sim_full_kv_run){
            .sim_s = r.sim_s, .mean_batch_seqs = r.mean_batch_seqs,
            .output_tokens_per_s = r.sim_s > 0.0 ? (double)r.output_tokens / r.sim_s : 0.0,
            .preemptions = r.preemptions, .prefill_tokens = r.prefill_tokens,
            .finished = r.finished_stop + r.finished_length, .rejected = r.rejected,
            .kv_blocks = r.kv_blocks, .peak_used_blocks = r.peak_used_blocks,
            .ttft_ms = r.ttft_ms, .tpot_ms = r.tpot_ms};
    }
    return rc;
}

/* --nodes N > 1 or --disaggregate: the multi-node simulator (sim_cluster.h). */
static int run_cluster(const options_t *o, sim_workload_t *workload, trace_t *trace,
                       sim_progress_bar_t *bar, const char *describe)
{
    char error[512];
    sim_config_t config = o->config;
    config.spec = SIM_SPEC_OFF; /* not simulated across nodes */
    sim_cluster_results_t results;
    int rc = sim_cluster_run(&config, &o->cluster, workload, sim_progress_bar_update, bar,
                             &results, error, sizeof error);
    sim_workload_destroy(workload);
    trace_free(trace);
    if (rc != 0) {
        fprintf(stderr, "%skvrt-sim: %s\n", bar->drawn ? "\r\033[K" : "", error);
        return 1;
    }
    if (o->json)
        rc = sim_cluster_report_json(stdout, describe, &config, &o->cluster, &results);
    else
        sim_cluster_report_text(stdout, describe, &config, &o->cluster, &results);
    sim_cluster_results_free(&results);
    if (rc != 0) {
        fprintf(stderr, "kvrt-sim: out of memory writing JSON\n");
        return 1;
    }
    return fflush(stdout) == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    options_t o;
    int parsed = parse_options(argc, argv, &o);
    if (parsed != 0)
        return parsed > 0 ? 0 : 2;
    char error[512];
    if (sim_config_validate(&o.config, error, sizeof error) != 0) {
        fprintf(stderr, "kvrt-sim: %s\n", error);
        return 2;
    }
    trace_t trace = {0};
    sim_workload_t *workload = NULL;
    char describe[512];
    if (make_workload(&o, &trace, &workload, describe, sizeof describe) != 0) {
        trace_free(&trace);
        return 2;
    }
    sim_progress_bar_t bar;
    sim_progress_bar_init(&bar, stderr, o.progress);
    if (o.cluster.nodes > 1 || o.cluster.prefill_nodes)
        return run_cluster(&o, workload, &trace, &bar, describe);
    sim_metrics_t metrics;
    if (sim_metrics_open(&metrics, &bar, o.metrics_port, o.metrics_out != NULL) != 0) {
        sim_workload_destroy(workload);
        trace_free(&trace);
        return 2;
    }
    sim_results_t results;
    int rc = sim_run(&o.config, workload, sim_metrics_progress, &metrics, &results, error,
                     sizeof error);
    sim_workload_destroy(workload);
    trace_free(&trace);
    if (rc == 0 && results.tier.enabled)
        rc = run_without_tiers(&o, &results, error, sizeof error);
    if (rc == 0 && o.config.sliding_window)
        rc = run_without_hybrid(&o, &results, error, sizeof error);
    if (rc != 0) {
        fprintf(stderr, "%skvrt-sim: %s\n", bar.drawn ? "\r\033[K" : "", error);
        sim_metrics_close(&metrics, NULL, 0);
        return 1;
    }
    if (o.json) {
        if (sim_report_json(stdout, describe, &o.config, &results) != 0) {
            fprintf(stderr, "kvrt-sim: out of memory writing JSON\n");
            sim_metrics_close(&metrics, NULL, 0);
            return 1;
        }
    } else {
        sim_report_text(stdout, describe, &o.config, &results);
    }
    if (fflush(stdout) != 0) {
        sim_metrics_close(&metrics, NULL, 0);
        return 1;
    }
    /* After the report, so a scraper's wait does not hold the results back. */
    return sim_metrics_close(&metrics, o.metrics_out, o.metrics_hold_s) == 0 ? 0 : 1;
}
