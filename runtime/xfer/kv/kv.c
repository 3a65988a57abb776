/*
 * kv.c - KV block transfer: whole blocks (every layer, K and V) of one pool
 * region to or from a peer's pool region, coalesced into as few operations
 * as the two layouts allow, with an optional XXH3 check of every block.
 *
 * Pairing works page by page (a page is one block x layer x half), so the
 * two pools may use different orders and formats. The pairs are sorted by
 * local offset and merged while both sides stay contiguous: consecutive
 * block ids in a layer-major pool become one operation per layer and half,
 * a block-major fused pool one operation per run of blocks.
 *
 * A block's checksum is XXH3-64 over its pages in (layer, K then V) order,
 * so it does not depend on the layout. With integrity on, a WRITE ends with
 * VERIFY messages carrying the checksums, which the receiver checks against
 * what landed before it delivers the notification; a READ ends with HASHES
 * queries whose answers this side checks against what it received.
 */
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "../agent_internal.h"
#include "core/endian.h"

/* Blocks per closing message: 16 bytes each in a VERIFY, within
 * KVRT_XFER_MSG_MAX with room for the header and a notification; fewer
 * when their checksums would be more than XFER_HASH_WORK_MAX to compute. */
#define KV_CHUNK 4000u
#define KV_VERIFY_HEAD 16u

struct xfer_kv {
    kvrt_xfer_opcode_t opcode;
    bool integrity;
    const kvrt_xfer_region_t *local;
    uint32_t remote_id;
    uint32_t count;
    int32_t *local_blocks;
    int32_t *remote_blocks;
    uint64_t *hashes;      /* WRITE with integrity: local checksums */
    uint32_t next;         /* first block of the next chunk */
    uint32_t chunk_first, chunk_count;
};

typedef struct kv_pair {
    uint64_t local, remote, length;
} kv_pair_t;

static uint64_t block_hash(const uint8_t *base, const kvrt_kv_layout_t *l, uint32_t num_blocks,
                           uint32_t block, uint64_t page, XXH3_state_t *s)
{
    XXH3_64bits_reset(s);
    for (uint32_t layer = 0; layer < l->num_layers; layer++)
        for (int half = 0; half < 2; half++) {
            uint64_t off = 0;
            kvrt_layout_page_offset(l, num_blocks, block, layer, (kvrt_kv_half_t)half, &off);
            XXH3_64bits_update(s, base + off, page);
        }
    return XXH3_64bits_digest(s);
}

static int pair_cmp(const void *a, const void *b)
{
    const kv_pair_t *x = a, *y = b;
    return x->local < y->local ? -1 : x->local > y->local;
}

/* Builds the coalesced operations; NULL on no memory. */
static kvrt_xfer_bk_op_t *kv_ops(const kvrt_xfer_kv_params_t *p, uint64_t page,
                                 uint32_t *n_out)
{
    const kvrt_xfer_region_t *lr = p->local;
    const kvrt_xfer_remote_t *rr = p->remote;
    uint32_t layers = lr->layout.num_layers;
    size_t n = (size_t)p->count * layers * 2;
    kv_pair_t *pairs = malloc(n * sizeof(*pairs));
    if (!pairs)
        return NULL;
    size_t k = 0;
    for (uint32_t i = 0; i < p->count; i++)
        for (uint32_t layer = 0; layer < layers; layer++)
            for (int half = 0; half < 2; half++) {
                kv_pair_t *e = &pairs[k++];
                kvrt_layout_page_offset(&lr->layout, lr->num_blocks, (uint32_t)p->local_blocks[i],
                                        layer, (kvrt_kv_half_t)half, &e->local);
                kvrt_layout_page_offset(&rr->layout, rr->num_blocks,
                                        (uint32_t)p->remote_blocks[i], layer,
                                        (kvrt_kv_half_t)half, &e->remote);
                e->length = page;
            }
    qsort(pairs, n, sizeof(*pairs), pair_cmp);
    size_t m = 0;
    for (size_t i = 1; i < n; i++) {
        kv_pair_t *last = &pairs[m];
        if (pairs[i].local == last->local + last->length &&
            pairs[i].remote == last->remote + last->length && last->length < XFER_OP_SPLIT)
            last->length += pairs[i].length;
        else
            pairs[++m] = pairs[i];
    }
    m++;
    kvrt_xfer_bk_op_t *ops = malloc(m * sizeof(*ops));
    if (ops)
        for (size_t i = 0; i < m; i++)
            ops[i] = (kvrt_xfer_bk_op_t){.opcode = p->opcode, .local = &lr->bk,
                                         .local_offset = pairs[i].local, .remote = &rr->bk,
                                         .remote_offset = pairs[i].remote, .length = pairs[i].length};
    free(pairs);
    *n_out = (uint32_t)m;
    return ops;
}

static void kv_free(struct xfer_kv *kv)
{
    free(kv->local_blocks);
    free(kv->remote_blocks);
    free(kv->hashes);
    free(kv);
}

static void kv_free_state(void *state) { kv_free(state); }
static xfer_msg_t *kv_next_msg(kvrt_xfer_request_t *r, kvrt_status_t *status_out);
static kvrt_status_t kv_on_reply(kvrt_xfer_request_t *r, kvrt_status_t status,
                                 const uint8_t *reply, uint32_t bytes);

/* A KV request's closing messages: VERIFY or HASHES chunks, then the
 * notification. */
static const xfer_request_layer_t kv_layer = {
    .next_msg = kv_next_msg, .on_reply = kv_on_reply, .free_state = kv_free_state};

/* What can be checked without touching the regions. */
static kvrt_status_t kv_check_args(kvrt_xfer_peer_t *peer, const kvrt_xfer_kv_params_t *p)
{
    kvrt_ctx_t *ctx = peer->agent->ctx;
    const uint64_t known = (KVRT_XFER_KV_PARAM_USER_DATA << 1) - 1;
    if ((p->field_mask & ~known) || !p->local || !p->remote || !p->local_blocks ||
        !p->remote_blocks || p->count == 0 ||
        (p->opcode != KVRT_XFER_WRITE && p->opcode != KVRT_XFER_READ))
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG,
                         "needs known field bits, a local region, a remote, blocks and READ "
                         "or WRITE");
    if ((p->field_mask & KVRT_XFER_KV_PARAM_NOTIFY) &&
        (!p->notify || p->notify_bytes == 0 || p->notify_bytes > KVRT_XFER_NOTIFY_MAX))
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "notification of 1..%d bytes expected",
                         KVRT_XFER_NOTIFY_MAX);
    if ((p->field_mask & KVRT_XFER_KV_PARAM_INFLIGHT) && p->max_inflight_bytes == 0)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "max_inflight_bytes must not be 0");
    return KVRT_OK;
}

/* Checks the regions and blocks (lock held). On success the caller takes
 * the regions' users in the same locked section. */
static kvrt_status_t kv_check(kvrt_xfer_peer_t *peer, const kvrt_xfer_kv_params_t *p,
                              bool integrity, uint64_t *page_out)
{
    kvrt_ctx_t *ctx = peer->agent->ctx;
    if (p->local->agent != peer->agent || p->local->dying || !p->local->ready ||
        p->remote->peer != peer)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG,
                         "needs a registered region of this agent and a remote of this peer");
    if (!p->local->has_pool || !p->remote->has_pool)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "both regions must be registered pools");
    if (integrity && (p->local->bk.dmabuf_fd >= 0 || p->remote->device))
        return kvrt_fail(ctx, KVRT_ERR_UNSUPPORTED,
                         "integrity checks read blocks on the CPU; %s pool is device memory",
                         p->local->bk.dmabuf_fd >= 0 ? "the local" : "the remote");
    uint64_t lp = 0, rp = 0;
    kvrt_layout_page_bytes(&p->local->layout, &lp);
    kvrt_layout_page_bytes(&p->remote->layout, &rp);
    if (lp != rp || p->local->layout.num_layers != p->remote->layout.num_layers)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG,
                         "layouts do not pair: pages of %llu and %llu bytes, %u and %u layers",
                         (unsigned long long)lp, (unsigned long long)rp,
                         p->local->layout.num_layers, p->remote->layout.num_layers);
    uint32_t need = p->opcode == KVRT_XFER_WRITE ? KVRT_XFER_REMOTE_WRITE : KVRT_XFER_REMOTE_READ;
    if (!(p->remote->bk.access & need))
        return kvrt_fail(ctx, KVRT_ERR_REMOTE_ACCESS, "the remote pool does not allow this");
    for (uint32_t i = 0; i < p->count; i++)
        if (p->local_blocks[i] <= 0 || (uint32_t)p->local_blocks[i] >= p->local->num_blocks ||
            p->remote_blocks[i] <= 0 || (uint32_t)p->remote_blocks[i] >= p->remote->num_blocks)
            return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "block pair %u (%d -> %d) out of range", i,
                             p->local_blocks[i], p->remote_blocks[i]);
    *page_out = lp;
    return xfer_remote_current(p->remote, 0);
}

/* Drops the hold kvrt_xfer_kv_post keeps on both regions while it builds
 * the request unlocked (lock held). */
static void kv_unhold(const kvrt_xfer_kv_params_t *p)
{
    ((kvrt_xfer_region_t *)(uintptr_t)p->local)->users--;
    ((kvrt_xfer_remote_t *)(uintptr_t)p->remote)->users--;
}

KVRT_EXPORT kvrt_status_t kvrt_xfer_kv_post(kvrt_xfer_peer_t *peer,
                                            const kvrt_xfer_kv_params_t *p,
                                            kvrt_xfer_request_t **request_out)
{
    if (!peer || !p)
        return kvrt_fail(peer ? peer->agent->ctx : NULL, KVRT_ERR_INVALID_ARG,
                         "peer and params are required");
    kvrt_xfer_agent_t *a = peer->agent;
    kvrt_status_t st = kv_check_args(peer, p);
    if (st != KVRT_OK)
        return st;
    bool integrity = (p->field_mask & KVRT_XFER_KV_PARAM_INTEGRITY) && p->integrity;
    /* Validating and holding the regions is one locked section, so that
     * neither is deregistered or released while the request is built. */
    uint64_t page = 0;
    pthread_mutex_lock(&a->lock);
    st = kv_check(peer, p, integrity, &page);
    if (st == KVRT_OK) {
        ((kvrt_xfer_region_t *)(uintptr_t)p->local)->users++;
        ((kvrt_xfer_remote_t *)(uintptr_t)p->remote)->users++;
    }
    pthread_mutex_unlock(&a->lock);
    if (st != KVRT_OK)
        return st;
    struct xfer_kv *kv = calloc(1, sizeof(*kv));
    uint32_t nops = 0;
    kvrt_xfer_bk_op_t *ops = kv_ops(p, page, &nops);
    if (kv) {
        kv->opcode = p->opcode;
        kv->integrity = integrity;
        kv->local = p->local;
        kv->remote_id = p->remote->bk.id;
        kv->count = p->count;
        kv->local_blocks = malloc(p->count * sizeof(int32_t));
        kv->remote_blocks = malloc(p->count * sizeof(int32_t));
        if (integrity && p->opcode == KVRT_XFER_WRITE)
            kv->hashes = malloc(p->count * sizeof(uint64_t));
    }
    XXH3_state_t *hs = integrity ? XXH3_createState() : NULL;
    if (!kv || !ops || !kv->local_blocks || !kv->remote_blocks ||
        (integrity && (!hs || (p->opcode == KVRT_XFER_WRITE && !kv->hashes)))) {
        if (kv)
            kv_free(kv);
        free(ops);
        XXH3_freeState(hs);
        pthread_mutex_lock(&a->lock);
        kv_unhold(p);
        pthread_mutex_unlock(&a->lock);
        return kvrt_fail(a->ctx, KVRT_ERR_NO_MEMORY, "KV transfer of %u blocks", p->count);
    }
    memcpy(kv->local_blocks, p->local_blocks, p->count * sizeof(int32_t));
    memcpy(kv->remote_blocks, p->remote_blocks, p->count * sizeof(int32_t));
    if (kv->hashes)
        for (uint32_t i = 0; i < p->count; i++)
            kv->hashes[i] = block_hash(p->local->bk.base, &p->local->layout, p->local->num_blocks,
                                       (uint32_t)p->local_blocks[i], page, hs);
    XXH3_freeState(hs);

    uint64_t m = p->field_mask;
    pthread_mutex_lock(&a->lock);
    kv_unhold(p);
    /* Checked again: the peer may have reconnected while we hashed. */
    st = xfer_remote_current(p->remote, 0);
    if (st == KVRT_OK)
        st = xfer_request_admit(peer);
    kvrt_xfer_request_t *r = NULL;
    if (st == KVRT_OK) {
        r = xfer_request_new(peer, ops, nops, (m & KVRT_XFER_KV_PARAM_TIMEOUT) ? p->timeout_ms : 0,
                             (m & KVRT_XFER_KV_PARAM_INFLIGHT) ? p->max_inflight_bytes
                                                               : (64ull << 20),
                             request_out != NULL);
        if (!r)
            st = kvrt_fail(a->ctx, KVRT_ERR_NO_MEMORY, "request");
    }
    if (st != KVRT_OK) {
        pthread_mutex_unlock(&a->lock);
        kv_free(kv);
        free(ops);
        return st;
    }
    if (nops <= XFER_INLINE_OPS) /* copied into the request */
        free(ops);
    r->layer = &kv_layer;
    r->layer_state = kv;
    xfer_request_launch(a, peer, r, (m & KVRT_XFER_KV_PARAM_USER_DATA) ? p->user_data : 0,
                        (m & KVRT_XFER_KV_PARAM_NOTIFY) ? p->notify : NULL, p->notify_bytes,
                        request_out);
    return KVRT_OK;
}

/* Blocks one checksum message may name: KV_CHUNK, fewer when that many
 * blocks of this size would be more work than a peer takes per message. */
static uint32_t kv_chunk_blocks(const kvrt_kv_layout_t *l)
{
    uint64_t block = 0;
    kvrt_layout_block_bytes(l, &block);
    uint64_t n = block ? XFER_HASH_WORK_MAX / block : KV_CHUNK;
    return n < 1 ? 1 : n > KV_CHUNK ? KV_CHUNK : (uint32_t)n;
}

static xfer_msg_t *kv_next_msg(kvrt_xfer_request_t *r, kvrt_status_t *status_out)
{
    struct xfer_kv *kv = r->layer_state;
    xfer_msg_t *m = NULL;
    if (kv->integrity && kv->next < kv->count) {
        uint32_t chunk = kv_chunk_blocks(&kv->local->layout);
        uint32_t n = kv->count - kv->next < chunk ? kv->count - kv->next : chunk;
        uint64_t block = 0;
        kvrt_layout_block_bytes(&kv->local->layout, &block);
        uint64_t work = (uint64_t)n * block;
        /* The peer takes at most XFER_HASH_BUDGET of checksum work from us
         * at once: wait for answers rather than be refused. */
        kvrt_xfer_peer_t *peer = r->peer;
        if (peer->hash_work_out && work > XFER_HASH_BUDGET - peer->hash_work_out) {
            *status_out = KVRT_INPROGRESS;
            return NULL;
        }
        bool last = kv->next + n == kv->count;
        kv->chunk_first = kv->next;
        kv->chunk_count = n;
        kv->next += n;
        if (kv->opcode == KVRT_XFER_WRITE) {
            uint32_t nb = last ? r->notify_bytes : 0;
            m = xfer_msg_new(r, XFER_MSG_KV_VERIFY, KV_VERIFY_HEAD + nb + 16 * n);
            if (m) {
                kvrt_store_le32(m->payload, kv->remote_id);
                kvrt_store_le32(m->payload + 4, n);
                kvrt_store_le32(m->payload + 8, last ? 1 : 0);
                kvrt_store_le32(m->payload + 12, nb);
                memcpy(m->payload + KV_VERIFY_HEAD, r->notify, nb);
                uint8_t *q = m->payload + KV_VERIFY_HEAD + nb;
                for (uint32_t i = 0; i < n; i++, q += 16) {
                    kvrt_store_le32(q, (uint32_t)kv->remote_blocks[kv->chunk_first + i]);
                    kvrt_store_le32(q + 4, 0);
                    kvrt_store_le64(q + 8, kv->hashes[kv->chunk_first + i]);
                }
                if (last)
                    r->notify_sent = true;
            }
        } else {
            m = xfer_msg_new(r, XFER_MSG_KV_HASHES, 8 + 4 * n);
            if (m) {
                kvrt_store_le32(m->payload, kv->remote_id);
                kvrt_store_le32(m->payload + 4, n);
                for (uint32_t i = 0; i < n; i++)
                    kvrt_store_le32(m->payload + 8 + 4 * i, (uint32_t)kv->remote_blocks[kv->chunk_first + i]);
            }
        }
        if (m) {
            m->peer = peer;
            m->work = work;
            peer->hash_work_out += work;
        }
    } else if (r->notify_bytes && !r->notify_sent) {
        m = xfer_notify_msg(r);
    } else {
        *status_out = KVRT_OK;
        return NULL;
    }
    *status_out = m ? KVRT_OK : KVRT_ERR_NO_MEMORY;
    return m;
}

static kvrt_status_t kv_on_reply(kvrt_xfer_request_t *r, kvrt_status_t status,
                                 const uint8_t *reply, uint32_t bytes)
{
    struct xfer_kv *kv = r->layer_state;
    if (status != KVRT_OK || !kv->integrity || kv->opcode != KVRT_XFER_READ ||
        kv->chunk_count == 0)
        return status;
    uint32_t n = kv->chunk_count;
    kv->chunk_count = 0;
    if (bytes != 8 * n)
        return KVRT_ERR_PROTOCOL;
    const kvrt_xfer_region_t *l = kv->local;
    uint64_t page = 0;
    kvrt_layout_page_bytes(&l->layout, &page);
    XXH3_state_t *s = XXH3_createState();
    if (!s)
        return KVRT_ERR_NO_MEMORY;
    kvrt_status_t st = KVRT_OK;
    for (uint32_t i = 0; i < n && st == KVRT_OK; i++) {
        uint64_t mine = block_hash(l->bk.base, &l->layout, l->num_blocks,
                                   (uint32_t)kv->local_blocks[kv->chunk_first + i], page, s);
        if (mine != kvrt_load_le64(reply + 8 * i))
            st = KVRT_ERR_INTEGRITY;
    }
    XXH3_freeState(s);
    if (st == KVRT_ERR_INTEGRITY) {
        char name[KVRT_XFER_NAME_MAX] = "?";
        pthread_mutex_lock(&r->agent->lock);
        if (r->peer)
            memcpy(name, r->peer->name, sizeof(name));
        pthread_mutex_unlock(&r->agent->lock);
        kvrt_log(r->agent->ctx, KVRT_LOG_WARN, "xfer %s: KV read from %s failed its checksum",
                 r->agent->name, name);
    }
    return st;
}

/* Receiver side: checksums of listed blocks of a pool region we hold. */
static kvrt_status_t kv_serve_msg(kvrt_xfer_peer_t *peer, uint32_t type, const uint8_t *payload,
                                  uint32_t bytes, uint8_t *reply, uint32_t capacity,
                                  uint32_t *reply_bytes_out)
{
    kvrt_xfer_agent_t *a = peer->agent;
    bool verify = type == XFER_MSG_KV_VERIFY;
    uint32_t head = verify ? KV_VERIFY_HEAD : 8;
    if (bytes < head) {
        kvrt_xfer_bk_refuse(peer, KVRT_ERR_PROTOCOL, "short KV message");
        return KVRT_ERR_PROTOCOL;
    }
    uint32_t id = kvrt_load_le32(payload), n = kvrt_load_le32(payload + 4);
    uint32_t last = verify ? kvrt_load_le32(payload + 8) : 0, nb = verify ? kvrt_load_le32(payload + 12) : 0;
    uint64_t want = (uint64_t)head + nb + (uint64_t)n * (verify ? 16 : 4);
    if (n == 0 || n > KV_CHUNK || last > 1 || nb > KVRT_XFER_NOTIFY_MAX || want != bytes ||
        (!verify && (uint64_t)n * 8 > capacity)) {
        kvrt_xfer_bk_refuse(peer, KVRT_ERR_PROTOCOL, "malformed KV message");
        return KVRT_ERR_PROTOCOL;
    }
    /* Pinning checks the region exists, has the right and covers its whole
     * pool; the pin keeps it registered while we read it. */
    pthread_mutex_lock(&a->lock);
    kvrt_xfer_region_t *region = xfer_region_lookup(a, id);
    bool pool = region && region->has_pool;
    pthread_mutex_unlock(&a->lock);
    uint8_t *base = NULL;
    void *pin = NULL;
    kvrt_status_t st = pool ? kvrt_xfer_bk_pin(peer, id,
                                               verify ? KVRT_XFER_REMOTE_WRITE : KVRT_XFER_REMOTE_READ,
                                               0, 1, &base, &pin)
                            : KVRT_ERR_UNKNOWN_REGION;
    if (st != KVRT_OK) {
        if (!pool)
            kvrt_xfer_bk_refuse(peer, st, "KV message names no pool region");
        return st;
    }
    region = pin;
    uint64_t page = 0;
    kvrt_layout_page_bytes(&region->layout, &page);
    XXH3_state_t *s = XXH3_createState();
    const uint8_t *list = payload + head + nb;
    for (uint32_t i = 0; i < n && st == KVRT_OK; i++) {
        uint32_t block = kvrt_load_le32(list + (verify ? 16 : 4) * i);
        if (block == 0 || block >= region->num_blocks) {
            st = KVRT_ERR_REMOTE_ACCESS;
            kvrt_xfer_bk_refuse(peer, st, "KV message names a block out of range");
            break;
        }
        if (!s) {
            st = KVRT_ERR_NO_MEMORY;
            break;
        }
        uint64_t h = block_hash(region->bk.base, &region->layout, region->num_blocks, block, page, s);
        if (!verify)
            kvrt_store_le64(reply + 8 * i, h);
        else if (h != kvrt_load_le64(list + 16 * i + 8))
            st = KVRT_ERR_INTEGRITY;
    }
    XXH3_freeState(s);
    kvrt_xfer_bk_unpin(peer, pin);
    if (st == KVRT_OK && !verify)
        *reply_bytes_out = 8 * n;
    if (verify && (st == KVRT_ERR_INTEGRITY || (st == KVRT_OK && last && nb))) {
        char name[KVRT_XFER_NAME_MAX];
        pthread_mutex_lock(&a->lock);
        if (st == KVRT_ERR_INTEGRITY)
            a->stats.integrity_failures++;
        xfer_notification_push(a, peer->name, st, payload + head, nb);
        memcpy(name, peer->name, sizeof(name));
        pthread_mutex_unlock(&a->lock);
        if (st == KVRT_ERR_INTEGRITY)
            kvrt_log(a->ctx, KVRT_LOG_WARN, "xfer %s: KV blocks from %s failed their checksum",
                     a->name, name);
    }
    return st;
}

/* Receiver side, on the I/O thread: the checksum work a message asks for
 * (blocks named x the pool's block size). Malformed messages count as no
 * work; kv_serve_msg refuses them at once. */
static kvrt_status_t kv_work(kvrt_xfer_peer_t *peer, uint32_t type, const uint8_t *payload,
                             uint32_t bytes, uint64_t *work_out)
{
    *work_out = 0;
    if (bytes < 8)
        return KVRT_OK;
    uint32_t id = kvrt_load_le32(payload), n = kvrt_load_le32(payload + 4);
    kvrt_xfer_agent_t *a = peer->agent;
    pthread_mutex_lock(&a->lock);
    kvrt_xfer_region_t *region = xfer_region_lookup(a, id);
    uint64_t block = 0;
    if (region && region->has_pool)
        kvrt_layout_block_bytes(&region->layout, &block);
    pthread_mutex_unlock(&a->lock);
    if (n == 0 || n > KV_CHUNK || !block)
        return KVRT_OK;
    uint64_t work = (uint64_t)n * block;
    (void)type;
    if (n > 1 && work > XFER_HASH_WORK_MAX)
        return KVRT_ERR_REQUEST_LIMIT;
    *work_out = work;
    return KVRT_OK;
}

kvrt_status_t xfer_kv_register(kvrt_xfer_agent_t *a)
{
    kvrt_status_t st = xfer_dispatch_register_work(a, XFER_MSG_KV_VERIFY, kv_serve_msg, kv_work);
    return st == KVRT_OK ? xfer_dispatch_register_work(a, XFER_MSG_KV_HASHES, kv_serve_msg, kv_work)
                         : st;
}
