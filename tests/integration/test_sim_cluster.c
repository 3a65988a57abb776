/*
 * test_sim_cluster.c - kvrt-sim with several nodes over the real caches,
 * schedulers, KV-event publishers, directory and router: every request
 * ends once and no node keeps a block; results are a function of the seed;
 * cache-aware routing with pulls finds more of its prefixes than
 * round-robin with none, and moves bytes for it; prefill/decode
 * disaggregation hands every multi-token request to a decode node; bad
 * cluster shapes are refused.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "sim_cluster.h"

static char error[512];

static sim_config_t small_nodes(void)
{
    sim_config_t c = sim_config_default();
    c.kv_gb = 1.0; /* ~470 blocks per node: caches evict */
    c.spec = SIM_SPEC_OFF;
    return c;
}

static sim_synthetic_params_t workload_params(void)
{
    sim_synthetic_params_t p = sim_synthetic_defaults();
    p.seed = 7;
    p.num_requests = 400;
    p.system_prompts = 24;
    p.system_len = 1200;
    p.output_len = 60;
    p.max_output = 200;
    p.abort_prob = 0; /* aborts are not simulated across nodes */
    p.rate = 40;
    return p;
}

static void run(const sim_config_t *c, const sim_cluster_config_t *cc,
                sim_cluster_results_t *r)
{
    sim_synthetic_params_t p = workload_params();
    sim_workload_t *w = NULL;
    cr_assert_eq(sim_workload_synthetic(&p, &w, error, sizeof error), 0, "%s", error);
    int rc = sim_cluster_run(c, cc, w, NULL, NULL, r, error, sizeof error);
    sim_workload_destroy(w);
    cr_assert_eq(rc, 0, "%s", error);
    const sim_results_t *t = &r->total;
    cr_assert_eq(t->finished_stop + t->finished_length + t->rejected + t->failed + t->aborted,
                 t->submitted, "a request did not end exactly once");
    cr_assert_eq(t->ttft_ms.count, t->finished_stop + t->finished_length);
    uint64_t hit = 0, query = 0, prefill = 0;
    for (uint32_t n = 0; n < r->nodes; n++) {
        hit += r->node[n].prefix_hit_tokens;
        query += r->node[n].prefix_query_tokens;
        prefill += r->node[n].prefill_tokens;
    }
    cr_assert_eq(hit, t->prefix_hit_tokens, "per-node figures add up to the cluster's");
    cr_assert_eq(query, t->prefix_query_tokens);
    cr_assert_eq(prefill, t->prefill_tokens);
    cr_assert_leq(t->prefix_hit_tokens, t->prefix_query_tokens);
}

static double hit_rate(const sim_cluster_results_t *r)
{
    return (double)r->total.prefix_hit_tokens / (double)r->total.prefix_query_tokens;
}

Test(sim_cluster, same_seed_same_figures)
{
    sim_config_t c = small_nodes();
    sim_cluster_config_t cc = sim_cluster_config_default();
    cc.nodes = 3;
    cc.sharing = SIM_SHARING_PULL;
    sim_cluster_results_t a, b;
    run(&c, &cc, &a);
    run(&c, &cc, &b);
    cr_assert_eq(a.total.prefix_hit_tokens, b.total.prefix_hit_tokens);
    cr_assert_eq(a.transferred_bytes, b.transferred_bytes);
    cr_assert_eq(a.total.ttft_ms.p50, b.total.ttft_ms.p50);
    cr_assert_eq(memcmp(a.node, b.node, 3 * sizeof(*a.node)) == 0, 1);
    sim_cluster_results_free(&a);
    sim_cluster_results_free(&b);
}

Test(sim_cluster, cache_aware_with_pull_finds_more_than_round_robin)
{
    sim_config_t c = small_nodes();
    sim_cluster_config_t rr = sim_cluster_config_default(), ca = rr;
    rr.nodes = ca.nodes = 4;
    rr.router = KVRT_ROUTE_ROUND_ROBIN;
    ca.sharing = SIM_SHARING_PULL;
    sim_cluster_results_t a, b;
    run(&c, &rr, &a);
    run(&c, &ca, &b);
    cr_assert_eq(a.transferred_bytes, 0, "no sharing, no transfer");
    cr_assert_gt(hit_rate(&b), hit_rate(&a), "cache-aware+pull %.3f vs round-robin %.3f",
                 hit_rate(&b), hit_rate(&a));
    cr_assert_lt(b.total.prefill_tokens, a.total.prefill_tokens);
    uint64_t block_bytes = 32ull * 8 * 128 * 2 * 2 * 16;
    cr_assert_eq(b.transferred_bytes, b.pulled_blocks * block_bytes);
    uint64_t in = 0, out = 0;
    for (uint32_t n = 0; n < b.nodes; n++) {
        in += b.node[n].blocks_in;
        out += b.node[n].blocks_out;
    }
    cr_assert_eq(in, b.pulled_blocks);
    cr_assert_eq(out, b.pulled_blocks);
    sim_cluster_results_free(&a);
    sim_cluster_results_free(&b);
}

Test(sim_cluster, disaggregation_hands_every_request_to_a_decode_node)
{
    sim_config_t c = small_nodes();
    sim_cluster_config_t cc = sim_cluster_config_default();
    cc.nodes = 4;
    cc.prefill_nodes = 2;
    cc.decode_nodes = 2;
    sim_cluster_results_t r;
    run(&c, &cc, &r);
    cr_assert_gt(r.handoffs, r.total.submitted * 9 / 10, "%llu hand-offs",
                 (unsigned long long)r.handoffs);
    cr_assert_eq(r.transferred_bytes, r.handoff_blocks * (32ull * 8 * 128 * 2 * 2 * 16));
    cr_assert_gt(r.node[2].requests + r.node[3].requests, 0);
    cr_assert_eq(r.node[2].blocks_out + r.node[3].blocks_out, 0, "decode nodes only receive");
    cr_assert_eq(r.node[2].prefix_query_tokens + r.node[3].prefix_query_tokens, 0,
                 "hit rates are the prefill nodes'");
    sim_cluster_results_free(&r);
}

Test(sim_cluster, bad_shapes_are_refused)
{
    sim_cluster_config_t cc = sim_cluster_config_default();
    cc.nodes = 3;
    cc.prefill_nodes = 2;
    cc.decode_nodes = 2;
    cr_assert_eq(sim_cluster_config_validate(&cc, error, sizeof error), -1);
    cr_assert_not_null(strstr(error, "disaggregate"));
    cc = sim_cluster_config_default();
    cc.nodes = 65;
    cr_assert_eq(sim_cluster_config_validate(&cc, error, sizeof error), -1);
    cc.nodes = 2;
    cc.net_gbps = 0;
    cr_assert_eq(sim_cluster_config_validate(&cc, error, sizeof error), -1);
}
