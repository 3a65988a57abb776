"""Tiers below the pool (kvrt_tier_t): host DRAM and SSD keep the blocks the
prefix cache evicts, and bring them back (include/kvrt/tier.h).

    tier = kvrt.Tier(cache, host_blocks=4096, ssd_dir="/nvme/kv", ssd_blocks=1 << 20)
    found = tier.match(prompt)                  # pool hits, then host, then SSD
    blocks = pool.alloc(found.host_blocks + found.ssd_blocks)
    ticket, started = tier.onload(found.pool_blocks.size, found.tier_hashes, blocks,
                                  parent=found.parent)
    ... tier.poll() until the ticket is reported; then those blocks are cached ...

Copies and I/O run on a kvrt thread; poll() (or wait on fd()) collects them.
Pools kvrt allocated (host memory) only; device pools raise
KVRT_ERR_UNSUPPORTED.
"""
import ctypes as C
from collections import namedtuple

import numpy as np

from . import _lib
from . import _structs as S
from ._handle import Handle
from .cache import PrefixCache, hash_keys
from .pool import _u32

_HOST_BLOCKS, _SSD, _QUEUE_DEPTH, _FLAGS = 1, 2, 4, 8
SSD_BUFFERED, HOST_POOL = 1, 2  # enum kvrt_tier_flags
MISS_REASONS = {0: "none", 1: "gone", 2: "checksum", 3: "truncated", 4: "io", 5: "no_slot",
                6: "reset"}

# pool_blocks: the pool hits (a reference held on each, as PrefixCache.match);
# host_blocks / ssd_blocks: how far the prefix continues in each tier;
# tier_hashes: the content hashes of those tier blocks (kvrt_block_hash_t
# array), what onload() takes; parent: the hash before them (None at 0).
TierMatch = namedtuple("TierMatch", "pool_blocks host_blocks ssd_blocks tier_hashes parent")


class Tier(Handle):
    """The tier stack under cache (its eviction sink until close())."""

    _kind = "tier"

    def __init__(self, cache, host_blocks, ssd_dir=None, ssd_blocks=None, queue_depth=None,
                 buffered=False, host_pool=False):
        if not isinstance(cache, PrefixCache):
            raise _lib.bad_arg("cache must be a kvrt.PrefixCache", "Tier")
        p = S.kvrt_tier_params_t(field_mask=_HOST_BLOCKS,
                                 host_blocks=_u32(host_blocks, "host_blocks", "Tier"))
        if ssd_dir is not None:
            p.field_mask |= _SSD
            self._ssd_dir = str(ssd_dir).encode()
            p.ssd_dir = self._ssd_dir
            p.ssd_blocks = _u32(ssd_blocks, "ssd_blocks", "Tier")
        if queue_depth is not None:
            p.field_mask |= _QUEUE_DEPTH
            p.queue_depth = _u32(queue_depth, "queue_depth", "Tier")
        flags = (SSD_BUFFERED if buffered else 0) | (HOST_POOL if host_pool else 0)
        if flags:
            p.field_mask |= _FLAGS
            p.flags = flags
        ptr = C.c_void_p()
        cache._call("kvrt_tier_create", cache._handle("Tier"), C.byref(p), C.byref(ptr))
        super().__init__(cache._context, ptr.value)
        self.cache = cache

    def match(self, tokens, max_blocks=None, adapter_id=None, salt=None, mm_items=None):
        """How far tokens' prefix goes in the pool, then host, then SSD."""
        tokens = _lib.int_array(tokens, np.int32, "tokens", "Tier.match")
        cap = (len(tokens) // self.cache.pool.layout.tokens_per_block
               if max_blocks is None else _lib.uint(max_blocks, "max_blocks", "Tier.match"))
        blocks = np.zeros(max(cap, 1), dtype=np.int32)
        hashes = (S.kvrt_block_hash_t * max(cap, 1))()
        keys = hash_keys(adapter_id, salt, mm_items, "Tier.match")
        m = S.kvrt_tier_match_t()
        self._call("kvrt_tier_match", self._handle("match"), tokens.ctypes.data_as(_lib.i32p),
                   len(tokens), C.byref(keys) if keys else None, cap,
                   blocks.ctypes.data_as(_lib.i32p), hashes, C.byref(m))
        first, more = m.gpu_blocks, m.host_blocks + m.ssd_blocks
        tier_hashes = (S.kvrt_block_hash_t * more)(*hashes[first:first + more])
        parent = S.kvrt_block_hash_t(hashes[first - 1].lo, hashes[first - 1].hi) \
            if first else None
        return TierMatch(blocks[:first].copy(), m.host_blocks, m.ssd_blocks, tier_hashes, parent)

    def onload(self, first_index, contents, blocks, parent=None, adapter_id=None, salt=None,
               mm_items=None):
        """Starts bringing blocks first_index.. of a sequence (content hashes
        `contents`, from match()) back into the caller's pool `blocks`.
        Returns (ticket, blocks started); poll() reports the ticket once.
        Neither read nor free `blocks` until then."""
        contents = (S.kvrt_block_hash_t * len(contents))(*contents)
        blocks = _lib.int_array(blocks, np.int32, "blocks", "Tier.onload")
        if len(blocks) != len(contents):
            raise _lib.bad_arg("blocks and contents differ in length", "Tier.onload")
        keys = hash_keys(adapter_id, salt, mm_items, "Tier.onload")
        ticket, accepted = C.c_uint64(), C.c_uint32()
        self._call("kvrt_tier_onload", self._handle("onload"),
                   _u32(first_index, "first_index", "Tier"), len(contents), contents,
                   C.byref(parent) if parent is not None else None,
                   C.byref(keys) if keys else None, blocks.ctypes.data_as(_lib.i32p),
                   C.byref(ticket), C.byref(accepted))
        return ticket.value, accepted.value

    @staticmethod
    def _completions(out, count):
        return [dict(ticket=c.ticket, requested=c.requested, landed=c.landed,
                     miss=MISS_REASONS.get(c.miss, c.miss)) for c in out[:count]]

    def poll(self, capacity=64):
        """Finished onloads as dicts (ticket, requested, landed, miss). Never blocks."""
        out = (S.kvrt_tier_completion_t * max(int(capacity), 1))()
        n = C.c_uint32()
        self._call("kvrt_tier_poll", self._handle("poll"), out, len(out), C.byref(n))
        return self._completions(out, n.value)

    def drain(self, timeout_ms=10000, capacity=64):
        """Polls until nothing is in flight (KVRT_ERR_TIMEOUT after timeout_ms)."""
        out = (S.kvrt_tier_completion_t * max(int(capacity), 1))()
        n = C.c_uint32()
        self._call("kvrt_tier_drain", self._handle("drain"),
                   _u32(timeout_ms, "timeout_ms", "Tier"), out, len(out), C.byref(n))
        return self._completions(out, n.value)

    def fd(self):
        """An eventfd readable when poll() has work (valid until close())."""
        return _lib.fn("kvrt_tier_fd")(self._handle("fd"))

    def stats(self):
        """{"host": {...}, "ssd": {...}, "ssd_buffered": 0|1, "in_flight": n}."""
        out = S.kvrt_tier_stats_t()
        self._call("kvrt_tier_stats", self._handle("stats"), C.byref(out))
        return out.as_dict()

    _destroy = "kvrt_tier_destroy"
