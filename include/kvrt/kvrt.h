/*
 * kvrt/kvrt.h - the whole public ABI of kvrt. Include this, or the one
 * subsystem header you need.
 */
#ifndef KVRT_KVRT_H
#define KVRT_KVRT_H

#include "kvrt/status.h"
#include "kvrt/context.h"
#include "kvrt/layout.h"
#include "kvrt/pool.h"
#include "kvrt/block_table.h"
#include "kvrt/xfer.h"
#include "kvrt/cache.h"
#include "kvrt/sched.h"
#include "kvrt/kernels.h"
#include "kvrt/cluster.h"
#include "kvrt/metrics.h"

#endif /* KVRT_KVRT_H */
