/*
 * test_tier_sim.c - kvrt-sim's tiers below the GPU (bench/sim_tier.c): the
 * GPU cache's evictions fill the host and SSD tiers' slot directories, an
 * arriving prompt that continues there waits for its KV through the real
 * scheduler and lands, so less of it is computed; an onload slower than
 * recomputing is not started; the same seed gives the same figures; no
 * block is left in use (sim_run checks the pool at the end); bad tier
 * configurations are refused with a message.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "sim_engine.h"

static char error[512];

/* Conversations whose earlier turns no longer fit a small GPU cache. */
static sim_synthetic_params_t workload(void)
{
    sim_synthetic_params_t p = sim_synthetic_defaults();
    p.seed = 5;
    p.num_requests = 400;
    p.system_len = 1500;
    p.output_len = 100;
    p.max_output = 300;
    return p;
}

static sim_config_t small_gpu(void)
{
    sim_config_t c = sim_config_default();
    c.kv_gb = 1.0; /* 476 blocks of 16 tokens */
    return c;
}

static int run(const sim_config_t *c, sim_results_t *r)
{
    sim_synthetic_params_t p = workload();
    sim_workload_t *w = NULL;
    cr_assert_eq(sim_workload_synthetic(&p, &w, error, sizeof error), 0, "%s", error);
    int rc = sim_run(c, w, NULL, NULL, r, error, sizeof error);
    sim_workload_destroy(w);
    return rc;
}

Test(tier_sim, tiers_bring_evicted_prefixes_back_and_compute_less)
{
    sim_config_t plain = small_gpu(), tiered = small_gpu();
    tiered.tier.host_gb = 2.0;
    tiered.tier.ssd_gb = 20.0;
    sim_results_t without, with;
    cr_assert_eq(run(&plain, &without), 0, "%s", error);
    cr_assert_eq(run(&tiered, &with), 0, "%s", error);
    cr_assert_eq(without.tier.enabled, 0);
    cr_assert_eq(with.tier.enabled, 1);
    cr_assert_eq(with.tier.host_blocks, 953);
    cr_assert_eq(with.tier.ssd_blocks, 9536);
    cr_assert_gt(with.tier.offloaded_blocks, 0);
    cr_assert_gt(with.tier.onloads, 0, "no request waited for KV");
    cr_assert_gt(with.tier.host_hit_blocks + with.tier.ssd_hit_blocks, 0);
    cr_assert_gt(with.tier.onload_ms_mean, 0.0);
    cr_assert_geq(with.tier.onload_ms_max, with.tier.onload_ms_mean);
    cr_assert_eq(with.submitted, without.submitted);
    cr_assert_eq(with.finished_stop + with.finished_length + with.aborted + with.failed +
                     with.rejected,
                 with.submitted, "a request did not end exactly once");
    cr_assert_lt(with.prefill_tokens, without.prefill_tokens,
                 "landed blocks are not computed again (%llu with tiers, %llu without)",
                 (unsigned long long)with.prefill_tokens,
                 (unsigned long long)without.prefill_tokens);
}

Test(tier_sim, same_seed_same_figures)
{
    sim_config_t c = small_gpu();
    c.tier.host_gb = 1.0;
    sim_results_t a, b;
    cr_assert_eq(run(&c, &a), 0, "%s", error);
    cr_assert_eq(run(&c, &b), 0, "%s", error);
    a.wall_s = b.wall_s = 0.0;
    a.sched_cpu_us_per_step = b.sched_cpu_us_per_step = 0.0;
    cr_assert_eq(memcmp(&a, &b, sizeof a), 0, "two runs with the same seed differ");
}

Test(tier_sim, an_onload_slower_than_recomputing_is_not_started)
{
    sim_config_t c = small_gpu();
    c.tier.host_gb = 2.0;
    c.tier.host_gbps = 0.001; /* 1 MB/s: a 2 MiB block takes two seconds */
    sim_results_t r;
    cr_assert_eq(run(&c, &r), 0, "%s", error);
    cr_assert_eq(r.tier.onloads, 0);
    cr_assert_gt(r.tier.recompute_cheaper, 0);
}

Test(tier_sim, bad_tier_configurations_are_refused)
{
    sim_config_t c = small_gpu();
    c.tier.ssd_gb = 10.0; /* no host tier above it */
    cr_assert_neq(sim_config_validate(&c, error, sizeof error), 0);
    cr_assert(strstr(error, "host"), "%s", error);
    c = small_gpu();
    c.tier.host_gb = -1.0;
    cr_assert_neq(sim_config_validate(&c, error, sizeof error), 0);
    c = small_gpu();
    c.tier.host_gb = 1.0;
    c.tier.ssd_gbps = 0.0;
    cr_assert_neq(sim_config_validate(&c, error, sizeof error), 0);
    c = small_gpu();
    c.tier.host_gb = 1.0;
    c.prefix_cache = 0;
    cr_assert_neq(sim_config_validate(&c, error, sizeof error), 0);
    cr_assert(strstr(error, "prefix cache"), "%s", error);
    c = small_gpu();
    c.tier.host_gb = NAN;
    cr_assert_neq(sim_config_validate(&c, error, sizeof error), 0);
}
