/*
 * free_list.h - a bounded stack of freed objects of one size, kept for
 * reuse so that a hot path recycles memory instead of allocating it (the
 * transfer engine's requests, the TCP backend's frames and send records).
 * Internal: nothing here is ABI.
 *
 * An object on the list is dead: its first pointer-sized bytes hold the
 * link, and kvrt_free_list_take() zeroes it again. Not thread-safe: the
 * owner's lock guards the list.
 */
#ifndef KVRT_CORE_FREE_LIST_H
#define KVRT_CORE_FREE_LIST_H

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct kvrt_free_list {
    void *head;
    uint32_t count;
    uint32_t max;   /* freed objects beyond this many go back to free() */
    size_t bytes;   /* object size, at least a pointer */
} kvrt_free_list_t;

static inline void kvrt_free_list_init(kvrt_free_list_t *l, size_t bytes, uint32_t max)
{
    *l = (kvrt_free_list_t){.max = max, .bytes = bytes < sizeof(void *) ? sizeof(void *) : bytes};
}

/* A zeroed object: a kept one, else a new one; NULL without memory. */
static inline void *kvrt_free_list_take(kvrt_free_list_t *l)
{
    void *obj = l->head;
    if (!obj)
        return calloc(1, l->bytes);
    memcpy(&l->head, obj, sizeof(void *));
    l->count--;
    memset(obj, 0, l->bytes);
    return obj;
}

/* Keeps obj for reuse, or frees it when the list is full. NULL is a no-op. */
static inline void kvrt_free_list_give(kvrt_free_list_t *l, void *obj)
{
    if (!obj)
        return;
    if (l->count >= l->max) {
        free(obj);
        return;
    }
    memcpy(obj, &l->head, sizeof(void *));
    l->head = obj;
    l->count++;
}

/* Puts n new objects on the list (reserving them up front); false when
 * memory ran out first (what was made stays on the list). */
static inline bool kvrt_free_list_reserve(kvrt_free_list_t *l, uint32_t n)
{
    for (uint32_t i = 0; i < n && l->count < l->max; i++) {
        void *obj = calloc(1, l->bytes);
        if (!obj)
            return false;
        kvrt_free_list_give(l, obj);
    }
    return true;
}

/* Frees every kept object. */
static inline void kvrt_free_list_drain(kvrt_free_list_t *l)
{
    while (l->head) {
        void *obj = l->head;
        memcpy(&l->head, obj, sizeof(void *));
        free(obj);
    }
    l->count = 0;
}

#endif /* KVRT_CORE_FREE_LIST_H */
