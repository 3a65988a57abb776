/*
 * soak_netns.h - kvrt-soak's private network: a bridge namespace and one
 * namespace per node, each joined to the bridge by a veth pair, addresses
 * in 10.231.<k>.0/24 that exist only inside those namespaces. Names carry
 * the supervisor's pid so runs never collide. Needs root and iproute2;
 * without them the caller falls back to loopback.
 */
#ifndef KVRT_BENCH_SOAK_NETNS_H
#define KVRT_BENCH_SOAK_NETNS_H

#include <stdint.h>

#include "soak_proto.h"

typedef struct soak_net {
    int made;                       /* namespaces exist (teardown owed) */
    uint32_t nodes;
    unsigned tag;                   /* the pid, in names */
    char bridge_ns[40];
    char node_ns[SOAK_MAX_NODES][40];
    char node_if[SOAK_MAX_NODES][16];  /* the node's end, inside its namespace */
    char address[SOAK_MAX_NODES][32];  /* the node's address, no port */
    char bridge_if[SOAK_MAX_NODES][16];  /* the bridge's end of the node's veth */
    char bridge_address[32];
} soak_net_t;

/* Builds the network. Returns NULL, or why it could not (then nothing is
 * left behind). */
const char *soak_net_up(soak_net_t *net, uint32_t nodes);

/* Removes every namespace this run made (their veths go with them).
 * Idempotent; async-signal-safe enough for an exit path (fork + exec). */
void soak_net_down(soak_net_t *net);

/* Runs a command quietly; returns its exit status. */
int soak_sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Enters the node's namespace (in a forked child). Returns 0 or -1. */
int soak_net_enter(const soak_net_t *net, uint32_t node);

/* Enters the bridge namespace, where the supervisor and etcd live (the
 * bridge holds 10.231.<k>.1). Returns 0 or -1. */
int soak_net_enter_bridge(const soak_net_t *net);

/* Faults on a node's link. Each returns 0 or the failing command's status. */
int soak_net_link(const soak_net_t *net, uint32_t node, int up);
/* Replaces the root qdisc of the node's link ("netem delay 20ms", "tbf
 * ..."); NULL restores the default. */
int soak_net_qdisc(const soak_net_t *net, uint32_t node, const char *qdisc);

/* 1 when the kernel offers this qdisc (tried on node 0's link, then
 * removed): sch_netem is a module many kernels leave out. */
int soak_net_has_qdisc(const soak_net_t *net, const char *qdisc);

/* Loss (3% each way) and reordering (10% of the node's outbound packets
 * delayed behind a 20 Mbit/s HTB class) on the node's link with nftables
 * and HTB, for kernels without sch_netem; on = 0 removes both, first
 * writing the packets dropped and delayed to *dropped and *delayed (when
 * not NULL). Returns 0 or a failing command's status. */
int soak_net_lossy(const soak_net_t *net, uint32_t node, int on, uint64_t *dropped,
                   uint64_t *delayed);

/* 1 when nft and HTB are there and the lossy link can be set up (tried on
 * node 0's link, then removed). */
int soak_net_has_lossy(const soak_net_t *net);

#endif /* KVRT_BENCH_SOAK_NETNS_H */
