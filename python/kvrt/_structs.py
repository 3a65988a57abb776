"""Every ctypes mirror of a kvrt C struct, in one place.

These follow include/kvrt/*.h as of this package's version. tests/test_abi.py
compares each struct's size and field offsets with the C compiler's (a small
C program built with the library prints them), so a header change that is
not mirrored here fails the tests instead of corrupting memory. C enums are
`int`-sized (c_int); handles are opaque c_void_p.
"""
import ctypes as C

u8, i32, u32, i64, u64 = C.c_uint8, C.c_int32, C.c_uint32, C.c_int64, C.c_uint64
enum = C.c_int
ptr = C.c_void_p

LOG_FN = C.CFUNCTYPE(None, C.c_void_p, C.c_int, C.c_char_p)

XFER_NAME_MAX = 64
XFER_NOTIFY_MAX = 256


def _plain(value):
    if isinstance(value, Struct):
        return value.as_dict()
    if isinstance(value, C.Array) and not isinstance(value, (bytes, str)):
        return [_plain(v) for v in value]
    return value


def set_masked(params, bits, **values):
    """Sets each field given a value other than None, and its field_mask bit
    (bits: field name -> bit)."""
    for name, value in values.items():
        if value is not None:
            params.field_mask |= bits[name]
            setattr(params, name, value)


class Struct(C.Structure):
    """A struct that prints its fields (for debugging)."""

    def as_dict(self):
        """Every field by name: arrays as lists, nested structs as dicts."""
        return {f[0]: _plain(getattr(self, f[0])) for f in self._fields_}

    def __repr__(self):
        fields = ", ".join("%s=%r" % (f[0], getattr(self, f[0])) for f in self._fields_)
        return "%s(%s)" % (type(self).__name__, fields)


# ---- context.h -------------------------------------------------------------
class kvrt_ctx_params_t(Struct):
    _fields_ = [("field_mask", u64), ("log_fn", LOG_FN), ("log_user_data", ptr),
                ("log_level", enum), ("host_region_bytes", u64), ("hugepages", enum),
                ("name", C.c_char_p)]


# ---- layout.h --------------------------------------------------------------
class kvrt_kv_layout_t(Struct):
    _fields_ = [("field_mask", u64), ("num_layers", u32), ("num_kv_heads", u32),
                ("head_dim", u32), ("tokens_per_block", u32), ("dtype", enum),
                ("format", enum), ("order", enum)]


class kvrt_extent_t(Struct):
    _fields_ = [("offset", u64), ("length", u64)]


# ---- pool.h / block_table.h ------------------------------------------------
class kvrt_pool_params_t(Struct):
    _fields_ = [("field_mask", u64), ("layout", kvrt_kv_layout_t), ("num_blocks", u32),
                ("base", ptr), ("base_bytes", u64), ("watermark_blocks", u32),
                ("name", C.c_char_p), ("max_tables", u32)]


class kvrt_pool_info_t(Struct):
    _fields_ = [("group_id", u32), ("num_blocks", u32), ("free_blocks", u32),
                ("used_blocks", u32), ("cached_blocks", u32), ("watermark_blocks", u32),
                ("live_tables", u32), ("tokens_per_block", u32), ("block_bytes", u64),
                ("base", ptr), ("host_memory", C.c_int), ("hugepages", C.c_int)]


class kvrt_block_copy_t(Struct):
    _fields_ = [("src_block", i32), ("dst_block", i32)]


# ---- cache.h ---------------------------------------------------------------
class kvrt_block_hash_t(Struct):
    _fields_ = [("lo", u64), ("hi", u64)]


class kvrt_mm_item_t(Struct):
    _fields_ = [("content_hash", kvrt_block_hash_t), ("offset", u32), ("length", u32)]


class kvrt_hash_keys_t(Struct):
    _fields_ = [("field_mask", u64), ("adapter_id", u64), ("salt", ptr),
                ("salt_bytes", u32), ("num_mm_items", u32),
                ("mm_items", C.POINTER(kvrt_mm_item_t))]


class kvrt_cache_params_t(Struct):
    _fields_ = [("field_mask", u64), ("policy", enum),
                ("model_fingerprint", kvrt_block_hash_t), ("name", C.c_char_p)]


class kvrt_cache_match_t(Struct):
    _fields_ = [("num_blocks", u32), ("num_tokens", u32), ("miss_reason", enum),
                ("partial_tokens", u32)]


class kvrt_cache_stats_t(Struct):
    _fields_ = [(n, u64) for n in (
        "queries", "query_tokens", "hit_tokens", "miss_never_cached", "miss_evicted",
        "miss_key_mismatch", "miss_partial", "inserts", "insert_duplicates", "evictions",
        "cached_blocks", "evictable_blocks", "index_capacity")] + [("load_factor", C.c_double)]


# ---- sched.h ---------------------------------------------------------------
class kvrt_sched_params_t(Struct):
    _fields_ = [("field_mask", u64), ("max_batch_tokens", u32), ("max_seqs", u32),
                ("prefill_chunk_tokens", u32), ("use_watermark", C.c_int),
                ("max_requests", u32), ("max_seq_tokens", u32), ("max_draft_tokens", u32),
                ("ngram_min", u32), ("ngram_max", u32), ("adaptive_draft", C.c_int),
                ("csr_block_tables", C.c_int), ("max_plans_in_flight", u32),
                ("shared_prefill_min_tokens", u32)]


class kvrt_seq_params_t(Struct):
    _fields_ = [("field_mask", u64), ("prompt", C.POINTER(i32)), ("prompt_len", u32),
                ("max_new_tokens", u32), ("stop_tokens", C.POINTER(i32)),
                ("num_stop_tokens", u32), ("priority", i32), ("deadline_ns", u64),
                ("keys", C.POINTER(kvrt_hash_keys_t)), ("user_tag", u64),
                ("cache_flags", u32), ("min_tokens", u32)]


class kvrt_seq_info_t(Struct):
    _fields_ = [("id", u64), ("user_tag", u64), ("state", enum), ("end_reason", enum),
                ("status", enum), ("priority", i32), ("prompt_tokens", u32),
                ("output_tokens", u32), ("computed_tokens", u32), ("cached_tokens", u32),
                ("preemptions", u32), ("draft_length", u32), ("spec_proposed", u64),
                ("spec_accepted", u64), ("admitted_ns", u64), ("first_token_ns", u64),
                ("end_ns", u64), ("deadline_missed", C.c_int), ("output", C.POINTER(i32))]


class kvrt_plan_seq_t(Struct):
    _fields_ = [("id", u64), ("user_tag", u64), ("kind", u32), ("num_new_tokens", u32),
                ("num_computed_tokens", u32), ("num_drafts", u32), ("sample", u32),
                ("row", u32)]


class kvrt_sched_group_params_t(Struct):
    _fields_ = [("field_mask", u64), ("pool", C.c_void_p), ("cache", C.c_void_p),
                ("sliding_window", u32)]


class kvrt_plan_group_t(Struct):
    _fields_ = [("tokens_per_block", u32), ("sliding_window", u32),
                ("slot_mapping", C.POINTER(i64)), ("block_rows", C.POINTER(i32)),
                ("row_stride", u32), ("num_copies", u32),
                ("copies", C.POINTER(kvrt_block_copy_t)),
                ("block_table_offsets", C.POINTER(i32)), ("block_table_ids", C.POINTER(i32))]


class kvrt_batch_plan_t(Struct):
    _fields_ = [("step", u64), ("now_ns", u64), ("num_seqs", u32), ("num_tokens", u32),
                ("num_prefill_seqs", u32), ("num_decode_seqs", u32),
                ("num_prefill_tokens", u32), ("num_draft_tokens", u32),
                ("max_seq_len", u32), ("tokens_per_block", u32),
                ("seqs", C.POINTER(kvrt_plan_seq_t)), ("query_start_loc", C.POINTER(i32)),
                ("seq_lens", C.POINTER(i32)), ("input_tokens", C.POINTER(i32)),
                ("positions", C.POINTER(i32)), ("slot_mapping", C.POINTER(i64)),
                ("row_index", C.POINTER(i32)), ("block_rows", C.POINTER(i32)),
                ("row_stride", u32), ("num_rows", u32), ("rows_changed", C.POINTER(i32)),
                ("num_rows_changed", u32), ("block_table_offsets", C.POINTER(i32)),
                ("block_table_ids", C.POINTER(i32)),
                ("copies", C.POINTER(kvrt_block_copy_t)), ("num_copies", u32),
                ("num_preempted", u32), ("preempted", C.POINTER(u64)),
                ("num_groups", u32), ("groups", C.POINTER(kvrt_plan_group_t))]


class kvrt_commit_t(Struct):
    _fields_ = [("field_mask", u64), ("step", u64), ("num_seqs", u32), ("num_tokens", u32),
                ("tokens", C.POINTER(i32)), ("num_accepted", C.POINTER(u32)),
                ("num_next_drafts", C.POINTER(u32)), ("next_drafts", C.POINTER(i32))]


SCHED_STAT_U64 = (
    "steps", "scheduled_tokens", "prefill_tokens", "decode_tokens", "preemptions", "added",
    "finished_length", "finished_stop", "aborted", "failed", "waiting", "running",
    "ended_undrained", "output_tokens", "prompt_tokens", "prefix_hit_tokens",
    "prefix_query_tokens", "deadline_misses", "budget_bound_steps", "spec_proposed",
    "spec_accepted", "spec_verifications", "spec_backoff_tokens", "step_cpu_ns",
    "commit_cpu_ns", "awaiting_kv", "arrivals", "arrived_tokens", "arrivals_failed",
    "arrivals_expired")
SCHED_DRAFT_POSITIONS = 16  # KVRT_SCHED_DRAFT_POSITIONS
SCHED_STATS_SIZE_1_0 = 544  # KVRT_SCHED_STATS_SIZE_1_0
SEQ_INFO_SIZE_1_0 = 112     # KVRT_SEQ_INFO_SIZE_1_0


class kvrt_sched_stats_t(Struct):
    _fields_ = [(n, u64) for n in SCHED_STAT_U64] + [
        ("spec_proposed_at", u64 * SCHED_DRAFT_POSITIONS),
        ("spec_accepted_at", u64 * SCHED_DRAFT_POSITIONS),
        ("window_hit_tokens", u64), ("window_query_tokens", u64),
        ("spec_acceptance", C.c_double), ("spec_mean_accepted", C.c_double),
        ("prefix_hit_rate", C.c_double), ("prefix_hit_rate_window", C.c_double),
        ("shared_prefill_waits", u64)]


class kvrt_arrival_params_t(Struct):
    _fields_ = [("field_mask", u64), ("num_tokens", u32), ("deadline_ns", u64)]


# ---- kernels.h -------------------------------------------------------------
class kvrt_kv_cache_t(Struct):
    _fields_ = [("field_mask", u64), ("layout", kvrt_kv_layout_t), ("num_blocks", u32),
                ("base", ptr), ("scale_mode", enum), ("k_scales", C.POINTER(C.c_float)),
                ("v_scales", C.POINTER(C.c_float))]


class kvrt_kv_rows_t(Struct):
    _fields_ = [("field_mask", u64), ("layer", u32), ("num_tokens", u32), ("dtype", enum),
                ("token_stride", u64), ("slot_mapping", C.POINTER(i64))]


class kvrt_decode_attention_t(Struct):
    _fields_ = [("field_mask", u64), ("layer", u32), ("num_seqs", u32),
                ("num_q_heads", u32), ("q_dtype", enum), ("query", ptr),
                ("block_tables", C.POINTER(i32)), ("table_stride", u32),
                ("seq_lens", C.POINTER(i32)), ("softmax_scale", C.c_float),
                ("out_dtype", enum), ("out", ptr), ("max_seq_len", u32),
                ("workspace", ptr), ("workspace_bytes", u64)]


# ---- xfer.h ----------------------------------------------------------------
class kvrt_xfer_agent_params_t(Struct):
    _fields_ = [("field_mask", u64), ("cluster_key", C.POINTER(u8)),
                ("cluster_key_bytes", u32), ("backend", enum), ("listen_address", C.c_char_p),
                ("name", C.c_char_p), ("default_timeout_ms", u32),
                ("connections_per_peer", u32), ("max_requests", u32),
                ("reconnect_initial_ms", u32), ("reconnect_max_ms", u32),
                ("reconnect_attempts", u32), ("zerocopy_threshold", u64),
                ("frame_protection", enum), ("max_peers", u32),
                ("max_pending_handshakes", u32), ("handshake_timeout_ms", u32),
                ("max_queued_bytes", u64), ("access_deadline_ms", u32)]


class kvrt_xfer_register_params_t(Struct):
    _fields_ = [("field_mask", u64), ("address", ptr), ("length", u64), ("dmabuf_fd", C.c_int),
                ("dmabuf_offset", u64), ("access", u32), ("pool", ptr)]


class kvrt_xfer_peer_info_t(Struct):
    _fields_ = [("struct_size", u32), ("state", enum), ("last_error", enum), ("connections", u32),
                ("reconnects", u32), ("outstanding", u32),
                ("name", C.c_char * XFER_NAME_MAX), ("instance", u64)]


class kvrt_xfer_op_t(Struct):
    _fields_ = [("opcode", enum), ("local", ptr), ("local_offset", u64), ("remote", ptr),
                ("remote_offset", u64), ("length", u64)]


class kvrt_xfer_post_params_t(Struct):
    _fields_ = [("field_mask", u64), ("timeout_ms", u32), ("user_data", u64),
                ("max_inflight_bytes", u64), ("notify", ptr), ("notify_bytes", u32)]


class kvrt_xfer_completion_t(Struct):
    _fields_ = [("user_data", u64), ("status", enum), ("bytes", u64)]


class kvrt_xfer_notification_t(Struct):
    _fields_ = [("from", C.c_char * XFER_NAME_MAX), ("status", enum), ("length", u32),
                ("data", u8 * XFER_NOTIFY_MAX)]


class kvrt_xfer_kv_params_t(Struct):
    _fields_ = [("field_mask", u64), ("opcode", enum), ("local", ptr), ("remote", ptr),
                ("local_blocks", C.POINTER(i32)), ("remote_blocks", C.POINTER(i32)),
                ("count", u32), ("integrity", C.c_int), ("notify", ptr),
                ("notify_bytes", u32), ("timeout_ms", u32), ("max_inflight_bytes", u64),
                ("user_data", u64)]


# ---- tier.h ----------------------------------------------------------------
class kvrt_tier_params_t(Struct):
    _fields_ = [("field_mask", u64), ("host_blocks", u32), ("ssd_blocks", u32),
                ("ssd_dir", C.c_char_p), ("queue_depth", u32), ("flags", u32),
                ("device", C.c_void_p), ("write_through_hits", u32)]


class kvrt_tier_match_t(Struct):
    _fields_ = [("gpu_blocks", u32), ("host_blocks", u32), ("ssd_blocks", u32),
                ("unused", u32)]


class kvrt_tier_completion_t(Struct):
    _fields_ = [("ticket", u64), ("requested", u32), ("landed", u32), ("miss", enum),
                ("unused", u32)]


TIER_LEVEL_STATS = ("capacity_blocks", "used_blocks", "hits", "offloads", "onloads", "drops",
                    "errors", "evictions")


class kvrt_tier_level_stats_t(Struct):
    _fields_ = [(n, u64) for n in TIER_LEVEL_STATS]


class kvrt_tier_stats_t(Struct):
    _fields_ = [("host", kvrt_tier_level_stats_t), ("ssd", kvrt_tier_level_stats_t),
                ("ssd_buffered", u32), ("in_flight", u32), ("unused", u32),
                ("admitted", u64), ("admitted_landed_blocks", u64), ("admitted_failed", u64),
                ("write_throughs", u64)]


# ---- cluster.h -------------------------------------------------------------
KV_TIERS = 3  # KVRT_KV_TIERS


class kvrt_kv_event_t(Struct):
    _fields_ = [("event_id", u64), ("kind", u32), ("tier", u32), ("key", kvrt_block_hash_t)]


class kvrt_kv_events_params_t(Struct):
    _fields_ = [("field_mask", u64), ("capacity", u32), ("epoch", u64)]


class kvrt_cluster_dir_params_t(Struct):
    _fields_ = [("field_mask", u64), ("expected_blocks", u64)]


class kvrt_cluster_node_info_t(Struct):
    _fields_ = [("node_id", u64), ("epoch", u64), ("next_event_id", u64),
                ("blocks", u64 * KV_TIERS), ("resyncing", u32), ("reserved", u32)]


class kvrt_cluster_match_t(Struct):
    _fields_ = [("node_id", u64), ("prefix_blocks", u32), ("gpu_prefix_blocks", u32)]


class kvrt_cluster_dir_stats_t(Struct):
    _fields_ = [(n, u64) for n in (
        "nodes", "models", "entries", "table_slots", "table_bytes", "events_applied",
        "events_duplicate", "resyncs", "stale_refused", "queries")]


class kvrt_cluster_load_t(Struct):
    _fields_ = [("field_mask", u64), ("queued_prefill_tokens", u64),
                ("running_decodes", u64), ("free_blocks", u64)]


class kvrt_cluster_router_params_t(Struct):
    _fields_ = [("field_mask", u64), ("policy", enum), ("prefill_weight", C.c_double),
                ("decode_weight", C.c_double), ("tokens_per_block", u32),
                ("tier_mask", u32)]


class kvrt_route_choice_t(Struct):
    _fields_ = [("node_id", u64), ("cached_blocks", u32), ("best_blocks", u32),
                ("best_node_id", u64), ("cost", C.c_double)]


ALL = {name: obj for name, obj in list(globals().items())
       if isinstance(obj, type) and issubclass(obj, C.Structure) and name.startswith("kvrt_")}
