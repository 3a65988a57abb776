/*
 * sidechannel.c - addresses, sockets with deadlines, framed messages and
 * the cluster-key handshake (see sidechannel.h for the protocol).
 */
#include "sidechannel.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/endian.h"
#include "tcp/frame_auth.h"

#define SC_MAGIC 0x4353564bu /* "KVSC" little-endian */
#define NONCE_BYTES 32

kvrt_status_t kvrt_xfer_addr_parse(const char *text, kvrt_xfer_addr_t *addr_out)
{
    if (!text || !addr_out)
        return KVRT_ERR_INVALID_ARG;
    char host[INET6_ADDRSTRLEN + 2];
    const char *colon = strrchr(text, ':');
    if (!colon || colon == text || (size_t)(colon - text) >= sizeof(host))
        return KVRT_ERR_INVALID_ARG;
    memcpy(host, text, (size_t)(colon - text));
    host[colon - text] = '\0';
    char *end = NULL;
    errno = 0;
    unsigned long port = strtoul(colon + 1, &end, 10);
    if (errno || end == colon + 1 || *end != '\0' || port > 65535)
        return KVRT_ERR_INVALID_ARG;

    kvrt_xfer_addr_t a;
    memset(&a, 0, sizeof(a));
    size_t hl = strlen(host);
    if (host[0] == '[') {
        if (hl < 3 || host[hl - 1] != ']')
            return KVRT_ERR_INVALID_ARG;
        host[hl - 1] = '\0';
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&a.ss;
        if (inet_pton(AF_INET6, host + 1, &s6->sin6_addr) != 1)
            return KVRT_ERR_INVALID_ARG;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
        a.len = sizeof(*s6);
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&a.ss;
        if (inet_pton(AF_INET, host, &s4->sin_addr) != 1)
            return KVRT_ERR_INVALID_ARG;
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)port);
        a.len = sizeof(*s4);
    }
    *addr_out = a;
    return KVRT_OK;
}

void kvrt_xfer_addr_format(const kvrt_xfer_addr_t *addr, char *buf, size_t bytes)
{
    char host[INET6_ADDRSTRLEN] = "?";
    unsigned port = 0;
    if (addr->ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&addr->ss;
        inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof(host));
        port = ntohs(s6->sin6_port);
        snprintf(buf, bytes, "[%s]:%u", host, port);
    } else {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)&addr->ss;
        inet_ntop(AF_INET, &s4->sin_addr, host, sizeof(host));
        port = ntohs(s4->sin_port);
        snprintf(buf, bytes, "%s:%u", host, port);
    }
}

/* Milliseconds left until deadline, at least 0, for poll(). */
static int ms_left(uint64_t deadline_ns)
{
    uint64_t now = kvrt_now_ns();
    if (now >= deadline_ns)
        return 0;
    uint64_t ms = (deadline_ns - now + 999999) / 1000000;
    return ms > 60000 ? 60000 : (int)ms;
}

static kvrt_status_t wait_fd(int fd, short events, uint64_t deadline_ns)
{
    for (;;) {
        int left = ms_left(deadline_ns);
        if (left == 0)
            return KVRT_ERR_TIMEOUT;
        struct pollfd p = {.fd = fd, .events = events};
        int n = poll(&p, 1, left);
        if (n > 0)
            return KVRT_OK;
        if (n < 0 && errno != EINTR)
            return KVRT_ERR_PEER_FAILED;
    }
}

kvrt_status_t kvrt_xfer_sc_dial(const kvrt_xfer_addr_t *addr, uint64_t deadline_ns,
                                int *fd_out)
{
    int fd = socket(addr->ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return KVRT_ERR_CONNECT;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    kvrt_status_t st = KVRT_OK;
    if (connect(fd, (const struct sockaddr *)&addr->ss, addr->len) != 0) {
        if (errno != EINPROGRESS) {
            st = KVRT_ERR_CONNECT;
        } else if (wait_fd(fd, POLLOUT, deadline_ns) != KVRT_OK) {
            st = KVRT_ERR_CONNECT;
        } else {
            int err = 0;
            socklen_t len = sizeof(err);
            if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0)
                st = KVRT_ERR_CONNECT;
        }
    }
    if (st != KVRT_OK) {
        close(fd);
        return st;
    }
    /* Back to blocking: the data path (io_uring) and the verbs exchange
     * both want plain blocking semantics; deadlines here use poll(). */
    int flags = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
    *fd_out = fd;
    return KVRT_OK;
}

kvrt_status_t kvrt_xfer_sc_listen(const kvrt_xfer_addr_t *addr,
                                  kvrt_xfer_addr_t *bound_out, int *fd_out)
{
    int fd = socket(addr->ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return KVRT_ERR_IO;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    kvrt_xfer_addr_t bound;
    memset(&bound, 0, sizeof(bound));
    bound.len = sizeof(bound.ss);
    if (bind(fd, (const struct sockaddr *)&addr->ss, addr->len) != 0 ||
        listen(fd, SOMAXCONN) != 0 ||
        getsockname(fd, (struct sockaddr *)&bound.ss, &bound.len) != 0) {
        close(fd);
        return KVRT_ERR_IO;
    }
    *bound_out = bound;
    *fd_out = fd;
    return KVRT_OK;
}

kvrt_status_t kvrt_xfer_sc_write_all(int fd, const void *buf, size_t bytes,
                                     uint64_t deadline_ns)
{
    const uint8_t *p = buf;
    while (bytes > 0) {
        kvrt_status_t st = wait_fd(fd, POLLOUT, deadline_ns);
        if (st != KVRT_OK)
            return st;
        ssize_t n = send(fd, p, bytes, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n <= 0)
            return KVRT_ERR_PEER_FAILED;
        p += n;
        bytes -= (size_t)n;
    }
    return KVRT_OK;
}

kvrt_status_t kvrt_xfer_sc_read_all(int fd, void *buf, size_t bytes,
                                    uint64_t deadline_ns)
{
    uint8_t *p = buf;
    while (bytes > 0) {
        kvrt_status_t st = wait_fd(fd, POLLIN, deadline_ns);
        if (st != KVRT_OK)
            return st;
        ssize_t n = recv(fd, p, bytes, MSG_DONTWAIT);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n <= 0)
            return KVRT_ERR_PEER_FAILED;
        p += n;
        bytes -= (size_t)n;
    }
    return KVRT_OK;
}

void kvrt_xfer_sc_header_encode(uint8_t hdr[KVRT_XFER_SC_HEADER_BYTES], uint16_t type,
                                uint32_t bytes)
{
    kvrt_store_le32(hdr, SC_MAGIC);
    kvrt_store_le32(hdr + 4, type);
    kvrt_store_le32(hdr + 8, bytes);
}

kvrt_status_t kvrt_xfer_sc_header_check(const uint8_t hdr[KVRT_XFER_SC_HEADER_BYTES],
                                        uint16_t type, uint32_t capacity, uint32_t *bytes_out)
{
    uint32_t bytes = kvrt_load_le32(hdr + 8);
    /* The type word carries a 16-bit type and 16 zero bits. */
    if (kvrt_load_le32(hdr) != SC_MAGIC || kvrt_load_le32(hdr + 4) != type ||
        bytes > capacity || bytes > KVRT_XFER_SC_PAYLOAD_MAX)
        return KVRT_ERR_PROTOCOL;
    *bytes_out = bytes;
    return KVRT_OK;
}

kvrt_status_t kvrt_xfer_sc_send(int fd, uint16_t type, const void *payload,
                                uint32_t bytes, uint64_t deadline_ns)
{
    if (bytes > KVRT_XFER_SC_PAYLOAD_MAX)
        return KVRT_ERR_INVALID_ARG;
    uint8_t frame[KVRT_XFER_SC_HEADER_BYTES + KVRT_XFER_SC_PAYLOAD_MAX];
    kvrt_xfer_sc_header_encode(frame, type, bytes);
    if (bytes)
        memcpy(frame + KVRT_XFER_SC_HEADER_BYTES, payload, bytes);
    return kvrt_xfer_sc_write_all(fd, frame, KVRT_XFER_SC_HEADER_BYTES + (size_t)bytes,
                                  deadline_ns);
}

kvrt_status_t kvrt_xfer_sc_recv(int fd, uint16_t type, void *payload,
                                uint32_t capacity, uint32_t *bytes_out,
                                uint64_t deadline_ns)
{
    uint8_t hdr[KVRT_XFER_SC_HEADER_BYTES];
    kvrt_status_t st = kvrt_xfer_sc_read_all(fd, hdr, sizeof(hdr), deadline_ns);
    if (st != KVRT_OK)
        return st;
    uint32_t bytes = 0;
    st = kvrt_xfer_sc_header_check(hdr, type, capacity, &bytes);
    if (st == KVRT_OK)
        st = kvrt_xfer_sc_read_all(fd, payload, bytes, deadline_ns);
    if (st == KVRT_OK)
        *bytes_out = bytes;
    return st;
}

kvrt_status_t kvrt_xfer_key_derive(const uint8_t *key, uint32_t bytes,
                                   kvrt_xfer_key_t *key_out)
{
    if (!key || bytes < KVRT_XFER_KEY_MIN || sodium_init() < 0)
        return KVRT_ERR_INVALID_ARG;
    static const uint8_t label[] = "kvrt-xfer-cluster-key-v1";
    crypto_generichash_state h;
    crypto_generichash_init(&h, NULL, 0, KVRT_XFER_KEY_BYTES);
    crypto_generichash_update(&h, label, sizeof(label));
    crypto_generichash_update(&h, key, bytes);
    crypto_generichash_final(&h, key_out->k, KVRT_XFER_KEY_BYTES);
    return KVRT_OK;
}

/* HMAC(K, label || a || b). */
static void handshake_mac(const kvrt_xfer_key_t *key, const char *label, const uint8_t *a,
                          size_t a_bytes, const uint8_t *b, size_t b_bytes,
                          uint8_t mac[crypto_auth_hmacsha256_BYTES])
{
    crypto_auth_hmacsha256_state s;
    crypto_auth_hmacsha256_init(&s, key->k, KVRT_XFER_KEY_BYTES);
    crypto_auth_hmacsha256_update(&s, (const uint8_t *)label, strlen(label));
    crypto_auth_hmacsha256_update(&s, a, a_bytes);
    if (b_bytes)
        crypto_auth_hmacsha256_update(&s, b, b_bytes);
    crypto_auth_hmacsha256_final(&s, mac);
}

/* A name from the wire, as safe to log and hand out: NUL-terminated, and
 * every byte outside printable ASCII (escape sequences, newlines that
 * would forge log lines, invalid UTF-8) replaced by '?'. */
static void name_from_wire(char *dst, const uint8_t *src)
{
    size_t n = strnlen((const char *)src, KVRT_XFER_NAME_MAX - 1);
    for (size_t i = 0; i < n; i++)
        dst[i] = src[i] >= 0x20 && src[i] < 0x7f ? (char)src[i] : '?';
    dst[n] = '\0';
}

enum {
    HELLO_BYTES = KVRT_XFER_SC_HELLO_BYTES,
    CHALLENGE_INSTANCE_AT = NONCE_BYTES + KVRT_XFER_NAME_MAX,
    CHALLENGE_SIGNED = CHALLENGE_INSTANCE_AT + 8,
    CHALLENGE_BYTES = KVRT_XFER_SC_CHALLENGE_BYTES,
    HASH_BYTES = 32
};
_Static_assert(HELLO_BYTES == 16 + KVRT_XFER_SESSION_BYTES + NONCE_BYTES + KVRT_XFER_NAME_MAX,
               "HELLO layout");
_Static_assert(CHALLENGE_BYTES == CHALLENGE_SIGNED + crypto_auth_hmacsha256_BYTES,
               "CHALLENGE layout");
_Static_assert(KVRT_XFER_SC_PROOF_BYTES == crypto_auth_hmacsha256_BYTES, "PROOF layout");

/* H(hello || challenge); challenge may be NULL. */
static void transcript(const uint8_t *hello, const uint8_t *challenge, uint8_t out[HASH_BYTES])
{
    crypto_generichash_state h;
    crypto_generichash_init(&h, NULL, 0, HASH_BYTES);
    crypto_generichash_update(&h, hello, HELLO_BYTES);
    if (challenge)
        crypto_generichash_update(&h, challenge, CHALLENGE_BYTES);
    crypto_generichash_final(&h, out, HASH_BYTES);
}

/* The socket's two frame keys from the whole transcript. */
static void session_keys(const kvrt_xfer_key_t *key, const uint8_t th[HASH_BYTES], bool client,
                         uint32_t protection, kvrt_xfer_sc_keys_t *out)
{
    static const uint8_t label[] = "kvrt-xfer-frames";
    uint8_t both[2 * KVRT_XFER_KEY_BYTES];
    crypto_generichash_state h;
    crypto_generichash_init(&h, key->k, KVRT_XFER_KEY_BYTES, sizeof(both));
    crypto_generichash_update(&h, label, sizeof(label));
    crypto_generichash_update(&h, th, HASH_BYTES);
    crypto_generichash_final(&h, both, sizeof(both));
    const uint8_t *c2s = both, *s2c = both + KVRT_XFER_KEY_BYTES;
    memcpy(out->tx, client ? c2s : s2c, KVRT_XFER_KEY_BYTES);
    memcpy(out->rx, client ? s2c : c2s, KVRT_XFER_KEY_BYTES);
    out->protection = protection;
    sodium_memzero(both, sizeof(both));
}

kvrt_status_t kvrt_xfer_sc_auth_client(int fd, const kvrt_xfer_key_t *key,
                                       const kvrt_xfer_hello_t *hello,
                                       char *server_name_out, uint64_t *server_instance_out,
                                       kvrt_xfer_sc_keys_t *keys_out, uint64_t deadline_ns)
{
    uint8_t msg[HELLO_BYTES];
    uint8_t *nonce_c = msg + 16 + KVRT_XFER_SESSION_BYTES;
    kvrt_store_le32(msg, hello->version);
    kvrt_store_le32(msg + 4, hello->backend);
    kvrt_store_le32(msg + 8, hello->conn_index);
    kvrt_store_le32(msg + 12, hello->protection);
    memcpy(msg + 16, hello->session, KVRT_XFER_SESSION_BYTES);
    randombytes_buf(nonce_c, NONCE_BYTES);
    memset(nonce_c + NONCE_BYTES, 0, KVRT_XFER_NAME_MAX);
    memcpy(nonce_c + NONCE_BYTES, hello->name, strnlen(hello->name, KVRT_XFER_NAME_MAX - 1));
    kvrt_status_t st = kvrt_xfer_sc_send(fd, KVRT_XFER_SC_HELLO, msg, sizeof(msg),
                                         deadline_ns);
    if (st != KVRT_OK)
        return st;

    uint8_t ch[CHALLENGE_BYTES];
    uint32_t got = 0;
    st = kvrt_xfer_sc_recv(fd, KVRT_XFER_SC_CHALLENGE, ch, sizeof(ch), &got, deadline_ns);
    if (st == KVRT_ERR_PROTOCOL || (st == KVRT_OK && got != sizeof(ch)))
        return KVRT_ERR_PROTOCOL;
    if (st != KVRT_OK)
        return st;
    uint8_t th[HASH_BYTES], expect[crypto_auth_hmacsha256_BYTES];
    transcript(msg, NULL, th);
    handshake_mac(key, "kvrt-xfer-srv", th, HASH_BYTES, ch, CHALLENGE_SIGNED, expect);
    if (crypto_verify_32(expect, ch + CHALLENGE_SIGNED) != 0)
        return KVRT_ERR_AUTH;

    uint8_t proof[crypto_auth_hmacsha256_BYTES];
    transcript(msg, ch, th);
    handshake_mac(key, "kvrt-xfer-cli", th, HASH_BYTES, NULL, 0, proof);
    st = kvrt_xfer_sc_send(fd, KVRT_XFER_SC_PROOF, proof, sizeof(proof), deadline_ns);
    if (st != KVRT_OK)
        return st;
    uint8_t result[4];
    st = kvrt_xfer_sc_recv(fd, KVRT_XFER_SC_RESULT, result, sizeof(result), &got,
                           deadline_ns);
    if (st != KVRT_OK)
        return st;
    if (got != 4)
        return KVRT_ERR_PROTOCOL;
    kvrt_status_t remote = (kvrt_status_t)(int32_t)kvrt_load_le32(result);
    if (remote != KVRT_OK)
        return remote == KVRT_ERR_AUTH || remote == KVRT_ERR_BUSY ? remote : KVRT_ERR_PROTOCOL;
    if (server_name_out)
        name_from_wire(server_name_out, ch + NONCE_BYTES);
    if (server_instance_out)
        *server_instance_out = kvrt_load_le64(ch + CHALLENGE_INSTANCE_AT);
    if (keys_out)
        session_keys(key, th, true, hello->protection, keys_out);
    return KVRT_OK;
}

kvrt_status_t kvrt_xfer_sc_server_hello(kvrt_xfer_sc_server_t *s, const kvrt_xfer_key_t *key,
                                        const char *server_name, uint64_t server_instance,
                                        const uint8_t *hello, uint32_t bytes)
{
    if (bytes != HELLO_BYTES)
        return KVRT_ERR_PROTOCOL;
    memcpy(s->hello, hello, HELLO_BYTES);
    kvrt_xfer_hello_t *h = &s->parsed;
    memset(h, 0, sizeof(*h));
    h->version = kvrt_load_le32(hello);
    h->backend = kvrt_load_le32(hello + 4);
    h->conn_index = kvrt_load_le32(hello + 8);
    h->protection = kvrt_load_le32(hello + 12);
    memcpy(h->session, hello + 16, KVRT_XFER_SESSION_BYTES);
    const uint8_t *nonce_c = hello + 16 + KVRT_XFER_SESSION_BYTES;
    name_from_wire(h->name, nonce_c + NONCE_BYTES);

    uint8_t *ch = s->challenge;
    randombytes_buf(ch, NONCE_BYTES);
    memset(ch + NONCE_BYTES, 0, KVRT_XFER_NAME_MAX);
    memcpy(ch + NONCE_BYTES, server_name, strnlen(server_name, KVRT_XFER_NAME_MAX - 1));
    kvrt_store_le64(ch + CHALLENGE_INSTANCE_AT, server_instance);
    uint8_t th[HASH_BYTES];
    transcript(s->hello, NULL, th);
    handshake_mac(key, "kvrt-xfer-srv", th, HASH_BYTES, ch, CHALLENGE_SIGNED,
                  ch + CHALLENGE_SIGNED);
    return KVRT_OK;
}

kvrt_status_t kvrt_xfer_sc_server_proof(kvrt_xfer_sc_server_t *s, const kvrt_xfer_key_t *key,
                                        uint32_t backend, uint32_t protection,
                                        kvrt_xfer_sc_admit_fn admit, void *admit_arg,
                                        const uint8_t *proof, uint32_t bytes,
                                        kvrt_xfer_sc_keys_t *keys_out)
{
    uint8_t th[HASH_BYTES], expect[crypto_auth_hmacsha256_BYTES];
    transcript(s->hello, s->challenge, th);
    handshake_mac(key, "kvrt-xfer-cli", th, HASH_BYTES, NULL, 0, expect);
    const kvrt_xfer_hello_t *h = &s->parsed;
    kvrt_status_t verdict = KVRT_OK;
    if (bytes != sizeof(expect) || crypto_verify_32(expect, proof) != 0)
        verdict = KVRT_ERR_AUTH;
    else if (h->version != KVRT_XFER_SC_VERSION || h->backend != backend ||
             kvrt_xfer_frame_mode(h->protection) != protection ||
             !kvrt_xfer_frame_protection_known(h->protection))
        verdict = KVRT_ERR_PROTOCOL; /* the dialer's suite is taken when known */
    else if (admit)
        verdict = admit(admit_arg, h);
    if (verdict == KVRT_OK && keys_out)
        session_keys(key, th, false, h->protection, keys_out);
    return verdict;
}

enum { QP_INFO_BYTES = 32, QP_INFO_MAC_BYTES = KVRT_XFER_SC_MAC_BYTES };

static void qp_encode(const kvrt_xfer_sc_qp_info_t *q, uint8_t *p)
{
    kvrt_store_le32(p, q->qp_num);
    kvrt_store_le32(p + 4, q->psn & 0xffffffu);
    memcpy(p + 8, q->gid, 16);
    kvrt_store_le16(p + 24, q->lid);
    p[26] = q->mtu;
    p[27] = q->port;
    kvrt_store_le32(p + 28, 0);
}

static bool qp_decode(const uint8_t *p, kvrt_xfer_sc_qp_info_t *q)
{
    memset(q, 0, sizeof(*q));
    q->qp_num = kvrt_load_le32(p);
    q->psn = kvrt_load_le32(p + 4);
    memcpy(q->gid, p + 8, 16);
    q->lid = kvrt_load_le16(p + 24);
    q->mtu = p[26];
    q->port = p[27];
    return q->psn <= 0xffffffu && q->mtu <= 5 && kvrt_load_le32(p + 28) == 0;
}

/* Keyed BLAKE2b-256 over label (with its NUL), head and body. */
static void keyed_mac(const uint8_t key[KVRT_XFER_KEY_BYTES], const char *label,
                      const uint8_t *head, size_t head_bytes, const uint8_t *body,
                      size_t body_bytes, uint8_t mac[KVRT_XFER_SC_MAC_BYTES])
{
    crypto_generichash_state h;
    crypto_generichash_init(&h, key, KVRT_XFER_KEY_BYTES, KVRT_XFER_SC_MAC_BYTES);
    crypto_generichash_update(&h, (const uint8_t *)label, strlen(label) + 1);
    if (head_bytes)
        crypto_generichash_update(&h, head, head_bytes);
    if (body_bytes)
        crypto_generichash_update(&h, body, body_bytes);
    crypto_generichash_final(&h, mac, KVRT_XFER_SC_MAC_BYTES);
}

void kvrt_xfer_sc_frame_mac(const uint8_t key[KVRT_XFER_KEY_BYTES], const char *label,
                            const uint8_t *payload, uint32_t bytes,
                            uint8_t mac[KVRT_XFER_SC_MAC_BYTES])
{
    keyed_mac(key, label, payload, bytes, NULL, 0, mac);
}

bool kvrt_xfer_sc_frame_mac_ok(const uint8_t key[KVRT_XFER_KEY_BYTES], const char *label,
                               const uint8_t *payload, uint32_t bytes,
                               const uint8_t mac[KVRT_XFER_SC_MAC_BYTES])
{
    uint8_t expect[KVRT_XFER_SC_MAC_BYTES];
    keyed_mac(key, label, payload, bytes, NULL, 0, expect);
    return crypto_verify_32(expect, mac) == 0;
}

/* The MAC a QP_INFO frame ends with: the sender's direction key of this
 * socket over a label, the count and the entries. */
static void qp_info_mac(const uint8_t key[KVRT_XFER_KEY_BYTES], const uint8_t *entries,
                        uint32_t count, uint8_t mac[QP_INFO_MAC_BYTES])
{
    uint8_t n[4];
    kvrt_store_le32(n, count);
    keyed_mac(key, "kvrt-xfer-qp-info", n, sizeof(n), entries, (size_t)count * QP_INFO_BYTES,
              mac);
}

kvrt_status_t kvrt_xfer_sc_exchange_qp_info(int fd, bool dialer, const kvrt_xfer_sc_keys_t *keys,
                                            const kvrt_xfer_sc_qp_info_t *local,
                                            kvrt_xfer_sc_qp_info_t *remote,
                                            uint32_t count, uint64_t deadline_ns)
{
    if (count == 0 || count > KVRT_XFER_SC_QP_MAX || !keys || !local || !remote)
        return KVRT_ERR_INVALID_ARG;
    uint8_t out[KVRT_XFER_SC_QP_MAX * QP_INFO_BYTES + QP_INFO_MAC_BYTES];
    uint8_t in[KVRT_XFER_SC_QP_MAX * QP_INFO_BYTES + QP_INFO_MAC_BYTES];
    for (uint32_t i = 0; i < count; i++)
        qp_encode(&local[i], out + i * QP_INFO_BYTES);
    uint32_t bytes = count * QP_INFO_BYTES, got = 0;
    qp_info_mac(keys->tx, out, count, out + bytes);
    kvrt_status_t st;
    if (dialer) {
        st = kvrt_xfer_sc_send(fd, KVRT_XFER_SC_QP_INFO, out, bytes + QP_INFO_MAC_BYTES,
                               deadline_ns);
        if (st == KVRT_OK)
            st = kvrt_xfer_sc_recv(fd, KVRT_XFER_SC_QP_INFO, in, sizeof(in), &got,
                                   deadline_ns);
    } else {
        st = kvrt_xfer_sc_recv(fd, KVRT_XFER_SC_QP_INFO, in, sizeof(in), &got,
                               deadline_ns);
        if (st == KVRT_OK)
            st = kvrt_xfer_sc_send(fd, KVRT_XFER_SC_QP_INFO, out, bytes + QP_INFO_MAC_BYTES,
                                   deadline_ns);
    }
    if (st != KVRT_OK)
        return st;
    if (got != bytes + QP_INFO_MAC_BYTES)
        return KVRT_ERR_PROTOCOL;
    uint8_t expect[QP_INFO_MAC_BYTES];
    qp_info_mac(keys->rx, in, count, expect);
    if (crypto_verify_32(expect, in + bytes) != 0)
        return KVRT_ERR_AUTH;
    for (uint32_t i = 0; i < count; i++)
        if (!qp_decode(in + i * QP_INFO_BYTES, &remote[i]))
            return KVRT_ERR_PROTOCOL;
    return KVRT_OK;
}
