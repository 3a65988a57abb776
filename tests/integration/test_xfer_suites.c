/*
 * test_xfer_suites.c - frame suites (tcp/frame_auth.h). The dialing agent
 * offers the suite its CPU runs fastest (or KVRT_XFER_FRAME_SUITE's), the
 * listener takes any suite it knows and refuses any other, and agents move
 * data correctly in every mode and suite. A frame sealed with another
 * suite than the one agreed is not authentic: the connection closes and
 * nothing lands in registered memory.
 */
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "test_xfer_flood.h"
#include "test_xfer_raw.h"

#define SUITE_AES_MAC (KVRT_XFER_PROTECT_MAC | KVRT_XFER_SUITE_AES << KVRT_XFER_FRAME_SUITE_SHIFT)

/* KVRT_XFER_FRAME_SUITE for the next dial ("" unsets it). Only the test's
 * thread dials here, and no agent reconnects while it is changed. */
static void force_suite(const char *name)
{
    if (*name)
        cr_assert_eq(setenv("KVRT_XFER_FRAME_SUITE", name, 1), 0);
    else
        cr_assert_eq(unsetenv("KVRT_XFER_FRAME_SUITE"), 0);
}

static kvrt_xfer_agent_t *agent_mode(kvrt_ctx_t *ctx, kvrt_xfer_protection_t mode, uint32_t socks)
{
    kvrt_xfer_agent_params_t p = {
        .field_mask = KVRT_XFER_AGENT_PARAM_BACKEND | KVRT_XFER_AGENT_PARAM_TIMEOUT |
                      KVRT_XFER_AGENT_PARAM_PROTECTION | KVRT_XFER_AGENT_PARAM_CONNECTIONS,
        .cluster_key = test_xfer_key, .cluster_key_bytes = 32,
        .backend = KVRT_XFER_BACKEND_TCP, .default_timeout_ms = 5000,
        .frame_protection = mode, .connections_per_peer = socks};
    kvrt_xfer_agent_t *a = NULL;
    ASSERT_OK(ctx, kvrt_xfer_agent_create(ctx, &p, &a));
    return a;
}

/* WRITE then READ back BYTES - 1000 bytes (several frames, not a multiple
 * of one) between two agents, each mode and suite. */
static void move_data(kvrt_xfer_protection_t mode, const char *suite)
{
    enum { BYTES = 3 << 20 };
    kvrt_ctx_t *ctx = txu_ctx();
    kvrt_xfer_agent_t *a = agent_mode(ctx, mode, 4), *b = agent_mode(ctx, mode, 4);
    uint8_t *src = aligned_alloc(4096, BYTES), *dst = aligned_alloc(4096, BYTES),
            *back = aligned_alloc(4096, BYTES);
    txu_fill(src, BYTES, 5);
    memset(dst, 0, BYTES);
    memset(back, 0, BYTES);
    kvrt_xfer_region_t *ls = txu_register(ctx, a, src, BYTES, 0);
    kvrt_xfer_region_t *lb = txu_register(ctx, a, back, BYTES, 0);
    kvrt_xfer_region_t *rd = txu_register(ctx, b, dst, BYTES,
                                          KVRT_XFER_REMOTE_READ | KVRT_XFER_REMOTE_WRITE);
    force_suite(suite);
    kvrt_xfer_peer_t *peer = txu_connect(ctx, a, b);
    force_suite("");
    kvrt_xfer_remote_t *rem = txu_import(ctx, peer, rd);
    kvrt_xfer_op_t op = {.opcode = KVRT_XFER_WRITE, .local = ls, .remote = rem,
                         .local_offset = 100, .remote_offset = 7, .length = BYTES - 1000};
    kvrt_xfer_request_t *req = NULL;
    ASSERT_OK(ctx, kvrt_xfer_post(peer, &op, 1, NULL, &req));
    ASSERT_STATUS(KVRT_OK, kvrt_xfer_request_wait(req, 10000));
    ASSERT_OK(ctx, kvrt_xfer_request_release(req));
    cr_assert(memcmp(dst + 7, src + 100, BYTES - 1000) == 0, "mode %d suite %s: write", mode,
              suite);
    cr_assert_eq(dst[6], 0, "nothing before the written range");
    op.opcode = KVRT_XFER_READ;
    op.local = lb;
    ASSERT_OK(ctx, kvrt_xfer_post(peer, &op, 1, NULL, &req));
    ASSERT_STATUS(KVRT_OK, kvrt_xfer_request_wait(req, 10000));
    ASSERT_OK(ctx, kvrt_xfer_request_release(req));
    cr_assert(memcmp(back + 100, dst + 7, BYTES - 1000) == 0, "mode %d suite %s: read", mode,
              suite);
    ASSERT_OK(ctx, kvrt_xfer_remote_release(rem));
    ASSERT_OK(ctx, kvrt_xfer_agent_destroy(a));
    ASSERT_OK(ctx, kvrt_xfer_agent_destroy(b));
    kvrt_ctx_destroy(ctx);
    free(src);
    free(dst);
    free(back);
}

Test(xfer_suites, every_mode_and_suite_moves_data)
{
    const char *suites[] = {"chacha", "aes", ""};
    for (int mode = KVRT_XFER_PROTECT_MAC; mode <= KVRT_XFER_PROTECT_AEAD; mode++)
        for (size_t i = 0; i < sizeof(suites) / sizeof(suites[0]); i++)
            move_data((kvrt_xfer_protection_t)mode, suites[i]);
}

/* One listening socket that runs the listening side of one handshake and
 * records the protection word the dialer offered. */
typedef struct listener {
    int fd;
    char address[96];
    pthread_t thread;
    kvrt_status_t verdict;
    uint32_t offered;
} listener_t;

static void *listener_main(void *arg)
{
    listener_t *l = arg;
    l->verdict = KVRT_ERR_TIMEOUT;
    struct pollfd p = {.fd = l->fd, .events = POLLIN};
    if (poll(&p, 1, 5000) <= 0)
        return NULL;
    int fd = accept(l->fd, NULL, NULL);
    if (fd < 0)
        return NULL;
    kvrt_xfer_sc_keys_t keys = {0};
    l->verdict = txr_accept_handshake(fd, "listener", &keys);
    l->offered = keys.protection;
    /* Held until the dialer gives up on it. */
    txf_closed_by_agent(fd, 5000);
    close(fd);
    return NULL;
}

static uint32_t offered_by_agent(const char *suite)
{
    listener_t l = {0};
    kvrt_xfer_addr_t any, bound;
    cr_assert_eq(kvrt_xfer_addr_parse("127.0.0.1:0", &any), KVRT_OK);
    cr_assert_eq(kvrt_xfer_sc_listen(&any, &bound, &l.fd), KVRT_OK);
    kvrt_xfer_addr_format(&bound, l.address, sizeof(l.address));
    cr_assert_eq(pthread_create(&l.thread, NULL, listener_main, &l), 0);

    kvrt_ctx_t *ctx = txu_ctx();
    kvrt_xfer_agent_t *a = agent_mode(ctx, KVRT_XFER_PROTECT_MAC, 1);
    force_suite(suite);
    kvrt_xfer_peer_t *peer = NULL;
    ASSERT_OK(ctx, kvrt_xfer_connect(a, l.address, 5000, &peer));
    force_suite("");
    ASSERT_OK(ctx, kvrt_xfer_disconnect(peer));
    ASSERT_OK(ctx, kvrt_xfer_agent_destroy(a));
    kvrt_ctx_destroy(ctx);
    pthread_join(l.thread, NULL);
    close(l.fd);
    cr_assert_eq(l.verdict, KVRT_OK);
    cr_assert_eq(kvrt_xfer_frame_mode(l.offered), KVRT_XFER_PROTECT_MAC);
    return kvrt_xfer_frame_suite(l.offered);
}

Test(xfer_suites, the_dialer_offers_its_suite)
{
    cr_assert_eq(offered_by_agent("chacha"), KVRT_XFER_SUITE_CHACHA);
    cr_assert_eq(offered_by_agent("aes"), KVRT_XFER_SUITE_AES);
    uint32_t cpu = sodium_runtime_has_aesni() && sodium_runtime_has_pclmul()
                       ? KVRT_XFER_SUITE_AES
                       : KVRT_XFER_SUITE_CHACHA;
    cr_assert_eq(offered_by_agent(""), cpu, "without the variable the CPU decides");
}

/* The victim's whole region as its agent serves it to a READ (the test
 * never reads memory the agent's threads write; the socket orders it). */
static void read_region(txf_victim_t *v, uint32_t offer, uint8_t *out, uint32_t bytes);

/* A raw client's session to victim v with protection word `offer`. */
static kvrt_status_t raw_offer(txf_victim_t *v, uint32_t offer, txr_t *r)
{
    char text[96];
    ASSERT_OK(v->ctx, kvrt_xfer_agent_address(v->agent, text, sizeof(text)));
    kvrt_xfer_addr_t addr;
    cr_assert_eq(kvrt_xfer_addr_parse(text, &addr), KVRT_OK);
    int fd = -1;
    cr_assert_eq(kvrt_xfer_sc_dial(&addr, txr_deadline(), &fd), KVRT_OK);
    kvrt_status_t st = txr_handshake_offer(fd, "raw", offer, r);
    if (st != KVRT_OK)
        close(fd);
    return st;
}

static void read_region(txf_victim_t *v, uint32_t offer, uint8_t *out, uint32_t bytes)
{
    txr_t r;
    ASSERT_STATUS(KVRT_OK, raw_offer(v, offer, &r));
    kvrt_xfer_wire_header_t h = {.type = KVRT_XFER_WIRE_READ_REQ,
                                 .region = txu_region_id(v->ctx, v->rw), .tag = 9,
                                 .length = bytes};
    txr_send(&r, h, NULL);
    kvrt_xfer_wire_header_t resp = txr_recv(&r, out, bytes);
    cr_assert_eq(resp.type, KVRT_XFER_WIRE_READ_RESP);
    cr_assert_eq(resp.status, 0);
    cr_assert_eq(resp.length, bytes);
    close(r.fd);
    txr_clear(&r);
}

Test(xfer_suites, the_listener_takes_a_known_suite_and_holds_to_it)
{
    enum { BYTES = 65536 };
    static uint8_t expect[BYTES], seen[BYTES];
    txf_victim_t v;
    txf_victim_up(&v, (kvrt_xfer_agent_params_t){0}, BYTES);
    memcpy(expect, v.mem, BYTES); /* before any agent thread touches it */
    uint32_t id = txu_region_id(v.ctx, v.rw);
    uint8_t payload[4096], reply[64];
    memset(payload, 0x5A, sizeof(payload));

    /* Suite AES, sealed with it: lands, and the ACK is sealed with it. */
    txr_t r;
    ASSERT_STATUS(KVRT_OK, raw_offer(&v, SUITE_AES_MAC, &r));
    kvrt_xfer_wire_header_t h = {.type = KVRT_XFER_WIRE_WRITE, .region = id, .tag = 1,
                                 .offset = 4096, .length = sizeof(payload)};
    txr_send(&r, h, payload);
    kvrt_xfer_wire_header_t ack = txr_recv(&r, reply, sizeof(reply));
    cr_assert_eq(ack.type, KVRT_XFER_WIRE_ACK);
    cr_assert_eq(ack.status, 0);
    close(r.fd);
    txr_clear(&r);
    memcpy(expect + 4096, payload, sizeof(payload));
    read_region(&v, SUITE_AES_MAC, seen, BYTES);
    cr_assert(memcmp(seen, expect, BYTES) == 0, "the write landed, nothing else changed");

    /* Suite AES agreed, the frame sealed with ChaCha20/Poly1305: not
     * authentic; the connection closes and memory stays as it was. */
    ASSERT_STATUS(KVRT_OK, raw_offer(&v, SUITE_AES_MAC, &r));
    r.protection = KVRT_XFER_PROTECT_MAC;
    memset(payload, 0xA5, sizeof(payload));
    h.offset = 8192;
    txr_send(&r, h, payload);
    cr_assert(txf_closed_by_agent(r.fd, 5000), "a frame of another suite must close it");
    close(r.fd);
    txr_clear(&r);
    read_region(&v, KVRT_XFER_PROTECT_MAC, seen, BYTES);
    cr_assert(memcmp(seen, expect, BYTES) == 0, "nothing of it may land");

    /* Suites and modes it does not know are refused at the handshake. */
    uint32_t unknown[] = {KVRT_XFER_PROTECT_MAC | 7u << KVRT_XFER_FRAME_SUITE_SHIFT,
                          KVRT_XFER_PROTECT_MAC | KVRT_XFER_SUITE_COUNT
                                                      << KVRT_XFER_FRAME_SUITE_SHIFT,
                          KVRT_XFER_PROTECT_AEAD | KVRT_XFER_SUITE_AES
                                                       << KVRT_XFER_FRAME_SUITE_SHIFT,
                          0x42u};
    for (size_t i = 0; i < sizeof(unknown) / sizeof(unknown[0]); i++)
        ASSERT_STATUS(KVRT_ERR_PROTOCOL, raw_offer(&v, unknown[i], &r));
    txf_victim_down(&v);
}
