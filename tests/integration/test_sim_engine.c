/*
 * test_sim_engine.c - kvrt-sim's engine over the real scheduler, cache and
 * pool: the same seed gives the same figures, every request ends exactly
 * once with the tokens committed for it (sim_run checks each end event and
 * that no block is left in use; these tests push it through preemption,
 * aborts and every speculation mode), trace replay shares prefixes the
 * trace shares, and bad configurations are refused with a message.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sim_engine.h"

static char error[512];

static sim_synthetic_params_t small_workload(uint64_t seed)
{
    sim_synthetic_params_t p = sim_synthetic_defaults();
    p.seed = seed;
    p.num_requests = 300;
    p.system_len = 600;
    p.output_len = 120;
    p.max_output = 400;
    return p;
}

static int run_synthetic(const sim_config_t *c, const sim_synthetic_params_t *p,
                         sim_results_t *r)
{
    sim_workload_t *w = NULL;
    cr_assert_eq(sim_workload_synthetic(p, &w, error, sizeof error), 0, "%s", error);
    int rc = sim_run(c, w, NULL, NULL, r, error, sizeof error);
    sim_workload_destroy(w);
    return rc;
}

/* The figures a person reads must add up. */
static void check_conservation(const sim_results_t *r, uint64_t submitted)
{
    cr_assert_eq(r->submitted, submitted);
    cr_assert_eq(r->finished_stop + r->finished_length + r->aborted + r->failed + r->rejected,
                 r->submitted, "a request did not end exactly once");
    uint64_t finished = r->finished_stop + r->finished_length;
    cr_assert_eq(r->ttft_ms.count, finished);
    cr_assert_eq(r->e2e_ms.count, finished);
    cr_assert_geq(r->output_tokens, finished);
    cr_assert_leq(r->prefix_hit_tokens, r->prefix_query_tokens);
    cr_assert_leq(r->spec_accepted, r->spec_proposed);
    cr_assert_leq(r->peak_used_blocks, r->kv_blocks - 1);
    cr_assert_gt(r->sim_s, 0.0);
    cr_assert_leq(r->busy_s, r->sim_s + 1e-9);
    cr_assert(r->ttft_ms.p50 <= r->ttft_ms.p90 && r->ttft_ms.p90 <= r->ttft_ms.p99);
    cr_assert(r->tpot_ms.p50 <= r->tpot_ms.p99);
}

/* Everything but the wall clock. */
static void clear_wall_clock(sim_results_t *r)
{
    r->wall_s = 0.0;
    r->sched_cpu_us_per_step = 0.0;
}

Test(sim_engine, same_seed_same_figures)
{
    sim_config_t c = sim_config_default();
    sim_synthetic_params_t p = small_workload(11);
    sim_results_t a, b, other;
    cr_assert_eq(run_synthetic(&c, &p, &a), 0, "%s", error);
    cr_assert_eq(run_synthetic(&c, &p, &b), 0, "%s", error);
    check_conservation(&a, 300);
    clear_wall_clock(&a);
    clear_wall_clock(&b);
    cr_assert_eq(memcmp(&a, &b, sizeof a), 0, "two runs with seed 11 differ");
    p.seed = 12;
    cr_assert_eq(run_synthetic(&c, &p, &other), 0, "%s", error);
    cr_assert_neq(a.output_tokens, other.output_tokens);
}

Test(sim_engine, conversations_hit_the_prefix_cache)
{
    sim_config_t c = sim_config_default();
    sim_synthetic_params_t p = small_workload(3);
    sim_results_t with, without;
    cr_assert_eq(run_synthetic(&c, &p, &with), 0, "%s", error);
    c.prefix_cache = 0;
    cr_assert_eq(run_synthetic(&c, &p, &without), 0, "%s", error);
    /* Shared system prompts and growing conversations: most prompt
     * tokens come from the cache, and prefill work drops accordingly. */
    cr_assert_gt(with.prefix_hit_tokens * 2, with.prefix_query_tokens);
    cr_assert_eq(without.prefix_query_tokens, 0u);
    cr_assert_lt(with.prefill_tokens * 2, without.prefill_tokens);
    cr_assert_lt(with.ttft_ms.mean, without.ttft_ms.mean);
}

Test(sim_engine, memory_pressure_preempts_and_still_conserves)
{
    /* A tiny KV pool, a heavy load and many aborts: requests are preempted,
     * recomputed and aborted at every stage, and still each ends once with
     * the tokens committed for it and no block left in use. */
    sim_config_t c = sim_config_default();
    c.kv_gb = 0.25; /* 119 blocks of 16 tokens */
    c.max_seqs = 32;
    sim_synthetic_params_t p = small_workload(5);
    p.rate = 40.0;
    p.abort_prob = 0.3;
    p.abort_after_s = 1.0;
    p.system_len = 300;
    p.max_prompt = 1500;
    sim_results_t r;
    cr_assert_eq(run_synthetic(&c, &p, &r), 0, "%s", error);
    check_conservation(&r, 300);
    cr_assert_gt(r.preemptions, 0u, "no preemption with %u blocks", r.kv_blocks);
    cr_assert_gt(r.aborted, 30u);
    cr_assert_gt(r.finished_stop + r.finished_length, 100u);
}

Test(sim_engine, speculation_modes)
{
    sim_config_t c = sim_config_default();
    sim_synthetic_params_t p = small_workload(9);
    p.abort_prob = 0.0;
    sim_results_t off, ngram, ngram_nocopy, right, wrong;
    c.spec = SIM_SPEC_OFF;
    cr_assert_eq(run_synthetic(&c, &p, &off), 0, "%s", error);
    cr_assert_eq(off.spec_proposed, 0u);
    c.spec = SIM_SPEC_NGRAM;
    p.copy_prob = 0.5;
    cr_assert_eq(run_synthetic(&c, &p, &ngram), 0, "%s", error);
    cr_assert_gt(ngram.spec_accepted, 0u);
    /* Accepted drafts are tokens that need no step of their own: the
     * same answers come out faster. */
    cr_assert_lt(ngram.tpot_ms.mean, off.tpot_ms.mean);
    cr_assert_eq(ngram.output_tokens, off.output_tokens);
    p.copy_prob = 0.0;
    cr_assert_eq(run_synthetic(&c, &p, &ngram_nocopy), 0, "%s", error);
    cr_assert_lt(ngram_nocopy.spec_proposed * 10, ngram.spec_proposed,
                 "random text should give the proposer (almost) nothing to find");
    c.spec = SIM_SPEC_DRAFT;
    c.draft_accept = 1.0;
    cr_assert_eq(run_synthetic(&c, &p, &right), 0, "%s", error);
    cr_assert_gt(right.spec_proposed, 0u);
    cr_assert_eq(right.spec_accepted, right.spec_proposed,
                 "a draft model that is always right must always be accepted");
    c.draft_accept = 0.0;
    cr_assert_eq(run_synthetic(&c, &p, &wrong), 0, "%s", error);
    cr_assert_eq(wrong.spec_accepted, 0u);
    check_conservation(&wrong, 300);
}

static char *write_trace(const char *text)
{
    char *path = malloc(64);
    snprintf(path, 64, "/tmp/kvrt-sim-engine-XXXXXX.jsonl");
    int fd = mkstemps(path, 6);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

Test(sim_engine, trace_replay_shares_what_the_trace_shares)
{
    /* Four requests over the same two leading 512-token blocks, a second
     * apart; the fifth shares nothing. */
    char *path = write_trace(
        "{\"timestamp\": 0, \"input_length\": 1500, \"output_length\": 20, \"hash_ids\": [0, 1, 2]}\n"
        "{\"timestamp\": 1000, \"input_length\": 1400, \"output_length\": 30, \"hash_ids\": [0, 1, 3]}\n"
        "{\"timestamp\": 2000, \"input_length\": 1100, \"output_length\": 5, \"hash_ids\": [0, 1, 4]}\n"
        "{\"timestamp\": 3000, \"input_length\": 1024, \"output_length\": 1, \"hash_ids\": [0, 1]}\n"
        "{\"timestamp\": 4000, \"input_length\": 700, \"output_length\": 9, \"hash_ids\": [5, 6]}\n");
    trace_t trace;
    cr_assert_eq(trace_load(path, TRACE_FORMAT_AUTO, &trace, error, sizeof error), 0, "%s",
                 error);
    sim_trace_params_t tp = {.seed = 1, .time_scale = 1.0, .copy_prob = 0.15};
    sim_workload_t *w = NULL;
    cr_assert_eq(sim_workload_trace(&trace, &tp, &w, error, sizeof error), 0, "%s", error);
    sim_config_t c = sim_config_default();
    sim_results_t r;
    cr_assert_eq(sim_run(&c, w, NULL, NULL, &r, error, sizeof error), 0, "%s", error);
    check_conservation(&r, 5);
    cr_assert_eq(r.finished_length, 5u, "trace requests end by length");
    cr_assert_eq(r.output_tokens, 20u + 30 + 5 + 1 + 9);
    cr_assert_eq(r.prompt_tokens, 1500u + 1400 + 1100 + 1024 + 700);
    /* Requests 2-4 find the 1024 shared tokens (request 4 offers only
     * 1023: its last token is recomputed, so 1008 of them hit). */
    cr_assert_eq(r.prefix_hit_tokens, 1024u * 2 + 1008);
    cr_assert_geq(r.sim_s, 4.0);
    sim_workload_destroy(w);
    trace_free(&trace);
    unlink(path);
    free(path);
}

Test(sim_engine, bad_configurations_are_refused)
{
    sim_config_t c = sim_config_default();
    c.kv_gb = 0.001;
    cr_assert_eq(sim_config_validate(&c, error, sizeof error), -1);
    cr_assert(strstr(error, "fewer than 16 blocks") != NULL, "%s", error);
    c = sim_config_default();
    c.spec_k = 0;
    cr_assert_eq(sim_config_validate(&c, error, sizeof error), -1);
    cr_assert(strstr(error, "draft tokens") != NULL, "%s", error);
    c = sim_config_default();
    c.cost.weights_ms = -1.0;
    cr_assert_eq(sim_config_validate(&c, error, sizeof error), -1);
    cr_assert(strstr(error, "weights_ms") != NULL, "%s", error);
    c = sim_config_default();
    c.block_tokens = 12;
    cr_assert_eq(sim_config_validate(&c, error, sizeof error), -1);
    cr_assert(strstr(error, "power of two") != NULL, "%s", error);
    /* What only kvrt checks comes back with kvrt's message. */
    c = sim_config_default();
    c.ngram_min = 5;
    c.ngram_max = 3;
    sim_synthetic_params_t p = small_workload(1);
    sim_results_t r;
    memset(&r, 0xAB, sizeof r);
    sim_results_t before = r;
    cr_assert_eq(run_synthetic(&c, &p, &r), -1);
    cr_assert(strstr(error, "kvrt_sched_create") != NULL, "%s", error);
    cr_assert_eq(memcmp(&r, &before, sizeof r), 0, "results written on failure");
}

Test(sim_engine, oversized_requests_are_rejected_not_fatal)
{
    /* Prompts longer than the whole pool: kvrt refuses them at
     * kvrt_seq_add and the run counts them as rejected. */
    sim_config_t c = sim_config_default();
    c.kv_gb = 0.1; /* 47 blocks: 752 tokens */
    sim_synthetic_params_t p = small_workload(2);
    p.num_requests = 20;
    p.system_len = 2000;
    p.max_prompt = 8000;
    p.abort_prob = 0.0;
    sim_results_t r;
    cr_assert_eq(run_synthetic(&c, &p, &r), 0, "%s", error);
    check_conservation(&r, 20);
    cr_assert_gt(r.rejected, 0u);
}

/* ---- hybrid models: window layers in a cache group of their own ---------- */

static sim_config_t hybrid_config(void)
{
    sim_config_t c = sim_config_default();
    c.sliding_window = 128;
    c.window_layers = 16;
    return c;
}

Test(sim_engine, hybrid_models_hold_window_layers_in_a_group_of_their_own)
{
    /* Prompts of 600+ tokens and a 128-token window: the window group holds
     * a prefill chunk's blocks for one step and then its window's, the full
     * group holds every block; every block of both comes back (sim_run
     * checks both pools). */
    sim_config_t c = hybrid_config();
    c.kv_gb = 2.0;
    sim_synthetic_params_t p = small_workload(21);
    p.abort_prob = 0.0; /* every run below produces every answer */
    sim_results_t a, b;
    cr_assert_eq(run_synthetic(&c, &p, &a), 0, "%s", error);
    check_conservation(&a, 300);
    cr_assert_gt(a.window_blocks, 16u);
    cr_assert_eq(a.window_block_tokens, 16u);
    cr_assert_gt(a.window_peak_used_blocks, 0u);
    cr_assert_leq(a.window_peak_used_blocks, a.window_blocks - 1);
    cr_assert_lt(a.window_peak_used_blocks, a.peak_used_blocks,
                 "window group peak %u, full group peak %u", a.window_peak_used_blocks,
                 a.peak_used_blocks);
    /* The window group's blocks become evictable as they leave the window,
     * before the request ends, so under this pressure its LRU evicts some
     * that a full-size pool keeps: a few hits are lost, not most. */
    sim_config_t full_kv = c;
    full_kv.window_kv_full = 1;
    cr_assert_eq(run_synthetic(&full_kv, &p, &b), 0, "%s", error);
    cr_assert_gt(a.prefix_hit_tokens, 0u);
    cr_assert_geq(a.prefix_hit_tokens * 100, b.prefix_hit_tokens * 85,
                  "%llu hit tokens split, %llu in one pool",
                  (unsigned long long)a.prefix_hit_tokens,
                  (unsigned long long)b.prefix_hit_tokens);
    cr_assert_eq(run_synthetic(&c, &p, &b), 0, "%s", error);
    clear_wall_clock(&a);
    clear_wall_clock(&b);
    cr_assert_eq(memcmp(&a, &b, sizeof a), 0, "two hybrid runs with seed 21 differ");
    /* Larger window blocks: the group's own block size. */
    c.window_block_tokens = 64;
    cr_assert_eq(run_synthetic(&c, &p, &b), 0, "%s", error);
    check_conservation(&b, 300);
    cr_assert_eq(b.window_block_tokens, 64u);
    cr_assert_eq(b.output_tokens, a.output_tokens);
    /* A window on every layer: one window group. */
    c = hybrid_config();
    c.window_layers = c.num_layers;
    cr_assert_eq(run_synthetic(&c, &p, &b), 0, "%s", error);
    check_conservation(&b, 300);
    cr_assert_eq(b.window_blocks, 0u);
    cr_assert_eq(b.output_tokens, a.output_tokens);
}

Test(sim_engine, window_layers_make_steps_cheaper)
{
    /* The same work with half the layers reading 128 positions: at 4K+
     * contexts each step reads less K/V, and the GPU is busy for less time. */
    sim_config_t c = sim_config_default();
    sim_synthetic_params_t p = small_workload(22);
    p.system_len = 4000;
    p.max_prompt = 12000;
    p.abort_prob = 0.0;
    sim_results_t full, window, window_full_kv;
    cr_assert_eq(run_synthetic(&c, &p, &full), 0, "%s", error);
    c = hybrid_config();
    cr_assert_eq(run_synthetic(&c, &p, &window), 0, "%s", error);
    c.window_kv_full = 1;
    cr_assert_eq(run_synthetic(&c, &p, &window_full_kv), 0, "%s", error);
    cr_assert_eq(window.output_tokens, full.output_tokens);
    cr_assert_lt(window.mean_step_ms, full.mean_step_ms * 0.97, "%.3f ms a step with windows, "
                 "%.3f without", window.mean_step_ms, full.mean_step_ms);
    cr_assert_lt(window.busy_s, full.busy_s);
    cr_assert_eq(window_full_kv.window_blocks, 0u);
    cr_assert_eq(window_full_kv.kv_blocks, full.kv_blocks);
    /* At its layers' share, and without memory pressure, the window group
     * caches what one full-size pool caches: no prefix hit is lost. */
    cr_assert_geq(window.prefix_hit_tokens * 100, window_full_kv.prefix_hit_tokens * 99,
                  "%llu hit tokens split, %llu in one pool",
                  (unsigned long long)window.prefix_hit_tokens,
                  (unsigned long long)window_full_kv.prefix_hit_tokens);
}

Test(sim_engine, memory_taken_from_window_layers_runs_more_requests)
{
    /* No prefix cache and too little memory: with full-size K/V requests
     * are preempted and recomputed; the window group needs only its
     * windows, and the memory it gives the full-attention layers lets more
     * requests run. */
    sim_config_t c = hybrid_config();
    c.prefix_cache = 0;
    c.kv_gb = 0.5;
    c.window_kv_gb = 0.1;
    c.max_batch_tokens = 1024; /* a request's window and one step's tokens fit */
    sim_synthetic_params_t p = small_workload(23);
    p.rate = 40.0;
    sim_results_t hybrid, full_kv;
    cr_assert_eq(run_synthetic(&c, &p, &hybrid), 0, "%s", error);
    check_conservation(&hybrid, 300);
    c.window_kv_full = 1;
    cr_assert_eq(run_synthetic(&c, &p, &full_kv), 0, "%s", error);
    check_conservation(&full_kv, 300);
    cr_assert_gt(full_kv.preemptions, 0u);
    cr_assert_lt(hybrid.preemptions, full_kv.preemptions);
    cr_assert_lt(hybrid.prefill_tokens, full_kv.prefill_tokens);
    cr_assert_lt(hybrid.sim_s, full_kv.sim_s);
    cr_assert_gt(hybrid.mean_batch_seqs, full_kv.mean_batch_seqs);
}

Test(sim_engine, groups_sharing_one_pool_run_in_the_memory_windows_free)
{
    /* As above, with the groups in one pool of kv_gb (--shared-kv): no
     * split to choose, and the window layers' memory goes to whichever
     * group needs it. */
    sim_config_t c = hybrid_config();
    c.prefix_cache = 0;
    c.kv_gb = 0.5;
    c.window_kv_shared = 1;
    c.max_batch_tokens = 1024;
    sim_synthetic_params_t p = small_workload(23);
    p.rate = 40.0;
    sim_results_t shared, again, full_kv;
    cr_assert_eq(run_synthetic(&c, &p, &shared), 0, "%s", error);
    check_conservation(&shared, 300);
    cr_assert_eq(shared.shared_kv_groups, 2u);
    cr_assert_eq(shared.shared_group_layers, 16u);
    cr_assert_eq(shared.window_blocks, 0u, "one pool: kv_blocks is all of it");
    cr_assert_gt(shared.peak_used_blocks, 0u);
    cr_assert_eq(run_synthetic(&c, &p, &again), 0, "%s", error);
    clear_wall_clock(&shared);
    clear_wall_clock(&again);
    cr_assert_eq(memcmp(&shared, &again, sizeof shared), 0, "two shared runs differ");
    c.window_kv_full = 1;
    cr_assert_eq(run_synthetic(&c, &p, &full_kv), 0, "%s", error);
    cr_assert_gt(full_kv.preemptions, 0u);
    cr_assert_lt(shared.preemptions, full_kv.preemptions);
    cr_assert_lt(shared.sim_s, full_kv.sim_s);
    /* Groups of as many layers as the smaller kind: Gemma 3's 5:1 (27
     * window layers of 32) makes 6 window groups of 5 (3 padded); 8 of 32
     * make 3 full groups of 8 and a window group; 30 of 32 would make 15
     * window groups of 2, above kvrt's 8 groups: 6 of 5 then, and the 2
     * full-attention layers padded to 5. */
    static const struct {
        uint32_t window_layers, groups, per_group;
    } layouts[] = {{27, 7, 5}, {30, 7, 5}, {8, 4, 8}, {4, 8, 4}};
    for (size_t i = 0; i < sizeof(layouts) / sizeof(layouts[0]); i++) {
        c = hybrid_config();
        c.window_kv_shared = 1;
        c.window_layers = layouts[i].window_layers;
        sim_synthetic_params_t few = small_workload(24);
        few.num_requests = 40;
        cr_assert_eq(run_synthetic(&c, &few, &again), 0, "%s", error);
        check_conservation(&again, 40);
        cr_assert_eq(again.shared_kv_groups, layouts[i].groups, "layout %zu", i);
        cr_assert_eq(again.shared_group_layers, layouts[i].per_group, "layout %zu", i);
    }
}

Test(sim_engine, bad_hybrid_configurations_are_refused)
{
    struct {
        uint32_t window, layers, block_tokens;
        double window_gb, host_gb;
        const char *says;
    } cases[] = {
        {128, 0, 0, 0.0, 0.0, "1..32 layers"},
        {128, 33, 0, 0.0, 0.0, "1..32 layers"},
        {128, 16, 12, 0.0, 0.0, "power of two"},
        {128, 16, 0, 60.0, 0.0, "must be below"},
        {128, 16, 0, 1e-6, 0.0, "at least 16 needed"},
        {128, 32, 0, 10.0, 0.0, "one group"},
        {128, 16, 0, 0.0, 10.0, "tiers"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        sim_config_t c = hybrid_config();
        c.window_layers = cases[i].layers;
        c.window_block_tokens = cases[i].block_tokens;
        c.window_kv_gb = cases[i].window_gb;
        c.tier.host_gb = cases[i].host_gb;
        cr_assert_eq(sim_config_validate(&c, error, sizeof error), -1, "case %zu", i);
        cr_assert(strstr(error, cases[i].says) != NULL, "case %zu: %s", i, error);
    }
    /* A shared pool: nothing to split, one block size, another group. */
    struct {
        uint32_t layers, block_tokens;
        double window_gb;
        const char *says;
    } shared[] = {
        {16, 0, 1.0, "one or the other"},
        {16, 32, 0.0, "one block size"},
        {32, 0, 0.0, "nothing to share"},
    };
    for (size_t i = 0; i < sizeof(shared) / sizeof(shared[0]); i++) {
        sim_config_t c = hybrid_config();
        c.window_kv_shared = 1;
        c.window_layers = shared[i].layers;
        c.window_block_tokens = shared[i].block_tokens;
        c.window_kv_gb = shared[i].window_gb;
        cr_assert_eq(sim_config_validate(&c, error, sizeof error), -1, "shared case %zu", i);
        cr_assert(strstr(error, shared[i].says) != NULL, "shared case %zu: %s", i, error);
    }
}
