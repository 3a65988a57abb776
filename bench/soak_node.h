/*
 * soak_node.h - one kvrt-soak node: kvrt's scheduler, prefix cache, block
 * pool (host memory, registered for peers), tiers and transfer agent, with
 * the model replaced by kvrt-sim's cost model in real time. Requests come
 * from the supervisor; a request's prefix comes, in this order, from a
 * prefill node's hand-off (soak_handoff.c), from the node's own tiers
 * (soak_node_tier.c) or from its home node's pool (a directory read, then a
 * KV block read with kvrt's integrity check); every block that arrives is
 * verified against its content. The node also prefills prompts for peers
 * and hands them over. Its cache's KV events go to the supervisor (who
 * keeps the cluster directory and routes), and with etcd it registers
 * under a lease kvrt keeps alive (soak_node_cluster.c).
 */
#ifndef KVRT_BENCH_SOAK_NODE_H
#define KVRT_BENCH_SOAK_NODE_H

#include <stdint.h>

typedef struct soak_node_config {
    uint32_t index;
    const char *listen;         /* "addr:port" */
    int control_fd;             /* SOCK_SEQPACKET to the supervisor */
    uint32_t pool_blocks;
    uint32_t transfer_timeout_ms;
    double time_scale;          /* wall seconds per simulated GPU second */
    uint64_t seed;
    const char *etcd_endpoint;  /* NULL: no membership on etcd */
    const char *ssd_dir;        /* the SSD tier's directory; NULL: no tiers */
    uint32_t lease_ttl_s;
    uint32_t handoff_timeout_ms;    /* accept to last block landed */
    int handoff_fail;               /* 1: a failed hand-off aborts; 0: recompute */
    int handoff_expiry;             /* 1: prefill sends stop at the hand-off's deadline */
} soak_node_config_t;

/* Runs until FINISH (returns 0 after reporting) or a fatal error (1). */
int soak_node_main(const soak_node_config_t *config);

#endif /* KVRT_BENCH_SOAK_NODE_H */
