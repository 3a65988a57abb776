/*
 * tier_observe.c - the tier stack's observer (tier/hooks.h): every key its
 * host and SSD directories index or unindex is told to one observer, which
 * starts from a replay of what they hold when it attaches. The calls come
 * from the slot directories themselves (slot_dir.c), the one place every
 * index change goes through.
 */
#include "tier/tier_internal.h"

static const kvrt_tier_level_t levels[] = {KVRT_TIER_LEVEL_HOST, KVRT_TIER_LEVEL_SSD};

kvrt_status_t kvrt_tier_observe(kvrt_tier_t *tier, kvrt_tier_observer_fn fn, void *user_data)
{
    if (!tier || !fn)
        return kvrt_fail(NULL, KVRT_ERR_INVALID_ARG, "NULL tier or observer");
    if (tier_level_dir(tier, KVRT_TIER_LEVEL_HOST)->observe)
        return kvrt_fail(NULL, KVRT_ERR_BUSY, "the tier has an observer already");
    for (uint32_t l = 0; l < 2; l++) {
        slot_dir_t *d = tier_level_dir(tier, levels[l]);
        for (uint32_t s = 0; s < d->num_slots; s++)
            if (d->state[s] == SLOT_READY)
                fn(user_data, levels[l], true, &d->names[s]);
        /* A tier without SSD has a zeroed directory: observing it only
         * tells the observer when the tier goes. */
        d->observe = fn;
        d->observe_user = user_data;
        d->level = levels[l];
    }
    return KVRT_OK;
}

kvrt_status_t kvrt_tier_unobserve(kvrt_tier_t *tier, kvrt_tier_observer_fn fn, void *user_data)
{
    if (!tier || !fn)
        return kvrt_fail(NULL, KVRT_ERR_INVALID_ARG, "NULL tier or observer");
    slot_dir_t *host = tier_level_dir(tier, KVRT_TIER_LEVEL_HOST);
    if (host->observe != fn || host->observe_user != user_data)
        return kvrt_fail(NULL, KVRT_ERR_NOT_FOUND, "not the tier's observer");
    for (uint32_t l = 0; l < 2; l++) {
        slot_dir_t *d = tier_level_dir(tier, levels[l]);
        d->observe = NULL;
        d->observe_user = NULL;
    }
    return KVRT_OK;
}
