/*
 * sched/hooks.h - what the subsystems above the scheduler (a tier's
 * admissions, a cluster's hand-offs) need to know of one: the pool and
 * prefix cache of each of its cache groups, so that a caller handing it
 * blocks can check they are of the pool it fills. Exported by runtime/sched;
 * not ABI, not installed.
 *
 * Threads: the scheduler's thread, like every scheduler call.
 */
#ifndef KVRT_SCHED_HOOKS_H
#define KVRT_SCHED_HOOKS_H

#include <stdint.h>

#include "kvrt/cache.h"
#include "kvrt/pool.h"
#include "kvrt/sched.h"

/* The scheduler's cache groups (1 unless made by kvrt_sched_create_groups). */
uint32_t kvrt_sched_num_groups(const kvrt_sched_t *sched);
/* Group g's pool and prefix cache (NULL without one); NULL for g out of
 * range. */
kvrt_pool_t *kvrt_sched_group_pool(const kvrt_sched_t *sched, uint32_t g);
kvrt_cache_t *kvrt_sched_group_cache(const kvrt_sched_t *sched, uint32_t g);

#endif /* KVRT_SCHED_HOOKS_H */
