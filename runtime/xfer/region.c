/*
 * region.c - registrations, their descriptors, imported remotes, and the
 * check every incoming one-sided access goes through.
 *
 * Descriptor (little-endian): u32 magic "KVRD", u8 version, u8 backend,
 * u8 flags (bit 0: carries a KV layout; bit 1: device memory), u8 zero,
 * u32 region id, u32 access, u64 length, u64 instance of the registering
 * agent, then with the layout bit 8 u32 (num_layers, num_kv_heads,
 * head_dim, tokens_per_block, dtype, format, order, num_blocks), then u32
 * key bytes and the backend's key blob.
 *
 * A region id is a slot and a generation, both starting over in every
 * agent, so the id alone cannot tell a region from one of another process
 * on the same address; the instance can. A remote is posted to only while
 * its peer is connected to the instance named in its descriptor
 * (xfer_remote_current).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "agent_internal.h"
#include "core/endian.h"
#include "kv/pool_internal.h"
#include "xfer/hooks.h"

#define DESC_MAGIC 0x4452564bu /* "KVRD" */
#define DESC_VERSION 2
#define DESC_FIXED 32
#define DESC_LAYOUT 32
#define DESC_FLAG_LAYOUT 1u
#define DESC_FLAG_DEVICE 2u
/* Deregistration: how long a peer's access may make no progress before it
 * is revoked, when every holder is, and how long the revoked accesses may
 * then take to end. */
#define DEREG_GRACE_NS (100ull * 1000000ull)
#define DEREG_WAIT_NS (1000ull * 1000000ull)
#define DEREG_AFTER_REVOKE_NS (1000ull * 1000000ull)

kvrt_xfer_region_t *xfer_region_lookup(kvrt_xfer_agent_t *a, uint32_t id)
{
    uint32_t slot = id & 0xffffu, gen = id >> 16;
    kvrt_xfer_region_t *r = a->regions[slot];
    if (!r || !r->ready || r->dying || a->generations[slot] != gen)
        return NULL;
    return r;
}

/* The largest contiguous extent of a block, so that MR splits never cut
 * one: a whole block (block-major fused), all layers of one half
 * (block-major separate) or one page (layer-major). */
static uint64_t pool_split_align(const kvrt_kv_layout_t *l, uint64_t page, uint64_t block)
{
    if (l->order == KVRT_ORDER_BLOCK_MAJOR)
        return l->format == KVRT_KV_FUSED ? block : page * l->num_layers;
    return page;
}

KVRT_EXPORT kvrt_status_t kvrt_xfer_register(kvrt_xfer_agent_t *a,
                                             const kvrt_xfer_register_params_t *p,
                                             kvrt_xfer_region_t **region_out)
{
    if (!a || !p || !region_out)
        return kvrt_fail(a ? a->ctx : NULL, KVRT_ERR_INVALID_ARG,
                         "agent, params and region_out are required");
    const uint64_t known = (KVRT_XFER_REGISTER_PARAM_POOL << 1) - 1;
    uint32_t access = (p->field_mask & KVRT_XFER_REGISTER_PARAM_ACCESS) ? p->access : 0;
    if ((p->field_mask & ~known) ||
        (access & ~(uint32_t)(KVRT_XFER_REMOTE_READ | KVRT_XFER_REMOTE_WRITE)))
        return kvrt_fail(a->ctx, KVRT_ERR_INVALID_ARG, "unknown field_mask or access bits");
    kvrt_xfer_region_t *r = calloc(1, sizeof(*r));
    if (!r)
        return kvrt_fail(a->ctx, KVRT_ERR_NO_MEMORY, "region");
    r->agent = a;
    r->bk.access = access;
    r->bk.dmabuf_fd = -1;
    r->bk.split_align = 1;
    r->bk.base = p->address;
    r->bk.length = p->length;
    if (p->field_mask & KVRT_XFER_REGISTER_PARAM_POOL) {
        kvrt_pool_info_t info;
        uint64_t page = 0;
        if (!p->pool || kvrt_pool_info(p->pool, &info) != KVRT_OK ||
            kvrt_pool_layout(p->pool, &r->layout) != KVRT_OK ||
            kvrt_layout_page_bytes(&r->layout, &page) != KVRT_OK) {
            free(r);
            return kvrt_fail(a->ctx, KVRT_ERR_INVALID_ARG, "POOL bit set without a valid pool");
        }
        /* Memory the TCP backend (or an integrity check) would read on the
         * CPU must be host memory; engine memory is device memory unless
         * the pool says otherwise, and then needs the DMABUF bit. */
        if (!info.host_memory && !(p->field_mask & KVRT_XFER_REGISTER_PARAM_DMABUF)) {
            free(r);
            return kvrt_fail(a->ctx, KVRT_ERR_INVALID_ARG,
                             "the pool is on engine memory: register it with the DMABUF bit");
        }
        /* Descriptors carry every layout field explicitly. */
        r->layout = kvrt_layout_resolved(&r->layout);
        r->has_pool = true;
        r->pool = p->pool;
        r->num_blocks = info.num_blocks;
        r->bk.base = info.base;
        r->bk.length = (uint64_t)info.num_blocks * info.block_bytes;
        r->bk.split_align = pool_split_align(&r->layout, page, info.block_bytes);
    }
    if (p->field_mask & KVRT_XFER_REGISTER_PARAM_DMABUF) {
        r->bk.dmabuf_fd = p->dmabuf_fd;
        r->bk.dmabuf_offset = p->dmabuf_offset;
    }
    if (!r->bk.base || r->bk.length == 0 ||
        (uintptr_t)r->bk.base + r->bk.length < (uintptr_t)r->bk.base) {
        free(r);
        return kvrt_fail(a->ctx, KVRT_ERR_INVALID_ARG, "address NULL, length 0 or wrapping");
    }

    pthread_mutex_lock(&a->lock);
    uint32_t slot = 0;
    for (uint32_t i = 1; i < XFER_REGION_SLOTS; i++)
        if (!a->regions[i]) {
            slot = i;
            break;
        }
    if (slot == 0) {
        pthread_mutex_unlock(&a->lock);
        free(r);
        return kvrt_fail(a->ctx, KVRT_ERR_OVERFLOW, "all %u region slots in use",
                         XFER_REGION_SLOTS - 1);
    }
    /* The id names the slot's next generation; the generation advances
     * only if the registration succeeds. */
    r->bk.id = slot | (uint32_t)(uint16_t)(a->generations[slot] + 1) << 16;
    a->regions[slot] = r; /* reserved; served only once ready */
    pthread_mutex_unlock(&a->lock);

    char why[256] = "";
    kvrt_status_t st = a->backend->reg(a->bk_state, &r->bk, r->key, &r->key_bytes, why,
                                       sizeof(why));
    pthread_mutex_lock(&a->lock);
    if (st != KVRT_OK) {
        a->regions[slot] = NULL;
        pthread_mutex_unlock(&a->lock);
        free(r);
        return kvrt_fail(a->ctx, st, "%s backend: %s", a->backend->name, why);
    }
    a->generations[slot]++;
    r->ready = true;
    a->nregions++;
    pthread_mutex_unlock(&a->lock);
    if (r->pool) /* the pool refuses kvrt_pool_destroy() until deregistration */
        kvrt_pool_hold(r->pool);
    *region_out = r;
    return KVRT_OK;
}

kvrt_pool_t *kvrt_xfer_region_pool(const kvrt_xfer_region_t *r) { return r->pool; }

static void region_release(kvrt_xfer_region_t *r)
{
    kvrt_xfer_agent_t *a = r->agent;
    a->backend->dereg(a->bk_state, &r->bk);
    if (r->pool)
        kvrt_pool_unhold(r->pool);
    free(r);
}

KVRT_EXPORT kvrt_status_t kvrt_xfer_deregister(kvrt_xfer_region_t *r)
{
    if (!r)
        return KVRT_OK;
    kvrt_xfer_agent_t *a = r->agent;
    pthread_mutex_lock(&a->lock);
    if (r->users || r->dying) {
        uint32_t users = r->users;
        pthread_mutex_unlock(&a->lock);
        return kvrt_fail(a->ctx, KVRT_ERR_BUSY,
                         users ? "%u operations of outstanding requests use the region"
                               : "the region is being deregistered",
                         users);
    }
    /* Dying, the region is refused to peers and to new requests, and keeps
     * its slot; then the peers' accesses in progress finish with it. A
     * peer that stalls them cannot keep it: after DEREG_GRACE_NS without
     * progress its access is revoked, and after DEREG_WAIT_NS every peer
     * still holding the region is. */
    r->dying = true;
    uint64_t start = kvrt_now_ns();
    while (r->pins) {
        uint64_t waited = kvrt_now_ns() - start;
        if (waited >= DEREG_WAIT_NS + DEREG_AFTER_REVOKE_NS)
            break;
        if (waited >= DEREG_GRACE_NS)
            xfer_revoke_stalled(a, waited >= DEREG_WAIT_NS ? 0 : DEREG_GRACE_NS, KVRT_ERR_CANCELED);
        if (!r->pins)
            break;
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += 10000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&a->cond, &a->lock, &ts);
    }
    if (r->pins || r->users) {
        r->dying = false;
        pthread_mutex_unlock(&a->lock);
        return kvrt_fail(a->ctx, KVRT_ERR_BUSY, "a peer's access to the region is in progress");
    }
    a->regions[r->bk.id & 0xffffu] = NULL;
    a->nregions--;
    pthread_mutex_unlock(&a->lock);
    region_release(r);
    return KVRT_OK;
}

void xfer_regions_destroy_all(kvrt_xfer_agent_t *a)
{
    for (uint32_t i = 1; i < XFER_REGION_SLOTS; i++) {
        kvrt_xfer_region_t *r = a->regions[i];
        if (r) {
            a->regions[i] = NULL;
            a->nregions--;
            region_release(r);
        }
    }
}

KVRT_EXPORT kvrt_status_t kvrt_xfer_region_descriptor(const kvrt_xfer_region_t *r, void *buf,
                                                      size_t capacity, size_t *length_out)
{
    if (!r || !length_out || (!buf && capacity))
        return kvrt_fail(r ? r->agent->ctx : NULL, KVRT_ERR_INVALID_ARG,
                         "region, length_out and a buffer are required");
    size_t need = DESC_FIXED + (r->has_pool ? DESC_LAYOUT : 0) + 4 + r->key_bytes;
    *length_out = need;
    if (capacity < need)
        return kvrt_fail(r->agent->ctx, KVRT_ERR_BUFFER_TOO_SMALL,
                         "descriptor needs %zu bytes", need);
    uint8_t *p = buf;
    kvrt_store_le32(p, DESC_MAGIC);
    p[4] = DESC_VERSION;
    p[5] = (uint8_t)r->agent->backend->kind;
    p[6] = (uint8_t)((r->has_pool ? DESC_FLAG_LAYOUT : 0) |
                     (r->bk.dmabuf_fd >= 0 ? DESC_FLAG_DEVICE : 0));
    p[7] = 0;
    kvrt_store_le32(p + 8, r->bk.id);
    kvrt_store_le32(p + 12, r->bk.access);
    kvrt_store_le64(p + 16, r->bk.length);
    kvrt_store_le64(p + 24, r->agent->instance);
    p += DESC_FIXED;
    if (r->has_pool) {
        const kvrt_kv_layout_t *l = &r->layout;
        uint32_t v[8] = {l->num_layers, l->num_kv_heads, l->head_dim, l->tokens_per_block,
                         (uint32_t)l->dtype, (uint32_t)l->format, (uint32_t)l->order,
                         r->num_blocks};
        for (int i = 0; i < 8; i++)
            kvrt_store_le32(p + 4 * i, v[i]);
        p += DESC_LAYOUT;
    }
    kvrt_store_le32(p, r->key_bytes);
    memcpy(p + 4, r->key, r->key_bytes);
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_xfer_import(kvrt_xfer_peer_t *peer, const void *descriptor,
                                           size_t length, kvrt_xfer_remote_t **remote_out)
{
    if (!peer || !descriptor || !remote_out)
        return kvrt_fail(peer ? peer->agent->ctx : NULL, KVRT_ERR_INVALID_ARG,
                         "peer, descriptor and remote_out are required");
    kvrt_xfer_agent_t *a = peer->agent;
    const uint8_t *p = descriptor;
    if (length < DESC_FIXED + 4 || kvrt_load_le32(p) != DESC_MAGIC || p[4] != DESC_VERSION ||
        (p[6] & ~(DESC_FLAG_LAYOUT | DESC_FLAG_DEVICE)) || p[7] != 0)
        return kvrt_fail(a->ctx, KVRT_ERR_PARSE, "not a kvrt region descriptor");
    if (p[5] != (uint8_t)a->backend->kind)
        return kvrt_fail(a->ctx, KVRT_ERR_UNSUPPORTED, "descriptor of another backend (%u)", p[5]);
    kvrt_xfer_remote_t *r = calloc(1, sizeof(*r));
    if (!r)
        return kvrt_fail(a->ctx, KVRT_ERR_NO_MEMORY, "remote");
    r->peer = peer;
    r->bk.id = kvrt_load_le32(p + 8);
    r->bk.access = kvrt_load_le32(p + 12);
    r->bk.length = kvrt_load_le64(p + 16);
    r->instance = kvrt_load_le64(p + 24);
    r->device = (p[6] & DESC_FLAG_DEVICE) != 0;
    size_t at = DESC_FIXED;
    kvrt_status_t st = KVRT_OK;
    if (p[6] & DESC_FLAG_LAYOUT) {
        if (length < at + DESC_LAYOUT + 4) {
            st = KVRT_ERR_PARSE;
        } else {
            const uint8_t *q = p + at;
            r->has_pool = true;
            r->layout = (kvrt_kv_layout_t){
                .field_mask = KVRT_LAYOUT_FIELD_DTYPE | KVRT_LAYOUT_FIELD_FORMAT |
                              KVRT_LAYOUT_FIELD_ORDER,
                .num_layers = kvrt_load_le32(q), .num_kv_heads = kvrt_load_le32(q + 4),
                .head_dim = kvrt_load_le32(q + 8), .tokens_per_block = kvrt_load_le32(q + 12),
                .dtype = (kvrt_dtype_t)kvrt_load_le32(q + 16),
                .format = (kvrt_kv_format_t)kvrt_load_le32(q + 20),
                .order = (kvrt_kv_order_t)kvrt_load_le32(q + 24)};
            r->num_blocks = kvrt_load_le32(q + 28);
            uint64_t block = 0, bytes = 0;
            if (kvrt_layout_block_bytes(&r->layout, &block) != KVRT_OK || r->num_blocks < 2 ||
                __builtin_mul_overflow(block, (uint64_t)r->num_blocks, &bytes) ||
                bytes > r->bk.length)
                st = KVRT_ERR_PARSE;
            at += DESC_LAYOUT;
        }
    }
    if (st == KVRT_OK) {
        uint32_t kb = kvrt_load_le32(p + at);
        if (kb > KVRT_XFER_BK_KEY_MAX || length != at + 4 + kb ||
            (r->bk.access & ~(uint32_t)(KVRT_XFER_REMOTE_READ | KVRT_XFER_REMOTE_WRITE)))
            st = KVRT_ERR_PARSE;
        else {
            r->bk.key_bytes = kb;
            memcpy(r->bk.key, p + at + 4, kb);
        }
    }
    if (st != KVRT_OK) {
        free(r);
        return kvrt_fail(a->ctx, st, "malformed region descriptor");
    }
    pthread_mutex_lock(&a->lock);
    xfer_list_push(&peer->remotes, &r->link);
    pthread_mutex_unlock(&a->lock);
    *remote_out = r;
    return KVRT_OK;
}

kvrt_status_t xfer_remote_current(const kvrt_xfer_remote_t *r, uint32_t op)
{
    kvrt_xfer_peer_t *p = r->peer;
    /* While the peer is down, remote_instance is the last connection's:
     * the admission that follows answers KVRT_ERR_PEER_FAILED, whichever
     * instance the descriptor names. */
    if (r->instance == p->remote_instance || !xfer_peer_up(p))
        return KVRT_OK;
    return kvrt_fail(p->agent->ctx, KVRT_ERR_UNKNOWN_REGION,
                     "op %u: the remote's descriptor is of another instance of %s than the one "
                     "connected (the peer restarted): import its current descriptor",
                     op, p->name);
}

KVRT_EXPORT kvrt_status_t kvrt_xfer_remote_release(kvrt_xfer_remote_t *r)
{
    if (!r)
        return KVRT_OK;
    kvrt_xfer_agent_t *a = r->peer->agent;
    pthread_mutex_lock(&a->lock);
    if (r->users) {
        pthread_mutex_unlock(&a->lock);
        return kvrt_fail(a->ctx, KVRT_ERR_BUSY, "operations in flight use the remote");
    }
    xfer_list_del(&r->link);
    pthread_mutex_unlock(&a->lock);
    free(r);
    return KVRT_OK;
}

kvrt_status_t kvrt_xfer_bk_pin(kvrt_xfer_bk_peer_t *peer, uint32_t id, uint32_t access,
                               uint64_t offset, uint64_t length, uint8_t **address_out,
                               void **pin_out)
{
    kvrt_xfer_agent_t *a = peer->agent;
    char why[160];
    kvrt_status_t st = KVRT_OK;
    pthread_mutex_lock(&a->lock);
    kvrt_xfer_region_t *r = xfer_region_lookup(a, id);
    if (!r) {
        st = KVRT_ERR_UNKNOWN_REGION;
        snprintf(why, sizeof(why), "region %#x is not registered", id);
    } else if ((r->bk.access & access) != access) {
        st = KVRT_ERR_REMOTE_ACCESS;
        snprintf(why, sizeof(why), "region %#x does not allow remote %s", id,
                 access == KVRT_XFER_REMOTE_WRITE ? "write" : "read");
    } else if (r->bk.dmabuf_fd >= 0) {
        st = KVRT_ERR_REMOTE_ACCESS;
        snprintf(why, sizeof(why), "region %#x is device memory", id);
    } else if (offset > r->bk.length || length > r->bk.length - offset) {
        st = KVRT_ERR_REMOTE_ACCESS;
        snprintf(why, sizeof(why),
                 "[%" PRIu64 ", +%" PRIu64 ") outside region %#x of %" PRIu64 " bytes", offset,
                 length, id, r->bk.length);
    } else {
        r->pins++;
        if (peer->pins++ == 0)
            peer->progress_ns = kvrt_now_ns();
        *address_out = r->bk.base + offset;
        *pin_out = r;
    }
    uint64_t suppressed = 0;
    bool log = false;
    char name[KVRT_XFER_NAME_MAX];
    if (st != KVRT_OK) {
        a->stats.refused++;
        log = xfer_refusal_log_ok(a, &suppressed);
        memcpy(name, peer->name, sizeof(name));
    }
    pthread_mutex_unlock(&a->lock);
    if (log)
        kvrt_log(a->ctx, KVRT_LOG_WARN,
                 "xfer %s: refused access from %s: %s (%" PRIu64 " similar lines suppressed)",
                 a->name, name, why, suppressed);
    return st;
}

void kvrt_xfer_bk_unpin(kvrt_xfer_bk_peer_t *peer, void *pin)
{
    kvrt_xfer_agent_t *a = peer->agent;
    kvrt_xfer_region_t *r = pin;
    pthread_mutex_lock(&a->lock);
    peer->pins--;
    peer->progress_ns = kvrt_now_ns();
    if (--r->pins == 0)
        pthread_cond_broadcast(&a->cond);
    pthread_mutex_unlock(&a->lock);
}
