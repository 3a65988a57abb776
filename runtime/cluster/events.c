/*
 * events.c - a node's KV event publisher: the stream of stored / removed /
 * cleared records with its epoch and ids, and the set of keys held per
 * tier that snapshots are made of.
 *
 * The stream carries changes only (a second STORED of a key already held is
 * dropped), so a consumer that applies every record in id order holds
 * exactly the publisher's set. Untaken records sit in a ring; a full ring
 * drops its oldest, and the consumer sees the gap in ids and resyncs from a
 * snapshot, the one recovery path for every kind of loss.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "cache/hooks.h"
#include "cluster/cluster_internal.h"
#include "cluster/keytable.h"
#include "tier/hooks.h"

#define DEFAULT_CAPACITY 65536u
#define MIN_CAPACITY 16u
#define MAX_CAPACITY (1u << 26)

struct kvrt_kv_events {
    kvrt_owned_t owned;
    kvrt_ctx_t *ctx;
    uint64_t epoch;
    uint64_t last_id;
    kvrt_kv_event_t *ring;
    uint32_t capacity;
    uint32_t head;  /* oldest untaken */
    uint32_t count; /* untaken */
    uint64_t dropped;
    keytable_t held;               /* mask[tier] == 1: held in tier */
    uint64_t held_per_tier[KVRT_KV_TIERS];
    kvrt_cache_t *cache;           /* followed through its observer hook */
    kvrt_kv_tier_t cache_tier;
    kvrt_tier_t *tier;             /* host and SSD levels, through theirs */
};

static void on_cache_event(void *user, const kvrt_cache_event_t *event);
static void on_tier_event(void *user, kvrt_tier_level_t level, bool stored,
                          const kvrt_cache_block_name_t *name);

static void events_free(kvrt_kv_events_t *ev)
{
    if (ev->cache) {
        kvrt_cache_unobserve(ev->cache, on_cache_event, ev);
        kvrt_cache_unhold(ev->cache);
    }
    if (ev->tier)
        kvrt_tier_unobserve(ev->tier, on_tier_event, ev);
    keytable_free(&ev->held);
    free(ev->ring);
    free(ev);
}

static void events_owned_destroy(kvrt_owned_t *self)
{
    events_free((kvrt_kv_events_t *)self);
}

uint64_t cluster_random_epoch(void)
{
    uint64_t epoch = 0;
    while (epoch == 0) {
        if (getrandom(&epoch, sizeof(epoch), 0) != (ssize_t)sizeof(epoch))
            epoch = kvrt_now_ns() ^ ((uint64_t)(uintptr_t)&epoch << 17);
    }
    return epoch;
}

KVRT_EXPORT kvrt_status_t kvrt_kv_events_create(kvrt_ctx_t *ctx,
                                                const kvrt_kv_events_params_t *params,
                                                kvrt_kv_events_t **events_out)
{
    if (!ctx || !events_out)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "ctx and events_out are required");
    kvrt_kv_events_params_t p = {0};
    if (params)
        p = *params;
    const uint64_t known = KVRT_KV_EVENTS_PARAM_CAPACITY | KVRT_KV_EVENTS_PARAM_EPOCH;
    if (p.field_mask & ~known)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "unknown field_mask bits 0x%llx",
                         (unsigned long long)(p.field_mask & ~known));
    uint32_t capacity = DEFAULT_CAPACITY;
    if (p.field_mask & KVRT_KV_EVENTS_PARAM_CAPACITY) {
        if (p.capacity < MIN_CAPACITY || p.capacity > MAX_CAPACITY)
            return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "capacity %u outside %u..%u",
                             p.capacity, MIN_CAPACITY, MAX_CAPACITY);
        capacity = p.capacity;
    }
    if ((p.field_mask & KVRT_KV_EVENTS_PARAM_EPOCH) && p.epoch == 0)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "epoch 0 is reserved");
    kvrt_kv_events_t *ev = calloc(1, sizeof(*ev));
    if (!ev)
        return kvrt_fail(ctx, KVRT_ERR_NO_MEMORY, "publisher");
    ev->ctx = ctx;
    ev->capacity = capacity;
    ev->ring = malloc((size_t)capacity * sizeof(*ev->ring));
    if (!ev->ring || !keytable_init(&ev->held, 1024)) {
        events_free(ev);
        return kvrt_fail(ctx, KVRT_ERR_NO_MEMORY, "ring of %u events", capacity);
    }
    ev->epoch = (p.field_mask & KVRT_KV_EVENTS_PARAM_EPOCH) ? p.epoch : cluster_random_epoch();
    kvrt_ctx_own(ctx, &ev->owned, events_owned_destroy);
    *events_out = ev;
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_kv_events_destroy(kvrt_kv_events_t *events)
{
    if (!events)
        return KVRT_OK;
    kvrt_ctx_disown(events->ctx, &events->owned);
    events_free(events);
    return KVRT_OK;
}

static void push(kvrt_kv_events_t *ev, kvrt_kv_event_kind_t kind, kvrt_kv_tier_t tier,
                 const kvrt_block_hash_t *key)
{
    if (ev->count == ev->capacity) {
        ev->head = (ev->head + 1) % ev->capacity; /* the consumer will see the gap */
        ev->count--;
        ev->dropped++;
    }
    kvrt_kv_event_t *e = &ev->ring[(ev->head + ev->count) % ev->capacity];
    e->event_id = ++ev->last_id;
    e->kind = (uint32_t)kind;
    e->tier = (uint32_t)tier;
    e->key = key ? *key : (kvrt_block_hash_t){0, 0};
    ev->count++;
}

KVRT_EXPORT kvrt_status_t kvrt_kv_events_record(kvrt_kv_events_t *events,
                                                kvrt_kv_event_kind_t kind,
                                                kvrt_kv_tier_t tier,
                                                const kvrt_block_hash_t *key)
{
    if (!events)
        return KVRT_ERR_INVALID_ARG;
    if (kind == KVRT_KV_EVENT_CLEARED) {
        if (events->held.count == 0)
            return KVRT_OK;
        keytable_reset(&events->held);
        memset(events->held_per_tier, 0, sizeof(events->held_per_tier));
        push(events, kind, KVRT_KV_TIER_GPU, NULL);
        return KVRT_OK;
    }
    if (kind != KVRT_KV_EVENT_STORED && kind != KVRT_KV_EVENT_REMOVED)
        return kvrt_fail(events->ctx, KVRT_ERR_INVALID_ARG, "unknown event kind %d", (int)kind);
    if ((unsigned)tier >= KVRT_KV_TIERS)
        return kvrt_fail(events->ctx, KVRT_ERR_INVALID_ARG, "unknown tier %d", (int)tier);
    if (!key)
        return kvrt_fail(events->ctx, KVRT_ERR_INVALID_ARG, "key is required");
    if (kind == KVRT_KV_EVENT_STORED) {
        if (!keytable_reserve(&events->held, 1))
            return kvrt_fail(events->ctx, KVRT_ERR_NO_MEMORY, "key set of %llu keys",
                             (unsigned long long)events->held.count);
        keytable_slot_t *s = keytable_claim(&events->held, key);
        if (s->mask[tier])
            return KVRT_OK;
        s->mask[tier] = 1;
        events->held_per_tier[tier]++;
    } else {
        keytable_slot_t *s = keytable_find(&events->held, key);
        if (!s || !s->mask[tier])
            return KVRT_OK;
        s->mask[tier] = 0;
        events->held_per_tier[tier]--;
        if (!keytable_slot_used(s))
            keytable_erase(&events->held, s);
    }
    push(events, kind, tier, key);
    return KVRT_OK;
}

/* ---- following a cache and a tier stack ---------------------------------- */

/* Everything held in `tier` is gone, the other tiers stay: one REMOVED per
 * key (CLEARED when nothing else is held). */
static void clear_tier(kvrt_kv_events_t *ev, kvrt_kv_tier_t tier)
{
    uint64_t n = ev->held_per_tier[tier];
    if (n == 0)
        return;
    if (n == ev->held.count) {
        bool others = false;
        for (int t = 0; t < KVRT_KV_TIERS; t++)
            others |= t != (int)tier && ev->held_per_tier[t] > 0;
        if (!others) {
            kvrt_kv_events_record(ev, KVRT_KV_EVENT_CLEARED, tier, NULL);
            return;
        }
    }
    kvrt_block_hash_t *keys = malloc(n * sizeof(*keys));
    if (!keys) {
        /* Forget everything and skip an id: consumers resync from a
         * snapshot that lacks what was held (missed hits, no stale entry). */
        keytable_reset(&ev->held);
        memset(ev->held_per_tier, 0, sizeof(ev->held_per_tier));
        ev->last_id++;
        return;
    }
    uint64_t k = 0;
    for (uint64_t i = 0; i < ev->held.capacity && k < n; i++)
        if (ev->held.slots[i].mask[tier])
            keys[k++] = (kvrt_block_hash_t){ev->held.slots[i].lo, ev->held.slots[i].hi};
    for (uint64_t i = 0; i < k; i++)
        kvrt_kv_events_record(ev, KVRT_KV_EVENT_REMOVED, tier, &keys[i]);
    free(keys);
}

static void on_cache_event(void *user, const kvrt_cache_event_t *event)
{
    kvrt_kv_events_t *ev = user;
    if (event->kind == KVRT_CACHE_EVENT_CLEARED) {
        /* The cache's blocks are gone; what the tiers below hold is not. */
        clear_tier(ev, ev->cache_tier);
        return;
    }
    kvrt_kv_event_kind_t kind =
        event->kind == KVRT_CACHE_EVENT_STORED ? KVRT_KV_EVENT_STORED : KVRT_KV_EVENT_REMOVED;
    if (kvrt_kv_events_record(ev, kind, ev->cache_tier, &event->name.key) != KVRT_OK)
        ev->last_id++; /* a gap: consumers resync from a snapshot without this key
                        */
}

static void on_tier_event(void *user, kvrt_tier_level_t level, bool stored,
                          const kvrt_cache_block_name_t *name)
{
    kvrt_kv_events_t *ev = user;
    kvrt_kv_tier_t tier = level == KVRT_TIER_LEVEL_HOST ? KVRT_KV_TIER_HOST : KVRT_KV_TIER_DISK;
    if (!name) {
        /* The tier stack is being destroyed: it detaches itself. */
        clear_tier(ev, tier);
        ev->tier = NULL;
        return;
    }
    if (kvrt_kv_events_record(ev, stored ? KVRT_KV_EVENT_STORED : KVRT_KV_EVENT_REMOVED, tier,
                              &name->key) != KVRT_OK)
        ev->last_id++;
}

KVRT_EXPORT kvrt_status_t kvrt_kv_events_attach_tier(kvrt_kv_events_t *events, kvrt_tier_t *tier)
{
    if (!events || !tier)
        return events ? kvrt_fail(events->ctx, KVRT_ERR_INVALID_ARG, "tier is required")
                      : KVRT_ERR_INVALID_ARG;
    if (events->tier)
        return kvrt_fail(events->ctx, KVRT_ERR_BUSY, "already attached to a tier stack");
    kvrt_status_t st = kvrt_tier_observe(tier, on_tier_event, events);
    if (st != KVRT_OK)
        return st == KVRT_ERR_BUSY
                   ? kvrt_fail(events->ctx, st, "the tier stack is observed already")
                   : st;
    events->tier = tier;
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_kv_events_detach_tier(kvrt_kv_events_t *events)
{
    if (!events)
        return KVRT_ERR_INVALID_ARG;
    if (!events->tier)
        return kvrt_fail(events->ctx, KVRT_ERR_NOT_FOUND, "not attached to a tier stack");
    kvrt_tier_unobserve(events->tier, on_tier_event, events);
    clear_tier(events, KVRT_KV_TIER_HOST);
    clear_tier(events, KVRT_KV_TIER_DISK);
    events->tier = NULL;
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_kv_events_attach(kvrt_kv_events_t *events, kvrt_cache_t *cache,
                                                kvrt_kv_tier_t tier)
{
    if (!events || !cache)
        return events ? kvrt_fail(events->ctx, KVRT_ERR_INVALID_ARG, "cache is required")
                      : KVRT_ERR_INVALID_ARG;
    if ((unsigned)tier >= KVRT_KV_TIERS)
        return kvrt_fail(events->ctx, KVRT_ERR_INVALID_ARG, "unknown tier %d", (int)tier);
    if (events->cache)
        return kvrt_fail(events->ctx, KVRT_ERR_BUSY, "already attached to a cache");
    kvrt_status_t st = kvrt_cache_observe(cache, on_cache_event, events);
    if (st != KVRT_OK)
        return st == KVRT_ERR_BUSY ? kvrt_fail(events->ctx, st, "the cache has no observer "
                                                                "slot left")
                                   : st;
    /* The hold makes kvrt_cache_destroy() refuse (KVRT_ERR_BUSY) while this
     * publisher follows the cache, instead of leaving it a dangling pointer. */
    kvrt_cache_hold(cache);
    events->cache = cache;
    events->cache_tier = tier;
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_kv_events_detach(kvrt_kv_events_t *events)
{
    if (!events)
        return KVRT_ERR_INVALID_ARG;
    if (!events->cache)
        return kvrt_fail(events->ctx, KVRT_ERR_NOT_FOUND, "not attached to a cache");
    kvrt_cache_unobserve(events->cache, on_cache_event, events);
    kvrt_cache_unhold(events->cache);
    events->cache = NULL;
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_kv_events_take(kvrt_kv_events_t *events,
                                              kvrt_kv_event_t *events_out, uint32_t capacity,
                                              uint32_t *count_out, uint64_t *epoch_out)
{
    if (!events || !count_out || (capacity > 0 && !events_out))
        return events ? kvrt_fail(events->ctx, KVRT_ERR_INVALID_ARG,
                                  "count_out, and events_out when capacity > 0, are required")
                      : KVRT_ERR_INVALID_ARG;
    uint32_t n = events->count < capacity ? events->count : capacity;
    for (uint32_t i = 0; i < n; i++)
        events_out[i] = events->ring[(events->head + i) % events->capacity];
    events->head = (events->head + n) % events->capacity;
    events->count -= n;
    *count_out = n;
    if (epoch_out)
        *epoch_out = events->epoch;
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_kv_events_epoch(const kvrt_kv_events_t *events,
                                               uint64_t *epoch_out,
                                               uint64_t *last_event_id_out)
{
    if (!events)
        return KVRT_ERR_INVALID_ARG;
    if (epoch_out)
        *epoch_out = events->epoch;
    if (last_event_id_out)
        *last_event_id_out = events->last_id;
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_kv_events_snapshot(const kvrt_kv_events_t *events,
                                                  kvrt_kv_event_t *records_out,
                                                  uint32_t capacity, uint32_t *count_out,
                                                  uint64_t *last_event_id_out)
{
    if (!events || !count_out || (capacity > 0 && !records_out))
        return events ? kvrt_fail(events->ctx, KVRT_ERR_INVALID_ARG,
                                  "count_out, and records_out when capacity > 0, are required")
                      : KVRT_ERR_INVALID_ARG;
    uint64_t total = 0;
    for (int t = 0; t < KVRT_KV_TIERS; t++)
        total += events->held_per_tier[t];
    if (total > capacity) {
        *count_out = total > UINT32_MAX ? UINT32_MAX : (uint32_t)total;
        return kvrt_fail(events->ctx, KVRT_ERR_BUFFER_TOO_SMALL,
                         "%llu records held, room for %u", (unsigned long long)total, capacity);
    }
    uint32_t n = 0;
    const keytable_t *t = &events->held;
    for (uint64_t i = 0; i < t->capacity; i++) {
        const keytable_slot_t *s = &t->slots[i];
        for (uint32_t tier = 0; tier < KVRT_KV_TIERS; tier++) {
            if (!s->mask[tier])
                continue;
            records_out[n++] = (kvrt_kv_event_t){.event_id = 0, .kind = KVRT_KV_EVENT_STORED,
                                                 .tier = tier, .key = {s->lo, s->hi}};
        }
    }
    *count_out = n;
    if (last_event_id_out)
        *last_event_id_out = events->last_id;
    return KVRT_OK;
}
