/*
 * test_xfer_raw.h - a hand-driven TCP peer for the transfer engine's
 * security tests: it holds the cluster key, runs the handshake and seals
 * and opens frames itself, so a test can send frames no kvrt agent would.
 */
#ifndef KVRT_TEST_XFER_RAW_H
#define KVRT_TEST_XFER_RAW_H

#include <poll.h>
#include <pthread.h>
#include <sodium.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/endian.h"
#include "test_xfer_util.h"
#include "xfer/sidechannel.h"
#include "xfer/tcp/frame_auth.h"
#include "xfer/tcp/wire.h"

static inline uint64_t txr_deadline(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec + 3000000000ull;
}

/* The agent instance the raw listener (txr_accept_handshake) states. */
#define TXR_INSTANCE 0x7761722d7472766bull

/* Imports region r (of the dialing agent itself) into `peer`, a raw
 * listener, as if that listener had registered it: a stand-in remote for
 * tests whose listener ignores what it is sent. The descriptor's instance
 * (bytes 24..31) is the raw listener's, or no post would pass. */
static inline kvrt_xfer_remote_t *txr_import(kvrt_ctx_t *ctx, kvrt_xfer_peer_t *peer,
                                             const kvrt_xfer_region_t *r)
{
    uint8_t desc[KVRT_XFER_DESCRIPTOR_MAX];
    size_t len = 0;
    ASSERT_OK(ctx, kvrt_xfer_region_descriptor(r, desc, sizeof(desc), &len));
    kvrt_store_le64(desc + 24, TXR_INSTANCE);
    kvrt_xfer_remote_t *rem = NULL;
    ASSERT_OK(ctx, kvrt_xfer_import(peer, desc, len, &rem));
    return rem;
}

typedef struct txr {
    int fd;
    kvrt_xfer_frame_key_t tx, rx;
    uint32_t protection;       /* what frames are sealed with (frame_auth.h) */
} txr_t;

/* The handshake on a connected socket `fd`, offering protection word
 * `offer` (mode | suite << KVRT_XFER_FRAME_SUITE_SHIFT); KVRT_OK or the
 * handshake's status. Frames are then sealed as offered; txr_clear frees
 * the keys. */
static inline kvrt_status_t txr_handshake_offer(int fd, const char *name, uint32_t offer,
                                                txr_t *out)
{
    txr_t r = {.fd = fd, .protection = offer};
    kvrt_xfer_key_t key;
    cr_assert_eq(kvrt_xfer_key_derive(test_xfer_key, 32, &key), KVRT_OK);
    kvrt_xfer_hello_t hello = {.version = KVRT_XFER_SC_VERSION, .backend = KVRT_XFER_BACKEND_TCP,
                               .protection = offer};
    snprintf(hello.name, sizeof(hello.name), "%s", name);
    randombytes_buf(hello.session, sizeof(hello.session));
    kvrt_xfer_sc_keys_t keys;
    kvrt_status_t st = kvrt_xfer_sc_auth_client(r.fd, &key, &hello, NULL, NULL, &keys,
                                                 txr_deadline());
    if (st != KVRT_OK)
        return st;
    cr_assert_eq(keys.protection, offer);
    cr_assert(kvrt_xfer_frame_key_init(&r.tx, offer, keys.tx));
    cr_assert(kvrt_xfer_frame_key_init(&r.rx, offer, keys.rx));
    *out = r;
    return KVRT_OK;
}

static inline void txr_clear(txr_t *r)
{
    kvrt_xfer_frame_key_clear(&r->tx);
    kvrt_xfer_frame_key_clear(&r->rx);
}

/* The handshake on a connected socket `fd` (MAC frames, ChaCha20/Poly1305:
 * the suite every kvrt listener speaks, and no key to clear). */
static inline txr_t txr_handshake(int fd, const char *name)
{
    txr_t r;
    cr_assert_eq(txr_handshake_offer(fd, name, KVRT_XFER_PROTECT_MAC, &r), KVRT_OK);
    return r;
}

/* The listening side of the handshake on an accepted socket `fd`, blocking
 * (TCP backend, MAC frames), the way the agent's accept loop answers:
 * HELLO -> CHALLENGE, PROOF -> RESULT. Returns the verdict it sent. */
static inline kvrt_status_t txr_accept_handshake(int fd, const char *name,
                                                 kvrt_xfer_sc_keys_t *keys_out)
{
    kvrt_xfer_key_t key;
    cr_assert_eq(kvrt_xfer_key_derive(test_xfer_key, 32, &key), KVRT_OK);
    kvrt_xfer_sc_server_t s;
    uint8_t hello[KVRT_XFER_SC_HELLO_BYTES], proof[KVRT_XFER_SC_PROOF_BYTES];
    uint32_t got = 0;
    uint64_t deadline = txr_deadline();
    kvrt_status_t st = kvrt_xfer_sc_recv(fd, KVRT_XFER_SC_HELLO, hello, sizeof(hello), &got,
                                         deadline);
    if (st == KVRT_OK)
        st = kvrt_xfer_sc_server_hello(&s, &key, name, TXR_INSTANCE, hello, got);
    if (st == KVRT_OK)
        st = kvrt_xfer_sc_send(fd, KVRT_XFER_SC_CHALLENGE, s.challenge, sizeof(s.challenge),
                               deadline);
    if (st == KVRT_OK)
        st = kvrt_xfer_sc_recv(fd, KVRT_XFER_SC_PROOF, proof, sizeof(proof), &got, deadline);
    if (st != KVRT_OK)
        return st;
    kvrt_status_t verdict = kvrt_xfer_sc_server_proof(&s, &key, KVRT_XFER_BACKEND_TCP,
                                                      KVRT_XFER_PROTECT_MAC, NULL, NULL, proof,
                                                      got, keys_out);
    uint8_t result[KVRT_XFER_SC_RESULT_BYTES];
    kvrt_store_le32(result, (uint32_t)(int32_t)verdict);
    st = kvrt_xfer_sc_send(fd, KVRT_XFER_SC_RESULT, result, sizeof(result), deadline);
    return verdict != KVRT_OK ? verdict : st;
}

/* An authenticated raw session to the agent at `address` (MAC frames). */
static inline txr_t txr_connect(const char *address, const char *name)
{
    kvrt_xfer_addr_t addr;
    cr_assert_eq(kvrt_xfer_addr_parse(address, &addr), KVRT_OK);
    int fd = -1;
    cr_assert_eq(kvrt_xfer_sc_dial(&addr, txr_deadline(), &fd), KVRT_OK);
    return txr_handshake(fd, name);
}

/* Sends one sealed frame. */
static inline void txr_send(txr_t *r, kvrt_xfer_wire_header_t h, const void *payload)
{
    uint8_t hdr[KVRT_XFER_WIRE_HEADER_BYTES], tag[KVRT_XFER_FRAME_TAG_BYTES];
    kvrt_xfer_wire_encode(&h, hdr);
    uint64_t n = payload ? h.length : 0;
    kvrt_xfer_frame_seal(&r->tx, r->protection, hdr, payload, NULL, n, tag);
    cr_assert_eq(kvrt_xfer_sc_write_all(r->fd, hdr, sizeof(hdr), txr_deadline()), KVRT_OK);
    if (n)
        cr_assert_eq(kvrt_xfer_sc_write_all(r->fd, payload, n, txr_deadline()), KVRT_OK);
    cr_assert_eq(kvrt_xfer_sc_write_all(r->fd, tag, sizeof(tag), txr_deadline()), KVRT_OK);
}

/* Receives one frame and checks that it is authentic. */
static inline kvrt_xfer_wire_header_t txr_recv(txr_t *r, void *payload, size_t capacity)
{
    uint8_t hdr[KVRT_XFER_WIRE_HEADER_BYTES], tag[KVRT_XFER_FRAME_TAG_BYTES];
    cr_assert_eq(kvrt_xfer_sc_read_all(r->fd, hdr, sizeof(hdr), txr_deadline()), KVRT_OK);
    kvrt_xfer_wire_header_t h;
    cr_assert_eq(kvrt_xfer_wire_parse(hdr, sizeof(hdr), &h), KVRT_OK);
    uint64_t n = kvrt_xfer_wire_payload(&h);
    cr_assert_leq(n, capacity);
    if (n)
        cr_assert_eq(kvrt_xfer_sc_read_all(r->fd, payload, n, txr_deadline()), KVRT_OK);
    cr_assert_eq(kvrt_xfer_sc_read_all(r->fd, tag, sizeof(tag), txr_deadline()), KVRT_OK);
    cr_assert(kvrt_xfer_frame_open(&r->rx, r->protection, hdr, payload, n, tag),
              "a frame from the agent failed authentication");
    return h;
}

/* A raw listener on a thread of its own. Of the connections it accepts,
 * every `every`-th one from the first (1: all of them) gets the listening
 * side of the handshake and is then held, never read or answered; the
 * others are closed at once. It stops accepting after TXR_HOLDER_MAX. */
#define TXR_HOLDER_MAX 64
typedef struct txr_holder {
    int listen_fd;
    char address[96];
    uint32_t every;
    pthread_t thread;
    atomic_bool stop;
    atomic_uint handshakes; /* completed, so held */
    uint32_t accepted;
    int held[TXR_HOLDER_MAX];
} txr_holder_t;

static inline void *txr_holder_main(void *arg)
{
    txr_holder_t *h = arg;
    while (!atomic_load(&h->stop) && h->accepted < TXR_HOLDER_MAX) {
        struct pollfd p = {.fd = h->listen_fd, .events = POLLIN};
        if (poll(&p, 1, 20) <= 0)
            continue;
        int fd = accept(h->listen_fd, NULL, NULL);
        if (fd < 0)
            continue;
        kvrt_xfer_sc_keys_t keys;
        unsigned n = atomic_load(&h->handshakes);
        if (h->accepted++ % h->every == 0 && txr_accept_handshake(fd, "raw", &keys) == KVRT_OK) {
            h->held[n] = fd;
            atomic_store(&h->handshakes, n + 1);
        } else {
            close(fd);
        }
    }
    return NULL;
}

/* Starts a holder on `address` ("127.0.0.1:0" for any port; an address an
 * agent just left is retried for up to 2 s); h->address is where it
 * listens. */
static inline void txr_holder_start(txr_holder_t *h, const char *address, uint32_t every)
{
    memset(h, 0, sizeof(*h));
    h->every = every;
    kvrt_xfer_addr_t addr, bound;
    cr_assert_eq(kvrt_xfer_addr_parse(address, &addr), KVRT_OK);
    h->listen_fd = -1;
    for (int i = 0; i < 200 && kvrt_xfer_sc_listen(&addr, &bound, &h->listen_fd) != KVRT_OK;
         i++) {
        struct timespec ts = {0, 10000000};
        nanosleep(&ts, NULL);
    }
    cr_assert_geq(h->listen_fd, 0, "cannot listen on %s", address);
    kvrt_xfer_addr_format(&bound, h->address, sizeof(h->address));
    cr_assert_eq(pthread_create(&h->thread, NULL, txr_holder_main, h), 0);
}

static inline void txr_holder_stop(txr_holder_t *h)
{
    atomic_store(&h->stop, true);
    pthread_join(h->thread, NULL);
    for (unsigned i = 0; i < atomic_load(&h->handshakes); i++)
        close(h->held[i]);
    close(h->listen_fd);
}

#endif /* KVRT_TEST_XFER_RAW_H */
