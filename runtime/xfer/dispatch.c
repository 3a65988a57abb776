/*
 * dispatch.c - the message dispatcher: received messages go to the handler
 * registered for their type (see dispatch.h), and the list of layers that
 * register handlers when an agent is created.
 */
#include "agent_internal.h"

/* Every layer above the request and message API. A new layer adds its
 * registration function here. */
static kvrt_status_t (*const layers[])(kvrt_xfer_agent_t *agent) = {
    xfer_notify_register, /* request.c: plain notifications */
    xfer_kv_register,     /* kv/kv.c: KV block transfer's checksums */
};

kvrt_status_t xfer_dispatch_register(kvrt_xfer_agent_t *a, uint32_t type,
                                     xfer_msg_serve_fn serve)
{
    if (type == 0 || type >= XFER_MSG_TYPES || !serve || a->handlers[type])
        return kvrt_fail(a->ctx, KVRT_ERR_INVALID_ARG,
                         "message type %u out of range or already handled", type);
    a->handlers[type] = serve;
    return KVRT_OK;
}

kvrt_status_t xfer_layers_register(kvrt_xfer_agent_t *a)
{
    for (size_t i = 0; i < sizeof(layers) / sizeof(layers[0]); i++) {
        kvrt_status_t st = layers[i](a);
        if (st != KVRT_OK)
            return st;
    }
    return KVRT_OK;
}

kvrt_status_t kvrt_xfer_bk_deliver_msg(kvrt_xfer_bk_peer_t *p, uint32_t type,
                                       const uint8_t *payload, uint32_t bytes,
                                       uint8_t *reply, uint32_t capacity,
                                       uint32_t *reply_bytes_out)
{
    *reply_bytes_out = 0;
    xfer_msg_serve_fn serve = type < XFER_MSG_TYPES ? p->agent->handlers[type] : NULL;
    if (!serve) {
        kvrt_xfer_bk_refuse(p, KVRT_ERR_PROTOCOL, "unknown message type");
        return KVRT_ERR_PROTOCOL;
    }
    return serve(p, type, payload, bytes, reply, capacity, reply_bytes_out);
}
