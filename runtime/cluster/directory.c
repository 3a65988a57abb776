/*
 * directory.c - the prefix directory: block key -> the nodes holding it,
 * per tier, fed by the nodes' KV events (kvrt/cluster.h).
 *
 * Nodes occupy slots 0..63 and a slot is a bit, so "who holds this key on
 * GPU" is one 64-bit mask and a prefix query is a walk down the prompt's
 * keys AND-ing masks until no node is left: one table probe per key,
 * whatever the number of nodes. Each model has a table of its own, so
 * keys of different models never meet and a query names its model.
 *
 * Trust: a node's entries are only ever those its own stream, applied in
 * id order under its current epoch, put there. Anything else (a gap, a new
 * epoch) drops the node's entries before the directory answers for it
 * again.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/cluster_internal.h"
#include "cluster/keytable.h"

#define DEFAULT_EXPECTED 65536u
#define MAX_EXPECTED (1ull << 30)
#define OLD_EPOCHS 8u
#define PREFETCH_AHEAD 12u /* events: enough misses in flight to hide DRAM latency */
#define KEYS_MIN 1024u      /* a node's key list: first size, and slack over its bound */
/* A drop walks the table rather than look up its listed keys from a
 * twelfth of the slots up: a slot walked costs about 1/11 of a key looked
 * up in a table out of the caches (15 against 166 ns, 4M slots). */
#define WALK_RATIO 12u

typedef struct dir_node {
    uint64_t node_id; /* 0: slot free */
    uint64_t epoch;
    uint64_t next_id;
    uint64_t old_epochs[OLD_EPOCHS];
    uint32_t num_old;
    int32_t model;
    bool resyncing;
    bool synced; /* added by kvrt_cluster_etcd_sync */
    uint64_t blocks[KVRT_KV_TIERS];
    kvrt_cluster_load_t load;
    /* The keys the node holds, each listed when it gets its first tier and
     * left listed when it loses them (a lookup finds no bit then), so that
     * dropping the node's entries costs its own keys, not a walk of the
     * model's table: a peer that clears or restarts at every batch cannot
     * make the engine thread walk millions of slots per batch. keys_lost:
     * the list outgrew its bound (churn) or memory; the next drop walks
     * the table once and the list starts again. */
    kvrt_block_hash_t *keys;
    uint64_t num_keys, cap_keys;
    bool keys_lost;
} dir_node_t;

typedef struct dir_model {
    kvrt_block_hash_t fingerprint;
    keytable_t table;
    uint64_t nodes; /* slot bits */
} dir_model_t;

struct kvrt_cluster_dir {
    kvrt_owned_t owned;
    kvrt_ctx_t *ctx;
    uint32_t index; /* ctl name: cluster.dir.<index> */
    uint64_t expected;
    dir_node_t nodes[KVRT_CLUSTER_MAX_NODES];
    dir_model_t models[KVRT_CLUSTER_MAX_NODES];
    uint32_t num_models;
    uint64_t resyncing; /* slot bits */
    uint64_t table_walks; /* drops that walked a table (cluster_dir_table_walks) */
    kvrt_cluster_dir_stats_t stats;
};

/* ---- lifetime -------------------------------------------------------------- */

static void dir_free(kvrt_cluster_dir_t *dir)
{
    kvrt_ctl_unregister(dir->ctx, dir);
    kvrt_ctx_release_index(dir->ctx, "cluster.dir", dir->index);
    for (uint32_t m = 0; m < dir->num_models; m++)
        keytable_free(&dir->models[m].table);
    for (int i = 0; i < KVRT_CLUSTER_MAX_NODES; i++)
        free(dir->nodes[i].keys);
    free(dir);
}

static void dir_owned_destroy(kvrt_owned_t *self) { dir_free((kvrt_cluster_dir_t *)self); }

/* ---- ctl nodes "cluster.dir.<N>.*": the fields of kvrt_cluster_dir_stats_t -- */

#define DIR_GETTER(field)                                                        \
    static void get_##field(void *obj, kvrt_ctl_value_t *v)                      \
    {                                                                            \
        kvrt_cluster_dir_stats_t s;                                              \
        kvrt_cluster_dir_stats(obj, &s);                                         \
        v->u64 = s.field;                                                        \
    }
DIR_GETTER(nodes)
DIR_GETTER(models)
DIR_GETTER(entries)
DIR_GETTER(table_slots)
DIR_GETTER(table_bytes)
DIR_GETTER(events_applied)
DIR_GETTER(events_duplicate)
DIR_GETTER(resyncs)
DIR_GETTER(stale_refused)
DIR_GETTER(queries)

static const kvrt_ctl_node_t dir_nodes[] = {
    {"nodes", KVRT_CTL_U64, get_nodes, NULL, KVRT_CTL_METRIC_GAUGE,
     "Nodes the prefix directory tracks."},
    {"models", KVRT_CTL_U64, get_models, NULL, KVRT_CTL_METRIC_GAUGE,
     "Models (fingerprints) the prefix directory tracks."},
    {"entries", KVRT_CTL_U64, get_entries, NULL, KVRT_CTL_METRIC_GAUGE,
     "Block keys the prefix directory tracks."},
    {"table_slots", KVRT_CTL_U64, get_table_slots, NULL, KVRT_CTL_METRIC_GAUGE,
     "Slots of the directory key table."},
    {"table_bytes", KVRT_CTL_U64, get_table_bytes, NULL, KVRT_CTL_METRIC_GAUGE,
     "Bytes of the directory key tables and the nodes' key lists."},
    {"events_applied", KVRT_CTL_U64, get_events_applied, NULL, KVRT_CTL_METRIC_COUNTER,
     "KV events applied to the directory."},
    {"events_duplicate", KVRT_CTL_U64, get_events_duplicate, NULL, KVRT_CTL_METRIC_COUNTER,
     "Duplicate KV events skipped."},
    {"resyncs", KVRT_CTL_U64, get_resyncs, NULL, KVRT_CTL_METRIC_COUNTER,
     "Nodes resynchronized from a snapshot after a gap or a new epoch."},
    {"stale_refused", KVRT_CTL_U64, get_stale_refused, NULL, KVRT_CTL_METRIC_COUNTER,
     "Event batches refused for an earlier epoch of their node."},
    {"queries", KVRT_CTL_U64, get_queries, NULL, KVRT_CTL_METRIC_COUNTER,
     "Prefix queries answered."},
};

KVRT_EXPORT kvrt_status_t kvrt_cluster_dir_create(kvrt_ctx_t *ctx,
                                                  const kvrt_cluster_dir_params_t *params,
                                                  kvrt_cluster_dir_t **dir_out)
{
    if (!ctx || !dir_out)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "ctx and dir_out are required");
    kvrt_cluster_dir_params_t p = {0};
    if (params)
        p = *params;
    if (p.field_mask & ~(uint64_t)KVRT_CLUSTER_DIR_PARAM_EXPECTED_BLOCKS)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "unknown field_mask bits 0x%llx",
                         (unsigned long long)p.field_mask);
    uint64_t expected = DEFAULT_EXPECTED;
    if (p.field_mask & KVRT_CLUSTER_DIR_PARAM_EXPECTED_BLOCKS) {
        if (p.expected_blocks == 0 || p.expected_blocks > MAX_EXPECTED)
            return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "expected_blocks %llu outside 1..2^30",
                             (unsigned long long)p.expected_blocks);
        expected = p.expected_blocks;
    }
    kvrt_cluster_dir_t *dir = calloc(1, sizeof(*dir));
    if (!dir)
        return kvrt_fail(ctx, KVRT_ERR_NO_MEMORY, "directory");
    dir->ctx = ctx;
    dir->expected = expected;
    dir->index = kvrt_ctx_next_index(ctx, "cluster.dir");
    char prefix[40];
    snprintf(prefix, sizeof(prefix), "cluster.dir.%u", dir->index);
    if (kvrt_ctl_register(ctx, prefix, dir_nodes, sizeof(dir_nodes) / sizeof(dir_nodes[0]),
                          dir) != KVRT_OK) {
        dir_free(dir);
        return kvrt_fail(ctx, KVRT_ERR_NO_MEMORY, "ctl registration");
    }
    kvrt_ctx_own(ctx, &dir->owned, dir_owned_destroy);
    *dir_out = dir;
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_cluster_dir_destroy(kvrt_cluster_dir_t *dir)
{
    if (!dir)
        return KVRT_OK;
    kvrt_ctx_disown(dir->ctx, &dir->owned);
    dir_free(dir);
    return KVRT_OK;
}

/* ---- nodes and models ------------------------------------------------------ */

static int node_slot(const kvrt_cluster_dir_t *dir, uint64_t node_id)
{
    if (node_id == 0)
        return -1;
    for (int i = 0; i < KVRT_CLUSTER_MAX_NODES; i++)
        if (dir->nodes[i].node_id == node_id)
            return i;
    return -1;
}

int cluster_dir_model_index(const kvrt_cluster_dir_t *dir, const kvrt_block_hash_t *model)
{
    for (uint32_t m = 0; m < dir->num_models; m++)
        if (dir->models[m].fingerprint.lo == model->lo &&
            dir->models[m].fingerprint.hi == model->hi)
            return (int)m;
    return -1;
}

/* The model's index, making it when new (reusing a model no node serves
 * any more when all slots are taken). -1 without memory. */
static int model_get(kvrt_cluster_dir_t *dir, const kvrt_block_hash_t *fp)
{
    int m = cluster_dir_model_index(dir, fp);
    if (m >= 0)
        return m;
    dir_model_t *model = NULL;
    if (dir->num_models < KVRT_CLUSTER_MAX_NODES) {
        model = &dir->models[dir->num_models];
        if (!keytable_init(&model->table, dir->expected))
            return -1;
        m = (int)dir->num_models++;
    } else {
        /* 64 nodes serve at most 64 models, so one of these has no node. */
        for (m = 0; m < KVRT_CLUSTER_MAX_NODES && dir->models[m].nodes; m++)
            ;
        model = &dir->models[m];
        keytable_reset(&model->table);
    }
    model->fingerprint = *fp;
    model->nodes = 0;
    return m;
}

static uint64_t node_held(const dir_node_t *n)
{
    uint64_t held = 0;
    for (int t = 0; t < KVRT_KV_TIERS; t++)
        held += n->blocks[t];
    return held;
}

static void keys_lose(dir_node_t *n)
{
    free(n->keys);
    n->keys = NULL;
    n->num_keys = n->cap_keys = 0;
    n->keys_lost = true;
}

/* Lists a key the node just got its first tier of. The list holds at most
 * twice the node's entries (key-tier pairs) plus 1/64 of the table's slots
 * (keys it lost since its last drop stay listed): past that it is given
 * up, and the one walk of the table the next drop then pays comes after at
 * least that many stores: at most 64 slots walked per store (per table
 * size: a table that doubled in between is walked whole once more). */
static void keys_add(dir_node_t *n, const keytable_t *table, const kvrt_block_hash_t *key)
{
    if (n->keys_lost)
        return;
    if (n->num_keys >= 2 * node_held(n) + table->capacity / 64 + KEYS_MIN) {
        keys_lose(n);
        return;
    }
    if (n->num_keys == n->cap_keys) {
        uint64_t cap = n->cap_keys ? 2 * n->cap_keys : KEYS_MIN;
        kvrt_block_hash_t *keys = realloc(n->keys, cap * sizeof(*keys));
        if (!keys) {
            keys_lose(n);
            return;
        }
        n->keys = keys;
        n->cap_keys = cap;
    }
    n->keys[n->num_keys++] = *key;
}

static bool slot_has_node(const keytable_slot_t *s, uint64_t bit)
{
    uint64_t any = 0;
    for (int t = 0; t < KVRT_KV_TIERS; t++)
        any |= s->mask[t];
    return (any & bit) != 0;
}

/* Forgets every entry of a node (its epoch and ids stay): through its key
 * list when that is complete and short against the table, else by one
 * walk of the table. */
static void drop_entries(kvrt_cluster_dir_t *dir, int slot)
{
    dir_node_t *n = &dir->nodes[slot];
    keytable_t *table = &dir->models[n->model].table;
    const uint64_t bit = 1ull << slot;
    if (node_held(n) && (n->keys_lost || n->num_keys >= table->capacity / WALK_RATIO)) {
        uint64_t cleared[KVRT_KV_TIERS];
        keytable_clear_bits(table, bit, cleared);
        dir->table_walks++;
    } else if (node_held(n)) {
        for (uint64_t i = 0; i < n->num_keys; i++) {
            if (i + PREFETCH_AHEAD < n->num_keys)
                keytable_prefetch(table, &n->keys[i + PREFETCH_AHEAD]);
            keytable_slot_t *s = keytable_find(table, &n->keys[i]);
            if (!s || !slot_has_node(s, bit))
                continue;
            for (int t = 0; t < KVRT_KV_TIERS; t++)
                s->mask[t] &= ~bit;
            if (!keytable_slot_used(s))
                keytable_erase(table, s);
        }
    }
    n->num_keys = 0;
    n->keys_lost = false;
    memset(n->blocks, 0, sizeof(n->blocks));
}

KVRT_EXPORT kvrt_status_t kvrt_cluster_dir_add_node(kvrt_cluster_dir_t *dir, uint64_t node_id,
                                                    const kvrt_block_hash_t *model,
                                                    uint64_t epoch)
{
    if (!dir || !model || node_id == 0 || epoch == 0)
        return dir ? kvrt_fail(dir->ctx, KVRT_ERR_INVALID_ARG,
                               "model is required; node_id and epoch must be non-zero")
                   : KVRT_ERR_INVALID_ARG;
    if (node_slot(dir, node_id) >= 0)
        return kvrt_fail(dir->ctx, KVRT_ERR_BUSY, "node %016llx is already a member",
                         (unsigned long long)node_id);
    int slot;
    for (slot = 0; slot < KVRT_CLUSTER_MAX_NODES && dir->nodes[slot].node_id; slot++)
        ;
    if (slot == KVRT_CLUSTER_MAX_NODES)
        return kvrt_fail(dir->ctx, KVRT_ERR_OVERFLOW, "%d nodes already",
                         KVRT_CLUSTER_MAX_NODES);
    int m = model_get(dir, model);
    if (m < 0)
        return kvrt_fail(dir->ctx, KVRT_ERR_NO_MEMORY, "table for a new model");
    dir_node_t *n = &dir->nodes[slot];
    kvrt_block_hash_t *keys = n->keys; /* kept from the slot's last node */
    const uint64_t cap_keys = n->cap_keys;
    *n = (dir_node_t){.node_id = node_id, .epoch = epoch, .next_id = 1, .model = m,
                      .keys = keys, .cap_keys = cap_keys};
    dir->models[m].nodes |= 1ull << slot;
    dir->stats.nodes++;
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_cluster_dir_remove_node(kvrt_cluster_dir_t *dir,
                                                       uint64_t node_id)
{
    if (!dir)
        return KVRT_ERR_INVALID_ARG;
    int slot = node_slot(dir, node_id);
    if (slot < 0)
        return kvrt_fail(dir->ctx, KVRT_ERR_UNKNOWN_NODE, "node %016llx",
                         (unsigned long long)node_id);
    drop_entries(dir, slot);
    dir->models[dir->nodes[slot].model].nodes &= ~(1ull << slot);
    dir->resyncing &= ~(1ull << slot);
    /* The slot keeps its key list's memory for the next node it takes,
     * as the model's table keeps its slots: no page is faulted in twice. */
    dir_node_t *n = &dir->nodes[slot];
    kvrt_block_hash_t *keys = n->keys;
    const uint64_t cap_keys = n->cap_keys;
    memset(n, 0, sizeof(*n));
    n->keys = keys;
    n->cap_keys = cap_keys;
    dir->stats.nodes--;
    return KVRT_OK;
}

/* ---- events ----------------------------------------------------------------- */

static bool epoch_is_old(const dir_node_t *n, uint64_t epoch)
{
    for (uint32_t i = 0; i < n->num_old && i < OLD_EPOCHS; i++)
        if (n->old_epochs[i] == epoch)
            return true;
    return false;
}

/* The node restarted: its entries go, the old epoch is remembered so late
 * events of the dead incarnation are refused, not mistaken for a restart. */
static void new_epoch(kvrt_cluster_dir_t *dir, int slot, uint64_t epoch)
{
    dir_node_t *n = &dir->nodes[slot];
    drop_entries(dir, slot);
    n->old_epochs[n->num_old++ % OLD_EPOCHS] = n->epoch;
    n->epoch = epoch;
    n->next_id = 1;
}

static kvrt_status_t start_resync(kvrt_cluster_dir_t *dir, int slot, const char *why,
                                  uint64_t got)
{
    dir_node_t *n = &dir->nodes[slot];
    drop_entries(dir, slot);
    n->resyncing = true;
    dir->resyncing |= 1ull << slot;
    dir->stats.resyncs++;
    return kvrt_fail(dir->ctx, KVRT_ERR_RESYNC, "node %016llx: %s (expected id %llu, got %llu)",
                     (unsigned long long)n->node_id, why, (unsigned long long)n->next_id,
                     (unsigned long long)got);
}

static void apply_one(kvrt_cluster_dir_t *dir, int slot, keytable_t *table,
                      const kvrt_kv_event_t *e)
{
    dir_node_t *n = &dir->nodes[slot];
    uint64_t bit = 1ull << slot;
    if (e->kind == KVRT_KV_EVENT_STORED) {
        keytable_slot_t *s = keytable_claim(table, &e->key);
        if (!(s->mask[e->tier] & bit)) {
            const bool listed = slot_has_node(s, bit);
            s->mask[e->tier] |= bit;
            n->blocks[e->tier]++;
            if (!listed)
                keys_add(n, table, &e->key);
        }
    } else if (e->kind == KVRT_KV_EVENT_REMOVED) {
        keytable_slot_t *s = keytable_find(table, &e->key);
        if (s && (s->mask[e->tier] & bit)) {
            s->mask[e->tier] &= ~bit;
            n->blocks[e->tier]--;
            if (!keytable_slot_used(s))
                keytable_erase(table, s);
        }
    } else {
        drop_entries(dir, slot);
    }
}

KVRT_EXPORT kvrt_status_t kvrt_cluster_dir_apply(kvrt_cluster_dir_t *dir, uint64_t node_id,
                                                 uint64_t epoch,
                                                 const kvrt_kv_event_t *events,
                                                 uint32_t count)
{
    if (!dir || (count > 0 && !events))
        return dir ? kvrt_fail(dir->ctx, KVRT_ERR_INVALID_ARG, "events are required")
                   : KVRT_ERR_INVALID_ARG;
    int slot = node_slot(dir, node_id);
    if (slot < 0)
        return kvrt_fail(dir->ctx, KVRT_ERR_UNKNOWN_NODE, "node %016llx",
                         (unsigned long long)node_id);
    dir_node_t *n = &dir->nodes[slot];
    /* Validate the whole batch before anything changes. */
    for (uint32_t i = 0; i < count; i++) {
        const kvrt_kv_event_t *e = &events[i];
        if (e->kind < KVRT_KV_EVENT_STORED || e->kind > KVRT_KV_EVENT_CLEARED ||
            e->tier >= KVRT_KV_TIERS)
            return kvrt_fail(dir->ctx, KVRT_ERR_INVALID_ARG,
                             "event %u: kind %u tier %u", i, e->kind, e->tier);
    }
    const bool restart = epoch != n->epoch;
    if (restart && (epoch == 0 || epoch_is_old(n, epoch))) {
        dir->stats.stale_refused++;
        return kvrt_fail(dir->ctx, KVRT_ERR_STALE_EPOCH,
                         "node %016llx: epoch %016llx is older than %016llx",
                         (unsigned long long)node_id, (unsigned long long)epoch,
                         (unsigned long long)n->epoch);
    }
    if (!restart && n->resyncing)
        return kvrt_fail(dir->ctx, KVRT_ERR_RESYNC, "node %016llx waits for a snapshot",
                         (unsigned long long)node_id);
    /* What the batch will apply: the events from the node's next id (1
     * for a new epoch) up to a gap, and of those only what follows the
     * last CLEARED, which wipes whatever the events before it did: they
     * only move the ids on, and a batch pays at most one clear. The table
     * grows for the keys stored after it, and for nothing a refused,
     * duplicate or gapped batch carries. */
    uint64_t expect = restart ? 1 : n->next_id, stores = 0;
    uint32_t last_clear = UINT32_MAX;
    for (uint32_t i = 0; i < count; i++) {
        const kvrt_kv_event_t *e = &events[i];
        if (e->event_id < expect)
            continue; /* a duplicate */
        if (e->event_id > expect)
            break; /* a gap: nothing past it applies */
        expect++;
        if (e->kind == KVRT_KV_EVENT_CLEARED) {
            last_clear = i;
            stores = 0;
        } else {
            stores += e->kind == KVRT_KV_EVENT_STORED;
        }
    }
    keytable_t *table = &dir->models[n->model].table;
    if (!keytable_reserve(table, stores))
        return kvrt_fail(dir->ctx, KVRT_ERR_NO_MEMORY, "table growth for %llu keys",
                         (unsigned long long)stores);
    if (restart) {
        new_epoch(dir, slot, epoch);
        /* A new publisher holds nothing before its id 1; a stream of the
         * new epoch already past it needs a snapshot (an empty batch can
         * tell nothing yet: the next one decides). */
        if (count > 0 && events[0].event_id != 1)
            return start_resync(dir, slot, "new epoch, stream already under way",
                                events[0].event_id);
        n->resyncing = false;
        dir->resyncing &= ~(1ull << slot);
    }
    for (uint32_t i = 0; i < count; i++) {
        const kvrt_kv_event_t *e = &events[i];
        if (i + PREFETCH_AHEAD < count)
            keytable_prefetch(table, &events[i + PREFETCH_AHEAD].key);
        if (e->event_id < n->next_id) {
            dir->stats.events_duplicate++;
            continue;
        }
        if (e->event_id > n->next_id)
            return start_resync(dir, slot, "gap in event ids", e->event_id);
        if (last_clear == UINT32_MAX || i >= last_clear) /* (a gap drops all anyway) */
            apply_one(dir, slot, table, e);
        n->next_id++;
        dir->stats.events_applied++;
    }
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_cluster_dir_load_snapshot(kvrt_cluster_dir_t *dir,
                                                         uint64_t node_id, uint64_t epoch,
                                                         uint64_t last_event_id,
                                                         const kvrt_kv_event_t *records,
                                                         uint32_t count)
{
    if (!dir || (count > 0 && !records) || epoch == 0)
        return dir ? kvrt_fail(dir->ctx, KVRT_ERR_INVALID_ARG,
                               "records are required and epoch must be non-zero")
                   : KVRT_ERR_INVALID_ARG;
    int slot = node_slot(dir, node_id);
    if (slot < 0)
        return kvrt_fail(dir->ctx, KVRT_ERR_UNKNOWN_NODE, "node %016llx",
                         (unsigned long long)node_id);
    for (uint32_t i = 0; i < count; i++)
        if (records[i].kind != KVRT_KV_EVENT_STORED || records[i].tier >= KVRT_KV_TIERS)
            return kvrt_fail(dir->ctx, KVRT_ERR_INVALID_ARG,
                             "record %u: kind %u tier %u (snapshots hold STORED records)", i,
                             records[i].kind, records[i].tier);
    dir_node_t *n = &dir->nodes[slot];
    if (epoch != n->epoch && epoch_is_old(n, epoch)) {
        dir->stats.stale_refused++;
        return kvrt_fail(dir->ctx, KVRT_ERR_STALE_EPOCH, "node %016llx: snapshot of epoch %016llx",
                         (unsigned long long)node_id, (unsigned long long)epoch);
    }
    keytable_t *table = &dir->models[n->model].table;
    if (!keytable_reserve(table, count))
        return kvrt_fail(dir->ctx, KVRT_ERR_NO_MEMORY, "table growth for %u keys", count);
    if (epoch != n->epoch)
        new_epoch(dir, slot, epoch);
    else
        drop_entries(dir, slot);
    for (uint32_t i = 0; i < count; i++)
        apply_one(dir, slot, table, &records[i]);
    n->next_id = last_event_id + 1;
    n->resyncing = false;
    dir->resyncing &= ~(1ull << slot);
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_cluster_dir_forget(kvrt_cluster_dir_t *dir, uint64_t node_id,
                                                 const kvrt_block_hash_t *keys, uint32_t count)
{
    if (!dir || (count > 0 && !keys))
        return dir ? kvrt_fail(dir->ctx, KVRT_ERR_INVALID_ARG, "keys are required")
                   : KVRT_ERR_INVALID_ARG;
    int slot = node_slot(dir, node_id);
    if (slot < 0)
        return kvrt_fail(dir->ctx, KVRT_ERR_UNKNOWN_NODE, "node %016llx",
                         (unsigned long long)node_id);
    dir_node_t *n = &dir->nodes[slot];
    keytable_t *table = &dir->models[n->model].table;
    uint64_t bit = 1ull << slot;
    for (uint32_t i = 0; i < count; i++) {
        keytable_slot_t *s = keytable_find(table, &keys[i]);
        if (!s)
            continue;
        for (int t = 0; t < KVRT_KV_TIERS; t++) {
            if (s->mask[t] & bit) {
                s->mask[t] &= ~bit;
                n->blocks[t]--;
            }
        }
        if (!keytable_slot_used(s))
            keytable_erase(table, s);
    }
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_cluster_dir_node_info(const kvrt_cluster_dir_t *dir,
                                                     uint64_t node_id,
                                                     kvrt_cluster_node_info_t *info_out)
{
    if (!dir || !info_out)
        return KVRT_ERR_INVALID_ARG;
    int slot = node_slot(dir, node_id);
    if (slot < 0)
        return kvrt_fail(dir->ctx, KVRT_ERR_UNKNOWN_NODE, "node %016llx",
                         (unsigned long long)node_id);
    const dir_node_t *n = &dir->nodes[slot];
    kvrt_cluster_node_info_t info = {.node_id = n->node_id, .epoch = n->epoch,
                                     .next_event_id = n->next_id,
                                     .resyncing = n->resyncing};
    memcpy(info.blocks, n->blocks, sizeof(info.blocks));
    *info_out = info;
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_cluster_dir_set_load(kvrt_cluster_dir_t *dir, uint64_t node_id,
                                                    const kvrt_cluster_load_t *load)
{
    if (!dir || !load)
        return KVRT_ERR_INVALID_ARG;
    const uint64_t known = KVRT_CLUSTER_LOAD_QUEUED_PREFILL | KVRT_CLUSTER_LOAD_RUNNING_DECODES |
                           KVRT_CLUSTER_LOAD_FREE_BLOCKS;
    if (load->field_mask & ~known)
        return kvrt_fail(dir->ctx, KVRT_ERR_INVALID_ARG, "unknown field_mask bits 0x%llx",
                         (unsigned long long)(load->field_mask & ~known));
    int slot = node_slot(dir, node_id);
    if (slot < 0)
        return kvrt_fail(dir->ctx, KVRT_ERR_UNKNOWN_NODE, "node %016llx",
                         (unsigned long long)node_id);
    kvrt_cluster_load_t *l = &dir->nodes[slot].load;
    if (load->field_mask & KVRT_CLUSTER_LOAD_QUEUED_PREFILL)
        l->queued_prefill_tokens = load->queued_prefill_tokens;
    if (load->field_mask & KVRT_CLUSTER_LOAD_RUNNING_DECODES)
        l->running_decodes = load->running_decodes;
    if (load->field_mask & KVRT_CLUSTER_LOAD_FREE_BLOCKS)
        l->free_blocks = load->free_blocks;
    l->field_mask |= load->field_mask;
    return KVRT_OK;
}

/* ---- queries ------------------------------------------------------------------ */

uint64_t cluster_dir_model_nodes(const kvrt_cluster_dir_t *dir, int model, bool answering)
{
    uint64_t nodes = dir->models[model].nodes;
    return answering ? nodes & ~dir->resyncing : nodes;
}

void cluster_dir_prefixes(const kvrt_cluster_dir_t *dir, int model,
                          const kvrt_block_hash_t *keys, uint32_t num_keys,
                          uint32_t tier_mask, uint32_t *prefix, uint32_t *gpu_prefix)
{
    const keytable_t *table = &dir->models[model].table;
    uint64_t active = cluster_dir_model_nodes(dir, model, true);
    uint64_t gpu_active = (tier_mask & (1u << KVRT_KV_TIER_GPU)) ? active : 0;
    for (uint64_t b = active; b; b &= b - 1) {
        int s = __builtin_ctzll(b);
        if (prefix)
            prefix[s] = num_keys;
        if (gpu_prefix)
            gpu_prefix[s] = (gpu_active >> s) & 1 ? num_keys : 0;
    }
    for (uint32_t i = 0; i < num_keys && (active | gpu_active); i++) {
        const keytable_slot_t *slot = keytable_find(table, &keys[i]);
        uint64_t here = 0, gpu_here = 0;
        if (slot) {
            for (int t = 0; t < KVRT_KV_TIERS; t++)
                if (tier_mask & (1u << t))
                    here |= slot->mask[t];
            gpu_here = slot->mask[KVRT_KV_TIER_GPU];
        }
        for (uint64_t gone = active & ~here; gone; gone &= gone - 1)
            if (prefix)
                prefix[__builtin_ctzll(gone)] = i;
        for (uint64_t gone = gpu_active & ~gpu_here; gone; gone &= gone - 1)
            if (gpu_prefix)
                gpu_prefix[__builtin_ctzll(gone)] = i;
        active &= here;
        gpu_active &= gpu_here;
    }
}

KVRT_EXPORT kvrt_status_t kvrt_cluster_dir_match(const kvrt_cluster_dir_t *dir,
                                                 const kvrt_block_hash_t *model,
                                                 const kvrt_block_hash_t *keys,
                                                 uint32_t num_keys, uint32_t tier_mask,
                                                 kvrt_cluster_match_t *matches_out,
                                                 uint32_t capacity, uint32_t *count_out)
{
    if (!dir || !model || !count_out || (num_keys > 0 && !keys) ||
        (capacity > 0 && !matches_out))
        return dir ? kvrt_fail(dir->ctx, KVRT_ERR_INVALID_ARG,
                               "model, count_out, keys and matches_out are required")
                   : KVRT_ERR_INVALID_ARG;
    if (tier_mask & ~KVRT_KV_TIER_MASK_ALL)
        return kvrt_fail(dir->ctx, KVRT_ERR_INVALID_ARG, "unknown tier bits 0x%x", tier_mask);
    if (tier_mask == 0)
        tier_mask = KVRT_KV_TIER_MASK_ALL;
    int m = cluster_dir_model_index(dir, model);
    if (m < 0)
        return kvrt_fail(dir->ctx, KVRT_ERR_UNKNOWN_MODEL, "model %016llx%016llx",
                         (unsigned long long)model->hi, (unsigned long long)model->lo);
    uint64_t nodes = cluster_dir_model_nodes(dir, m, true);
    uint32_t n = (uint32_t)__builtin_popcountll(nodes);
    if (n > capacity) {
        *count_out = n;
        return kvrt_fail(dir->ctx, KVRT_ERR_BUFFER_TOO_SMALL, "%u nodes, room for %u", n,
                         capacity);
    }
    uint32_t prefix[KVRT_CLUSTER_MAX_NODES], gpu[KVRT_CLUSTER_MAX_NODES];
    cluster_dir_prefixes(dir, m, keys, num_keys, tier_mask, prefix, gpu);
    uint32_t i = 0;
    for (uint64_t b = nodes; b; b &= b - 1) {
        int s = __builtin_ctzll(b);
        matches_out[i++] = (kvrt_cluster_match_t){.node_id = dir->nodes[s].node_id,
                                                  .prefix_blocks = prefix[s],
                                                  .gpu_prefix_blocks = gpu[s]};
    }
    ((kvrt_cluster_dir_t *)dir)->stats.queries++;
    *count_out = n;
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_cluster_dir_stats(const kvrt_cluster_dir_t *dir,
                                                 kvrt_cluster_dir_stats_t *stats_out)
{
    if (!dir || !stats_out)
        return KVRT_ERR_INVALID_ARG;
    kvrt_cluster_dir_stats_t s = dir->stats;
    s.models = dir->num_models;
    s.entries = s.table_slots = 0;
    for (uint32_t m = 0; m < dir->num_models; m++) {
        s.entries += dir->models[m].table.count;
        s.table_slots += dir->models[m].table.capacity;
    }
    s.table_bytes = s.table_slots * sizeof(keytable_slot_t);
    for (int i = 0; i < KVRT_CLUSTER_MAX_NODES; i++)
        s.table_bytes += dir->nodes[i].cap_keys * sizeof(kvrt_block_hash_t);
    *stats_out = s;
    return KVRT_OK;
}

/* ---- for the router and the etcd sync ------------------------------------------- */

uint64_t cluster_dir_slot_node_id(const kvrt_cluster_dir_t *dir, uint32_t slot)
{
    return dir->nodes[slot].node_id;
}

const kvrt_cluster_load_t *cluster_dir_slot_load(const kvrt_cluster_dir_t *dir, uint32_t slot)
{
    return &dir->nodes[slot].load;
}

kvrt_ctx_t *cluster_dir_ctx(const kvrt_cluster_dir_t *dir) { return dir->ctx; }

uint64_t cluster_dir_table_walks(const kvrt_cluster_dir_t *dir) { return dir->table_walks; }

kvrt_status_t cluster_dir_sync_member(kvrt_cluster_dir_t *dir, const kvrt_cluster_member_t *m,
                                      uint32_t *added, uint32_t *removed)
{
    int slot = node_slot(dir, m->node_id);
    if (slot < 0) { /* new */
        kvrt_status_t st = kvrt_cluster_dir_add_node(dir, m->node_id, &m->model, m->epoch);
        if (st == KVRT_OK) {
            dir->nodes[node_slot(dir, m->node_id)].synced = true;
            (*added)++;
        }
        return st;
    }
    dir_node_t *n = &dir->nodes[slot];
    /* An epoch the node had before its current one: the view lags the
     * node's own event stream (it is refreshed every poll_ms, and not at
     * all while etcd is unreachable). Going back to it would refuse the
     * live incarnation's events and accept the dead one's. */
    if (epoch_is_old(n, m->epoch))
        return KVRT_OK;
    const kvrt_block_hash_t *model = &dir->models[n->model].fingerprint;
    if (model->lo != m->model.lo || model->hi != m->model.hi) {
        /* Back serving another model (a node id is e.g. its address's
         * hash): nothing it held is the new model's, and it must be
         * routed for the model it serves now. */
        const uint64_t was = n->epoch;
        kvrt_cluster_dir_remove_node(dir, m->node_id);
        (*removed)++;
        kvrt_status_t st = kvrt_cluster_dir_add_node(dir, m->node_id, &m->model, m->epoch);
        if (st != KVRT_OK)
            return st;
        n = &dir->nodes[node_slot(dir, m->node_id)];
        n->synced = true;
        if (was != m->epoch)
            n->old_epochs[n->num_old++ % OLD_EPOCHS] = was; /* its late events are stale */
        (*added)++;
        return KVRT_OK;
    }
    if (n->epoch != m->epoch) {
        /* Restarted: same slot, old entries dropped, and the old epoch
         * stays known as stale so its late events are refused. */
        new_epoch(dir, slot, m->epoch);
        n->resyncing = false;
        dir->resyncing &= ~(1ull << slot);
        n->synced = true;
        (*added)++;
        (*removed)++;
    }
    return KVRT_OK;
}

uint32_t cluster_dir_synced_nodes(const kvrt_cluster_dir_t *dir, uint64_t *ids)
{
    uint32_t n = 0;
    for (int i = 0; i < KVRT_CLUSTER_MAX_NODES; i++)
        if (dir->nodes[i].node_id && dir->nodes[i].synced)
            ids[n++] = dir->nodes[i].node_id;
    return n;
}
