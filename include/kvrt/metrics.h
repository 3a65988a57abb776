/*
 * kvrt/metrics.h - every counter and gauge kvrt keeps, in the Prometheus
 * text exposition format (version 0.0.4).
 *
 * The text is built from the kvrt_ctl namespace: each numeric node becomes a
 * metric family named kvrt_<subsystem>_<node> (dots become underscores,
 * counters end in _total), the object's index becomes a label named after
 * its subsystem, and string nodes become kvrt_<subsystem>_<node>_info
 * gauges of value 1 carrying the string in a "value" label. For example
 * "pool.0.free" is rendered as
 *
 *   # HELP kvrt_pool_free Blocks on the free list.
 *   # TYPE kvrt_pool_free gauge
 *   kvrt_pool_free{pool="0"} 812
 *
 * Names are stable: they change only when the ctl node is renamed. The
 * families of docs/metrics.md are the reference.
 */
#ifndef KVRT_METRICS_H
#define KVRT_METRICS_H

#include <stddef.h>

#include "kvrt/context.h"
#include "kvrt/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * kvrt_metrics_render - writes the context's metrics as NUL-terminated
 * Prometheus text into text_out (capacity bytes, the NUL included) and its
 * length without the NUL into *length_out. To size a buffer, call with
 * text_out NULL and capacity 0: the answer is KVRT_ERR_BUFFER_TOO_SMALL with
 * *length_out set to the length; allocate length + 1. Counters may grow
 * between the two calls, so leave room or retry on BUFFER_TOO_SMALL.
 * Nothing is retained; the text is the caller's.
 *
 * Threads: the context's rule (one thread at a time on the context); the
 * transfer statistics included are safe to read while transfers run.
 * Errors: KVRT_ERR_INVALID_ARG (ctx or length_out NULL, text_out NULL with
 * capacity > 0), KVRT_ERR_BUFFER_TOO_SMALL (capacity <= length; *length_out
 * is set, text_out is left unchanged), KVRT_ERR_NO_MEMORY.
 */
kvrt_status_t kvrt_metrics_render(kvrt_ctx_t *ctx, char *text_out, size_t capacity,
                                  size_t *length_out);

#ifdef __cplusplus
}
#endif

#endif /* KVRT_METRICS_H */
