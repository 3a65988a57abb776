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

kvrt_status_t xfer_dispatch_register_work(kvrt_xfer_agent_t *a, uint32_t type,
                                          xfer_msg_serve_fn serve, xfer_msg_work_fn work)
{
    if (type == 0 || type >= XFER_MSG_TYPES || !serve || a->handlers[type])
        return kvrt_fail(a->ctx, KVRT_ERR_INVALID_ARG,
                         "message type %u out of range or already handled", type);
    a->handlers[type] = serve;
    a->work_of[type] = work;
    return KVRT_OK;
}

kvrt_status_t xfer_dispatch_register(kvrt_xfer_agent_t *a, uint32_t type,
                                     xfer_msg_serve_fn serve)
{
    return xfer_dispatch_register_work(a, type, serve, NULL);
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

kvrt_status_t kvrt_xfer_bk_admit_msg(kvrt_xfer_bk_peer_t *p, uint32_t type,
                                     const uint8_t *payload, uint32_t bytes,
                                     uint64_t *work_out)
{
    kvrt_xfer_agent_t *a = p->agent;
    *work_out = 0;
    xfer_msg_work_fn work_of = type < XFER_MSG_TYPES ? a->work_of[type] : NULL;
    if (!work_of)
        return KVRT_OK;
    uint64_t work = 0;
    kvrt_status_t st = work_of(p, type, payload, bytes, &work);
    const char *why = "message asks for more work than one may";
    pthread_mutex_lock(&a->lock);
    if (st == KVRT_OK && work > XFER_HASH_BUDGET - p->hash_work) {
        st = KVRT_ERR_BUSY;
        why = "the peer has as much checksum work queued as it may";
    }
    if (st == KVRT_OK)
        p->hash_work += work;
    else
        a->stats.hash_refused++;
    pthread_mutex_unlock(&a->lock);
    if (st != KVRT_OK) {
        kvrt_xfer_bk_refuse(p, st, why);
        return st;
    }
    *work_out = work;
    return KVRT_OK;
}

void kvrt_xfer_bk_drop_msg(kvrt_xfer_bk_peer_t *p, uint64_t work)
{
    if (!work)
        return;
    pthread_mutex_lock(&p->agent->lock);
    p->hash_work -= work;
    pthread_mutex_unlock(&p->agent->lock);
}

kvrt_status_t kvrt_xfer_bk_serve_msg(kvrt_xfer_bk_peer_t *p, uint32_t type,
                                     const uint8_t *payload, uint32_t bytes, uint64_t work,
                                     uint8_t *reply, uint32_t capacity,
                                     uint32_t *reply_bytes_out)
{
    *reply_bytes_out = 0;
    xfer_msg_serve_fn serve = type < XFER_MSG_TYPES ? p->agent->handlers[type] : NULL;
    kvrt_status_t st;
    if (!serve) {
        kvrt_xfer_bk_refuse(p, KVRT_ERR_PROTOCOL, "unknown message type");
        st = KVRT_ERR_PROTOCOL;
    } else {
        st = serve(p, type, payload, bytes, reply, capacity, reply_bytes_out);
    }
    kvrt_xfer_bk_drop_msg(p, work);
    return st;
}

kvrt_status_t kvrt_xfer_bk_deliver_msg(kvrt_xfer_bk_peer_t *p, uint32_t type,
                                       const uint8_t *payload, uint32_t bytes,
                                       uint8_t *reply, uint32_t capacity,
                                       uint32_t *reply_bytes_out)
{
    *reply_bytes_out = 0;
    uint64_t work = 0;
    kvrt_status_t st = kvrt_xfer_bk_admit_msg(p, type, payload, bytes, &work);
    if (st != KVRT_OK)
        return st;
    return kvrt_xfer_bk_serve_msg(p, type, payload, bytes, work, reply, capacity,
                                  reply_bytes_out);
}
