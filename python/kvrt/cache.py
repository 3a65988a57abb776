"""The prefix cache (kvrt_cache_t) attached to a pool."""
import ctypes as C

import numpy as np

from . import _lib
from . import _structs as S
from ._handle import Handle
from .pool import Pool

LRU, LFU, LFU_AGED = 0, 1, 2
MISS_REASONS = {0: "none", 1: "never_cached", 2: "evicted", 3: "key_mismatch", 4: "partial"}
_PARAM_POLICY, _PARAM_FINGERPRINT, _PARAM_NAME = 1, 2, 4


def model_fingerprint(model_id, layout):
    out = S.kvrt_block_hash_t()
    _lib.call(None, "kvrt_model_fingerprint", str(model_id).encode(), C.byref(layout.c),
              C.byref(out))
    return out


class PrefixCache(Handle):
    """A prefix cache over pool. model_id, when given, keys the cache by a
    fingerprint of the model and layout so two models never share blocks."""

    _kind = "prefix cache"

    def __init__(self, pool, policy=LRU, model_id=None, name=None):
        if not isinstance(pool, Pool):
            raise _lib.bad_arg("pool must be a kvrt.Pool", "PrefixCache")
        p = S.kvrt_cache_params_t(field_mask=_PARAM_POLICY, policy=int(policy))
        if model_id is not None:
            p.field_mask |= _PARAM_FINGERPRINT
            p.model_fingerprint = model_fingerprint(model_id, pool.layout)
        if name is not None:
            p.field_mask |= _PARAM_NAME
            self._name = str(name).encode()
            p.name = self._name
        ptr = C.c_void_p()
        pool._call("kvrt_cache_create", pool._handle("PrefixCache"), C.byref(p), C.byref(ptr))
        super().__init__(pool._context, ptr.value)
        self.pool = pool

    def match(self, tokens, max_blocks=None):
        """Looks tokens up: (block ids with a reference taken each, which the
        caller must free or adopt; the miss reason)."""
        tokens = np.ascontiguousarray(tokens, dtype=np.int32)
        tpb = self.pool.layout.tokens_per_block
        cap = len(tokens) // tpb if max_blocks is None else int(max_blocks)
        blocks = np.zeros(max(cap, 1), dtype=np.int32)
        hashes = (S.kvrt_block_hash_t * max(cap, 1))()
        m = S.kvrt_cache_match_t()
        self._call("kvrt_cache_match", self._handle("match"), tokens.ctypes.data_as(_lib.i32p),
                   len(tokens), None, cap, blocks.ctypes.data_as(_lib.i32p), hashes,
                   C.byref(m))
        return blocks[:m.num_blocks].copy(), MISS_REASONS.get(m.miss_reason, m.miss_reason)

    def stats(self):
        out = S.kvrt_cache_stats_t()
        self._call("kvrt_cache_stats", self._handle("stats"), C.byref(out))
        return {f[0]: getattr(out, f[0]) for f in out._fields_}

    def verify(self):
        self._call("kvrt_cache_verify", self._handle("verify"))

    _destroy = "kvrt_cache_destroy"
