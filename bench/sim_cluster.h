/*
 * sim_cluster.h - kvrt-sim with several engines: N simulated nodes, each
 * with its own real kvrt pool, prefix cache and scheduler, a KV-event
 * publisher on every cache, one prefix directory fed by those events, and
 * kvrt's router choosing the node of every arriving request. Transfers
 * between nodes (peer pulls, prefill -> decode hand-offs) cost time on a
 * network model; their blocks are really inserted into the receiving
 * node's cache, so what a later request finds there is what kvrt holds.
 *
 * Network model (docs/cluster.md): a transfer of B bytes takes
 *   latency_us + B / (gbps * 1e9 / 8) seconds,
 * and each node's NIC carries one transfer at a time (both ends busy), so
 * transfers queue behind each other.
 *
 * Simplifications against the single-node simulator (sim_engine.h): no
 * speculative decoding and no client aborts.
 */
#ifndef KVRT_BENCH_SIM_CLUSTER_H
#define KVRT_BENCH_SIM_CLUSTER_H

#include <stdio.h>

#include "kvrt/kvrt.h"
#include "sim_engine.h"

typedef enum sim_kv_sharing {
    SIM_SHARING_NONE = 0, /* each node serves from its own cache only */
    SIM_SHARING_PULL = 1  /* a node pulls the prefix a peer holds when the
                             transfer is cheaper than recomputing it */
} sim_kv_sharing_t;

typedef struct sim_cluster_config {
    uint32_t nodes;                 /* engines in all (prefill + decode) */
    kvrt_route_policy_t router;
    double prefill_weight, decode_weight; /* the router's cost weights */
    sim_kv_sharing_t sharing;
    uint32_t prefill_nodes;         /* --disaggregate P:D; 0: every node does both */
    uint32_t decode_nodes;
    double net_latency_us;          /* per transfer */
    double net_gbps;                /* per NIC, gigabits per second */
} sim_cluster_config_t;

sim_cluster_config_t sim_cluster_config_default(void);
int sim_cluster_config_validate(const sim_cluster_config_t *cc, char *error, size_t size);

typedef struct sim_node_results {
    uint64_t requests;              /* routed here (prefill, or decode hand-offs) */
    uint64_t prefill_tokens;        /* computed */
    uint64_t prefix_hit_tokens, prefix_query_tokens;
    uint64_t steps;
    double busy_s;
    uint64_t evictions;
    uint64_t blocks_in, blocks_out; /* transferred */
} sim_node_results_t;

typedef struct sim_cluster_results {
    sim_results_t total;            /* cluster figures (latency, hit rate...) */
    sim_node_results_t *node;       /* [nodes]; free with sim_cluster_results_free */
    uint32_t nodes;
    uint64_t pulls, pulled_blocks, pull_misses;  /* pull_misses: the peer lacked them */
    uint64_t handoffs, handoff_blocks;
    uint64_t transferred_bytes;
    uint64_t resyncs;               /* directory resynchronizations */
    double dir_bytes_per_block;     /* at the end */
} sim_cluster_results_t;

int sim_cluster_run(const sim_config_t *config, const sim_cluster_config_t *cc,
                    sim_workload_t *workload, sim_progress_fn progress, void *progress_user,
                    sim_cluster_results_t *results, char *error, size_t error_size);
void sim_cluster_results_free(sim_cluster_results_t *results);

void sim_cluster_report_text(FILE *out, const char *workload, const sim_config_t *config,
                             const sim_cluster_config_t *cc, const sim_cluster_results_t *r);
int sim_cluster_report_json(FILE *out, const char *workload, const sim_config_t *config,
                            const sim_cluster_config_t *cc, const sim_cluster_results_t *r);

#endif /* KVRT_BENCH_SIM_CLUSTER_H */
