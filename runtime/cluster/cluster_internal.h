/*
 * cluster_internal.h - what the cluster's files share: the directory's
 * per-node view for the router and the etcd sync. Internal.
 */
#ifndef KVRT_CLUSTER_INTERNAL_H
#define KVRT_CLUSTER_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "core/core.h"
#include "kvrt/cluster.h"

/* A non-zero random 64-bit value (getrandom, else the clock). */
uint64_t cluster_random_epoch(void);

/* The model's index, or -1 when no node ever served it. */
int cluster_dir_model_index(const kvrt_cluster_dir_t *dir, const kvrt_block_hash_t *model);

/* Nodes (slot bits) of a model that answer queries, and all its nodes. */
uint64_t cluster_dir_model_nodes(const kvrt_cluster_dir_t *dir, int model, bool answering);

/* Longest prefixes per node slot of the model's nodes: prefix[slot] for
 * tiers in tier_mask, gpu_prefix[slot] on GPU (either may be NULL). */
void cluster_dir_prefixes(const kvrt_cluster_dir_t *dir, int model,
                          const kvrt_block_hash_t *keys, uint32_t num_keys,
                          uint32_t tier_mask, uint32_t *prefix, uint32_t *gpu_prefix);

uint64_t cluster_dir_slot_node_id(const kvrt_cluster_dir_t *dir, uint32_t slot);
const kvrt_cluster_load_t *cluster_dir_slot_load(const kvrt_cluster_dir_t *dir, uint32_t slot);
kvrt_ctx_t *cluster_dir_ctx(const kvrt_cluster_dir_t *dir);
/* How many times dropping a node's entries walked its model's whole table
 * instead of looking up the node's own keys (tests). */
uint64_t cluster_dir_table_walks(const kvrt_cluster_dir_t *dir);

/* One member of the etcd view, applied (kvrt_cluster_etcd_sync): a new
 * node is added; one back with another epoch is restarted (its entries
 * dropped, the old epoch remembered as stale), unless the view's epoch is
 * one the node had before its current (the view lags its events: nothing
 * changes); one back serving another model is removed and added again
 * under it. Nodes added or restarted here are marked as the sync's, which
 * a later sync removes when they leave the view. Counts into *added and
 * *removed; errors of kvrt_cluster_dir_add_node. */
kvrt_status_t cluster_dir_sync_member(kvrt_cluster_dir_t *dir, const kvrt_cluster_member_t *m,
                                      uint32_t *added, uint32_t *removed);
/* Node ids that a sync added, into ids[0..64); returns their count. */
uint32_t cluster_dir_synced_nodes(const kvrt_cluster_dir_t *dir, uint64_t *ids);

/* handoff_recv.c, for a channel (channel.c): fed, the receiver reads no
 * notification itself and the channel delivers its hand-off messages.
 * Feeding: KVRT_ERR_INVALID_ARG (recv on another agent), KVRT_ERR_BUSY
 * (fed already). */
kvrt_status_t handoff_recv_feed(kvrt_cluster_handoff_recv_t *recv,
                                const kvrt_xfer_agent_t *agent, bool fed);
void handoff_recv_deliver(kvrt_cluster_handoff_recv_t *recv, uint64_t now_ns,
                          const kvrt_xfer_notification_t *note);

#endif /* KVRT_CLUSTER_INTERNAL_H */
