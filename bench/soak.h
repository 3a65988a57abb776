/*
 * soak.h - the state of kvrt-soak's supervisor, shared by its main loop
 * (soak_main.c) and its fault injector (soak_faults.c).
 */
#ifndef KVRT_BENCH_SOAK_H
#define KVRT_BENCH_SOAK_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "sim_rng.h"
#include "sim_workload.h"
#include "soak_cluster.h"
#include "soak_disk.h"
#include "soak_netns.h"
#include "soak_proto.h"
#include "soak_report.h"

typedef struct options {
    uint32_t nodes;
    double duration_s, rate, request_timeout_s, fault_interval_s, fault_length_s, time_scale;
    uint64_t seed;
    uint32_t transfer_timeout_ms, pool_blocks;
    uint64_t rss_limit_mb;
    int json, loopback, no_etcd;
    uint32_t lease_ttl_s;
    const char *plot_dir, *trace, *plot_script;
    int faults[SOAK_FAULT_KINDS];
    /* Hand-offs: nodes [0, prefill_nodes) prefill, the rest decode (0: a
     * mix, where handoff_share of the requests are handed over). */
    uint32_t prefill_nodes, decode_nodes;
    double handoff_share;
    int handoff_fail, handoff_no_expiry;
} options_t;

typedef enum node_state { NODE_DOWN = 0, NODE_STARTING, NODE_UP, NODE_DONE } node_state_t;

typedef struct node_proc {
    node_state_t state;
    pid_t pid;
    int fd;
    int stopped, killed_on_purpose, reported;
    uint32_t generation;
    double restart_at;
    soak_msg_peer_t hello;
    soak_node_counters_t last;      /* latest cumulative counters of this process */
    uint64_t epoch;                 /* KV event epoch of this process */
    uint64_t dead_epoch;            /* of the killed process, until checked */
    double dir_check_at;            /* when its directory entries must be gone */
    double died_at;                 /* when the killed process was reaped */
} node_proc_t;

typedef struct record {
    int live, hung;
    uint32_t node;
    double sent_s;
    sim_request_t req;
} record_t;

typedef struct fault {
    int active;
    soak_fault_kind_t kind;
    uint32_t node;
    double heal_at, next_at;
    uint32_t turn;
    uint64_t corrupt_base;      /* blocks damaged before a corrupt fault */
    uint64_t ssd_onloads_base;  /* the diskfull victim's SSD onloads at the fault */
    uint64_t ssd_errors_base;   /* and its SSD tier's errors */
    uint32_t generation;        /* the diskfull victim's incarnation */
    /* A kill or stop waiting for a ticket: it strikes strike_node at
     * strike_at, or a random node when no ticket came by strike_until. */
    int strike_armed;
    uint32_t strike_node;
    double strike_at, strike_until;
    soak_fault_kind_t order[SOAK_FAULT_KINDS];
    uint32_t num_kinds;
} fault_t;

typedef struct soak {
    options_t o;
    soak_net_t net;
    int netns;
    node_proc_t nodes[SOAK_MAX_NODES];
    record_t *recs;
    uint64_t num_recs;
    sim_workload_t *workload;
    trace_t trace;
    sim_rng_t rng;
    double t0;
    fault_t fault;
    soak_report_t *rep;
    uint8_t *buf;
    uint64_t skipped_too_long;
    soak_cluster_t cluster;
    int etcd;                       /* the cluster side runs */
    soak_disk_t disk;               /* the nodes' SSD-tier directories */
    int tiers;
    char argv0[4096];               /* this program, for exec'ing nodes */
} soak_t;

/* The link faults' queueing disciplines: delay, loss and reordering
 * (sch_netem), and a throttled link (sch_tbf). */
#define SOAK_NETEM "netem delay 20ms 10ms loss 3% reorder 10% 50% corrupt 1%"
#define SOAK_SLOW "tbf rate 2mbit burst 32kbit latency 400ms"

/* soak_cli.c: fills *o from the command line (defaults for the rest).
 * Returns 0, or -1 after a message (exit status 2); --help exits 0. */
int soak_parse_args(int argc, char **argv, options_t *o);

/* Seconds on CLOCK_MONOTONIC. */
double soak_now(void);

/* Forks node i's process (into its namespace when there is one). */
void soak_node_start(soak_t *s, uint32_t i);

/* Sends a message to node i without blocking; a node that cannot take it
 * (stopped, gone) misses it. */
void soak_send(soak_t *s, uint32_t i, const void *msg, size_t len);

/* soak_faults.c: the seeded schedule, one fault at a time. */
void soak_fault_plan(soak_t *s);
void soak_fault_tick(soak_t *s, double t);
void soak_fault_heal(soak_t *s);
/* A ticket went to prefill_node: an armed kill or stop strikes it. */
void soak_fault_ticket_relayed(soak_t *s, uint32_t prefill_node);

#endif /* KVRT_BENCH_SOAK_H */
