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

/* Revokes every listed peer named `name` (lock held; dropped meanwhile).
 * KVRT_ERR_NO_MEMORY before anything changed. */
static kvrt_status_t revoke_named(kvrt_xfer_agent_t *agent, const char *name, uint32_t *revoked_out)
{
    /* Holds every peer of that name first: each revocation drops the lock,
     * and a dialed peer stays listed after it. */
    uint32_t n = 0;
    for (xfer_link_t *l = agent->peers.next; l != &agent->peers; l = l->next)
        n += strncmp(XFER_CONTAINER(l, kvrt_xfer_peer_t, link)->name, name,
                     KVRT_XFER_NAME_MAX) == 0;
    kvrt_xfer_peer_t **held = n ? malloc(n * sizeof(*held)) : NULL;
    if (n && !held)
        return KVRT_ERR_NO_MEMORY;
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
    free(held);
    *revoked_out = revoked;
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_xfer_revoke_name(kvrt_xfer_agent_t *agent, const char *name,
                                                uint32_t *revoked_out)
{
    if (!agent || !name)
        return kvrt_fail(agent ? agent->ctx : NULL, KVRT_ERR_INVALID_ARG,
                         "agent and name are required");
    pthread_mutex_lock(&agent->lock);
    uint32_t revoked = 0;
    kvrt_status_t st = revoke_named(agent, name, &revoked);
    pthread_mutex_unlock(&agent->lock);
    if (st != KVRT_OK)
        return kvrt_fail(agent->ctx, st, "holding the peers named \"%.64s\"", name);
    if (revoked_out)
        *revoked_out = revoked;
    if (revoked == 0)
        return kvrt_fail(agent->ctx, KVRT_ERR_NOT_FOUND, "no peer named \"%.64s\"", name);
    return KVRT_OK;
}

/* ---- refused names ---------------------------------------------------------
 *
 * A revoked peer that dials again is a new peer; a cluster that gave a dead
 * sender's blocks to other requests must keep it out for a while, or a
 * sender that was only stalled writes into them once resumed. Refusals live
 * in a small table of the agent (XFER_REFUSED_NAMES_MAX), checked under the
 * agent lock where a connection is attached to a peer: at the listener's
 * accept (xfer_incoming_claim) and after a dial's handshake
 * (kvrt_xfer_bk_dial). */

bool xfer_name_refused(kvrt_xfer_agent_t *a, const char *name)
{
    uint64_t now = kvrt_now_ns();
    bool refused = false;
    for (uint32_t i = 0; i < a->nrefused_names;) {
        xfer_refusal_t *r = &a->refused_names[i];
        if (now >= r->until_ns) {
            *r = a->refused_names[--a->nrefused_names];
            continue;
        }
        refused |= strncmp(r->name, name, KVRT_XFER_NAME_MAX) == 0;
        i++;
    }
    return refused;
}

void xfer_settled(kvrt_xfer_agent_t *a)
{
    if (--a->settling == 0)
        pthread_cond_broadcast(&a->cond);
}

/* Sets name's refusal to end at until_ns (0: lifts it). Lock held. */
static kvrt_status_t refusal_set(kvrt_xfer_agent_t *a, const char *name, uint64_t until_ns)
{
    (void)xfer_name_refused(a, ""); /* forgets the refusals that ran out */
    for (uint32_t i = 0; i < a->nrefused_names; i++) {
        xfer_refusal_t *r = &a->refused_names[i];
        if (strncmp(r->name, name, KVRT_XFER_NAME_MAX) != 0)
            continue;
        if (!until_ns)
            *r = a->refused_names[--a->nrefused_names];
        else if (until_ns > r->until_ns)
            r->until_ns = until_ns;
        return KVRT_OK;
    }
    if (!until_ns)
        return KVRT_OK;
    if (a->nrefused_names == XFER_REFUSED_NAMES_MAX)
        return KVRT_ERR_REQUEST_LIMIT;
    xfer_refusal_t *r = &a->refused_names[a->nrefused_names++];
    memset(r->name, 0, sizeof(r->name));
    memcpy(r->name, name, strlen(name));
    r->until_ns = until_ns;
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_xfer_refuse_name(kvrt_xfer_agent_t *agent, const char *name,
                                                uint32_t refuse_ms, uint32_t *revoked_out)
{
    if (!agent || !name)
        return kvrt_fail(agent ? agent->ctx : NULL, KVRT_ERR_INVALID_ARG,
                         "agent and name are required");
    size_t len = strnlen(name, KVRT_XFER_NAME_MAX);
    if (len == 0 || len >= KVRT_XFER_NAME_MAX)
        return kvrt_fail(agent->ctx, KVRT_ERR_INVALID_ARG, "a name of 1..%d bytes",
                         KVRT_XFER_NAME_MAX - 1);
    if (refuse_ms > KVRT_XFER_REFUSE_MAX_MS)
        return kvrt_fail(agent->ctx, KVRT_ERR_INVALID_ARG, "refuse_ms %u over %u", refuse_ms,
                         KVRT_XFER_REFUSE_MAX_MS);
    pthread_mutex_lock(&agent->lock);
    uint64_t until = refuse_ms ? kvrt_now_ns() + (uint64_t)refuse_ms * 1000000ull : 0;
    kvrt_status_t st = refusal_set(agent, name, until);
    if (st != KVRT_OK) {
        pthread_mutex_unlock(&agent->lock);
        return kvrt_fail(agent->ctx, st, "%u names refused already", XFER_REFUSED_NAMES_MAX);
    }
    uint32_t revoked = 0;
    if (refuse_ms) {
        /* A connection that passed the name check before the refusal is
         * attached to its peer (or closed) shortly: wait for those, so the
         * revocation below finds every connection of that name. Each is
         * bounded by its handshake's deadline. */
        while (agent->settling)
            pthread_cond_wait(&agent->cond, &agent->lock);
        st = revoke_named(agent, name, &revoked);
    }
    pthread_mutex_unlock(&agent->lock);
    if (st != KVRT_OK)
        return kvrt_fail(agent->ctx, st, "refused \"%.64s\", but holding its peers failed; "
                         "call again", name);
    if (revoked_out)
        *revoked_out = revoked;
    return KVRT_OK;
}
