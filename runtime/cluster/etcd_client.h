/*
 * etcd_client.h - the few etcd v3 calls membership needs, over etcd's
 * JSON gateway (POST /v3/...; keys and values base64) with libcurl.
 * One client per thread. Internal.
 */
#ifndef KVRT_CLUSTER_ETCD_CLIENT_H
#define KVRT_CLUSTER_ETCD_CLIENT_H

#include <stddef.h>
#include <stdint.h>

typedef struct etcd_client etcd_client_t;

/* One key-value of a range answer; key and value are NUL-terminated. */
typedef struct etcd_kv {
    char *key;
    char *value;
} etcd_kv_t;

/* NULL without memory. endpoint is copied. */
etcd_client_t *etcd_client_create(const char *endpoint, uint32_t timeout_ms);
void etcd_client_destroy(etcd_client_t *c);
/* The text of the last failure ("connect to http://...: Couldn't connect"). */
const char *etcd_client_error(const etcd_client_t *c);

/* Each returns 0, or -1 with etcd_client_error() set. */
int etcd_lease_grant(etcd_client_t *c, uint32_t ttl_s, int64_t *lease_out);
/* *ttl_out is the remaining TTL, 0 when the lease has expired. */
int etcd_lease_keepalive(etcd_client_t *c, int64_t lease, int64_t *ttl_out);
int etcd_lease_revoke(etcd_client_t *c, int64_t lease);
int etcd_put(etcd_client_t *c, const char *key, const char *value, int64_t lease);
/* Every key starting with prefix; *kvs_out is malloc'ed, free with
 * etcd_kvs_free. At most max_kvs are kept. */
int etcd_range_prefix(etcd_client_t *c, const char *prefix, uint32_t max_kvs,
                      etcd_kv_t **kvs_out, uint32_t *count_out);
void etcd_kvs_free(etcd_kv_t *kvs, uint32_t count);

#endif /* KVRT_CLUSTER_ETCD_CLIENT_H */
