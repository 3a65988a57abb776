"""Loading libkvrt.so, checking its ABI version, and typed C prototypes.

The library is found, in order: $KVRT_LIBRARY (a path), then the system's
`libkvrt.so.1` (the SONAME; ldconfig or LD_LIBRARY_PATH). It is loaded on
first use, so `import kvrt` never fails for want of it; the first call
raises KvrtError(KVRT_ERR_NOT_FOUND) with what was tried.
"""
import ctypes as C
import functools
import inspect
import os
import threading

import numpy as np

from . import _structs as S
from .errors import KvrtError, ERR_NOT_FOUND, ERR_VERSION_MISMATCH, ERR_INVALID_ARG

# The C API this package was written against (KVRT_API_VERSION of
# include/kvrt/context.h): the library must have the same major and a minor
# at least this one.
API_MAJOR = 1
API_MINOR = 0
API_VERSION = (API_MAJOR << 16) | API_MINOR

P = C.c_void_p
PP = C.POINTER(C.c_void_p)
st = C.c_int
i32p, u32p, i64p, u64p = (C.POINTER(C.c_int32), C.POINTER(C.c_uint32),
                          C.POINTER(C.c_int64), C.POINTER(C.c_uint64))
sizep = C.POINTER(C.c_size_t)


def ref(t):
    return C.POINTER(t)


# name: (restype, argtypes). Every function returns kvrt_status_t unless said.
PROTOTYPES = {
    "kvrt_status_str": (C.c_char_p, [st]),
    "kvrt_version": (st, [u32p, ref(C.c_char_p)]),
    "kvrt_ctx_create_versioned": (st, [C.c_uint32, ref(S.kvrt_ctx_params_t), PP]),
    "kvrt_ctx_destroy": (st, [P]),
    "kvrt_ctx_last_error": (C.c_char_p, [P]),
    "kvrt_ctx_set_log": (st, [P, S.LOG_FN, P, C.c_int]),
    "kvrt_ctl": (st, [P, C.c_char_p, P, sizep, P, C.c_size_t]),
    "kvrt_metrics_render": (st, [P, C.c_char_p, C.c_size_t, sizep]),
    "kvrt_layout_validate": (st, [ref(S.kvrt_kv_layout_t)]),
    "kvrt_layout_block_bytes": (st, [ref(S.kvrt_kv_layout_t), u64p]),
    "kvrt_layout_page_offset": (st, [ref(S.kvrt_kv_layout_t), C.c_uint32, C.c_uint32,
                                     C.c_uint32, C.c_int, u64p]),
    "kvrt_pool_create": (st, [P, ref(S.kvrt_pool_params_t), PP]),
    "kvrt_pool_destroy": (st, [P]),
    "kvrt_pool_alloc": (st, [P, C.c_uint32, i32p]),
    "kvrt_pool_free": (st, [P, C.c_uint32, i32p]),
    "kvrt_pool_info_sized": (st, [P, C.c_size_t, ref(S.kvrt_pool_info_t)]),
    "kvrt_pool_verify": (st, [P]),
    "kvrt_table_create": (st, [P, u64p]),
    "kvrt_table_destroy": (st, [P, C.c_uint64]),
    "kvrt_table_append": (st, [P, C.c_uint64, C.c_uint32, i64p, ref(S.kvrt_block_copy_t),
                               u32p]),
    "kvrt_table_truncate": (st, [P, C.c_uint64, C.c_uint32]),
    "kvrt_table_view": (st, [P, C.c_uint64, ref(i32p), u32p, u32p]),
    "kvrt_table_slots": (st, [P, C.c_uint64, C.c_uint32, C.c_uint32, i64p]),
    "kvrt_cache_create": (st, [P, ref(S.kvrt_cache_params_t), PP]),
    "kvrt_cache_destroy": (st, [P]),
    "kvrt_cache_match": (st, [P, i32p, C.c_uint32, ref(S.kvrt_hash_keys_t), C.c_uint32,
                              i32p, ref(S.kvrt_block_hash_t), ref(S.kvrt_cache_match_t)]),
    "kvrt_cache_stats_sized": (st, [P, C.c_size_t, ref(S.kvrt_cache_stats_t)]),
    "kvrt_cache_reset": (st, [P, C.c_uint32]),
    "kvrt_cache_reset_stats": (st, [P]),
    "kvrt_cache_verify": (st, [P]),
    "kvrt_block_hash_root": (st, [ref(S.kvrt_block_hash_t), ref(S.kvrt_block_hash_t)]),
    "kvrt_block_hash": (st, [ref(S.kvrt_block_hash_t), i32p, C.c_uint32, C.c_uint32,
                             ref(S.kvrt_hash_keys_t), ref(S.kvrt_block_hash_t)]),
    "kvrt_block_key": (st, [ref(S.kvrt_block_hash_t), ref(S.kvrt_hash_keys_t),
                            ref(S.kvrt_block_hash_t)]),
    "kvrt_model_fingerprint": (st, [C.c_char_p, ref(S.kvrt_kv_layout_t),
                                    ref(S.kvrt_block_hash_t)]),
    "kvrt_sched_create": (st, [P, P, P, ref(S.kvrt_sched_params_t), PP]),
    "kvrt_sched_create_groups": (st, [P, C.c_uint32,
                                      C.POINTER(C.POINTER(S.kvrt_sched_group_params_t)),
                                      ref(S.kvrt_sched_params_t), PP]),
    "kvrt_sched_destroy": (st, [P]),
    "kvrt_seq_add": (st, [P, ref(S.kvrt_seq_params_t), u64p]),
    "kvrt_seq_abort": (st, [P, C.c_uint64]),
    "kvrt_seq_set_draft": (st, [P, C.c_uint64, i32p, C.c_uint32]),
    "kvrt_sched_set_drafts": (st, [P, C.c_uint32, u64p, u32p, i32p]),
    "kvrt_seq_info_sized": (st, [P, C.c_uint64, ref(S.kvrt_seq_info_t), C.c_size_t]),
    "kvrt_seq_await_kv": (st, [P, C.c_uint64, ref(S.kvrt_arrival_params_t), u64p, u32p,
                               u32p]),
    "kvrt_arrival_complete": (st, [P, C.c_uint64, C.c_uint32]),
    "kvrt_seq_await_kv_groups": (st, [P, C.c_uint64, ref(S.kvrt_arrival_params_t),
                                      C.c_uint32, u64p, u32p, u32p]),
    "kvrt_arrival_group_complete": (st, [P, C.c_uint64, C.c_uint32, C.c_uint32]),
    "kvrt_seq_group_blocks": (st, [P, C.c_uint64, C.c_uint32, ref(i32p), u32p, u32p]),
    "kvrt_sched_drain_ended_sized": (st, [P, ref(S.kvrt_seq_info_t), C.c_size_t, C.c_uint32,
                                          u32p]),
    "kvrt_sched_step": (st, [P, C.c_uint64, ref(ref(S.kvrt_batch_plan_t))]),
    "kvrt_sched_commit": (st, [P, ref(S.kvrt_commit_t)]),
    "kvrt_sched_stats_sized": (st, [P, ref(S.kvrt_sched_stats_t), C.c_size_t]),
    "kvrt_cpu_write_kv": (st, [P, ref(S.kvrt_kv_cache_t), ref(S.kvrt_kv_rows_t), P, P]),
    "kvrt_cuda_write_kv": (st, [P, ref(S.kvrt_kv_cache_t), ref(S.kvrt_kv_rows_t), P, P, P]),
    "kvrt_cpu_read_kv": (st, [P, ref(S.kvrt_kv_cache_t), ref(S.kvrt_kv_rows_t), P, P]),
    "kvrt_cuda_read_kv": (st, [P, ref(S.kvrt_kv_cache_t), ref(S.kvrt_kv_rows_t), P, P, P]),
    "kvrt_cpu_copy_blocks": (st, [P, ref(S.kvrt_kv_cache_t), ref(S.kvrt_block_copy_t),
                                  C.c_uint32]),
    "kvrt_cuda_copy_blocks": (st, [P, ref(S.kvrt_kv_cache_t), ref(S.kvrt_block_copy_t),
                                   C.c_uint32, P]),
    "kvrt_cpu_gather_blocks": (st, [P, ref(S.kvrt_kv_cache_t), i32p, C.c_uint32, P]),
    "kvrt_cuda_gather_blocks": (st, [P, ref(S.kvrt_kv_cache_t), i32p, C.c_uint32, P, P]),
    "kvrt_cpu_scatter_blocks": (st, [P, ref(S.kvrt_kv_cache_t), P, i32p, C.c_uint32]),
    "kvrt_cuda_scatter_blocks": (st, [P, ref(S.kvrt_kv_cache_t), P, i32p, C.c_uint32, P]),
    "kvrt_cpu_decode_attention": (st, [P, ref(S.kvrt_kv_cache_t),
                                       ref(S.kvrt_decode_attention_t)]),
    "kvrt_cuda_decode_attention": (st, [P, ref(S.kvrt_kv_cache_t),
                                        ref(S.kvrt_decode_attention_t), P]),
    "kvrt_cuda_device_count": (st, [C.POINTER(C.c_int)]),
    "kvrt_xfer_agent_create": (st, [P, ref(S.kvrt_xfer_agent_params_t), PP]),
    "kvrt_xfer_agent_destroy": (st, [P]),
    "kvrt_xfer_agent_address": (st, [P, C.c_char_p, C.c_size_t]),
    "kvrt_xfer_register": (st, [P, ref(S.kvrt_xfer_register_params_t), PP]),
    "kvrt_xfer_deregister": (st, [P]),
    "kvrt_xfer_region_descriptor": (st, [P, P, C.c_size_t, sizep]),
    "kvrt_xfer_connect": (st, [P, C.c_char_p, C.c_uint32, PP]),
    "kvrt_xfer_disconnect": (st, [P]),
    "kvrt_xfer_peer_info": (st, [P, ref(S.kvrt_xfer_peer_info_t)]),
    "kvrt_xfer_import": (st, [P, P, C.c_size_t, PP]),
    "kvrt_xfer_remote_release": (st, [P]),
    "kvrt_xfer_post": (st, [P, ref(S.kvrt_xfer_op_t), C.c_uint32,
                            ref(S.kvrt_xfer_post_params_t), PP]),
    "kvrt_xfer_kv_post": (st, [P, ref(S.kvrt_xfer_kv_params_t), PP]),
    "kvrt_xfer_request_test": (st, [P]),
    "kvrt_xfer_request_wait": (st, [P, C.c_uint32]),
    "kvrt_xfer_request_release": (st, [P]),
    "kvrt_xfer_poll": (st, [P, ref(S.kvrt_xfer_completion_t), C.c_uint32, u32p]),
    "kvrt_tier_create": (st, [P, ref(S.kvrt_tier_params_t), PP]),
    "kvrt_tier_destroy": (st, [P]),
    "kvrt_tier_match": (st, [P, i32p, C.c_uint32, ref(S.kvrt_hash_keys_t), C.c_uint32, i32p,
                             ref(S.kvrt_block_hash_t), ref(S.kvrt_tier_match_t)]),
    "kvrt_tier_onload": (st, [P, C.c_uint32, C.c_uint32, ref(S.kvrt_block_hash_t),
                              ref(S.kvrt_block_hash_t), ref(S.kvrt_hash_keys_t), i32p, u64p,
                              u32p]),
    "kvrt_tier_poll": (st, [P, ref(S.kvrt_tier_completion_t), C.c_uint32, u32p]),
    "kvrt_tier_fd": (C.c_int, [P]),
    "kvrt_tier_drain": (st, [P, C.c_uint32, ref(S.kvrt_tier_completion_t), C.c_uint32,
                             u32p]),
    "kvrt_tier_stats": (st, [P, ref(S.kvrt_tier_stats_t)]),
    "kvrt_kv_events_create": (st, [P, ref(S.kvrt_kv_events_params_t), PP]),
    "kvrt_kv_events_destroy": (st, [P]),
    "kvrt_kv_events_record": (st, [P, C.c_int, C.c_int, ref(S.kvrt_block_hash_t)]),
    "kvrt_kv_events_attach": (st, [P, P, C.c_int]),
    "kvrt_kv_events_detach": (st, [P]),
    "kvrt_kv_events_take": (st, [P, ref(S.kvrt_kv_event_t), C.c_uint32, u32p, u64p]),
    "kvrt_kv_events_epoch": (st, [P, u64p, u64p]),
    "kvrt_kv_events_snapshot": (st, [P, ref(S.kvrt_kv_event_t), C.c_uint32, u32p, u64p]),
    "kvrt_cluster_dir_create": (st, [P, ref(S.kvrt_cluster_dir_params_t), PP]),
    "kvrt_cluster_dir_destroy": (st, [P]),
    "kvrt_cluster_dir_add_node": (st, [P, C.c_uint64, ref(S.kvrt_block_hash_t),
                                       C.c_uint64]),
    "kvrt_cluster_dir_remove_node": (st, [P, C.c_uint64]),
    "kvrt_cluster_dir_apply": (st, [P, C.c_uint64, C.c_uint64, ref(S.kvrt_kv_event_t),
                                    C.c_uint32]),
    "kvrt_cluster_dir_load_snapshot": (st, [P, C.c_uint64, C.c_uint64, C.c_uint64,
                                            ref(S.kvrt_kv_event_t), C.c_uint32]),
    "kvrt_cluster_dir_forget": (st, [P, C.c_uint64, ref(S.kvrt_block_hash_t), C.c_uint32]),
    "kvrt_cluster_dir_node_info": (st, [P, C.c_uint64, ref(S.kvrt_cluster_node_info_t)]),
    "kvrt_cluster_dir_match": (st, [P, ref(S.kvrt_block_hash_t), ref(S.kvrt_block_hash_t),
                                    C.c_uint32, C.c_uint32, ref(S.kvrt_cluster_match_t),
                                    C.c_uint32, u32p]),
    "kvrt_cluster_dir_stats": (st, [P, ref(S.kvrt_cluster_dir_stats_t)]),
    "kvrt_cluster_dir_set_load": (st, [P, C.c_uint64, ref(S.kvrt_cluster_load_t)]),
    "kvrt_cluster_router_create": (st, [P, ref(S.kvrt_cluster_router_params_t), PP]),
    "kvrt_cluster_router_destroy": (st, [P]),
    "kvrt_cluster_router_pick": (st, [P, ref(S.kvrt_block_hash_t), ref(S.kvrt_block_hash_t),
                                      C.c_uint32, C.c_uint64, ref(S.kvrt_route_choice_t)]),
}

_lock = threading.Lock()
_lib = None


def _open():
    tried = []
    candidates = []
    if os.environ.get("KVRT_LIBRARY"):
        candidates.append(os.environ["KVRT_LIBRARY"])
    candidates.append("libkvrt.so.1")
    for path in candidates:
        try:
            return C.CDLL(path)
        except OSError as e:
            tried.append("%s (%s)" % (path, e))
    raise KvrtError(ERR_NOT_FOUND, "libkvrt not found; tried " + "; ".join(tried) +
                    ". Set KVRT_LIBRARY to the path of libkvrt.so", "kvrt")


def _check_version(lib):
    version = C.c_uint32()
    text = C.c_char_p()
    lib.kvrt_version(C.byref(version), C.byref(text))
    major, minor = version.value // 10000, version.value // 100 % 100
    if major != API_MAJOR or minor < API_MINOR:
        raise KvrtError(ERR_VERSION_MISMATCH,
                        "libkvrt %s is not ABI-compatible with this package (written for "
                        "%d.%d; needs major %d, minor >= %d)" % (
                            text.value.decode(), API_MAJOR, API_MINOR, API_MAJOR, API_MINOR),
                        "kvrt")


def lib():
    """The loaded, version-checked library with prototypes set."""
    global _lib
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is None:
            handle = _open()
            missing = []
            for name, (restype, argtypes) in PROTOTYPES.items():
                fn = getattr(handle, name, None)
                if fn is None:
                    missing.append(name)
                    continue
                fn.restype, fn.argtypes = restype, argtypes
            if "kvrt_version" in missing:
                raise KvrtError(ERR_VERSION_MISMATCH, "%s is not a kvrt library" %
                                handle._name, "kvrt")
            _check_version(handle)
            handle.kvrt_missing = frozenset(missing)
            _lib = handle
    return _lib


def fn(name):
    """A prototyped C function; a KvrtError when this library lacks it."""
    lb = lib()
    if name in lb.kvrt_missing:
        raise KvrtError(ERR_VERSION_MISMATCH, "libkvrt has no %s" % name, name)
    return getattr(lb, name)


def check(status, ctx_ptr, name):
    """Raises KvrtError for a failed status, with the context's detail."""
    if status >= 0:
        return status
    detail = ""
    if ctx_ptr:
        raw = lib().kvrt_ctx_last_error(ctx_ptr)
        detail = raw.decode("utf-8", "replace") if raw else ""
    raise KvrtError(status, detail, name)


# Threads inside a kvrt call (ident -> depth): each thread writes only its
# own key, and a dict's item set and delete are atomic under the GIL.
_inside = {}


def threads_inside():
    """Idents of the threads inside a kvrt call now."""
    return set(_inside)


def call(ctx_ptr, name, *args):
    """Calls kvrt function `name` and raises on failure."""
    me = threading.get_ident()
    _inside[me] = _inside.get(me, 0) + 1
    try:
        return check(fn(name)(*args), ctx_ptr, name)
    finally:
        depth = _inside[me] - 1
        if depth:
            _inside[me] = depth
        else:
            del _inside[me]


def bad_arg(detail, function=None):
    return KvrtError(ERR_INVALID_ARG, detail, function)


def uint(value, name, function, bits=32, low=0):
    """value as a Python int in low..2**bits - 1; KvrtError otherwise (ctypes
    would wrap 2**32 + 7 to 7, a float would be truncated)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise bad_arg("%s must be an int, not %s" % (name, type(value).__name__), function)
    if not low <= int(value) < 2 ** bits:
        raise bad_arg("%s=%d out of range %d..2**%d - 1" % (name, value, low, bits), function)
    return int(value)


def sint(value, name, function, bits=32):
    """value as a Python int in -2**(bits-1)..2**(bits-1) - 1; KvrtError otherwise."""
    return uint(value, name, function, bits - 1, low=-2 ** (bits - 1))


def int_array(values, dtype, name, function, ndim=1):
    """values as a C-contiguous numpy array of dtype (an integer type) with
    ndim dimensions (None: any); KvrtError for floats, other shapes or values out of
    the type's range (numpy's cast would wrap or truncate them)."""
    if type(values).__module__.startswith("torch"):
        values = values.detach().cpu().numpy()
    try:
        array = np.asarray(values)
    except (TypeError, ValueError, OverflowError) as e:
        raise bad_arg("%s: %s" % (name, e), function)
    if array.size == 0:
        return np.zeros(array.shape if ndim is None else (0,) * ndim, dtype=dtype)
    if array.dtype.kind not in "iu":
        raise bad_arg("%s must hold integers, not %s" % (name, array.dtype), function)
    if ndim is not None and array.ndim != ndim:
        raise bad_arg("%s must have %d dimension(s), not shape %s" % (name, ndim, array.shape),
                      function)
    limits = np.iinfo(dtype)
    if int(array.min()) < limits.min or int(array.max()) > limits.max:
        raise bad_arg("%s holds values outside %s" % (name, np.dtype(dtype).name), function)
    return np.ascontiguousarray(array, dtype=dtype)


# What Python raises for an argument of the wrong type or shape while a
# public call prepares its C arguments (a C failure is already a KvrtError).
_ARGUMENT_ERRORS = (TypeError, ValueError, AttributeError, ZeroDivisionError, OverflowError,
                    IndexError, C.ArgumentError)


def _as_kvrt_errors(function, where):
    if getattr(function, "_kvrt_errors_only", False):
        return function
    @functools.wraps(function)
    def checked(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except KvrtError:
            raise
        except _ARGUMENT_ERRORS as e:
            raise bad_arg("%s: %s" % (type(e).__name__, e), where) from e
    checked._kvrt_errors_only = True
    return checked


def kvrt_errors_only(namespace, package):
    """Makes every public function and method (and __init__) of the
    package's classes and functions in namespace raise KvrtError, as
    docs/python.md promises, for what Python itself would raise on a bad
    argument (TypeError, ValueError, ...). The original stays the cause."""
    for name, value in list(namespace.items()):
        if name.startswith("_") or getattr(value, "__module__", "").split(".")[0] != package:
            continue
        if inspect.isclass(value):
            for attr, member in list(vars(value).items()):
                if inspect.isfunction(member) and (attr == "__init__" or
                                                   not attr.startswith("_")):
                    setattr(value, attr, _as_kvrt_errors(member, "%s.%s" % (name, attr)))
        elif inspect.isfunction(value):
            namespace[name] = _as_kvrt_errors(value, name)
