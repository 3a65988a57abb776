/*
 * backends.c - the table of transfer backends and the rule that picks one:
 * AUTO takes the first whose probe passes, verbs before TCP. A verbs
 * backend joins by defining kvrt_xfer_verbs_backend and building with
 * KVRT_HAVE_VERBS_BACKEND (see backend.h).
 */
#include <stdio.h>

#include "backend.h"

static const kvrt_xfer_backend_t *const backends[] = {
#ifdef KVRT_HAVE_VERBS_BACKEND
    &kvrt_xfer_verbs_backend,
#endif
    &kvrt_xfer_tcp_backend,
};

kvrt_status_t kvrt_xfer_backend_select(kvrt_xfer_backend_kind_t kind,
                                       const kvrt_xfer_backend_t **backend_out, char *why,
                                       size_t why_bytes)
{
    char reason[192] = "";
    for (size_t i = 0; i < sizeof(backends) / sizeof(backends[0]); i++) {
        const kvrt_xfer_backend_t *b = backends[i];
        if (b->version != KVRT_XFER_BACKEND_VERSION ||
            (kind != KVRT_XFER_BACKEND_AUTO && b->kind != kind))
            continue;
        if (b->probe(reason, sizeof(reason)) == KVRT_OK) {
            *backend_out = b;
            return KVRT_OK;
        }
        if (kind != KVRT_XFER_BACKEND_AUTO)
            break;
    }
    if (kind == KVRT_XFER_BACKEND_VERBS && reason[0] == '\0')
        snprintf(reason, sizeof(reason), "this build has no verbs backend");
    snprintf(why, why_bytes, "no usable %s backend: %s",
             kind == KVRT_XFER_BACKEND_VERBS ? "verbs" : "transfer", reason);
    return KVRT_ERR_NO_DEVICE;
}
