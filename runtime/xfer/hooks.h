/*
 * xfer/hooks.h - what the layers above the transfer engine (the cluster's
 * hand-offs and pulls) need to know of a registered region: the pool it was
 * registered for, so that a receiver can check that the blocks its
 * scheduler hands out are the region's. Exported by runtime/xfer; not ABI,
 * not installed.
 */
#ifndef KVRT_XFER_HOOKS_H
#define KVRT_XFER_HOOKS_H

#include "kvrt/pool.h"
#include "kvrt/xfer.h"

/* The pool `region` was registered for (KVRT_XFER_REGISTER_PARAM_POOL), or
 * NULL for plain memory. Any thread; the region must be registered. */
kvrt_pool_t *kvrt_xfer_region_pool(const kvrt_xfer_region_t *region);

#endif /* KVRT_XFER_HOOKS_H */
