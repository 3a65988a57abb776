"""The prefix cache (kvrt_cache_t) attached to a pool."""
import ctypes as C

import numpy as np

from . import _lib
from . import _structs as S
from ._handle import Handle
from .errors import KvrtError, ERR_BUSY
from .pool import Pool

LRU, LFU, LFU_AGED, LRU_LEAF, ADAPTIVE = 0, 1, 2, 3, 4
MISS_REASONS = {0: "none", 1: "never_cached", 2: "evicted", 3: "key_mismatch", 4: "partial"}
_PARAM_POLICY, _PARAM_FINGERPRINT, _PARAM_NAME = 1, 2, 4
_KEY_ADAPTER, _KEY_SALT, _KEY_MM = 1, 2, 4
RESET_FORGET_BUSY = 1  # KVRT_CACHE_RESET_FORGET_BUSY


def block_hash(value, name="hash", function=None):
    """A kvrt_block_hash_t from one, or from a (lo, hi) pair of ints."""
    if isinstance(value, S.kvrt_block_hash_t):
        return value
    try:
        lo, hi = value
        return S.kvrt_block_hash_t(int(lo), int(hi))
    except (TypeError, ValueError, OverflowError) as e:
        raise _lib.bad_arg("%s must be a kvrt_block_hash_t or (lo, hi): %s" % (name, e),
                           function)


def hash_keys(adapter_id=None, salt=None, mm_items=None, function=None):
    """A sequence's kvrt_hash_keys_t (adapter, tenant salt, multimodal items
    as (content_hash, offset, length)), or None when none is given. The
    struct keeps its salt and items alive."""
    if adapter_id is None and salt is None and mm_items is None:
        return None
    keys = S.kvrt_hash_keys_t()
    if adapter_id is not None:
        keys.field_mask |= _KEY_ADAPTER
        keys.adapter_id = _lib.uint(adapter_id, "adapter_id", function, bits=64)
    if salt is not None:
        if isinstance(salt, str):
            salt = salt.encode()
        if not isinstance(salt, (bytes, bytearray, memoryview)):
            # bytes(3) would be three zero bytes: numeric tenant ids would collide
            raise _lib.bad_arg("salt must be bytes or str, not %s" % type(salt).__name__,
                               function)
        keys._salt = bytes(salt)
        keys.field_mask |= _KEY_SALT
        keys.salt = C.cast(C.c_char_p(keys._salt), C.c_void_p)
        keys.salt_bytes = len(keys._salt)
    if mm_items is not None:
        items = list(mm_items)
        try:
            keys._items = (S.kvrt_mm_item_t * max(len(items), 1))(*[
                S.kvrt_mm_item_t(block_hash(h, "mm_items hash", function), int(off), int(n))
                for h, off, n in items])
        except (TypeError, ValueError, OverflowError) as e:
            raise _lib.bad_arg("mm_items: (content_hash, offset, length) each: %s" % e,
                               function)
        keys.field_mask |= _KEY_MM
        keys.mm_items, keys.num_mm_items = keys._items, len(items)
    return keys


def model_fingerprint(model_id, layout):
    out = S.kvrt_block_hash_t()
    _lib.call(None, "kvrt_model_fingerprint", str(model_id).encode(), C.byref(layout.c),
              C.byref(out))
    return out


def block_keys(tokens, fingerprint, tokens_per_block, adapter_id=None, salt=None,
                mm_items=None):
    """The index keys of tokens' full blocks under a model fingerprint (the
    keys KV events carry and the cluster directory and router take), as
    (lo, hi) pairs, computed as docs/block-hash.md specifies."""
    tokens = np.ascontiguousarray(tokens, dtype=np.int32)
    keys = hash_keys(adapter_id, salt, mm_items, "block_keys")
    keys_ref = C.byref(keys) if keys else None
    tpb = int(tokens_per_block)
    parent = S.kvrt_block_hash_t()
    _lib.call(None, "kvrt_block_hash_root", C.byref(block_hash(fingerprint)), C.byref(parent))
    out = []
    for first in range(0, len(tokens) - len(tokens) % tpb, tpb):
        content, key = S.kvrt_block_hash_t(), S.kvrt_block_hash_t()
        chunk = tokens[first:first + tpb]
        _lib.call(None, "kvrt_block_hash", C.byref(parent), chunk.ctypes.data_as(_lib.i32p),
                  tpb, first, keys_ref, C.byref(content))
        _lib.call(None, "kvrt_block_key", C.byref(content), keys_ref, C.byref(key))
        out.append((key.lo, key.hi))
        parent = content
    return out


class PrefixCache(Handle):
    """A prefix cache over pool. model_id, when given, keys the cache by a
    fingerprint of the model and layout so two models never share blocks."""

    _kind = "prefix cache"

    def __init__(self, pool, policy=None, model_id=None, name=None):
        if not isinstance(pool, Pool):
            raise _lib.bad_arg("pool must be a kvrt.Pool", "PrefixCache")
        p = S.kvrt_cache_params_t(field_mask=_PARAM_FINGERPRINT)
        # kvrt's own default when no model is named; kept for block_keys().
        p.model_fingerprint = model_fingerprint(
            "unnamed" if model_id is None else model_id, pool.layout)
        self.fingerprint = (p.model_fingerprint.lo, p.model_fingerprint.hi)
        if policy is not None:  # else kvrt's default (LRU_LEAF)
            p.field_mask |= _PARAM_POLICY
            p.policy = int(policy)
        if name is not None:
            p.field_mask |= _PARAM_NAME
            self._name = str(name).encode()
            p.name = self._name
        ptr = C.c_void_p()
        pool._call("kvrt_cache_create", pool._handle("PrefixCache"), C.byref(p), C.byref(ptr))
        super().__init__(pool._context, ptr.value)
        self.pool = pool
        self._publishers = set()  # attached kvrt.KvEvents

    def match(self, tokens, max_blocks=None):
        """Looks tokens up: (block ids with a reference taken each, which the
        caller must free or adopt; the miss reason)."""
        tokens = _lib.int_array(tokens, np.int32, "tokens", "match")
        tpb = self.pool.layout.tokens_per_block
        cap = (len(tokens) // tpb if max_blocks is None
               else _lib.uint(max_blocks, "max_blocks", "match"))
        blocks = np.zeros(max(cap, 1), dtype=np.int32)
        hashes = (S.kvrt_block_hash_t * max(cap, 1))()
        m = S.kvrt_cache_match_t()
        self._call("kvrt_cache_match", self._handle("match"), tokens.ctypes.data_as(_lib.i32p),
                   len(tokens), None, cap, blocks.ctypes.data_as(_lib.i32p), hashes,
                   C.byref(m))
        return blocks[:m.num_blocks].copy(), MISS_REASONS.get(m.miss_reason, m.miss_reason)

    def block_keys(self, tokens, adapter_id=None, salt=None, mm_items=None):
        """block_keys() under this cache's fingerprint and block size."""
        return block_keys(tokens, self.fingerprint, self.pool.layout.tokens_per_block,
                          adapter_id, salt, mm_items)

    def stats(self):
        out = S.kvrt_cache_stats_t()
        self._call("kvrt_cache_stats_sized", self._handle("stats"), C.sizeof(out),
                   C.byref(out))
        return out.as_dict()

    def reset(self, forget_busy=False):
        """Empties the cache (kvrt_cache_reset): nothing cached before is
        matched after. Raises KVRT_ERR_BUSY while cached blocks are still
        referenced, unless forget_busy (they leave the index and stay with
        their holders as ordinary blocks)."""
        self._call("kvrt_cache_reset", self._handle("reset"),
                   RESET_FORGET_BUSY if forget_busy else 0)

    def reset_stats(self):
        """Zeroes the counters (not the gauges)."""
        self._call("kvrt_cache_reset_stats", self._handle("reset_stats"))

    def verify(self):
        self._call("kvrt_cache_verify", self._handle("verify"))

    _destroy = "kvrt_cache_destroy"

    def close(self):
        """Refuses (KVRT_ERR_BUSY) while a KvEvents publisher follows the
        cache: the publisher would keep pointing at it. Detach it first."""
        if self._publishers and not self.closed:
            raise KvrtError(ERR_BUSY, "a KV event publisher is attached; detach or close "
                            "it first", "PrefixCache.close")
        super().close()
