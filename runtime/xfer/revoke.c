/*
 * revoke.c - taking back what a peer holds: its outstanding requests, its
 * incoming accesses in progress (pinned memory) and its connection. Used
 * by kvrt_xfer_peer_revoke / kvrt_xfer_revoke_name (a cluster turning a
 * dead node's quarantine into a revocation), by deregistration (a peer
 * cannot keep a region registered) and by the upkeep thread (a peer whose
 * accesses make no progress for the access deadline).
 *
 * Closing the connection is what ends the accesses: a backend unpins every
 * pin of a connection before its close returns (backend.h), so once a
 * revocation returns, the peer pins nothing.
 */
#include <stdlib.h>
#include <string.h>

#include "agent_internal.h"

void xfer_peer_revoke(kvrt_xfer_peer_t *p, kvrt_status_t why)
{
    kvrt_xfer_agent_t *a = p->agent;
    void *conn;
    a->stats.revocations++;
    if (!p->dialed) {
        /* A passive peer ends here; if it dials again, it is a new one. */
        conn = peer_shut(p, KVRT_ERR_CANCELED);
    } else {
        /* A dialed peer is the caller's handle: it stays, and reconnects
         * with backoff as after a broken connection. */
        p->busy++;
        xfer_peer_fail_requests(p, KVRT_ERR_CANCELED);
        conn = peer_take_conn(p);
        p->conn_broken = false;
        if (conn) {
            p->state = KVRT_XFER_PEER_RECONNECTING;
            p->last_error = KVRT_ERR_CANCELED;
            p->next_attempt_ns = kvrt_now_ns() + (uint64_t)p->backoff_ms * 1000000ull;
        }
    }
    char name[KVRT_XFER_NAME_MAX];
    memcpy(name, p->name, sizeof(name));
    pthread_mutex_unlock(&a->lock);
    kvrt_log(a->ctx, KVRT_LOG_WARN, "xfer %s: revoked %s (%s)", a->name, name,
             kvrt_status_str(why));
    peer_close_put(p, conn);
    pthread_mutex_lock(&a->lock);
}

uint32_t xfer_revoke_stalled(kvrt_xfer_agent_t *a, uint64_t idle_ns, kvrt_status_t why)
{
    uint32_t revoked = 0;
    /* One at a time: the list changes while the lock is dropped. Bounded
     * by the peers listed when it started. */
    for (uint32_t round = a->npeers; round > 0; round--) {
        uint64_t now = kvrt_now_ns();
        kvrt_xfer_peer_t *victim = NULL;
        for (xfer_link_t *l = a->peers.next; l != &a->peers && !victim; l = l->next) {
            kvrt_xfer_peer_t *p = XFER_CONTAINER(l, kvrt_xfer_peer_t, link);
            if (p->pins && p->conn && now - p->progress_ns >= idle_ns)
                victim = p;
        }
        if (!victim)
            break;
        xfer_peer_revoke(victim, why);
        revoked++;
    }
    return revoked;
}

KVRT_EXPORT kvrt_status_t kvrt_xfer_peer_revoke(kvrt_xfer_peer_t *peer)
{
    if (!peer)
        return kvrt_fail(NULL, KVRT_ERR_INVALID_ARG, "peer is required");
    kvrt_xfer_agent_t *a = peer->agent;
    pthread_mutex_lock(&a->lock);
    if (!peer->closing)
        xfer_peer_revoke(peer, KVRT_ERR_CANCELED);
    pthread_mutex_unlock(&a->lock);
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_xfer_revoke_name(kvrt_xfer_agent_t *agent, const char *name,
                                                uint32_t *revoked_out)
{
    if (!agent || !name)
        return kvrt_fail(agent ? agent->ctx : NULL, KVRT_ERR_INVALID_ARG,
                         "agent and name are required");
    /* Holds every peer of that name first: each revocation drops the lock,
     * and a dialed peer stays listed after it. */
    pthread_mutex_lock(&agent->lock);
    uint32_t n = 0;
    for (xfer_link_t *l = agent->peers.next; l != &agent->peers; l = l->next)
        n += strncmp(XFER_CONTAINER(l, kvrt_xfer_peer_t, link)->name, name,
                     KVRT_XFER_NAME_MAX) == 0;
    kvrt_xfer_peer_t **held = n ? malloc(n * sizeof(*held)) : NULL;
    if (n && !held) {
        pthread_mutex_unlock(&agent->lock);
        return kvrt_fail(agent->ctx, KVRT_ERR_NO_MEMORY, "%u peers", n);
    }
    uint32_t k = 0;
    for (xfer_link_t *l = agent->peers.next; l != &agent->peers && k < n; l = l->next) {
        kvrt_xfer_peer_t *p = XFER_CONTAINER(l, kvrt_xfer_peer_t, link);
        if (strncmp(p->name, name, KVRT_XFER_NAME_MAX) == 0) {
            p->busy++;
            held[k++] = p;
        }
    }
    uint32_t revoked = 0;
    for (uint32_t i = 0; i < k; i++) {
        if (!held[i]->closing) {
            xfer_peer_revoke(held[i], KVRT_ERR_CANCELED);
            revoked++;
        }
        xfer_peer_put(held[i]);
    }
    pthread_mutex_unlock(&agent->lock);
    free(held);
    if (revoked_out)
        *revoked_out = revoked;
    if (revoked == 0)
        return kvrt_fail(agent->ctx, KVRT_ERR_NOT_FOUND, "no peer named \"%.64s\"", name);
    return KVRT_OK;
}
