/*
 * hooks.c - attaching the eviction sink and the event observers of a
 * prefix cache (the contract is cache/hooks.h). The events themselves are
 * raised by cache.c where the index changes, through kvrt_cache_emit().
 */
#include "cache/cache_internal.h"

void kvrt_cache_hooks_notify(const cache_hooks_t *hooks, const kvrt_cache_event_t *event)
{
    for (uint32_t i = 0; i < hooks->num_observers; i++)
        hooks->observers[i].fn(hooks->observers[i].user_data, event);
}

kvrt_status_t kvrt_cache_set_sink(kvrt_cache_t *cache, kvrt_cache_sink_fn fn, void *user_data)
{
    if (!cache)
        return KVRT_ERR_INVALID_ARG;
    cache_hooks_t *h = kvrt_cache_hooks(cache);
    if (fn && h->sink)
        return kvrt_fail(h->ctx, KVRT_ERR_BUSY,
                         "cache %u already has an eviction sink; detach it first",
                         h->group_id);
    h->sink = fn;
    h->sink_data = fn ? user_data : NULL;
    return KVRT_OK;
}

bool kvrt_cache_has_sink(const kvrt_cache_t *cache)
{
    return cache && kvrt_cache_hooks((kvrt_cache_t *)cache)->sink;
}

static int find_observer(const cache_hooks_t *h, kvrt_cache_observer_fn fn, void *user_data)
{
    for (uint32_t i = 0; i < h->num_observers; i++)
        if (h->observers[i].fn == fn && h->observers[i].user_data == user_data)
            return (int)i;
    return -1;
}

kvrt_status_t kvrt_cache_observe(kvrt_cache_t *cache, kvrt_cache_observer_fn fn,
                                 void *user_data)
{
    if (!cache)
        return KVRT_ERR_INVALID_ARG;
    cache_hooks_t *h = kvrt_cache_hooks(cache);
    if (!fn || find_observer(h, fn, user_data) >= 0)
        return kvrt_fail(h->ctx, KVRT_ERR_INVALID_ARG,
                         "cache %u: observer function is NULL or already added", h->group_id);
    if (h->num_observers == KVRT_CACHE_MAX_OBSERVERS)
        return kvrt_fail(h->ctx, KVRT_ERR_BUSY, "cache %u: %u observers attached already",
                         h->group_id, h->num_observers);
    h->observers[h->num_observers++] = (cache_observer_t){fn, user_data};
    return KVRT_OK;
}

kvrt_status_t kvrt_cache_unobserve(kvrt_cache_t *cache, kvrt_cache_observer_fn fn,
                                   void *user_data)
{
    if (!cache)
        return KVRT_ERR_INVALID_ARG;
    cache_hooks_t *h = kvrt_cache_hooks(cache);
    int at = find_observer(h, fn, user_data);
    if (at < 0)
        return kvrt_fail(h->ctx, KVRT_ERR_NOT_FOUND, "cache %u: no such observer", h->group_id);
    /* Keep the order of the others: they are called in the order added. */
    for (uint32_t i = (uint32_t)at; i + 1 < h->num_observers; i++)
        h->observers[i] = h->observers[i + 1];
    h->num_observers--;
    return KVRT_OK;
}

kvrt_status_t kvrt_cache_event_count(const kvrt_cache_t *cache, uint64_t *count_out)
{
    if (!cache)
        return KVRT_ERR_INVALID_ARG;
    cache_hooks_t *h = kvrt_cache_hooks((kvrt_cache_t *)cache);
    if (!count_out)
        return kvrt_fail(h->ctx, KVRT_ERR_INVALID_ARG, "count_out is required");
    *count_out = h->events;
    return KVRT_OK;
}
