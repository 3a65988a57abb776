/*
 * kvrt/block_table.h - a sequence's block table: the list of blocks that
 * hold its tokens' K/V, in token order.
 *
 * Token i of a table lives in block blocks[i / tokens_per_block] at offset
 * i % tokens_per_block; its *slot* (what attention kernels take as the int64
 * slot mapping) is block * tokens_per_block + offset.
 *
 * Tables are named by kvrt_table_id_t: a generational id, so a stale or
 * made-up id is refused with KVRT_ERR_UNKNOWN_TABLE instead of touching
 * another table; so is an id of another pool, live or destroyed (each pool
 * starts its generations at a random point, so two pools take each other's
 * ids only by chance). 0 is never a valid id; id values differ from run to
 * run.
 *
 * Sharing: full blocks may be shared by several tables (fork, prefix cache).
 * A table never writes into a shared block: appending to a table whose last,
 * partial block is shared first moves it to a private copy, and reports the
 * copy (src -> dst) the engine must run before writing.
 *
 * Memory: the table structs are preallocated per pool (max_tables); each
 * table's block array grows geometrically and is kept when the table is
 * destroyed, so once warmed up no call here allocates.
 * Threads: the pool's (one thread at a time).
 */
#ifndef KVRT_BLOCK_TABLE_H
#define KVRT_BLOCK_TABLE_H

#include <stdint.h>

#include "kvrt/pool.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef uint64_t kvrt_table_id_t;

/* A block copy the engine must run (whole block, all layers, K and V).
 * Frozen: an array element, complete with its two ids. */
typedef struct kvrt_block_copy {
    int32_t src_block;
    int32_t dst_block;
} kvrt_block_copy_t;

/* Longest table, in tokens. */
#define KVRT_TABLE_MAX_TOKENS (1u << 30)

/*
 * kvrt_table_create - makes an empty table in pool.
 * Errors: KVRT_ERR_INVALID_ARG, KVRT_ERR_NO_TABLES (max_tables live),
 * KVRT_ERR_NO_MEMORY.
 */
kvrt_status_t kvrt_table_create(kvrt_pool_t *pool, kvrt_table_id_t *table_out);

/*
 * kvrt_table_destroy - drops the table's reference on each of its blocks,
 * the last first (a prefix cache sees a sequence's deepest block go idle
 * first, its root last), and retires its id. Table id 0 (never valid) is a
 * no-op, like destroy(NULL).
 * Errors: KVRT_ERR_INVALID_ARG (NULL pool), KVRT_ERR_UNKNOWN_TABLE.
 */
kvrt_status_t kvrt_table_destroy(kvrt_pool_t *pool, kvrt_table_id_t table);

/*
 * kvrt_table_append - appends num_tokens tokens, allocating blocks as the
 * table crosses block boundaries. When slots_out is non-NULL it receives the
 * num_tokens slots of the new tokens. When the last block is partial and
 * shared, it is first replaced by a private copy: the copy is written to
 * *copy_out and *num_copies_out is 1 (else 0); both must then be non-NULL.
 * All or nothing: on any error the table and pool are unchanged.
 * Errors: KVRT_ERR_INVALID_ARG (NULL pool, num_tokens 0, copy_out/
 * num_copies_out NULL when a copy is needed), KVRT_ERR_UNKNOWN_TABLE,
 * KVRT_ERR_TABLE_TOO_LONG (past KVRT_TABLE_MAX_TOKENS), KVRT_ERR_NO_BLOCKS,
 * KVRT_ERR_NO_MEMORY (the block array could not grow).
 */
kvrt_status_t kvrt_table_append(kvrt_pool_t *pool, kvrt_table_id_t table,
                                uint32_t num_tokens, int64_t *slots_out,
                                kvrt_block_copy_t *copy_out,
                                uint32_t *num_copies_out);

/*
 * kvrt_table_adopt - appends whole blocks the caller already holds one
 * reference to each (e.g. prefix-cache hits); the references move to the
 * table. The table's length must be a multiple of tokens_per_block; it grows
 * by count * tokens_per_block tokens.
 * A block may be listed several times only if the caller holds that many
 * references to it. A KVRT_NULL_BLOCK entry is a hole: its tokens count in
 * the table's length but hold nothing (a sliding window's tokens before a
 * prefix hit, as kvrt_table_release_front leaves them); the last entry
 * must be a real block.
 * Errors: KVRT_ERR_INVALID_ARG (NULL, count 0, a hole last), KVRT_ERR_UNKNOWN_TABLE,
 * KVRT_ERR_BAD_STATE (table ends in a partial block), KVRT_ERR_UNKNOWN_BLOCK (a block not in
 * use, or listed more often than it is referenced), KVRT_ERR_TABLE_TOO_LONG,
 * KVRT_ERR_NO_MEMORY. Unchanged on error.
 */
kvrt_status_t kvrt_table_adopt(kvrt_pool_t *pool, kvrt_table_id_t table,
                               uint32_t count, const int32_t *blocks);

/*
 * kvrt_table_truncate - shortens the table to num_tokens tokens (<= its
 * length), dropping its reference on blocks past the new end, the last
 * first. Used for speculative rollback and preemption.
 * Errors: KVRT_ERR_INVALID_ARG (num_tokens above the length),
 * KVRT_ERR_UNKNOWN_TABLE.
 */
kvrt_status_t kvrt_table_truncate(kvrt_pool_t *pool, kvrt_table_id_t table,
                                  uint32_t num_tokens);

/*
 * kvrt_table_release_front - drops the table's reference on its first
 * num_blocks blocks and names them KVRT_NULL_BLOCK from then on; the
 * table keeps its length and its later blocks. For a sliding-window
 * attention layer, whose tokens before the window are never read again.
 * Entries already KVRT_NULL_BLOCK are left as they are (repeating a call
 * is harmless). A released entry reads as KVRT_NULL_BLOCK in views and
 * exports, and kvrt_table_slots gives its tokens slots of the null block:
 * nothing may write or read them. Only whole blocks before the last one
 * can go (appends go on writing the last).
 * Errors: KVRT_ERR_INVALID_ARG (NULL pool, num_blocks above the table's
 * full blocks or reaching its last block), KVRT_ERR_UNKNOWN_TABLE.
 */
kvrt_status_t kvrt_table_release_front(kvrt_pool_t *pool, kvrt_table_id_t table,
                                       uint32_t num_blocks);

/*
 * kvrt_table_fork - makes num_children new tables with the parent's tokens.
 * Children share the parent's full blocks (one more reference each). When
 * the parent ends in a partial block, each child gets a fresh block for it
 * and the copies (parent's block -> child's block), one per child in child
 * order, are written to copies_out (room for num_children) with the count in
 * *num_copies_out. All or nothing.
 * Errors: KVRT_ERR_INVALID_ARG (NULL outputs, num_children 0),
 * KVRT_ERR_UNKNOWN_TABLE, KVRT_ERR_NO_TABLES, KVRT_ERR_NO_BLOCKS,
 * KVRT_ERR_NO_MEMORY, KVRT_ERR_OVERFLOW (a reference count limit).
 */
kvrt_status_t kvrt_table_fork(kvrt_pool_t *pool, kvrt_table_id_t parent,
                              uint32_t num_children, kvrt_table_id_t *children_out,
                              kvrt_block_copy_t *copies_out,
                              uint32_t *num_copies_out);

/*
 * kvrt_table_view - zero-copy view: *blocks_out points at the table's int32
 * block ids (valid until the next call that changes this table or destroys
 * it), *num_blocks_out and *num_tokens_out its lengths. Any output may be
 * NULL. Errors: KVRT_ERR_INVALID_ARG, KVRT_ERR_UNKNOWN_TABLE.
 */
kvrt_status_t kvrt_table_view(const kvrt_pool_t *pool, kvrt_table_id_t table,
                              const int32_t **blocks_out, uint32_t *num_blocks_out,
                              uint32_t *num_tokens_out);

/*
 * kvrt_table_export - copies the block ids into blocks_out[0..pad_to),
 * padding with KVRT_NULL_BLOCK after the table's blocks (the padded row
 * layout of a batch's block-table tensor). pad_to 0 means exactly the
 * table's length. *count_out is the number of real blocks.
 * Errors: KVRT_ERR_INVALID_ARG, KVRT_ERR_UNKNOWN_TABLE,
 * KVRT_ERR_BUFFER_TOO_SMALL (pad_to below the table's block count, or
 * capacity below the width needed; nothing is written to blocks_out, and
 * *count_out is set to the width needed).
 */
kvrt_status_t kvrt_table_export(const kvrt_pool_t *pool, kvrt_table_id_t table,
                                int32_t *blocks_out, uint32_t capacity, uint32_t pad_to,
                                uint32_t *count_out);

/*
 * kvrt_table_slots - slots of tokens [first, first + count) of the table.
 * Errors: KVRT_ERR_INVALID_ARG (range past the table's length, NULL),
 * KVRT_ERR_UNKNOWN_TABLE.
 */
kvrt_status_t kvrt_table_slots(const kvrt_pool_t *pool, kvrt_table_id_t table,
                               uint32_t first, uint32_t count, int64_t *slots_out);

/*
 * kvrt_pool_verify - checks every invariant of the pool and its tables:
 * each block in exactly one state, counters that add up, every used block's
 * reference count at least the number of table entries naming it, no table
 * naming a free or cached block (entries before the last may be
 * KVRT_NULL_BLOCK: released or holes), no duplicate block in the free list.
 * O(blocks + table entries); for tests and soak runs.
 * Errors: KVRT_ERR_INVALID_ARG, KVRT_ERR_NO_MEMORY (scratch space),
 * KVRT_ERR_INTERNAL (with the first broken invariant in
 * kvrt_ctx_last_error()).
 */
kvrt_status_t kvrt_pool_verify(const kvrt_pool_t *pool);

#ifdef __cplusplus
}
#endif

#endif /* KVRT_BLOCK_TABLE_H */
