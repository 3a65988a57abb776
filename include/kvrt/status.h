/*
 * kvrt/status.h - the one status type every kvrt function returns.
 *
 * 0 is success, 1 means "in progress" (a non-blocking call accepted the
 * work), negative values are errors grouped by subsystem:
 *   -1 .. -99    core (arguments, memory, versions, state)
 *   -100 .. -199 kv (layouts, block pools, block tables)
 *   -200 .. -299 cache (prefix index, eviction)
 *   -300 .. -399 sched (requests, steps, speculation)
 *   -400 .. -499 xfer (transfer engine, peers, wire protocol)
 *   -500 .. -599 kernels (device kernels)
 *   -600 .. -699 tier (host DRAM / SSD tiers)
 *   -700 .. -799 cluster (KV events, directory, membership, routing)
 *
 * Enum values and kvrt_status_str() are generated from KVRT_STATUS_LIST, so a
 * code and its text can never drift apart. Released values never change.
 */
#ifndef KVRT_STATUS_H
#define KVRT_STATUS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* X(name, value, text) */
#define KVRT_STATUS_LIST(X)                                                      \
    X(KVRT_OK, 0, "success")                                                     \
    X(KVRT_INPROGRESS, 1, "operation in progress")                               \
    X(KVRT_ERR_INVALID_ARG, -1, "invalid argument")                              \
    X(KVRT_ERR_NO_MEMORY, -2, "out of host memory")                              \
    X(KVRT_ERR_VERSION_MISMATCH, -3, "header and library API versions differ")   \
    X(KVRT_ERR_UNSUPPORTED, -4, "operation not supported")                       \
    X(KVRT_ERR_NOT_FOUND, -5, "no such object")                                  \
    X(KVRT_ERR_BUFFER_TOO_SMALL, -6, "output buffer too small")                  \
    X(KVRT_ERR_BUSY, -7, "object still in use")                                  \
    X(KVRT_ERR_INTERNAL, -8, "internal error")                                   \
    X(KVRT_ERR_IO, -9, "I/O error")                                              \
    X(KVRT_ERR_TIMEOUT, -10, "timed out")                                        \
    X(KVRT_ERR_CANCELED, -11, "canceled")                                        \
    X(KVRT_ERR_BAD_STATE, -12, "call not valid in the object's current state")   \
    X(KVRT_ERR_OVERFLOW, -13, "value out of range")                              \
    X(KVRT_ERR_PARSE, -14, "malformed input")                                    \
    X(KVRT_ERR_NO_BLOCKS, -100, "not enough free KV blocks")                     \
    X(KVRT_ERR_UNKNOWN_BLOCK, -101, "block id not allocated in this pool")       \
    X(KVRT_ERR_UNKNOWN_TABLE, -102, "unknown or freed block table")              \
    X(KVRT_ERR_BAD_LAYOUT, -103, "invalid KV layout")                            \
    X(KVRT_ERR_TABLE_TOO_LONG, -104, "block table would exceed its limit")       \
    X(KVRT_ERR_NO_TABLES, -105, "block table limit reached")                     \
    X(KVRT_ERR_UNKNOWN_REQUEST, -300, "unknown or ended request")                \
    X(KVRT_ERR_NO_STEP, -301, "no scheduling step to commit")                    \
    X(KVRT_ERR_TOKEN_COUNT, -302, "token count does not match the plan")         \
    X(KVRT_ERR_REQUEST_LIMIT, -303, "request limit reached")                     \
    X(KVRT_ERR_CONNECT, -400, "could not connect to peer")                       \
    X(KVRT_ERR_PEER_FAILED, -401, "peer failed or disconnected")                 \
    X(KVRT_ERR_AUTH, -402, "peer authentication failed")                         \
    X(KVRT_ERR_REMOTE_ACCESS, -403, "remote access outside registered memory")   \
    X(KVRT_ERR_PROTOCOL, -404, "malformed or unexpected wire message")           \
    X(KVRT_ERR_UNKNOWN_REGION, -405, "unknown memory region")                    \
    X(KVRT_ERR_INTEGRITY, -406, "payload checksum mismatch")                     \
    X(KVRT_ERR_NO_DEVICE, -407, "no RDMA device available")                      \
    X(KVRT_ERR_DEVICE, -500, "device (CUDA) error")                              \
    X(KVRT_ERR_NO_GPU, -501, "no GPU available or built without CUDA")           \
    X(KVRT_ERR_RESYNC, -700, "event stream broken: resynchronize from a snapshot") \
    X(KVRT_ERR_UNKNOWN_NODE, -701, "unknown cluster node")                       \
    X(KVRT_ERR_UNKNOWN_MODEL, -702, "no node serves this model")                 \
    X(KVRT_ERR_STALE_EPOCH, -703, "events of a node's earlier epoch")            \
    X(KVRT_ERR_COORDINATOR, -704, "coordination service (etcd) unreachable or refusing")

typedef enum kvrt_status {
#define KVRT_STATUS_ENUM_(name, value, text) name = (value),
    KVRT_STATUS_LIST(KVRT_STATUS_ENUM_)
#undef KVRT_STATUS_ENUM_
} kvrt_status_t;

/*
 * kvrt_status_str - short English text for a status code.
 * Returns a static string, never NULL ("unknown status" for values not in
 * the list). Safe from any thread.
 */
const char *kvrt_status_str(kvrt_status_t status);

/* Non-zero when status is an error (negative). */
static inline int kvrt_failed(kvrt_status_t status) { return (int)status < 0; }

#ifdef __cplusplus
}
#endif

#endif /* KVRT_STATUS_H */
