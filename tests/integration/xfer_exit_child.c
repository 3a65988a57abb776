/*
 * xfer_exit_child.c - the process test_xfer_lifetime's
 * agents_destroyed_by_a_later_exit_handler starts: a program that destroys
 * its agents from an exit handler it registered once they existed, as
 * fuzz_xfer_session does. It is a program of its own because a Criterion
 * process initializes libcrypto while starting (libgit2 calls
 * libssh2_init), and here libcrypto must first be used by kvrt.
 *
 * Two agents; the exit handler; a connection of the AES suite (the dialer
 * keys AES-GCM on this thread, the listener on its accept thread); exit.
 * Exit status: 0 the handler ran while libcrypto was up; CHILD_NOT_SET_UP;
 * CHILD_CRYPTO_STOPPED, libcrypto's own exit handler (OPENSSL_cleanup) ran
 * first, and the agents' threads joined afterwards left their libcrypto
 * state behind. A sanitizer build also checks for leaks at exit.
 */
#include <openssl/crypto.h>
#include <stdbool.h>
#include <stdlib.h>
#include <unistd.h>

#include "kvrt/kvrt.h"

enum { CHILD_NOT_SET_UP = 3, CHILD_CRYPTO_STOPPED = 4 };

static const uint8_t key[32] = "kvrt-test-cluster-key-0123456789";

static struct {
    kvrt_ctx_t *ctx;
    kvrt_xfer_agent_t *a, *b;
} g;

static void destroy_at_exit(void)
{
    /* libcrypto's own handler, once it ran, leaves it stopped for good. */
    bool up = OPENSSL_init_crypto(0, NULL) == 1;
    kvrt_xfer_agent_destroy(g.a);
    kvrt_xfer_agent_destroy(g.b);
    kvrt_ctx_destroy(g.ctx);
    if (!up)
        _exit(CHILD_CRYPTO_STOPPED);
}

int main(void)
{
    kvrt_ctx_params_t cp = {.field_mask = KVRT_CTX_PARAM_LOG_LEVEL, .log_level = KVRT_LOG_ERROR};
    kvrt_xfer_agent_params_t ap = {.field_mask = KVRT_XFER_AGENT_PARAM_BACKEND,
                                   .cluster_key = key, .cluster_key_bytes = sizeof(key),
                                   .backend = KVRT_XFER_BACKEND_TCP};
    if (kvrt_ctx_create(&cp, &g.ctx) != KVRT_OK ||
        kvrt_xfer_agent_create(g.ctx, &ap, &g.a) != KVRT_OK ||
        kvrt_xfer_agent_create(g.ctx, &ap, &g.b) != KVRT_OK)
        return CHILD_NOT_SET_UP;
    atexit(destroy_at_exit);
    char text[96];
    kvrt_xfer_peer_t *peer = NULL;
    if (setenv("KVRT_XFER_FRAME_SUITE", "aes", 1) != 0 ||
        kvrt_xfer_agent_address(g.a, text, sizeof(text)) != KVRT_OK ||
        kvrt_xfer_connect(g.b, text, 5000, &peer) != KVRT_OK)
        _exit(CHILD_NOT_SET_UP);
    return 0;
}
