/*
 * sim_cluster_report.c - kvrt-sim's summary and JSON for several nodes:
 * the cluster's figures, then one line per node (sim_cluster.h).
 */
#include <cJSON.h>
#include <string.h>

#include "sim_cluster.h"
#include "sim_report.h"

static const char *router_name(kvrt_route_policy_t p)
{
    switch (p) {
    case KVRT_ROUTE_ROUND_ROBIN: return "round-robin";
    case KVRT_ROUTE_LEAST_LOADED: return "least-loaded";
    default: return "cache-aware";
    }
}

static double ratio(double num, double den) { return den > 0.0 ? num / den : 0.0; }

static void latency_line(FILE *out, const char *name, const sim_latency_t *l)
{
    fprintf(out, "%-13s p50 %9.1f ms   p90 %9.1f ms   p99 %9.1f ms   mean %9.1f ms\n", name,
            l->p50, l->p90, l->p99, l->mean);
}

void sim_cluster_report_text(FILE *out, const char *workload, const sim_config_t *cfg,
                             const sim_cluster_config_t *cc, const sim_cluster_results_t *r)
{
    const sim_results_t *t = &r->total;
    fprintf(out, "kvrt-sim      %s\n", workload);
    fprintf(out, "cluster       %u nodes", cc->nodes);
    if (cc->prefill_nodes)
        fprintf(out, " (%u prefill : %u decode)", cc->prefill_nodes, cc->decode_nodes);
    fprintf(out, ", router %s (prefill weight %g, decode weight %g), kv sharing %s, "
                 "network %g Gb/s + %g us per transfer\n",
            router_name(cc->router), cc->prefill_weight, cc->decode_weight,
            cc->sharing == SIM_SHARING_PULL ? "pull" : "none", cc->net_gbps, cc->net_latency_us);
    fprintf(out, "per node      KV %.0f GB = %u blocks x %u tokens, %u tokens/step, %u seqs\n",
            cfg->kv_gb, t->kv_blocks, t->block_tokens, cfg->max_batch_tokens, cfg->max_seqs);
    fprintf(out, "requests      %llu submitted: %llu stop, %llu length, %llu rejected, "
                 "%llu failed\n",
            (unsigned long long)t->submitted, (unsigned long long)t->finished_stop,
            (unsigned long long)t->finished_length, (unsigned long long)t->rejected,
            (unsigned long long)t->failed);
    fprintf(out, "time          %.1f s simulated, %.1f s wall\n", t->sim_s, t->wall_s);
    latency_line(out, "TTFT", &t->ttft_ms);
    latency_line(out, "TPOT", &t->tpot_ms);
    latency_line(out, "end to end", &t->e2e_ms);
    fprintf(out, "prefix cache  hit rate %.2f%% (%llu of %llu tokens offered), %llu prefill "
                 "tokens computed, %llu evictions, %llu preemptions\n",
            100.0 * ratio((double)t->prefix_hit_tokens, (double)t->prefix_query_tokens),
            (unsigned long long)t->prefix_hit_tokens, (unsigned long long)t->prefix_query_tokens,
            (unsigned long long)t->prefill_tokens, (unsigned long long)t->cache_evictions,
            (unsigned long long)t->preemptions);
    fprintf(out, "transfers     %.2f GB: %llu pulls (%llu blocks, %llu short of what the "
                 "directory said), %llu hand-offs (%llu blocks)\n",
            (double)r->transferred_bytes / 1e9, (unsigned long long)r->pulls,
            (unsigned long long)r->pulled_blocks, (unsigned long long)r->pull_misses,
            (unsigned long long)r->handoffs, (unsigned long long)r->handoff_blocks);
    fprintf(out, "directory     %.0f bytes per tracked block, %llu resyncs\n",
            r->dir_bytes_per_block, (unsigned long long)r->resyncs);
    fprintf(out, "node  requests  hit rate  prefill tokens   busy s  evictions  blocks in/out\n");
    for (uint32_t n = 0; n < r->nodes; n++) {
        const sim_node_results_t *x = &r->node[n];
        fprintf(out, "%4u %9llu %8.2f%% %15llu %8.1f %10llu  %llu/%llu\n", n,
                (unsigned long long)x->requests,
                100.0 * ratio((double)x->prefix_hit_tokens, (double)x->prefix_query_tokens),
                (unsigned long long)x->prefill_tokens, x->busy_s,
                (unsigned long long)x->evictions, (unsigned long long)x->blocks_in,
                (unsigned long long)x->blocks_out);
    }
}

int sim_cluster_report_json(FILE *out, const char *workload, const sim_config_t *cfg,
                            const sim_cluster_config_t *cc, const sim_cluster_results_t *r)
{
    const sim_results_t *t = &r->total;
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return -1;
    cJSON_AddStringToObject(o, "workload", workload);
    cJSON *k = cJSON_AddObjectToObject(o, "cluster");
    cJSON_AddNumberToObject(k, "nodes", cc->nodes);
    cJSON_AddNumberToObject(k, "prefill_nodes", cc->prefill_nodes);
    cJSON_AddNumberToObject(k, "decode_nodes", cc->decode_nodes);
    cJSON_AddStringToObject(k, "router", router_name(cc->router));
    cJSON_AddNumberToObject(k, "prefill_weight", cc->prefill_weight);
    cJSON_AddNumberToObject(k, "decode_weight", cc->decode_weight);
    cJSON_AddStringToObject(k, "kv_sharing", cc->sharing == SIM_SHARING_PULL ? "pull" : "none");
    cJSON_AddNumberToObject(k, "net_gbps", cc->net_gbps);
    cJSON_AddNumberToObject(k, "net_latency_us", cc->net_latency_us);
    cJSON_AddNumberToObject(k, "kv_gb_per_node", cfg->kv_gb);
    cJSON_AddNumberToObject(o, "submitted", (double)t->submitted);
    cJSON_AddNumberToObject(o, "finished", (double)(t->finished_stop + t->finished_length));
    cJSON_AddNumberToObject(o, "rejected", (double)t->rejected);
    cJSON_AddNumberToObject(o, "failed", (double)t->failed);
    cJSON_AddNumberToObject(o, "sim_s", t->sim_s);
    cJSON_AddNumberToObject(o, "wall_s", t->wall_s);
    cJSON_AddItemToObject(o, "ttft_ms", sim_report_latency_json(&t->ttft_ms));
    cJSON_AddItemToObject(o, "tpot_ms", sim_report_latency_json(&t->tpot_ms));
    cJSON_AddItemToObject(o, "e2e_ms", sim_report_latency_json(&t->e2e_ms));
    cJSON_AddNumberToObject(o, "prefix_hit_tokens", (double)t->prefix_hit_tokens);
    cJSON_AddNumberToObject(o, "prefix_query_tokens", (double)t->prefix_query_tokens);
    cJSON_AddNumberToObject(o, "prefix_hit_rate",
                            ratio((double)t->prefix_hit_tokens, (double)t->prefix_query_tokens));
    cJSON_AddNumberToObject(o, "prefill_tokens", (double)t->prefill_tokens);
    cJSON_AddNumberToObject(o, "evictions", (double)t->cache_evictions);
    cJSON_AddNumberToObject(o, "preemptions", (double)t->preemptions);
    cJSON_AddNumberToObject(o, "transferred_bytes", (double)r->transferred_bytes);
    cJSON_AddNumberToObject(o, "pulls", (double)r->pulls);
    cJSON_AddNumberToObject(o, "pulled_blocks", (double)r->pulled_blocks);
    cJSON_AddNumberToObject(o, "pull_misses", (double)r->pull_misses);
    cJSON_AddNumberToObject(o, "handoffs", (double)r->handoffs);
    cJSON_AddNumberToObject(o, "handoff_blocks", (double)r->handoff_blocks);
    cJSON_AddNumberToObject(o, "directory_resyncs", (double)r->resyncs);
    cJSON_AddNumberToObject(o, "directory_bytes_per_block", r->dir_bytes_per_block);
    cJSON *nodes = cJSON_AddArrayToObject(o, "nodes");
    for (uint32_t n = 0; nodes && n < r->nodes; n++) {
        const sim_node_results_t *x = &r->node[n];
        cJSON *e = cJSON_CreateObject();
        cJSON_AddNumberToObject(e, "requests", (double)x->requests);
        cJSON_AddNumberToObject(e, "prefix_hit_tokens", (double)x->prefix_hit_tokens);
        cJSON_AddNumberToObject(e, "prefix_query_tokens", (double)x->prefix_query_tokens);
        cJSON_AddNumberToObject(e, "prefix_hit_rate", ratio((double)x->prefix_hit_tokens,
                                                            (double)x->prefix_query_tokens));
        cJSON_AddNumberToObject(e, "prefill_tokens", (double)x->prefill_tokens);
        cJSON_AddNumberToObject(e, "steps", (double)x->steps);
        cJSON_AddNumberToObject(e, "busy_s", x->busy_s);
        cJSON_AddNumberToObject(e, "evictions", (double)x->evictions);
        cJSON_AddNumberToObject(e, "blocks_in", (double)x->blocks_in);
        cJSON_AddNumberToObject(e, "blocks_out", (double)x->blocks_out);
        cJSON_AddItemToArray(nodes, e);
    }
    char *text = cJSON_Print(o);
    cJSON_Delete(o);
    if (!text)
        return -1;
    fprintf(out, "%s\n", text);
    cJSON_free(text);
    return 0;
}
