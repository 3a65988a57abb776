/*
 * abi_dump.c - prints, as JSON, the size and field offsets of every C struct
 * the Python package mirrors, the status codes, and the API version, so
 * python/tests/test_abi.py can compare them with kvrt/_structs.py. A field
 * renamed in a header fails this compile; one added changes a size.
 */
#include <stddef.h>
#include <stdio.h>

#include "kvrt/kvrt.h"
#include "kvrt/tier.h"

static int first_struct = 1;

#define F(type, field)                                                             \
    printf("%s\"%s\": %zu", first_field ? "" : ", ", #field, offsetof(type, field)); \
    first_field = 0;
#define STRUCT(type, ...)                                                          \
    do {                                                                           \
        int first_field = 1;                                                       \
        printf("%s\n    \"%s\": {\"size\": %zu, \"fields\": {", first_struct ? "" : ",", \
               #type, sizeof(type));                                               \
        first_struct = 0;                                                          \
        __VA_ARGS__                                                                \
        printf("}}");                                                              \
    } while (0);

#define STATUS(name, value, text)                                                  \
    printf("%s\n    \"%s\": %d", first_status ? "" : ",", #name, (int)(value));    \
    first_status = 0;

int main(void)
{
    printf("{\"api_version\": %u, \"version\": %u,\n  \"structs\": {",
           (unsigned)KVRT_API_VERSION, (unsigned)KVRT_VERSION);
    STRUCT(kvrt_ctx_params_t, F(kvrt_ctx_params_t, field_mask) F(kvrt_ctx_params_t, log_fn) F(kvrt_ctx_params_t, log_user_data) F(kvrt_ctx_params_t, log_level) F(kvrt_ctx_params_t, host_region_bytes) F(kvrt_ctx_params_t, hugepages) F(kvrt_ctx_params_t, name))
    STRUCT(kvrt_kv_layout_t, F(kvrt_kv_layout_t, field_mask) F(kvrt_kv_layout_t, num_layers) F(kvrt_kv_layout_t, num_kv_heads) F(kvrt_kv_layout_t, head_dim) F(kvrt_kv_layout_t, tokens_per_block) F(kvrt_kv_layout_t, dtype) F(kvrt_kv_layout_t, format) F(kvrt_kv_layout_t, order))
    STRUCT(kvrt_extent_t, F(kvrt_extent_t, offset) F(kvrt_extent_t, length))
    STRUCT(kvrt_pool_params_t, F(kvrt_pool_params_t, field_mask) F(kvrt_pool_params_t, layout) F(kvrt_pool_params_t, num_blocks) F(kvrt_pool_params_t, base) F(kvrt_pool_params_t, base_bytes) F(kvrt_pool_params_t, watermark_blocks) F(kvrt_pool_params_t, name) F(kvrt_pool_params_t, max_tables))
    STRUCT(kvrt_pool_info_t, F(kvrt_pool_info_t, group_id) F(kvrt_pool_info_t, num_blocks) F(kvrt_pool_info_t, free_blocks) F(kvrt_pool_info_t, used_blocks) F(kvrt_pool_info_t, cached_blocks) F(kvrt_pool_info_t, watermark_blocks) F(kvrt_pool_info_t, live_tables) F(kvrt_pool_info_t, tokens_per_block) F(kvrt_pool_info_t, block_bytes) F(kvrt_pool_info_t, base) F(kvrt_pool_info_t, host_memory) F(kvrt_pool_info_t, hugepages))
    STRUCT(kvrt_block_copy_t, F(kvrt_block_copy_t, src_block) F(kvrt_block_copy_t, dst_block))
    STRUCT(kvrt_block_hash_t, F(kvrt_block_hash_t, lo) F(kvrt_block_hash_t, hi))
    STRUCT(kvrt_mm_item_t, F(kvrt_mm_item_t, content_hash) F(kvrt_mm_item_t, offset) F(kvrt_mm_item_t, length))
    STRUCT(kvrt_hash_keys_t, F(kvrt_hash_keys_t, field_mask) F(kvrt_hash_keys_t, adapter_id) F(kvrt_hash_keys_t, salt) F(kvrt_hash_keys_t, salt_bytes) F(kvrt_hash_keys_t, num_mm_items) F(kvrt_hash_keys_t, mm_items))
    STRUCT(kvrt_cache_params_t, F(kvrt_cache_params_t, field_mask) F(kvrt_cache_params_t, policy) F(kvrt_cache_params_t, model_fingerprint) F(kvrt_cache_params_t, name))
    STRUCT(kvrt_cache_match_t, F(kvrt_cache_match_t, num_blocks) F(kvrt_cache_match_t, num_tokens) F(kvrt_cache_match_t, miss_reason) F(kvrt_cache_match_t, partial_tokens))
    STRUCT(kvrt_cache_stats_t, F(kvrt_cache_stats_t, queries) F(kvrt_cache_stats_t, query_tokens) F(kvrt_cache_stats_t, hit_tokens) F(kvrt_cache_stats_t, miss_never_cached) F(kvrt_cache_stats_t, miss_evicted) F(kvrt_cache_stats_t, miss_key_mismatch) F(kvrt_cache_stats_t, miss_partial) F(kvrt_cache_stats_t, inserts) F(kvrt_cache_stats_t, insert_duplicates) F(kvrt_cache_stats_t, evictions) F(kvrt_cache_stats_t, cached_blocks) F(kvrt_cache_stats_t, evictable_blocks) F(kvrt_cache_stats_t, index_capacity) F(kvrt_cache_stats_t, load_factor))
    STRUCT(kvrt_sched_params_t, F(kvrt_sched_params_t, field_mask) F(kvrt_sched_params_t, max_batch_tokens) F(kvrt_sched_params_t, max_seqs) F(kvrt_sched_params_t, prefill_chunk_tokens) F(kvrt_sched_params_t, use_watermark) F(kvrt_sched_params_t, max_requests) F(kvrt_sched_params_t, max_seq_tokens) F(kvrt_sched_params_t, max_draft_tokens) F(kvrt_sched_params_t, ngram_min) F(kvrt_sched_params_t, ngram_max) F(kvrt_sched_params_t, adaptive_draft) F(kvrt_sched_params_t, csr_block_tables) F(kvrt_sched_params_t, max_plans_in_flight) F(kvrt_sched_params_t, shared_prefill_min_tokens))
    STRUCT(kvrt_seq_params_t, F(kvrt_seq_params_t, field_mask) F(kvrt_seq_params_t, prompt) F(kvrt_seq_params_t, prompt_len) F(kvrt_seq_params_t, max_new_tokens) F(kvrt_seq_params_t, stop_tokens) F(kvrt_seq_params_t, num_stop_tokens) F(kvrt_seq_params_t, priority) F(kvrt_seq_params_t, deadline_ns) F(kvrt_seq_params_t, keys) F(kvrt_seq_params_t, user_tag) F(kvrt_seq_params_t, cache_flags) F(kvrt_seq_params_t, min_tokens))
    STRUCT(kvrt_seq_info_t, F(kvrt_seq_info_t, id) F(kvrt_seq_info_t, user_tag) F(kvrt_seq_info_t, state) F(kvrt_seq_info_t, end_reason) F(kvrt_seq_info_t, status) F(kvrt_seq_info_t, priority) F(kvrt_seq_info_t, prompt_tokens) F(kvrt_seq_info_t, output_tokens) F(kvrt_seq_info_t, computed_tokens) F(kvrt_seq_info_t, cached_tokens) F(kvrt_seq_info_t, preemptions) F(kvrt_seq_info_t, draft_length) F(kvrt_seq_info_t, spec_proposed) F(kvrt_seq_info_t, spec_accepted) F(kvrt_seq_info_t, admitted_ns) F(kvrt_seq_info_t, first_token_ns) F(kvrt_seq_info_t, end_ns) F(kvrt_seq_info_t, deadline_missed) F(kvrt_seq_info_t, output))
    STRUCT(kvrt_plan_seq_t, F(kvrt_plan_seq_t, id) F(kvrt_plan_seq_t, user_tag) F(kvrt_plan_seq_t, kind) F(kvrt_plan_seq_t, num_new_tokens) F(kvrt_plan_seq_t, num_computed_tokens) F(kvrt_plan_seq_t, num_drafts) F(kvrt_plan_seq_t, sample) F(kvrt_plan_seq_t, row))
    STRUCT(kvrt_batch_plan_t, F(kvrt_batch_plan_t, step) F(kvrt_batch_plan_t, now_ns) F(kvrt_batch_plan_t, num_seqs) F(kvrt_batch_plan_t, num_tokens) F(kvrt_batch_plan_t, num_prefill_seqs) F(kvrt_batch_plan_t, num_decode_seqs) F(kvrt_batch_plan_t, num_prefill_tokens) F(kvrt_batch_plan_t, num_draft_tokens) F(kvrt_batch_plan_t, max_seq_len) F(kvrt_batch_plan_t, tokens_per_block) F(kvrt_batch_plan_t, seqs) F(kvrt_batch_plan_t, query_start_loc) F(kvrt_batch_plan_t, seq_lens) F(kvrt_batch_plan_t, input_tokens) F(kvrt_batch_plan_t, positions) F(kvrt_batch_plan_t, slot_mapping) F(kvrt_batch_plan_t, row_index) F(kvrt_batch_plan_t, block_rows) F(kvrt_batch_plan_t, row_stride) F(kvrt_batch_plan_t, num_rows) F(kvrt_batch_plan_t, rows_changed) F(kvrt_batch_plan_t, num_rows_changed) F(kvrt_batch_plan_t, block_table_offsets) F(kvrt_batch_plan_t, block_table_ids) F(kvrt_batch_plan_t, copies) F(kvrt_batch_plan_t, num_copies) F(kvrt_batch_plan_t, num_preempted) F(kvrt_batch_plan_t, preempted) F(kvrt_batch_plan_t, num_groups) F(kvrt_batch_plan_t, groups))
    STRUCT(kvrt_sched_group_params_t, F(kvrt_sched_group_params_t, field_mask) F(kvrt_sched_group_params_t, pool) F(kvrt_sched_group_params_t, cache) F(kvrt_sched_group_params_t, sliding_window))
    STRUCT(kvrt_plan_group_t, F(kvrt_plan_group_t, tokens_per_block) F(kvrt_plan_group_t, sliding_window) F(kvrt_plan_group_t, slot_mapping) F(kvrt_plan_group_t, block_rows) F(kvrt_plan_group_t, row_stride) F(kvrt_plan_group_t, num_copies) F(kvrt_plan_group_t, copies) F(kvrt_plan_group_t, block_table_offsets) F(kvrt_plan_group_t, block_table_ids))
    STRUCT(kvrt_commit_t, F(kvrt_commit_t, field_mask) F(kvrt_commit_t, step) F(kvrt_commit_t, num_seqs) F(kvrt_commit_t, num_tokens) F(kvrt_commit_t, tokens) F(kvrt_commit_t, num_accepted) F(kvrt_commit_t, num_next_drafts) F(kvrt_commit_t, next_drafts))
    STRUCT(kvrt_sched_stats_t, F(kvrt_sched_stats_t, steps) F(kvrt_sched_stats_t, scheduled_tokens) F(kvrt_sched_stats_t, prefill_tokens) F(kvrt_sched_stats_t, decode_tokens) F(kvrt_sched_stats_t, preemptions) F(kvrt_sched_stats_t, added) F(kvrt_sched_stats_t, finished_length) F(kvrt_sched_stats_t, finished_stop) F(kvrt_sched_stats_t, aborted) F(kvrt_sched_stats_t, failed) F(kvrt_sched_stats_t, waiting) F(kvrt_sched_stats_t, running) F(kvrt_sched_stats_t, ended_undrained) F(kvrt_sched_stats_t, output_tokens) F(kvrt_sched_stats_t, prompt_tokens) F(kvrt_sched_stats_t, prefix_hit_tokens) F(kvrt_sched_stats_t, prefix_query_tokens) F(kvrt_sched_stats_t, deadline_misses) F(kvrt_sched_stats_t, budget_bound_steps) F(kvrt_sched_stats_t, spec_proposed) F(kvrt_sched_stats_t, spec_accepted) F(kvrt_sched_stats_t, spec_verifications) F(kvrt_sched_stats_t, spec_backoff_tokens) F(kvrt_sched_stats_t, step_cpu_ns) F(kvrt_sched_stats_t, commit_cpu_ns) F(kvrt_sched_stats_t, awaiting_kv) F(kvrt_sched_stats_t, arrivals) F(kvrt_sched_stats_t, arrived_tokens) F(kvrt_sched_stats_t, arrivals_failed) F(kvrt_sched_stats_t, arrivals_expired) F(kvrt_sched_stats_t, spec_proposed_at) F(kvrt_sched_stats_t, spec_accepted_at) F(kvrt_sched_stats_t, window_hit_tokens) F(kvrt_sched_stats_t, window_query_tokens) F(kvrt_sched_stats_t, spec_acceptance) F(kvrt_sched_stats_t, spec_mean_accepted) F(kvrt_sched_stats_t, prefix_hit_rate) F(kvrt_sched_stats_t, prefix_hit_rate_window) F(kvrt_sched_stats_t, shared_prefill_waits))
    STRUCT(kvrt_arrival_params_t, F(kvrt_arrival_params_t, field_mask) F(kvrt_arrival_params_t, num_tokens) F(kvrt_arrival_params_t, deadline_ns))
    STRUCT(kvrt_kv_cache_t, F(kvrt_kv_cache_t, field_mask) F(kvrt_kv_cache_t, layout) F(kvrt_kv_cache_t, num_blocks) F(kvrt_kv_cache_t, base) F(kvrt_kv_cache_t, scale_mode) F(kvrt_kv_cache_t, k_scales) F(kvrt_kv_cache_t, v_scales))
    STRUCT(kvrt_kv_rows_t, F(kvrt_kv_rows_t, field_mask) F(kvrt_kv_rows_t, layer) F(kvrt_kv_rows_t, num_tokens) F(kvrt_kv_rows_t, dtype) F(kvrt_kv_rows_t, token_stride) F(kvrt_kv_rows_t, slot_mapping))
    STRUCT(kvrt_decode_attention_t, F(kvrt_decode_attention_t, field_mask) F(kvrt_decode_attention_t, layer) F(kvrt_decode_attention_t, num_seqs) F(kvrt_decode_attention_t, num_q_heads) F(kvrt_decode_attention_t, q_dtype) F(kvrt_decode_attention_t, query) F(kvrt_decode_attention_t, block_tables) F(kvrt_decode_attention_t, table_stride) F(kvrt_decode_attention_t, seq_lens) F(kvrt_decode_attention_t, softmax_scale) F(kvrt_decode_attention_t, out_dtype) F(kvrt_decode_attention_t, out) F(kvrt_decode_attention_t, max_seq_len) F(kvrt_decode_attention_t, workspace) F(kvrt_decode_attention_t, workspace_bytes))
    STRUCT(kvrt_xfer_agent_params_t, F(kvrt_xfer_agent_params_t, field_mask) F(kvrt_xfer_agent_params_t, cluster_key) F(kvrt_xfer_agent_params_t, cluster_key_bytes) F(kvrt_xfer_agent_params_t, backend) F(kvrt_xfer_agent_params_t, listen_address) F(kvrt_xfer_agent_params_t, name) F(kvrt_xfer_agent_params_t, default_timeout_ms) F(kvrt_xfer_agent_params_t, connections_per_peer) F(kvrt_xfer_agent_params_t, max_requests) F(kvrt_xfer_agent_params_t, reconnect_initial_ms) F(kvrt_xfer_agent_params_t, reconnect_max_ms) F(kvrt_xfer_agent_params_t, reconnect_attempts) F(kvrt_xfer_agent_params_t, zerocopy_threshold) F(kvrt_xfer_agent_params_t, frame_protection) F(kvrt_xfer_agent_params_t, max_peers) F(kvrt_xfer_agent_params_t, max_pending_handshakes) F(kvrt_xfer_agent_params_t, handshake_timeout_ms) F(kvrt_xfer_agent_params_t, max_queued_bytes) F(kvrt_xfer_agent_params_t, access_deadline_ms))
    STRUCT(kvrt_xfer_register_params_t, F(kvrt_xfer_register_params_t, field_mask) F(kvrt_xfer_register_params_t, address) F(kvrt_xfer_register_params_t, length) F(kvrt_xfer_register_params_t, dmabuf_fd) F(kvrt_xfer_register_params_t, dmabuf_offset) F(kvrt_xfer_register_params_t, access) F(kvrt_xfer_register_params_t, pool))
    STRUCT(kvrt_xfer_peer_info_t, F(kvrt_xfer_peer_info_t, struct_size) F(kvrt_xfer_peer_info_t, state) F(kvrt_xfer_peer_info_t, last_error) F(kvrt_xfer_peer_info_t, connections) F(kvrt_xfer_peer_info_t, reconnects) F(kvrt_xfer_peer_info_t, outstanding) F(kvrt_xfer_peer_info_t, name) F(kvrt_xfer_peer_info_t, instance))
    STRUCT(kvrt_xfer_op_t, F(kvrt_xfer_op_t, opcode) F(kvrt_xfer_op_t, local) F(kvrt_xfer_op_t, local_offset) F(kvrt_xfer_op_t, remote) F(kvrt_xfer_op_t, remote_offset) F(kvrt_xfer_op_t, length))
    STRUCT(kvrt_xfer_post_params_t, F(kvrt_xfer_post_params_t, field_mask) F(kvrt_xfer_post_params_t, timeout_ms) F(kvrt_xfer_post_params_t, user_data) F(kvrt_xfer_post_params_t, max_inflight_bytes) F(kvrt_xfer_post_params_t, notify) F(kvrt_xfer_post_params_t, notify_bytes))
    STRUCT(kvrt_xfer_completion_t, F(kvrt_xfer_completion_t, user_data) F(kvrt_xfer_completion_t, status) F(kvrt_xfer_completion_t, bytes))
    STRUCT(kvrt_xfer_notification_t, F(kvrt_xfer_notification_t, from) F(kvrt_xfer_notification_t, status) F(kvrt_xfer_notification_t, length) F(kvrt_xfer_notification_t, data))
    STRUCT(kvrt_xfer_kv_params_t, F(kvrt_xfer_kv_params_t, field_mask) F(kvrt_xfer_kv_params_t, opcode) F(kvrt_xfer_kv_params_t, local) F(kvrt_xfer_kv_params_t, remote) F(kvrt_xfer_kv_params_t, local_blocks) F(kvrt_xfer_kv_params_t, remote_blocks) F(kvrt_xfer_kv_params_t, count) F(kvrt_xfer_kv_params_t, integrity) F(kvrt_xfer_kv_params_t, notify) F(kvrt_xfer_kv_params_t, notify_bytes) F(kvrt_xfer_kv_params_t, timeout_ms) F(kvrt_xfer_kv_params_t, max_inflight_bytes) F(kvrt_xfer_kv_params_t, user_data))
    STRUCT(kvrt_tier_params_t, F(kvrt_tier_params_t, field_mask) F(kvrt_tier_params_t, host_blocks) F(kvrt_tier_params_t, ssd_blocks) F(kvrt_tier_params_t, ssd_dir) F(kvrt_tier_params_t, queue_depth) F(kvrt_tier_params_t, flags) F(kvrt_tier_params_t, device) F(kvrt_tier_params_t, write_through_hits))
    STRUCT(kvrt_tier_match_t, F(kvrt_tier_match_t, gpu_blocks) F(kvrt_tier_match_t, host_blocks) F(kvrt_tier_match_t, ssd_blocks) F(kvrt_tier_match_t, unused))
    STRUCT(kvrt_tier_completion_t, F(kvrt_tier_completion_t, ticket) F(kvrt_tier_completion_t, requested) F(kvrt_tier_completion_t, landed) F(kvrt_tier_completion_t, miss) F(kvrt_tier_completion_t, unused))
    STRUCT(kvrt_tier_level_stats_t, F(kvrt_tier_level_stats_t, capacity_blocks) F(kvrt_tier_level_stats_t, used_blocks) F(kvrt_tier_level_stats_t, hits) F(kvrt_tier_level_stats_t, offloads) F(kvrt_tier_level_stats_t, onloads) F(kvrt_tier_level_stats_t, drops) F(kvrt_tier_level_stats_t, errors) F(kvrt_tier_level_stats_t, evictions))
    STRUCT(kvrt_tier_stats_t, F(kvrt_tier_stats_t, host) F(kvrt_tier_stats_t, ssd) F(kvrt_tier_stats_t, ssd_buffered) F(kvrt_tier_stats_t, in_flight) F(kvrt_tier_stats_t, unused) F(kvrt_tier_stats_t, admitted) F(kvrt_tier_stats_t, admitted_landed_blocks) F(kvrt_tier_stats_t, admitted_failed) F(kvrt_tier_stats_t, write_throughs))
    STRUCT(kvrt_kv_event_t, F(kvrt_kv_event_t, event_id) F(kvrt_kv_event_t, kind) F(kvrt_kv_event_t, tier) F(kvrt_kv_event_t, key))
    STRUCT(kvrt_kv_events_params_t, F(kvrt_kv_events_params_t, field_mask) F(kvrt_kv_events_params_t, capacity) F(kvrt_kv_events_params_t, epoch))
    STRUCT(kvrt_cluster_dir_params_t, F(kvrt_cluster_dir_params_t, field_mask) F(kvrt_cluster_dir_params_t, expected_blocks))
    STRUCT(kvrt_cluster_node_info_t, F(kvrt_cluster_node_info_t, node_id) F(kvrt_cluster_node_info_t, epoch) F(kvrt_cluster_node_info_t, next_event_id) F(kvrt_cluster_node_info_t, blocks) F(kvrt_cluster_node_info_t, resyncing) F(kvrt_cluster_node_info_t, reserved))
    STRUCT(kvrt_cluster_match_t, F(kvrt_cluster_match_t, node_id) F(kvrt_cluster_match_t, prefix_blocks) F(kvrt_cluster_match_t, gpu_prefix_blocks))
    STRUCT(kvrt_cluster_dir_stats_t, F(kvrt_cluster_dir_stats_t, nodes) F(kvrt_cluster_dir_stats_t, models) F(kvrt_cluster_dir_stats_t, entries) F(kvrt_cluster_dir_stats_t, table_slots) F(kvrt_cluster_dir_stats_t, table_bytes) F(kvrt_cluster_dir_stats_t, events_applied) F(kvrt_cluster_dir_stats_t, events_duplicate) F(kvrt_cluster_dir_stats_t, resyncs) F(kvrt_cluster_dir_stats_t, stale_refused) F(kvrt_cluster_dir_stats_t, queries))
    STRUCT(kvrt_cluster_load_t, F(kvrt_cluster_load_t, field_mask) F(kvrt_cluster_load_t, queued_prefill_tokens) F(kvrt_cluster_load_t, running_decodes) F(kvrt_cluster_load_t, free_blocks))
    STRUCT(kvrt_cluster_router_params_t, F(kvrt_cluster_router_params_t, field_mask) F(kvrt_cluster_router_params_t, policy) F(kvrt_cluster_router_params_t, prefill_weight) F(kvrt_cluster_router_params_t, decode_weight) F(kvrt_cluster_router_params_t, tokens_per_block) F(kvrt_cluster_router_params_t, tier_mask))
    STRUCT(kvrt_route_choice_t, F(kvrt_route_choice_t, node_id) F(kvrt_route_choice_t, cached_blocks) F(kvrt_route_choice_t, best_blocks) F(kvrt_route_choice_t, best_node_id) F(kvrt_route_choice_t, cost))
    printf("},\n  \"status\": {");
    int first_status = 1;
    KVRT_STATUS_LIST(STATUS)
    printf("}}\n");
    return 0;
}
