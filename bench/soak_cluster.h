/*
 * soak_cluster.h - kvrt-soak's cluster side: a real etcd server the nodes
 * register with, and the supervisor's kvrt prefix directory (fed by the
 * nodes' KV events, its node set kept by etcd membership) and cache-aware
 * router, which picks each request's node and the peer it pulls from.
 */
#ifndef KVRT_BENCH_SOAK_CLUSTER_H
#define KVRT_BENCH_SOAK_CLUSTER_H

#include <stdint.h>
#include <sys/types.h>

#include "kvrt/kvrt.h"
#include "soak_proto.h"

typedef struct soak_cluster {
    /* etcd */
    pid_t etcd_pid;
    char etcd_dir[64];
    char endpoint[96];
    char peer_url[96];
    uint32_t lease_ttl_s;
    /* the directory and router */
    kvrt_ctx_t *ctx;
    kvrt_cluster_dir_t *dir;
    kvrt_cluster_router_t *router;
    kvrt_cluster_etcd_t *member;     /* the supervisor's own view */
    kvrt_block_hash_t model, root;
    double next_sync;
    double serving_since;            /* since when etcd answers; < 0: it does not */
    /* per node: waiting for a snapshot, and the one being assembled */
    int awaiting[SOAK_MAX_NODES];
    kvrt_kv_event_t *snap[SOAK_MAX_NODES];
    uint32_t snap_got[SOAK_MAX_NODES];
    uint64_t routed, events_applied, resyncs;
} soak_cluster_t;

/* Starts etcd listening on host (an address of the bridge namespace, or
 * 127.0.0.1) and joins it. Returns NULL or why not (then nothing runs). */
const char *soak_cluster_start(soak_cluster_t *c, const char *host, unsigned port_base,
                               uint32_t lease_ttl_s);

/* etcd alone: killed (a fault) and started again on the same data. */
int soak_cluster_etcd_kill(soak_cluster_t *c);
int soak_cluster_etcd_restart(soak_cluster_t *c);

/* Brings the directory's node set to etcd's view (every 200 ms). */
void soak_cluster_tick(soak_cluster_t *c, double now);

/* Since when (soak_now seconds) etcd has answered the supervisor without a
 * break; < 0 while it does not. */
double soak_cluster_serving_since(const soak_cluster_t *c);

/* A node's KV events or snapshot piece. Returns 1 when the node must be
 * asked for a snapshot (SOAK_MSG_SNAPSHOT). */
int soak_cluster_events(soak_cluster_t *c, uint32_t node, const soak_msg_events_t *m);

/* Records a node's load for the router. */
void soak_cluster_load(soak_cluster_t *c, uint32_t node, const soak_msg_stats_t *m);

/* The router's node for a prompt and the node holding most of its prefix
 * (the pull source); -1 when the router has no node to offer. */
int soak_cluster_route(soak_cluster_t *c, const int32_t *prompt, uint32_t prompt_len,
                       uint32_t *target_out, uint32_t *source_out);

/* Whether the directory still holds node's entries under epoch (1), or has
 * dropped them (0). */
int soak_cluster_holds(const soak_cluster_t *c, uint32_t node, uint64_t epoch);

void soak_cluster_stop(soak_cluster_t *c);

#endif /* KVRT_BENCH_SOAK_CLUSTER_H */
