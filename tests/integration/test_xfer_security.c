/*
 * test_xfer_security.c - a peer is untrusted. A hand-driven client that
 * holds the cluster key sends frames no kvrt agent would: unknown regions,
 * out-of-range offsets, writes to read-only memory, malformed headers, and
 * KV blocks corrupted in transit. Each is refused (and counted), never
 * served, and registered memory outside what was granted never changes.
 * A client without the key is refused at the handshake.
 */
#include <sodium.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>
#include <xxhash.h>

#include "test_xfer_raw.h"
#include "xfer/sidechannel.h"
#include "xfer/tcp/wire.h"

#define DEADLINE (kvrt_now_ns_for_test() + 3000000000ull)

static uint64_t kvrt_now_ns_for_test(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* An authenticated raw session to agent a. */
static txr_t raw_connect(kvrt_ctx_t *ctx, kvrt_xfer_agent_t *a)
{
    char text[96];
    ASSERT_OK(ctx, kvrt_xfer_agent_address(a, text, sizeof(text)));
    return txr_connect(text, "intruder");
}

#define send_frame(r, h, payload) txr_send((r), (h), (payload))
#define recv_frame(r, payload, capacity) txr_recv((r), (payload), (capacity))

typedef struct victim {
    kvrt_ctx_t *ctx;
    kvrt_xfer_agent_t *agent;
    uint8_t *mem;                 /* 3 x 64 KiB: guard, region, guard */
    kvrt_xfer_region_t *rw, *ro;  /* rw: middle 64 KiB; ro: first 4 KiB */
    uint8_t snapshot[3 * 65536];
} victim_t;

static void victim_up(victim_t *v)
{
    v->ctx = txu_ctx();
    v->agent = txu_agent(v->ctx, 3000);
    v->mem = aligned_alloc(4096, 3 * 65536);
    txu_fill(v->mem, 3 * 65536, 77);
    memcpy(v->snapshot, v->mem, sizeof(v->snapshot));
    v->rw = txu_register(v->ctx, v->agent, v->mem + 65536, 65536,
                         KVRT_XFER_REMOTE_READ | KVRT_XFER_REMOTE_WRITE);
    v->ro = txu_register(v->ctx, v->agent, v->mem, 4096, KVRT_XFER_REMOTE_READ);
}

static void victim_down(victim_t *v)
{
    cr_assert(memcmp(v->mem, v->snapshot, sizeof(v->snapshot)) == 0,
              "registered memory changed by refused frames");
    ASSERT_OK(v->ctx, kvrt_xfer_deregister(v->rw));
    ASSERT_OK(v->ctx, kvrt_xfer_deregister(v->ro));
    ASSERT_OK(v->ctx, kvrt_xfer_agent_destroy(v->agent));
    kvrt_ctx_destroy(v->ctx);
    free(v->mem);
}

Test(xfer_security, out_of_bounds_and_unknown_regions_are_refused)
{
    victim_t v;
    victim_up(&v);
    txr_t fd = raw_connect(v.ctx, v.agent);
    uint32_t rw = txu_region_id(v.ctx, v.rw), ro = txu_region_id(v.ctx, v.ro);
    uint8_t junk[8192];
    memset(junk, 0xEE, sizeof(junk));
    uint8_t buf[8192];

    struct {
        uint8_t type;
        uint32_t region;
        uint64_t offset, length;
        kvrt_status_t want;
    } cases[] = {
        {KVRT_XFER_WIRE_WRITE, rw ^ 0x5a5a0000u, 0, 16, KVRT_ERR_UNKNOWN_REGION},
        {KVRT_XFER_WIRE_WRITE, 4242, 0, 16, KVRT_ERR_UNKNOWN_REGION},
        {KVRT_XFER_WIRE_WRITE, rw, 65536 - 8, 16, KVRT_ERR_REMOTE_ACCESS},
        {KVRT_XFER_WIRE_WRITE, rw, 1ull << 40, 8192, KVRT_ERR_REMOTE_ACCESS},
        {KVRT_XFER_WIRE_WRITE, ro, 0, 64, KVRT_ERR_REMOTE_ACCESS},
        {KVRT_XFER_WIRE_READ_REQ, rw, 65000, 4096, KVRT_ERR_REMOTE_ACCESS},
        {KVRT_XFER_WIRE_READ_REQ, 9999, 0, 16, KVRT_ERR_UNKNOWN_REGION},
        {KVRT_XFER_WIRE_READ_REQ, ro, 4000, 200, KVRT_ERR_REMOTE_ACCESS},
    };
    uint64_t refused0 = txu_stat(v.ctx, "xfer.0.refused");
    for (uint32_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        kvrt_xfer_wire_header_t h = {.type = cases[i].type, .region = cases[i].region,
                                     .tag = 100 + i, .offset = cases[i].offset,
                                     .length = cases[i].length};
        send_frame(&fd, h, cases[i].type == KVRT_XFER_WIRE_WRITE ? junk : NULL);
        kvrt_xfer_wire_header_t r = recv_frame(&fd, buf, sizeof(buf));
        cr_assert_eq(r.tag, 100 + i);
        cr_assert_eq(r.type, cases[i].type == KVRT_XFER_WIRE_WRITE ? KVRT_XFER_WIRE_ACK
                                                                   : KVRT_XFER_WIRE_READ_RESP);
        cr_assert_eq(r.status, cases[i].want, "case %u: got %d", i, r.status);
        cr_assert_eq(r.length, 0, "case %u served data", i);
    }
    cr_assert_eq(txu_stat(v.ctx, "xfer.0.refused") - refused0, 8);

    /* The connection survived the refusals: a legitimate read still works. */
    kvrt_xfer_wire_header_t h = {.type = KVRT_XFER_WIRE_READ_REQ, .region = ro, .tag = 7,
                                 .offset = 96, .length = 100};
    send_frame(&fd, h, NULL);
    kvrt_xfer_wire_header_t r = recv_frame(&fd, buf, sizeof(buf));
    cr_assert_eq(r.status, 0);
    cr_assert_eq(r.length, 100);
    cr_assert(memcmp(buf, v.mem + 96, 100) == 0);
    close(fd.fd);
    victim_down(&v);
}

Test(xfer_security, malformed_header_drops_the_connection)
{
    victim_t v;
    victim_up(&v);
    uint8_t bad[4][KVRT_XFER_WIRE_HEADER_BYTES];
    kvrt_xfer_wire_header_t ok = {.type = KVRT_XFER_WIRE_READ_REQ, .region = txu_region_id(v.ctx, v.ro),
                                  .tag = 1, .length = 16};
    for (int i = 0; i < 4; i++)
        kvrt_xfer_wire_encode(&ok, bad[i]);
    bad[0][0] ^= 0xff;                /* magic */
    bad[1][4] = 99;                   /* type */
    bad[2][6] = 1;                    /* reserved */
    bad[3][39] = 0x80;                /* length far above the frame limit */
    for (int i = 0; i < 4; i++) {
        int fd = raw_connect(v.ctx, v.agent).fd;
        uint64_t before = txu_stat(v.ctx, "xfer.0.refused");
        cr_assert_eq(kvrt_xfer_sc_write_all(fd, bad[i], sizeof(bad[i]), DEADLINE), KVRT_OK);
        uint8_t byte;
        /* The agent answers nothing and closes: EOF, not data. */
        cr_assert_eq(kvrt_xfer_sc_read_all(fd, &byte, 1, DEADLINE), KVRT_ERR_PEER_FAILED,
                     "case %d", i);
        cr_assert_eq(txu_stat(v.ctx, "xfer.0.refused"), before + 1);
        close(fd);
    }
    victim_down(&v);
}

Test(xfer_security, wrong_key_proof_is_refused_by_the_listener)
{
    victim_t v;
    victim_up(&v);
    char text[96];
    ASSERT_OK(v.ctx, kvrt_xfer_agent_address(v.agent, text, sizeof(text)));
    kvrt_xfer_addr_t addr;
    kvrt_xfer_addr_parse(text, &addr);
    int fd = -1;
    cr_assert_eq(kvrt_xfer_sc_dial(&addr, DEADLINE, &fd), KVRT_OK);
    /* HELLO as sidechannel.h lays it out, then a proof made up without the
     * key: the listener must answer RESULT = KVRT_ERR_AUTH. */
    uint8_t hello[16 + 16 + 32 + 64] = {KVRT_XFER_SC_VERSION, 0, 0, 0, 1, 0, 0, 0};
    randombytes_buf(hello + 16, 48);
    cr_assert_eq(kvrt_xfer_sc_send(fd, KVRT_XFER_SC_HELLO, hello, sizeof(hello), DEADLINE),
                 KVRT_OK);
    uint8_t ch[32 + 64 + 8 + 32];
    uint32_t got = 0;
    cr_assert_eq(kvrt_xfer_sc_recv(fd, KVRT_XFER_SC_CHALLENGE, ch, sizeof(ch), &got, DEADLINE),
                 KVRT_OK);
    uint8_t proof[32];
    randombytes_buf(proof, sizeof(proof));
    cr_assert_eq(kvrt_xfer_sc_send(fd, KVRT_XFER_SC_PROOF, proof, sizeof(proof), DEADLINE),
                 KVRT_OK);
    uint8_t result[4];
    cr_assert_eq(kvrt_xfer_sc_recv(fd, KVRT_XFER_SC_RESULT, result, sizeof(result), &got, DEADLINE),
                 KVRT_OK);
    int32_t status = (int32_t)kvrt_load_le32(result);
    cr_assert_eq(status, KVRT_ERR_AUTH);
    /* And nothing more is accepted on that socket. */
    kvrt_xfer_wire_header_t h = {.type = KVRT_XFER_WIRE_READ_REQ, .region = txu_region_id(v.ctx, v.ro),
                                 .tag = 1, .length = 16};
    uint8_t hdr[KVRT_XFER_WIRE_HEADER_BYTES];
    kvrt_xfer_wire_encode(&h, hdr);
    (void)kvrt_xfer_sc_write_all(fd, hdr, sizeof(hdr), DEADLINE);
    uint8_t byte;
    cr_assert_eq(kvrt_xfer_sc_read_all(fd, &byte, 1, DEADLINE), KVRT_ERR_PEER_FAILED);
    close(fd);
    cr_assert_eq(txu_stat(v.ctx, "xfer.0.auth_failures"), 1);
    cr_assert_eq(txu_stat(v.ctx, "xfer.0.peers"), 0);
    victim_down(&v);
}

/* XXH3 of a block the way kvrt defines it: pages in (layer, K, V) order. */
static uint64_t block_hash(kvrt_pool_t *pool, int32_t block)
{
    kvrt_kv_layout_t l;
    kvrt_pool_layout(pool, &l);
    uint64_t page = 0;
    kvrt_layout_page_bytes(&l, &page);
    XXH3_state_t *s = XXH3_createState();
    XXH3_64bits_reset(s);
    for (uint32_t layer = 0; layer < l.num_layers; layer++)
        for (int half = 0; half < 2; half++) {
            void *addr = NULL;
            kvrt_pool_page_address(pool, block, layer, (kvrt_kv_half_t)half, &addr);
            XXH3_64bits_update(s, addr, page);
        }
    uint64_t h = XXH3_64bits_digest(s);
    XXH3_freeState(s);
    return h;
}

Test(xfer_security, payload_corrupted_in_transit_is_caught_in_integrity_mode)
{
    kvrt_ctx_t *ctx = txu_ctx();
    kvrt_xfer_agent_t *agent = txu_agent(ctx, 3000);
    /* Block-major fused: a block is one contiguous range. */
    kvrt_pool_t *pool = txu_pool(ctx, 8, KVRT_ORDER_BLOCK_MAJOR, KVRT_KV_FUSED);
    kvrt_xfer_region_t *region = txu_register_pool(ctx, agent, pool);
    kvrt_pool_info_t info;
    kvrt_pool_info(pool, &info);
    uint32_t id = txu_region_id(ctx, region);

    /* What the sender meant to send, and its checksum. */
    uint8_t *block = malloc(info.block_bytes);
    txu_fill(block, info.block_bytes, 5);
    memcpy((uint8_t *)info.base + 3 * info.block_bytes, block, info.block_bytes);
    uint64_t want = block_hash(pool, 3);
    memset((uint8_t *)info.base + 3 * info.block_bytes, 0, info.block_bytes);
    /* One bit flips on the way. */
    block[info.block_bytes / 2] ^= 0x10;

    char text[96];
    kvrt_xfer_agent_address(agent, text, sizeof(text));
    txr_t fd = txr_connect(text, "sender");
    kvrt_xfer_wire_header_t h = {.type = KVRT_XFER_WIRE_WRITE, .region = id, .tag = 1,
                                 .offset = 3 * info.block_bytes, .length = info.block_bytes};
    send_frame(&fd, h, block);
    uint8_t buf[256];
    cr_assert_eq(recv_frame(&fd, buf, sizeof(buf)).status, 0);

    /* The closing VERIFY: region, count 1, last, 4 notify bytes, then
     * (block, 0, checksum). */
    uint8_t msg[16 + 4 + 16] = {0};
    uint32_t words[4] = {id, 1, 1, 4};
    for (int i = 0; i < 4; i++)
        for (int b = 0; b < 4; b++)
            msg[4 * i + b] = (uint8_t)(words[i] >> (8 * b));
    memcpy(msg + 16, "blk3", 4);
    msg[20] = 3;
    for (int b = 0; b < 8; b++)
        msg[28 + b] = (uint8_t)(want >> (8 * b));
    kvrt_xfer_wire_header_t m = {.type = KVRT_XFER_WIRE_MSG, .region = 2 /* KV_VERIFY */,
                                 .tag = 2, .length = sizeof(msg)};
    send_frame(&fd, m, msg);
    kvrt_xfer_wire_header_t r = recv_frame(&fd, buf, sizeof(buf));
    cr_assert_eq(r.type, KVRT_XFER_WIRE_MSG_REPLY);
    cr_assert_eq(r.status, KVRT_ERR_INTEGRITY);
    kvrt_xfer_notification_t note;
    cr_assert(txu_wait_note(agent, &note, 2000));
    cr_assert_eq(note.status, KVRT_ERR_INTEGRITY, "the receiver must be told not to use it");
    cr_assert(memcmp(note.data, "blk3", 4) == 0);
    cr_assert_eq(txu_stat(ctx, "xfer.0.integrity_failures"), 1);
    close(fd.fd);
    free(block);
    ASSERT_OK(ctx, kvrt_xfer_deregister(region));
    ASSERT_OK(ctx, kvrt_xfer_agent_destroy(agent));
    kvrt_ctx_destroy(ctx);
}

static kvrt_xfer_agent_t *agent_protected(kvrt_ctx_t *ctx, kvrt_xfer_protection_t protection)
{
    kvrt_xfer_agent_params_t p = {
        .field_mask = KVRT_XFER_AGENT_PARAM_BACKEND | KVRT_XFER_AGENT_PARAM_TIMEOUT |
                      KVRT_XFER_AGENT_PARAM_PROTECTION | KVRT_XFER_AGENT_PARAM_RECONNECT,
        .cluster_key = test_xfer_key, .cluster_key_bytes = 32,
        .backend = KVRT_XFER_BACKEND_TCP, .default_timeout_ms = 3000,
        .reconnect_initial_ms = 20, .reconnect_max_ms = 100, .reconnect_attempts = 2,
        .frame_protection = protection};
    kvrt_xfer_agent_t *a = NULL;
    ASSERT_OK(ctx, kvrt_xfer_agent_create(ctx, &p, &a));
    return a;
}

Test(xfer_security, mac_and_aead_agents_do_not_talk)
{
    /* Data in both modes and suites: test_xfer_suites. */
    kvrt_ctx_t *ctx = txu_ctx();
    kvrt_xfer_agent_t *b = agent_protected(ctx, KVRT_XFER_PROTECT_AEAD);
    kvrt_xfer_agent_t *mac = agent_protected(ctx, KVRT_XFER_PROTECT_MAC);
    char addr[96];
    ASSERT_OK(ctx, kvrt_xfer_agent_address(b, addr, sizeof(addr)));
    kvrt_xfer_peer_t *other = NULL;
    ASSERT_STATUS(KVRT_ERR_PROTOCOL, kvrt_xfer_connect(mac, addr, 3000, &other));
    ASSERT_OK(ctx, kvrt_xfer_agent_address(mac, addr, sizeof(addr)));
    ASSERT_STATUS(KVRT_ERR_PROTOCOL, kvrt_xfer_connect(b, addr, 3000, &other));
    ASSERT_OK(ctx, kvrt_xfer_agent_destroy(b));
    ASSERT_OK(ctx, kvrt_xfer_agent_destroy(mac));
    kvrt_ctx_destroy(ctx);
}

typedef struct log_count {
    atomic_uint warn, suppressed_lines;
    atomic_bool control_chars;
} log_count_t;

static void count_log(void *user, kvrt_log_level_t level, const char *message)
{
    log_count_t *c = user;
    if (level >= KVRT_LOG_WARN)
        atomic_fetch_add(&c->warn, 1);
    if (strstr(message, "similar lines suppressed") && !strstr(message, "(0 similar"))
        atomic_fetch_add(&c->suppressed_lines, 1);
    for (const char *p = message; *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p == 0x7f)
            atomic_store(&c->control_chars, true);
}

Test(xfer_security, refusal_floods_are_rate_limited_and_wire_names_sanitized)
{
    /* The callback is set at creation: it may not change while an agent's
     * threads can log. */
    static log_count_t counts;
    kvrt_ctx_params_t cp = {.field_mask = KVRT_CTX_PARAM_LOG_FN | KVRT_CTX_PARAM_LOG_LEVEL,
                            .log_fn = count_log, .log_user_data = &counts,
                            .log_level = KVRT_LOG_INFO};
    kvrt_ctx_t *ctx = NULL;
    cr_assert_eq(kvrt_ctx_create(&cp, &ctx), KVRT_OK);
    kvrt_xfer_agent_t *agent = txu_agent(ctx, 3000);
    char text[96];
    ASSERT_OK(ctx, kvrt_xfer_agent_address(agent, text, sizeof(text)));
    /* A name with an escape sequence and a forged log line in it. */
    txr_t r = txr_connect(text, "evil\x1b[2J\nkvrt WARN: fake line\r");
    uint64_t refused0 = txu_stat(ctx, "xfer.0.refused");
    enum { FLOOD = 2000 };
    uint8_t buf[64];
    for (uint32_t i = 0; i < FLOOD; i++) {
        kvrt_xfer_wire_header_t h = {.type = KVRT_XFER_WIRE_READ_REQ, .region = 4242,
                                     .tag = i, .length = 16};
        send_frame(&r, h, NULL);
        kvrt_xfer_wire_header_t a = recv_frame(&r, buf, sizeof(buf));
        cr_assert_eq(a.status, KVRT_ERR_UNKNOWN_REGION);
    }
    cr_assert_eq(txu_stat(ctx, "xfer.0.refused") - refused0, FLOOD, "every refusal counts");
    /* The flood took well under the 200 s that would let every line through. */
    cr_assert_lt(atomic_load(&counts.warn), FLOOD / 10, "%u WARN lines for %u refusals",
                 atomic_load(&counts.warn), FLOOD);
    close(r.fd);
    /* The next line after the window says how many were held back. */
    usleep(1100000);
    txr_t r2 = txr_connect(text, "second");
    kvrt_xfer_wire_header_t h = {.type = KVRT_XFER_WIRE_READ_REQ, .region = 4242, .tag = 1,
                                 .length = 16};
    send_frame(&r2, h, NULL);
    (void)recv_frame(&r2, buf, sizeof(buf));
    close(r2.fd);
    ASSERT_OK(ctx, kvrt_xfer_agent_destroy(agent));
    cr_assert_geq(atomic_load(&counts.suppressed_lines), 1);
    cr_assert(!atomic_load(&counts.control_chars), "a peer's name put control bytes in the log");
    kvrt_ctx_destroy(ctx);
}
