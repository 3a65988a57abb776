/*
 * etcd_client.c - etcd v3 over its JSON gateway: lease grant, keepalive and
 * revoke, put, and range over a prefix, with libcurl, cJSON and libsodium's
 * base64. etcd's gateway writes 64-bit integers as JSON strings.
 *
 * The server is trusted no more than a peer: answers are capped in size
 * (MAX_RESPONSE) and count, and every field is checked before use.
 */
#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <inttypes.h>
#include <pthread.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/etcd_client.h"

#define MAX_RESPONSE (8u << 20)
#define MAX_KEY 1024u

struct etcd_client {
    CURL *curl;
    struct curl_slist *headers;
    char endpoint[256];
    uint32_t timeout_ms;
    char *body;
    size_t body_len, body_cap;
    int truncated;
    char error[512];
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void) { curl_global_init(CURL_GLOBAL_DEFAULT); }

static int failf(etcd_client_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int failf(etcd_client_t *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->error, sizeof(c->error), fmt, ap);
    va_end(ap);
    return -1;
}

etcd_client_t *etcd_client_create(const char *endpoint, uint32_t timeout_ms)
{
    pthread_once(&curl_once, curl_init_once);
    etcd_client_t *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    snprintf(c->endpoint, sizeof(c->endpoint), "%s", endpoint);
    c->timeout_ms = timeout_ms;
    c->curl = curl_easy_init();
    c->headers = curl_slist_append(NULL, "Content-Type: application/json");
    if (!c->curl || !c->headers) {
        etcd_client_destroy(c);
        return NULL;
    }
    return c;
}

void etcd_client_destroy(etcd_client_t *c)
{
    if (!c)
        return;
    if (c->curl)
        curl_easy_cleanup(c->curl);
    curl_slist_free_all(c->headers);
    free(c->body);
    free(c);
}

const char *etcd_client_error(const etcd_client_t *c) { return c->error; }

static size_t on_data(char *data, size_t size, size_t nmemb, void *user)
{
    etcd_client_t *c = user;
    size_t n = size * nmemb;
    if (c->body_len + n + 1 > MAX_RESPONSE) {
        c->truncated = 1;
        return 0; /* curl aborts the transfer */
    }
    if (c->body_len + n + 1 > c->body_cap) {
        size_t cap = c->body_cap ? c->body_cap : 4096;
        while (cap < c->body_len + n + 1)
            cap *= 2;
        char *grown = realloc(c->body, cap);
        if (!grown)
            return 0;
        c->body = grown;
        c->body_cap = cap;
    }
    memcpy(c->body + c->body_len, data, n);
    c->body_len += n;
    c->body[c->body_len] = '\0';
    return n;
}

/* POSTs a JSON object to path; returns the parsed answer or NULL. */
static cJSON *post(etcd_client_t *c, const char *path, cJSON *request)
{
    char *text = cJSON_PrintUnformatted(request);
    cJSON_Delete(request);
    if (!text) {
        failf(c, "%s: out of memory", path);
        return NULL;
    }
    char url[320];
    snprintf(url, sizeof(url), "%s%s", c->endpoint, path);
    c->body_len = 0;
    c->truncated = 0;
    curl_easy_reset(c->curl);
    curl_easy_setopt(c->curl, CURLOPT_URL, url);
    curl_easy_setopt(c->curl, CURLOPT_POSTFIELDS, text);
    curl_easy_setopt(c->curl, CURLOPT_HTTPHEADER, c->headers);
    curl_easy_setopt(c->curl, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c->curl, CURLOPT_WRITEDATA, c);
    curl_easy_setopt(c->curl, CURLOPT_TIMEOUT_MS, (long)c->timeout_ms);
    curl_easy_setopt(c->curl, CURLOPT_CONNECTTIMEOUT_MS, (long)c->timeout_ms);
    curl_easy_setopt(c->curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c->curl, CURLOPT_PROTOCOLS_STR, "http,https");
    CURLcode rc = curl_easy_perform(c->curl);
    free(text);
    if (rc != CURLE_OK) {
        failf(c, "POST %s: %s%s", url, curl_easy_strerror(rc),
              c->truncated ? " (answer over 8 MiB)" : "");
        return NULL;
    }
    long http = 0;
    curl_easy_getinfo(c->curl, CURLINFO_RESPONSE_CODE, &http);
    if (http != 200) {
        failf(c, "POST %s: HTTP %ld: %.200s", url, http, c->body ? c->body : "");
        return NULL;
    }
    cJSON *answer = c->body ? cJSON_Parse(c->body) : NULL;
    if (!answer || !cJSON_IsObject(answer)) {
        cJSON_Delete(answer);
        failf(c, "POST %s: answer is not a JSON object", url);
        return NULL;
    }
    return answer;
}

/* etcd writes int64 as a JSON string (and omits zero values). */
static int64_t int64_field(const cJSON *obj, const char *name)
{
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(obj, name);
    if (cJSON_IsString(f))
        return strtoll(f->valuestring, NULL, 10);
    if (cJSON_IsNumber(f))
        return (int64_t)f->valuedouble;
    return 0;
}

static int add_b64(cJSON *obj, const char *name, const char *text)
{
    size_t len = strlen(text);
    size_t b64_len = sodium_base64_ENCODED_LEN(len, sodium_base64_VARIANT_ORIGINAL);
    char *b64 = malloc(b64_len);
    if (!b64)
        return -1;
    sodium_bin2base64(b64, b64_len, (const unsigned char *)text, len,
                      sodium_base64_VARIANT_ORIGINAL);
    cJSON *s = cJSON_AddStringToObject(obj, name, b64);
    free(b64);
    return s ? 0 : -1;
}

static char *from_b64(const char *b64)
{
    size_t len = strlen(b64);
    char *out = malloc(len + 1);
    size_t n = 0;
    if (!out || sodium_base642bin((unsigned char *)out, len, b64, len, NULL, &n, NULL,
                                  sodium_base64_VARIANT_ORIGINAL) != 0) {
        free(out);
        return NULL;
    }
    out[n] = '\0';
    return out;
}

static cJSON *request_with_id(const char *name, int64_t value)
{
    cJSON *r = cJSON_CreateObject();
    char text[32];
    snprintf(text, sizeof(text), "%" PRId64, value);
    if (r && !cJSON_AddStringToObject(r, name, text)) {
        cJSON_Delete(r);
        return NULL;
    }
    return r;
}

int etcd_lease_grant(etcd_client_t *c, uint32_t ttl_s, int64_t *lease_out)
{
    cJSON *r = request_with_id("TTL", ttl_s);
    if (!r)
        return failf(c, "out of memory");
    cJSON *a = post(c, "/v3/lease/grant", r);
    if (!a)
        return -1;
    int64_t id = int64_field(a, "ID");
    const cJSON *err = cJSON_GetObjectItemCaseSensitive(a, "error");
    cJSON_Delete(a);
    if (id == 0)
        return failf(c, "lease grant: no lease in the answer%s", cJSON_IsString(err) ? "" : "");
    *lease_out = id;
    return 0;
}

int etcd_lease_keepalive(etcd_client_t *c, int64_t lease, int64_t *ttl_out)
{
    cJSON *r = request_with_id("ID", lease);
    if (!r)
        return failf(c, "out of memory");
    cJSON *a = post(c, "/v3/lease/keepalive", r);
    if (!a)
        return -1;
    const cJSON *result = cJSON_GetObjectItemCaseSensitive(a, "result");
    if (!cJSON_IsObject(result)) {
        cJSON_Delete(a);
        return failf(c, "lease keepalive: no result in the answer");
    }
    *ttl_out = int64_field(result, "TTL");
    cJSON_Delete(a);
    return 0;
}

int etcd_lease_revoke(etcd_client_t *c, int64_t lease)
{
    cJSON *r = request_with_id("ID", lease);
    if (!r)
        return failf(c, "out of memory");
    cJSON *a = post(c, "/v3/lease/revoke", r);
    cJSON_Delete(a);
    return a ? 0 : -1;
}

int etcd_put(etcd_client_t *c, const char *key, const char *value, int64_t lease)
{
    cJSON *r = request_with_id("lease", lease);
    if (!r || add_b64(r, "key", key) != 0 || add_b64(r, "value", value) != 0) {
        cJSON_Delete(r);
        return failf(c, "out of memory");
    }
    cJSON *a = post(c, "/v3/kv/put", r);
    cJSON_Delete(a);
    return a ? 0 : -1;
}

void etcd_kvs_free(etcd_kv_t *kvs, uint32_t count)
{
    for (uint32_t i = 0; kvs && i < count; i++) {
        free(kvs[i].key);
        free(kvs[i].value);
    }
    free(kvs);
}

int etcd_range_prefix(etcd_client_t *c, const char *prefix, uint32_t max_kvs,
                      etcd_kv_t **kvs_out, uint32_t *count_out)
{
    size_t len = strlen(prefix);
    if (len == 0 || len >= MAX_KEY)
        return failf(c, "prefix of %zu bytes", len);
    /* range_end = the prefix with its last byte plus one: every key that
     * starts with the prefix. */
    char end[MAX_KEY];
    memcpy(end, prefix, len + 1);
    end[len - 1]++;
    cJSON *r = cJSON_CreateObject();
    if (!r || add_b64(r, "key", prefix) != 0 || add_b64(r, "range_end", end) != 0) {
        cJSON_Delete(r);
        return failf(c, "out of memory");
    }
    cJSON *a = post(c, "/v3/kv/range", r);
    if (!a)
        return -1;
    const cJSON *kvs = cJSON_GetObjectItemCaseSensitive(a, "kvs");
    uint32_t n = cJSON_IsArray(kvs) ? (uint32_t)cJSON_GetArraySize(kvs) : 0;
    if (n > max_kvs)
        n = max_kvs;
    etcd_kv_t *out = calloc(n ? n : 1, sizeof(*out));
    uint32_t got = 0;
    const cJSON *kv = NULL;
    int bad = out == NULL;
    cJSON_ArrayForEach(kv, kvs)
    {
        if (bad || got == n)
            break;
        const cJSON *k = cJSON_GetObjectItemCaseSensitive(kv, "key");
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(kv, "value");
        if (!cJSON_IsString(k) || !cJSON_IsString(v))
            continue;
        out[got].key = from_b64(k->valuestring);
        out[got].value = from_b64(v->valuestring);
        if (!out[got].key || !out[got].value) {
            free(out[got].key);
            free(out[got].value);
            continue; /* not base64: skip the entry */
        }
        got++;
    }
    cJSON_Delete(a);
    if (bad)
        return failf(c, "out of memory");
    *kvs_out = out;
    *count_out = got;
    return 0;
}
