/*
 * membership.c - cluster membership on etcd (kvrt/cluster.h).
 *
 * Each node puts <prefix>/nodes/<node id> under a lease it keeps alive.
 * A background thread keeps the lease alive and re-reads the member keys
 * every poll_ms; the engine thread reconciles its directory with the last
 * view by kvrt_cluster_etcd_sync(). The split keeps every network wait off
 * the engine thread and every directory change on it.
 *
 * Failure handling: a failed request keeps the last view (the cluster goes
 * on serving from what it knew) and doubles the wait before the next try,
 * up to max_backoff_ms. A keepalive that finds the lease gone (etcd expired
 * it while unreachable, or a long pause) grants a new lease and puts the
 * node again under its same epoch: peers that dropped it re-add it with no
 * entries, and its event stream tells them to resync.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cluster/cluster_internal.h"
#include "cluster/etcd_client.h"

#define MAX_VIEW KVRT_CLUSTER_MAX_NODES

struct kvrt_cluster_etcd {
    kvrt_owned_t owned;
    kvrt_ctx_t *ctx;
    kvrt_cluster_etcd_params_t p;
    char endpoint[256];
    char prefix[256];
    char key[320];
    /* The record: an address of 255 bytes may grow 6 times as JSON escapes
     * (\u00XX), beside about 150 bytes of the rest. */
    char value[2048];
    etcd_client_t *client; /* the thread's after create */
    int64_t lease;
    pthread_t thread;
    bool thread_started;
    pthread_mutex_t lock; /* guards what follows */
    pthread_cond_t wake;
    bool stop;
    kvrt_cluster_member_t view[MAX_VIEW];
    uint32_t view_count;
    kvrt_cluster_etcd_stats_t stats;
    uint64_t last_ok_ns;
};

static uint64_t now_ms(void) { return kvrt_now_ns() / 1000000u; }

/* ---- the record a node puts ------------------------------------------------- */

static void hex64(char *out, uint64_t v) { snprintf(out, 17, "%016" PRIx64, v); }

static int parse_hex64(const cJSON *obj, const char *name, uint64_t *out)
{
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(obj, name);
    if (!cJSON_IsString(f) || strlen(f->valuestring) != 16)
        return -1;
    char *end = NULL;
    *out = strtoull(f->valuestring, &end, 16);
    return *end == '\0' ? 0 : -1;
}

static int member_record(const kvrt_cluster_etcd_params_t *p, const char *address, char *out,
                         size_t size)
{
    char id[17], epoch[17], lo[17], hi[17];
    hex64(id, p->node_id);
    hex64(epoch, p->epoch);
    hex64(lo, p->model.lo);
    hex64(hi, p->model.hi);
    cJSON *o = cJSON_CreateObject();
    if (!o || !cJSON_AddStringToObject(o, "node_id", id) ||
        !cJSON_AddStringToObject(o, "epoch", epoch) ||
        !cJSON_AddStringToObject(o, "model_lo", lo) ||
        !cJSON_AddStringToObject(o, "model_hi", hi) ||
        !cJSON_AddStringToObject(o, "address", address)) {
        cJSON_Delete(o);
        return -1;
    }
    int ok = cJSON_PrintPreallocated(o, out, (int)size, 0);
    cJSON_Delete(o);
    return ok ? 0 : -1;
}

/* A peer's record; anything malformed is skipped (one bad writer must not
 * blind a node to the others). */
static int parse_member(const char *text, kvrt_cluster_member_t *m)
{
    cJSON *o = cJSON_Parse(text);
    int rc = -1;
    memset(m, 0, sizeof(*m));
    if (cJSON_IsObject(o) && parse_hex64(o, "node_id", &m->node_id) == 0 &&
        parse_hex64(o, "epoch", &m->epoch) == 0 && parse_hex64(o, "model_lo", &m->model.lo) == 0 &&
        parse_hex64(o, "model_hi", &m->model.hi) == 0 && m->node_id && m->epoch) {
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, "address");
        if (cJSON_IsString(a))
            snprintf(m->address, sizeof(m->address), "%s", a->valuestring);
        rc = 0;
    }
    cJSON_Delete(o);
    return rc;
}

/* ---- requests (caller holds no lock) ------------------------------------------- */

static int do_register(kvrt_cluster_etcd_t *m)
{
    int64_t lease = 0;
    if (etcd_lease_grant(m->client, m->p.lease_ttl_s, &lease) != 0)
        return -1;
    if (etcd_put(m->client, m->key, m->value, lease) != 0)
        return -1;
    m->lease = lease;
    return 0;
}

static int compare_members(const void *a, const void *b)
{
    uint64_t x = ((const kvrt_cluster_member_t *)a)->node_id;
    uint64_t y = ((const kvrt_cluster_member_t *)b)->node_id;
    return x < y ? -1 : x > y;
}

/* Reads the member keys into a fresh view; publishes it on success. */
static int refresh_view(kvrt_cluster_etcd_t *m)
{
    char nodes[300];
    snprintf(nodes, sizeof(nodes), "%s/nodes/", m->prefix);
    etcd_kv_t *kvs = NULL;
    uint32_t count = 0;
    if (etcd_range_prefix(m->client, nodes, MAX_VIEW * 4, &kvs, &count) != 0)
        return -1;
    kvrt_cluster_member_t fresh[MAX_VIEW];
    uint32_t n = 0;
    for (uint32_t i = 0; i < count && n < MAX_VIEW; i++)
        if (parse_member(kvs[i].value, &fresh[n]) == 0)
            n++;
    etcd_kvs_free(kvs, count);
    qsort(fresh, n, sizeof(fresh[0]), compare_members);
    pthread_mutex_lock(&m->lock);
    memcpy(m->view, fresh, n * sizeof(fresh[0]));
    m->view_count = n;
    m->stats.view_updates++;
    m->stats.members = n;
    pthread_mutex_unlock(&m->lock);
    return 0;
}

static void note_result(kvrt_cluster_etcd_t *m, int ok)
{
    pthread_mutex_lock(&m->lock);
    m->stats.connected = ok;
    if (ok)
        m->last_ok_ns = kvrt_now_ns();
    else
        m->stats.failures++;
    pthread_mutex_unlock(&m->lock);
}

/* ---- the background thread ------------------------------------------------------ */

/* Sleeps ms unless destroy wakes it; returns true when asked to stop. */
static bool wait_or_stop(kvrt_cluster_etcd_t *m, uint64_t ms)
{
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += (time_t)(ms / 1000);
    deadline.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&m->lock);
    while (!m->stop && pthread_cond_timedwait(&m->wake, &m->lock, &deadline) != ETIMEDOUT)
        ;
    bool stop = m->stop;
    pthread_mutex_unlock(&m->lock);
    return stop;
}

static void *member_thread(void *arg)
{
    kvrt_cluster_etcd_t *m = arg;
    uint64_t backoff = m->p.poll_ms;
    uint64_t keepalive_every = (uint64_t)m->p.lease_ttl_s * 1000u / 3u;
    uint64_t last_keepalive = now_ms();
    bool need_register = false;
    while (!wait_or_stop(m, backoff)) {
        int ok = 0;
        if (need_register) {
            ok = do_register(m) == 0;
            if (ok) {
                need_register = false;
                last_keepalive = now_ms();
                pthread_mutex_lock(&m->lock);
                m->stats.registrations++;
                pthread_mutex_unlock(&m->lock);
                kvrt_log(m->ctx, KVRT_LOG_INFO, "etcd: node %016llx registered again",
                         (unsigned long long)m->p.node_id);
            }
        } else if (now_ms() - last_keepalive >= keepalive_every) {
            int64_t ttl = 0;
            ok = etcd_lease_keepalive(m->client, m->lease, &ttl) == 0;
            if (ok) {
                last_keepalive = now_ms();
                need_register = ttl <= 0;
            }
        } else {
            ok = 1;
        }
        if (ok && !need_register)
            ok = refresh_view(m) == 0;
        note_result(m, ok);
        if (ok) {
            backoff = m->p.poll_ms;
        } else {
            kvrt_log(m->ctx, KVRT_LOG_WARN, "etcd: %s (keeping the last view, retry in %llu ms)",
                     etcd_client_error(m->client), (unsigned long long)backoff);
            backoff = backoff * 2 > m->p.max_backoff_ms ? m->p.max_backoff_ms : backoff * 2;
            /* The lease may expire while etcd is away: the next keepalive
             * answers TTL 0 and the node registers again. */
            if (now_ms() - last_keepalive >= keepalive_every)
                backoff = backoff < keepalive_every ? backoff : keepalive_every;
        }
    }
    return NULL;
}

/* ---- API -------------------------------------------------------------------------- */

static void member_free(kvrt_cluster_etcd_t *m)
{
    if (m->thread_started) {
        pthread_mutex_lock(&m->lock);
        m->stop = true;
        pthread_cond_signal(&m->wake);
        pthread_mutex_unlock(&m->lock);
        pthread_join(m->thread, NULL);
        /* Peers see the node leave now rather than a TTL later. */
        etcd_lease_revoke(m->client, m->lease);
    }
    etcd_client_destroy(m->client);
    pthread_cond_destroy(&m->wake);
    pthread_mutex_destroy(&m->lock);
    free(m);
}

static void member_owned_destroy(kvrt_owned_t *self) { member_free((kvrt_cluster_etcd_t *)self); }

static kvrt_status_t check_params(kvrt_ctx_t *ctx, const kvrt_cluster_etcd_params_t *in,
                                  kvrt_cluster_etcd_params_t *p)
{
    const uint64_t known = KVRT_ETCD_PARAM_ENDPOINT | KVRT_ETCD_PARAM_PREFIX |
                           KVRT_ETCD_PARAM_ADDRESS | KVRT_ETCD_PARAM_LEASE_TTL |
                           KVRT_ETCD_PARAM_POLL_MS | KVRT_ETCD_PARAM_TIMEOUT_MS |
                           KVRT_ETCD_PARAM_MAX_BACKOFF_MS;
    if (in->field_mask & ~known)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "unknown field_mask bits 0x%llx",
                         (unsigned long long)(in->field_mask & ~known));
    *p = (kvrt_cluster_etcd_params_t){.node_id = in->node_id, .model = in->model,
                                      .epoch = in->epoch, .endpoint = "http://127.0.0.1:2379",
                                      .prefix = "/kvrt/cluster", .address = "",
                                      .lease_ttl_s = 10, .poll_ms = 500, .timeout_ms = 2000,
                                      .max_backoff_ms = 5000};
    uint64_t f = in->field_mask;
    if (f & KVRT_ETCD_PARAM_ENDPOINT)
        p->endpoint = in->endpoint;
    if (f & KVRT_ETCD_PARAM_PREFIX)
        p->prefix = in->prefix;
    if (f & KVRT_ETCD_PARAM_ADDRESS)
        p->address = in->address;
    if (f & KVRT_ETCD_PARAM_LEASE_TTL)
        p->lease_ttl_s = in->lease_ttl_s;
    if (f & KVRT_ETCD_PARAM_POLL_MS)
        p->poll_ms = in->poll_ms;
    if (f & KVRT_ETCD_PARAM_TIMEOUT_MS)
        p->timeout_ms = in->timeout_ms;
    if (f & KVRT_ETCD_PARAM_MAX_BACKOFF_MS)
        p->max_backoff_ms = in->max_backoff_ms;
    else if (p->max_backoff_ms < p->poll_ms)
        p->max_backoff_ms = p->poll_ms; /* the default follows a long poll */
    if (p->node_id == 0 || p->epoch == 0)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "node_id and epoch must be non-zero");
    if (!p->endpoint || strncmp(p->endpoint, "http", 4) != 0 || strlen(p->endpoint) > 200)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "endpoint must be an http(s) URL");
    if (!p->prefix || p->prefix[0] != '/' || strlen(p->prefix) > 200)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "prefix must start with '/' (200 bytes max)");
    if (!p->address || strlen(p->address) > 255)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "address of more than 255 bytes");
    if (p->lease_ttl_s < 2 || p->lease_ttl_s > 3600 || p->poll_ms < 20 || p->poll_ms > 60000 ||
        p->timeout_ms < 50 || p->timeout_ms > 60000 || p->max_backoff_ms < p->poll_ms)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG,
                         "lease_ttl_s %u, poll_ms %u, timeout_ms %u or max_backoff_ms %u "
                         "out of range",
                         p->lease_ttl_s, p->poll_ms, p->timeout_ms, p->max_backoff_ms);
    /* The keepalive runs every poll_ms: a lease that outlives fewer than
     * three of them would lapse between two, and peers would drop a live
     * node again and again. */
    if ((uint64_t)p->poll_ms * 3 > (uint64_t)p->lease_ttl_s * 1000)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG,
                         "poll_ms %u: the lease of %u s must last at least three polls",
                         p->poll_ms, p->lease_ttl_s);
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_cluster_etcd_create(kvrt_ctx_t *ctx,
                                                   const kvrt_cluster_etcd_params_t *params,
                                                   kvrt_cluster_etcd_t **member_out)
{
    if (!ctx || !params || !member_out)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "ctx, params and member_out are required");
    kvrt_cluster_etcd_params_t p;
    kvrt_status_t st = check_params(ctx, params, &p);
    if (st != KVRT_OK)
        return st;
    kvrt_cluster_etcd_t *m = calloc(1, sizeof(*m));
    if (!m)
        return kvrt_fail(ctx, KVRT_ERR_NO_MEMORY, "member");
    pthread_mutex_init(&m->lock, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&m->wake, &attr);
    pthread_condattr_destroy(&attr);
    m->ctx = ctx;
    snprintf(m->endpoint, sizeof(m->endpoint), "%s", p.endpoint);
    snprintf(m->prefix, sizeof(m->prefix), "%s", p.prefix);
    p.endpoint = m->endpoint;
    p.prefix = m->prefix;
    p.address = NULL; /* only the record keeps it */
    m->p = p;
    snprintf(m->key, sizeof(m->key), "%s/nodes/%016llx", m->prefix,
             (unsigned long long)p.node_id);
    m->client = etcd_client_create(m->endpoint, p.timeout_ms);
    const char *address = (params->field_mask & KVRT_ETCD_PARAM_ADDRESS) ? params->address : "";
    if (!m->client || member_record(&p, address, m->value, sizeof(m->value)) != 0) {
        member_free(m);
        return kvrt_fail(ctx, KVRT_ERR_NO_MEMORY, "etcd client or member record");
    }
    if (do_register(m) != 0 || refresh_view(m) != 0) {
        st = kvrt_fail(ctx, KVRT_ERR_COORDINATOR, "etcd at %s: %s", m->endpoint,
                       etcd_client_error(m->client));
        if (m->lease)
            etcd_lease_revoke(m->client, m->lease);
        member_free(m);
        return st;
    }
    m->stats.registrations = 1;
    m->stats.connected = 1;
    m->last_ok_ns = kvrt_now_ns();
    if (pthread_create(&m->thread, NULL, member_thread, m) != 0) {
        etcd_lease_revoke(m->client, m->lease);
        member_free(m);
        return kvrt_fail(ctx, KVRT_ERR_NO_MEMORY, "membership thread");
    }
    m->thread_started = true;
    kvrt_ctx_own(ctx, &m->owned, member_owned_destroy);
    *member_out = m;
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_cluster_etcd_destroy(kvrt_cluster_etcd_t *member)
{
    if (!member)
        return KVRT_OK;
    kvrt_ctx_disown(member->ctx, &member->owned);
    member_free(member);
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_cluster_etcd_members(kvrt_cluster_etcd_t *member,
                                                    kvrt_cluster_member_t *members_out,
                                                    uint32_t capacity, uint32_t *count_out)
{
    if (!member || !count_out || (capacity > 0 && !members_out))
        return member ? kvrt_fail(member->ctx, KVRT_ERR_INVALID_ARG,
                                  "count_out, and members_out when capacity > 0, are required")
                      : KVRT_ERR_INVALID_ARG;
    pthread_mutex_lock(&member->lock);
    uint32_t n = member->view_count;
    if (n <= capacity)
        memcpy(members_out, member->view, n * sizeof(*members_out));
    pthread_mutex_unlock(&member->lock);
    *count_out = n;
    if (n > capacity)
        return kvrt_fail(member->ctx, KVRT_ERR_BUFFER_TOO_SMALL, "%u members, room for %u", n,
                         capacity);
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_cluster_etcd_sync(kvrt_cluster_etcd_t *member,
                                                 kvrt_cluster_dir_t *dir, uint32_t *added_out,
                                                 uint32_t *removed_out)
{
    if (!member || !dir)
        return KVRT_ERR_INVALID_ARG;
    kvrt_cluster_member_t view[MAX_VIEW];
    uint32_t n = 0;
    pthread_mutex_lock(&member->lock);
    n = member->view_count;
    memcpy(view, member->view, n * sizeof(view[0]));
    pthread_mutex_unlock(&member->lock);
    uint32_t added = 0, removed = 0;
    kvrt_status_t st = KVRT_OK;
    /* Gone from the view: drop. */
    uint64_t synced[KVRT_CLUSTER_MAX_NODES];
    uint32_t num_synced = cluster_dir_synced_nodes(dir, synced);
    for (uint32_t i = 0; i < num_synced; i++) {
        kvrt_cluster_member_t key = {.node_id = synced[i]};
        if (!bsearch(&key, view, n, sizeof(view[0]), compare_members)) {
            kvrt_cluster_dir_remove_node(dir, synced[i]);
            removed++;
        }
    }
    /* New, restarted, or back with another model: (re-)add. */
    for (uint32_t i = 0; i < n && st == KVRT_OK; i++)
        st = cluster_dir_sync_member(dir, &view[i], &added, &removed);
    if (added_out)
        *added_out = added;
    if (removed_out)
        *removed_out = removed;
    return st;
}

KVRT_EXPORT kvrt_status_t kvrt_cluster_etcd_stats(kvrt_cluster_etcd_t *member,
                                                  kvrt_cluster_etcd_stats_t *stats_out)
{
    if (!member || !stats_out)
        return KVRT_ERR_INVALID_ARG;
    pthread_mutex_lock(&member->lock);
    kvrt_cluster_etcd_stats_t s = member->stats;
    s.last_ok_age_ms = (kvrt_now_ns() - member->last_ok_ns) / 1000000u;
    pthread_mutex_unlock(&member->lock);
    *stats_out = s;
    return KVRT_OK;
}
