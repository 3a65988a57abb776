/*
 * peer_cache.c - one connection per address for the peers a node sends to
 * (peer_cache.h).
 */
#include <stdio.h>
#include <string.h>

#include "peer_cache.h"

/* Whether the place's connection may be closed: no request of it in
 * flight and no caller between its get and put (a send still holds the
 * peer and the remotes it imported from it, which a disconnect frees). */
static bool place_idle(const peer_place_t *place, const kvrt_xfer_peer_info_t *info)
{
    return info->outstanding == 0 && place->users == 0;
}

/* The connection to `address`: kept from an earlier send while it is up,
 * else dialed (evicting the oldest idle one when all places are taken). */
kvrt_status_t peer_cache_get(peer_cache_t *s, const char *address, kvrt_xfer_peer_t **peer_out)
{
    peer_place_t *place = NULL;
    for (uint32_t i = 0; i < PEER_CACHE_MAX && !place; i++)
        if (s->places[i].peer && strcmp(s->places[i].address, address) == 0)
            place = &s->places[i];
    if (place) {
        kvrt_xfer_peer_info_t info = {.struct_size = sizeof(info)};
        if (kvrt_xfer_peer_info(place->peer, &info) == KVRT_OK &&
            (info.state == KVRT_XFER_PEER_CONNECTED || info.state == KVRT_XFER_PEER_RECONNECTING)) {
            place->users++;
            *peer_out = place->peer;
            return KVRT_OK;
        }
        if (!place_idle(place, &info))
            return kvrt_fail(s->ctx, KVRT_ERR_PEER_FAILED,
                             "%s is down (%u sends still use it)", address, place->users);
        kvrt_xfer_disconnect(place->peer);
        place->peer = NULL;
    }
    for (uint32_t i = 0; i < PEER_CACHE_MAX && !place; i++)
        if (!s->places[i].peer)
            place = &s->places[i];
    if (!place) {
        /* A peer still carrying requests or used by a send is not evicted. */
        for (uint32_t tries = 0; tries < PEER_CACHE_MAX && !place; tries++) {
            peer_place_t *c = &s->places[s->next_evict];
            s->next_evict = (s->next_evict + 1) % PEER_CACHE_MAX;
            kvrt_xfer_peer_info_t info = {.struct_size = sizeof(info)};
            if (kvrt_xfer_peer_info(c->peer, &info) == KVRT_OK && place_idle(c, &info)) {
                kvrt_xfer_disconnect(c->peer);
                c->peer = NULL;
                place = c;
            }
        }
        if (!place)
            return kvrt_fail(s->ctx, KVRT_ERR_BUSY, "%u decode nodes in use", PEER_CACHE_MAX);
    }
    kvrt_xfer_peer_t *peer = NULL;
    kvrt_status_t st = kvrt_xfer_connect(s->agent, address, s->connect_timeout_ms, &peer);
    if (st != KVRT_OK)
        return st;
    snprintf(place->address, sizeof(place->address), "%s", address);
    place->peer = peer;
    place->users = 1;
    *peer_out = peer;
    return KVRT_OK;
}

void peer_cache_put(peer_cache_t *pc, kvrt_xfer_peer_t *peer)
{
    for (uint32_t i = 0; i < PEER_CACHE_MAX; i++)
        if (pc->places[i].peer == peer && pc->places[i].users) {
            pc->places[i].users--;
            return;
        }
}

void peer_cache_close(peer_cache_t *pc)
{
    for (uint32_t i = 0; i < PEER_CACHE_MAX; i++) {
        kvrt_xfer_disconnect(pc->places[i].peer);
        pc->places[i].peer = NULL;
    }
}
