/*
 * soak_node_cluster.c - a kvrt-soak node in the cluster layer
 * (kvrt/cluster.h): its etcd membership under a lease kvrt keeps alive, and
 * its cache's KV events, shipped to the supervisor's directory as they come
 * or, when the directory lost track, as a snapshot.
 */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "soak_node_internal.h"

/* Registers on etcd under a lease of lease_ttl_s; etcd may be down for a
 * moment (its own fault), so the first registration is retried for 15 s. */
int soak_node_join_etcd(node_t *n, const kvrt_kv_layout_t *layout, const char *address)
{
    kvrt_cluster_etcd_params_t ep = {
        .field_mask = KVRT_ETCD_PARAM_ENDPOINT | KVRT_ETCD_PARAM_ADDRESS |
                      KVRT_ETCD_PARAM_LEASE_TTL | KVRT_ETCD_PARAM_POLL_MS |
                      KVRT_ETCD_PARAM_TIMEOUT_MS | KVRT_ETCD_PARAM_MAX_BACKOFF_MS,
        .node_id = n->cfg->index + 1u, .epoch = n->epoch, .endpoint = n->cfg->etcd_endpoint,
        .address = address, .lease_ttl_s = n->cfg->lease_ttl_s, .poll_ms = 250,
        .timeout_ms = 500, .max_backoff_ms = 1000};
    kvrt_status_t st = kvrt_model_fingerprint("kvrt-soak/model", layout, &ep.model);
    double give_up = soak_node_now_s() + 15.0;
    while (st == KVRT_OK) {
        st = kvrt_cluster_etcd_create(n->ctx, &ep, &n->member);
        if (st != KVRT_ERR_COORDINATOR || soak_node_now_s() > give_up)
            break;
        usleep(200 * 1000);
    }
    return st == KVRT_OK ? 0 : soak_node_die(n, "kvrt_cluster_etcd_create", st);
}

/* Ships the cache's new KV events to the supervisor's directory. */
void soak_node_ship_events(node_t *n)
{
    soak_msg_events_t *m = n->events_msg;
    for (int k = 0; k < 16; k++) {
        uint32_t got = 0;
        if (kvrt_kv_events_take(n->events, m->events, SOAK_EVENTS_PER_MSG, &got, &m->epoch) !=
                KVRT_OK ||
            got == 0)
            return;
        m->type = SOAK_MSG_EVENTS;
        m->count = got;
        m->snapshot = 0;
        soak_node_send(n, m, offsetof(soak_msg_events_t, events) + got * sizeof(kvrt_kv_event_t));
    }
}

/* The directory lost track of this node: everything the cache holds now,
 * in pieces. Events already shipped with larger ids follow it. */
void soak_node_ship_snapshot(node_t *n)
{
    soak_node_ship_events(n);
    uint32_t need = 0;
    uint64_t last = 0;
    kvrt_kv_events_snapshot(n->events, NULL, 0, &need, &last);
    kvrt_kv_event_t *all = malloc(((size_t)need + 1) * sizeof(*all));
    if (!all || kvrt_kv_events_snapshot(n->events, all, need + 1, &need, &last) != KVRT_OK) {
        free(all);
        return;
    }
    soak_msg_events_t *m = n->events_msg;
    uint32_t off = 0;
    do {
        uint32_t c = need - off < SOAK_EVENTS_PER_MSG ? need - off : SOAK_EVENTS_PER_MSG;
        m->type = SOAK_MSG_EVENTS;
        m->snapshot = 1;
        m->epoch = n->epoch;
        m->total = need;
        m->offset = off;
        m->count = c;
        m->last_event_id = last;
        memcpy(m->events, all + off, c * sizeof(*all));
        soak_node_send(n, m, offsetof(soak_msg_events_t, events) + c * sizeof(kvrt_kv_event_t));
        off += c;
    } while (off < need);
    free(all);
}
