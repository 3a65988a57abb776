/*
 * sim_engine.h - kvrt-sim's simulated serving engine: a discrete-event loop
 * that drives the real kvrt scheduler, prefix cache and block pool through a
 * workload, with the GPU replaced by a cost model.
 *
 * The simulator owns a clock. Each iteration it adds the requests that have
 * arrived, applies client aborts that are due, calls kvrt_sched_step(now),
 * asks the cost model how long the planned batch takes, advances the clock
 * by that much, emits each sampling sequence's next reference tokens
 * (verifying drafts against them), calls kvrt_sched_commit and drains the
 * requests that ended. When the scheduler has nothing to run the clock
 * jumps to the next arrival or abort. The pool lives in "engine memory" at
 * a made-up base address: kvrt only computes addresses, nothing is touched.
 *
 * Every result except the wall-clock figures (sim_results_t.wall_s and
 * sched_cpu_us_per_step) is a pure function of the configuration and the
 * workload's seed.
 */
#ifndef KVRT_BENCH_SIM_ENGINE_H
#define KVRT_BENCH_SIM_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "kvrt/kvrt.h"
#include "sim_cost_model.h"
#include "sim_stats.h"
#include "sim_tier.h"
#include "sim_workload.h"

typedef enum sim_spec_mode {
    SIM_SPEC_OFF = 0,
    SIM_SPEC_NGRAM = 1, /* kvrt's n-gram prompt-lookup proposer */
    SIM_SPEC_DRAFT = 2  /* a simulated draft model, via kvrt_seq_set_draft */
} sim_spec_mode_t;

typedef struct sim_config {
    sim_cost_model_t cost;
    /* The model's KV shape (fp16) and the GPU memory given to KV. */
    uint32_t num_layers, num_kv_heads, head_dim;
    uint32_t block_tokens;
    double kv_gb;                  /* 10^9 bytes */
    /* Hybrid models (sim_kv.h): window_layers of the layers read only the
     * last sliding_window positions; 0: every layer full attention. */
    uint32_t sliding_window;
    uint32_t window_layers;        /* 1..num_layers with a window */
    uint32_t window_block_tokens;  /* the window group's; 0: block_tokens */
    double window_kv_gb;           /* the window group's memory; 0: sized by
                                      sim_kv.h's rule */
    int window_kv_shared;          /* 1: every group in one pool of kv_gb
                                      (sim_kv.h) */
    int window_kv_full;            /* 1: hold every layer's K/V for every
                                      token in one group (no hybrid
                                      allocator), the cost model unchanged */
    /* Prefix cache. */
    int prefix_cache;              /* 0: no cache */
    kvrt_cache_policy_t cache_policy;
    /* Scheduler. */
    uint32_t max_batch_tokens;
    uint32_t max_seqs;
    uint32_t chunk_tokens;         /* 0: max_batch_tokens */
    int watermark;
    uint32_t max_waiting;          /* requests queued in kvrt at once; later
                                      arrivals wait in arrival order */
    uint32_t shared_prefill_min_tokens; /* kvrt_sched_params_t's */
    /* Speculation. */
    sim_spec_mode_t spec;
    uint32_t spec_k;
    uint32_t ngram_min, ngram_max;
    int adaptive_draft;
    double draft_accept;           /* SIM_SPEC_DRAFT: chance each draft token
                                      matches the reference */
    uint64_t seed;                 /* SIM_SPEC_DRAFT's randomness */
    /* Tiers below the GPU (sim_tier.h); none by default. */
    sim_tier_config_t tier;
} sim_config_t;

/* kvrt-sim's defaults (docs/simulator.md). */
sim_config_t sim_config_default(void);

/* Checks a configuration; 0, or -1 with a message. */
int sim_config_validate(const sim_config_t *config, char *error, size_t error_size);

/* Blocks the KV memory holds (including kvrt's null block). */
uint32_t sim_config_kv_blocks(const sim_config_t *config);

typedef struct sim_results {
    /* Requests. */
    uint64_t submitted;            /* handed to kvrt (or aborted before) */
    uint64_t finished_stop, finished_length;
    uint64_t aborted, failed, rejected; /* rejected: kvrt_seq_add refused */
    /* Time and tokens. */
    double sim_s;                  /* simulated time at the last end */
    double busy_s;                 /* simulated GPU time in steps */
    uint64_t steps;
    uint64_t prompt_tokens;        /* of submitted requests */
    uint64_t output_tokens;        /* committed, all requests */
    uint64_t prefill_tokens;       /* computed, recomputation included */
    double mean_batch_seqs;
    double mean_step_ms;
    /* Latency over finished requests, milliseconds. */
    sim_latency_t ttft_ms, tpot_ms, e2e_ms;
    uint64_t deadline_misses;
    /* Cache and memory. */
    /* Prefix-cache hits over the tokens offered at every admission (all
     * but the last token of prompt + output so far), summed per request. */
    uint64_t prefix_hit_tokens, prefix_query_tokens;
    uint64_t cache_evictions;
    uint64_t preemptions;
    uint32_t kv_blocks, block_tokens;  /* group 0's (the full-attention layers') */
    uint32_t peak_used_blocks;
    /* Hybrid models with two groups: the window group's pool. */
    uint32_t window_blocks, window_block_tokens, window_peak_used_blocks;
    /* Hybrid models in one shared pool (kv_blocks above is that pool):
     * the cache groups, and the layers each block holds. */
    uint32_t shared_kv_groups, shared_group_layers;
    /* Hybrid models: the same workload with every layer's K/V held for
     * every token (window_kv_full; kvrt-sim runs it when a window is set). */
    int without_hybrid;                /* the fields below are set */
    struct sim_full_kv_run {
        double sim_s, mean_batch_seqs, output_tokens_per_s;
        uint64_t preemptions, prefill_tokens, finished, rejected;
        uint32_t kv_blocks, peak_used_blocks;
        sim_latency_t ttft_ms, tpot_ms;
    } full_kv;
    /* Speculation. */
    uint64_t spec_proposed, spec_accepted, spec_verifications;
    /* Tiers below the GPU (tier.enabled 0 without --host-gb), and the same
     * workload's figures without them (kvrt-sim runs it when tiers are on). */
    sim_tier_results_t tier;
    int without_tiers;             /* the two below are set */
    sim_latency_t ttft_no_tier_ms;
    uint64_t prefill_tokens_no_tier;
    /* The simulator itself (wall clock: not deterministic). */
    double wall_s;
    double sched_cpu_us_per_step;  /* kvrt step + commit, mean */
} sim_results_t;

typedef struct sim_progress {
    uint64_t ended, planned;       /* requests */
    double sim_s;
    uint64_t steps;
    kvrt_ctx_t *ctx;               /* the run's context, for metrics, during the call */
} sim_progress_t;

/* Called every few hundred steps and once at the end. */
typedef void (*sim_progress_fn)(void *user, const sim_progress_t *progress);

/*
 * Runs the workload to the end (every request ended). Returns 0 and fills
 * *results, or -1 with a message in error (kvrt refused the configuration,
 * an invariant broke: kvrt's output differing from the tokens committed, a
 * request asked for past its answer, a stall with requests that can never
 * run).
 */
int sim_run(const sim_config_t *config, sim_workload_t *workload,
            sim_progress_fn progress, void *progress_user, sim_results_t *results,
            char *error, size_t error_size);

#endif /* KVRT_BENCH_SIM_ENGINE_H */
