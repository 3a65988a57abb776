/*
 * test_xfer_wire.c - the pieces every connection starts with: the frame
 * header parser (what it accepts and what it refuses), address parsing,
 * cluster-key derivation, and the QP information exchange a verbs backend
 * uses (path MTU: the smaller of the two wins).
 */
#include <criterion/criterion.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/core.h"
#include "xfer/sidechannel.h"
#include "xfer/tcp/wire.h"

static kvrt_status_t parse(kvrt_xfer_wire_header_t h, kvrt_xfer_wire_header_t *out)
{
    uint8_t b[KVRT_XFER_WIRE_HEADER_BYTES];
    kvrt_xfer_wire_encode(&h, b);
    return kvrt_xfer_wire_parse(b, sizeof(b), out);
}

Test(xfer_wire, valid_headers_round_trip)
{
    kvrt_xfer_wire_header_t in[] = {
        {.type = KVRT_XFER_WIRE_WRITE, .region = 0x10001, .tag = 1ull << 40, .offset = 4096,
         .length = KVRT_XFER_WIRE_FRAME_MAX},
        {.type = KVRT_XFER_WIRE_READ_REQ, .region = 7, .tag = 3, .length = 1},
        {.type = KVRT_XFER_WIRE_READ_RESP, .status = KVRT_ERR_REMOTE_ACCESS, .tag = 3},
        {.type = KVRT_XFER_WIRE_ACK, .tag = 9},
        {.type = KVRT_XFER_WIRE_MSG, .region = 2, .length = KVRT_XFER_WIRE_MSG_MAX},
        {.type = KVRT_XFER_WIRE_MSG_REPLY, .status = KVRT_ERR_INTEGRITY},
    };
    for (size_t i = 0; i < sizeof(in) / sizeof(in[0]); i++) {
        kvrt_xfer_wire_header_t out;
        cr_assert_eq(parse(in[i], &out), KVRT_OK, "header %zu", i);
        cr_assert(in[i].type == out.type && in[i].region == out.region &&
                      in[i].status == out.status && in[i].tag == out.tag &&
                      in[i].offset == out.offset && in[i].length == out.length,
                  "header %zu changed", i);
    }
}

Test(xfer_wire, invalid_headers_are_refused)
{
    kvrt_xfer_wire_header_t bad[] = {
        {.type = 0, .length = 1},
        {.type = 7},
        {.type = KVRT_XFER_WIRE_WRITE, .length = 0},
        {.type = KVRT_XFER_WIRE_WRITE, .length = KVRT_XFER_WIRE_FRAME_MAX + 1ull},
        {.type = KVRT_XFER_WIRE_WRITE, .status = -1, .length = 1},
        {.type = KVRT_XFER_WIRE_WRITE, .offset = UINT64_MAX - 3, .length = 8},
        {.type = KVRT_XFER_WIRE_READ_RESP, .status = -403, .length = 5},
        {.type = KVRT_XFER_WIRE_READ_RESP, .region = 1},
        {.type = KVRT_XFER_WIRE_ACK, .length = 1},
        {.type = KVRT_XFER_WIRE_ACK, .status = 5},
        {.type = KVRT_XFER_WIRE_MSG, .length = KVRT_XFER_WIRE_MSG_MAX + 1ull},
        {.type = KVRT_XFER_WIRE_MSG, .offset = 1},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        kvrt_xfer_wire_header_t out;
        cr_assert_eq(parse(bad[i], &out), KVRT_ERR_PROTOCOL, "header %zu accepted", i);
    }
    uint8_t b[KVRT_XFER_WIRE_HEADER_BYTES];
    kvrt_xfer_wire_header_t ok = {.type = KVRT_XFER_WIRE_ACK};
    kvrt_xfer_wire_encode(&ok, b);
    kvrt_xfer_wire_header_t out;
    cr_assert_eq(kvrt_xfer_wire_parse(b, sizeof(b) - 1, &out), KVRT_ERR_PROTOCOL);
    b[7] = 1; /* reserved */
    cr_assert_eq(kvrt_xfer_wire_parse(b, sizeof(b), &out), KVRT_ERR_PROTOCOL);
}

Test(xfer_wire, addresses)
{
    kvrt_xfer_addr_t a;
    char text[96];
    cr_assert_eq(kvrt_xfer_addr_parse("127.0.0.1:5000", &a), KVRT_OK);
    kvrt_xfer_addr_format(&a, text, sizeof(text));
    cr_assert_str_eq(text, "127.0.0.1:5000");
    cr_assert_eq(kvrt_xfer_addr_parse("[::1]:0", &a), KVRT_OK);
    kvrt_xfer_addr_format(&a, text, sizeof(text));
    cr_assert_str_eq(text, "[::1]:0");
    const char *bad[] = {"", "127.0.0.1", "127.0.0.1:", "127.0.0.1:70000", "localhost:1",
                         "::1:5", "[::1]5", "1.2.3.4:5x"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        cr_assert_eq(kvrt_xfer_addr_parse(bad[i], &a), KVRT_ERR_INVALID_ARG, "%s", bad[i]);
}

Test(xfer_wire, keys)
{
    kvrt_xfer_key_t k1, k2;
    const uint8_t key[20] = "0123456789abcdefghij";
    cr_assert_eq(kvrt_xfer_key_derive(key, 15, &k1), KVRT_ERR_INVALID_ARG);
    cr_assert_eq(kvrt_xfer_key_derive(key, 20, &k1), KVRT_OK);
    cr_assert_eq(kvrt_xfer_key_derive(key, 20, &k2), KVRT_OK);
    cr_assert(memcmp(&k1, &k2, sizeof(k1)) == 0);
    cr_assert_eq(kvrt_xfer_key_derive(key, 19, &k2), KVRT_OK);
    cr_assert(memcmp(&k1, &k2, sizeof(k1)) != 0);
}

/* The two ends' keys of one socket: each one's tx is the other's rx. */
static void qp_keys(kvrt_xfer_sc_keys_t *dialer, kvrt_xfer_sc_keys_t *listener)
{
    memset(dialer, 0, sizeof(*dialer));
    memset(dialer->tx, 0x11, sizeof(dialer->tx));
    memset(dialer->rx, 0x22, sizeof(dialer->rx));
    *listener = *dialer;
    memcpy(listener->tx, dialer->rx, sizeof(listener->tx));
    memcpy(listener->rx, dialer->tx, sizeof(listener->rx));
}

Test(xfer_wire, qp_info_exchange_and_mtu)
{
    kvrt_xfer_sc_keys_t kd, kl;
    qp_keys(&kd, &kl);
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    kvrt_xfer_sc_qp_info_t mine[2] = {{.qp_num = 11, .psn = 0xabcdef, .lid = 3, .mtu = 5, .port = 1},
                                      {.qp_num = 12, .psn = 1, .mtu = 5, .port = 1}};
    mine[0].gid[15] = 9;
    uint64_t deadline = kvrt_now_ns() + 2000000000ull;
    pid_t pid = fork();
    if (pid == 0) {
        kvrt_xfer_sc_qp_info_t theirs[2] = {{.qp_num = 21, .psn = 7, .mtu = 3, .port = 2},
                                            {.qp_num = 22, .psn = 8, .mtu = 3, .port = 2}};
        kvrt_xfer_sc_qp_info_t got[2];
        _exit(kvrt_xfer_sc_exchange_qp_info(sv[1], false, &kl, theirs, got, 2, deadline) == KVRT_OK &&
                      got[0].qp_num == 11 && got[0].gid[15] == 9 && got[0].lid == 3
                  ? 0
                  : 1);
    }
    kvrt_xfer_sc_qp_info_t got[2];
    cr_assert_eq(kvrt_xfer_sc_exchange_qp_info(sv[0], true, &kd, mine, got, 2, deadline), KVRT_OK);
    cr_assert_eq(got[1].qp_num, 22);
    cr_assert_eq(got[0].psn, 7);
    int status = 0;
    waitpid(pid, &status, 0);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    cr_assert_eq(kvrt_xfer_sc_mtu_min(mine[0].mtu, got[0].mtu), 3);
    cr_assert_eq(kvrt_xfer_sc_mtu_min(0, 4), 4);
    close(sv[0]);
    close(sv[1]);
}

/* The dialer's QP_INFO frame as it would cross the wire. */
static uint32_t qp_frame(const kvrt_xfer_sc_keys_t *keys, uint8_t *frame, uint32_t capacity)
{
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    kvrt_xfer_sc_qp_info_t mine = {.qp_num = 11, .psn = 5, .mtu = 5, .port = 1}, got;
    pid_t pid = fork();
    if (pid == 0) /* sends, then waits for an answer that never comes */
        _exit(kvrt_xfer_sc_exchange_qp_info(sv[1], true, keys, &mine, &got, 1,
                                            kvrt_now_ns() + 200000000ull) == KVRT_ERR_TIMEOUT
                  ? 0
                  : 1);
    uint32_t bytes = 0;
    cr_assert_eq(kvrt_xfer_sc_recv(sv[0], KVRT_XFER_SC_QP_INFO, frame, capacity, &bytes,
                                   kvrt_now_ns() + 2000000000ull),
                 KVRT_OK);
    int status = 0;
    waitpid(pid, &status, 0);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    close(sv[0]);
    close(sv[1]);
    return bytes;
}

/* The listening side's verdict on a QP_INFO frame. */
static kvrt_status_t qp_receive(const kvrt_xfer_sc_keys_t *keys, const uint8_t *frame,
                                uint32_t bytes, kvrt_xfer_sc_qp_info_t *got)
{
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    uint64_t deadline = kvrt_now_ns() + 2000000000ull;
    cr_assert_eq(kvrt_xfer_sc_send(sv[0], KVRT_XFER_SC_QP_INFO, frame, bytes, deadline), KVRT_OK);
    kvrt_xfer_sc_qp_info_t mine = {.qp_num = 21, .psn = 7, .mtu = 3, .port = 2};
    kvrt_status_t st = kvrt_xfer_sc_exchange_qp_info(sv[1], false, keys, &mine, got, 1, deadline);
    close(sv[0]);
    close(sv[1]);
    return st;
}

Test(xfer_wire, qp_info_altered_replayed_or_foreign_is_refused)
{
    kvrt_xfer_sc_keys_t kd, kl;
    qp_keys(&kd, &kl);
    uint8_t frame[4096], bad[4096];
    uint32_t bytes = qp_frame(&kd, frame, sizeof(frame));
    cr_assert_eq(bytes, 32 + 32); /* one entry and its MAC */
    kvrt_xfer_sc_qp_info_t got;
    cr_assert_eq(qp_receive(&kl, frame, bytes, &got), KVRT_OK);
    cr_assert_eq(got.qp_num, 11);
    /* Any bit of the entries or of the MAC changed on the path. */
    for (uint32_t bit = 0; bit < bytes * 8; bit += 7) {
        memcpy(bad, frame, bytes);
        bad[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        cr_assert_eq(qp_receive(&kl, bad, bytes, &got), KVRT_ERR_AUTH, "bit %u", bit);
    }
    /* Another socket's keys (a frame replayed from another session), or the
     * listener's own frame reflected back to it. */
    kvrt_xfer_sc_keys_t other = kl;
    other.rx[0] ^= 1;
    cr_assert_eq(qp_receive(&other, frame, bytes, &got), KVRT_ERR_AUTH);
    cr_assert_eq(qp_receive(&kd, frame, bytes, &got), KVRT_ERR_AUTH);
    /* Without its MAC the frame is malformed. */
    cr_assert_eq(qp_receive(&kl, frame, 32, &got), KVRT_ERR_PROTOCOL);
    cr_assert_eq(kvrt_xfer_sc_exchange_qp_info(0, true, NULL, &got, &got, 1, 0),
                 KVRT_ERR_INVALID_ARG);
}

/* The MAC of a backend's own side-channel frames (verbs SETUP and READY):
 * it checks under the same key and label, and fails for any flipped bit of
 * the payload or the MAC, another label (another kind of frame), another
 * key (the other direction, or another socket) and a shorter payload. */
Test(xfer_wire, frame_mac_binds_key_label_and_payload)
{
    uint8_t k1[KVRT_XFER_KEY_BYTES], k2[KVRT_XFER_KEY_BYTES], payload[8];
    for (uint32_t i = 0; i < sizeof(k1); i++) {
        k1[i] = (uint8_t)i;
        k2[i] = (uint8_t)(i + 1);
    }
    for (uint32_t i = 0; i < sizeof(payload); i++)
        payload[i] = (uint8_t)(0xa0 + i);
    uint8_t mac[KVRT_XFER_SC_MAC_BYTES];
    kvrt_xfer_sc_frame_mac(k1, "kvrt-verbs-setup", payload, sizeof(payload), mac);
    cr_assert(kvrt_xfer_sc_frame_mac_ok(k1, "kvrt-verbs-setup", payload, sizeof(payload), mac));
    cr_assert(!kvrt_xfer_sc_frame_mac_ok(k1, "kvrt-verbs-ready", payload, sizeof(payload), mac));
    cr_assert(!kvrt_xfer_sc_frame_mac_ok(k2, "kvrt-verbs-setup", payload, sizeof(payload), mac));
    cr_assert(!kvrt_xfer_sc_frame_mac_ok(k1, "kvrt-verbs-setup", payload, 4, mac));
    for (uint32_t bit = 0; bit < 8 * sizeof(payload); bit++) {
        payload[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        cr_assert(!kvrt_xfer_sc_frame_mac_ok(k1, "kvrt-verbs-setup", payload, sizeof(payload),
                                             mac),
                  "payload bit %u flipped passed", bit);
        payload[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    }
    for (uint32_t bit = 0; bit < 8 * sizeof(mac); bit += 7) {
        mac[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        cr_assert(!kvrt_xfer_sc_frame_mac_ok(k1, "kvrt-verbs-setup", payload, sizeof(payload),
                                             mac),
                  "MAC bit %u flipped passed", bit);
        mac[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    }
}
