"""A set of hosts as one cache (include/kvrt/cluster.h): each node publishes
what its cache holds (KvEvents), a Directory maps block keys to the nodes
that hold them, and a Router picks a node for a prompt.

    events = kvrt.KvEvents(ctx)
    events.attach(cache)                       # STORED / REMOVED / CLEARED
    directory = kvrt.Directory(ctx)
    directory.add_node(7, fingerprint, events.epoch()[0])
    epoch, batch = events.take()
    directory.apply(7, epoch, batch)           # or ship batch to another host
    router = kvrt.Router(directory)
    choice = router.pick(fingerprint, keys, prompt_tokens=len(prompt))

Block keys and model fingerprints are kvrt_block_hash_t values or (lo, hi)
pairs. Event batches are ctypes arrays of kvrt_kv_event_t (pass them on as
they are; each element has as_dict()). etcd membership is not wrapped.
"""
import ctypes as C

from . import _lib
from . import _structs as S
from ._handle import Handle
from .cache import PrefixCache, block_hash
from .errors import KvrtError, ERR_BAD_STATE, ERR_BUFFER_TOO_SMALL
from .pool import _u32

TIER_GPU, TIER_HOST, TIER_DISK = 0, 1, 2
EVENT_STORED, EVENT_REMOVED, EVENT_CLEARED = 1, 2, 3
ROUTE_ROUND_ROBIN, ROUTE_LEAST_LOADED, ROUTE_CACHE_AWARE = 0, 1, 2
_EVENTS = dict(capacity=1, epoch=2)
_DIR = dict(expected_blocks=1)
_LOAD = dict(queued_prefill_tokens=1, running_decodes=2, free_blocks=4)
_ROUTER = dict(policy=1, prefill_weight=2, decode_weight=4, tokens_per_block=8, tier_mask=16)


def _hashes(values, name, function):
    values = list(values)
    return (S.kvrt_block_hash_t * len(values))(*[block_hash(v, name, function)
                                                 for v in values])


def _create(context, function, params, caller):
    """A new C object of context (function(ctx, &params, &out))."""
    ptr = C.c_void_p()
    _lib.call(context._ptr, function, context._handle(caller), C.byref(params), C.byref(ptr))
    return ptr.value


def _events(batch, function):
    """A kvrt_kv_event_t array from one, or from (event_id, kind, tier, key)s."""
    if isinstance(batch, C.Array) and batch._type_ is S.kvrt_kv_event_t:
        return batch
    try:
        rows = [S.kvrt_kv_event_t(int(i), int(k), int(t), block_hash(key, "key", function))
                for i, k, t, key in batch]
    except (TypeError, ValueError, OverflowError) as e:
        raise _lib.bad_arg("events: (event_id, kind, tier, key) each: %s" % e, function)
    return (S.kvrt_kv_event_t * len(rows))(*rows)


class KvEvents(Handle):
    """One node's event stream (a publisher). epoch: 0 draws a random one."""

    _kind = "KV event publisher"

    def __init__(self, context, capacity=None, epoch=None):
        p = S.kvrt_kv_events_params_t()
        S.set_masked(p, _EVENTS, epoch=None if epoch is None else int(epoch),
                     capacity=None if capacity is None else
                     _u32(capacity, "capacity", "KvEvents"))
        super().__init__(context, _create(context, "kvrt_kv_events_create", p, "KvEvents"))
        self.cache = None

    def record(self, kind, tier, key):
        """Records one event by hand (an engine without a kvrt cache)."""
        key = block_hash(key, "key", "KvEvents.record")
        self._call("kvrt_kv_events_record", self._handle("record"), int(kind), int(tier),
                   C.byref(key))

    def attach(self, cache, tier=TIER_GPU):
        """Follows cache: every block it indexes or drops becomes an event."""
        if not isinstance(cache, PrefixCache):
            raise _lib.bad_arg("cache must be a kvrt.PrefixCache", "KvEvents.attach")
        self._call("kvrt_kv_events_attach", self._handle("attach"), cache._handle("attach"),
                   int(tier))
        self.cache = cache
        cache._publishers.add(self)

    def detach(self):
        self._call("kvrt_kv_events_detach", self._handle("detach"))
        self._release_cache()

    def _release_cache(self):
        if self.cache is not None:
            self.cache._publishers.discard(self)
            self.cache = None

    def close(self):
        super().close()  # kvrt_kv_events_destroy stops following the cache
        self._release_cache()

    def take(self, capacity=4096):
        """(epoch, the oldest untaken events, at most capacity, in id order)."""
        out = (S.kvrt_kv_event_t * max(int(capacity), 1))()
        n, epoch = C.c_uint32(), C.c_uint64()
        self._call("kvrt_kv_events_take", self._handle("take"), out, len(out), C.byref(n),
                   C.byref(epoch))
        return epoch.value, _prefix(out, n.value)

    def epoch(self):
        """(epoch, id of the last event recorded)."""
        epoch, last = C.c_uint64(), C.c_uint64()
        self._call("kvrt_kv_events_epoch", self._handle("epoch"), C.byref(epoch),
                   C.byref(last))
        return epoch.value, last.value

    def snapshot(self):
        """(every key held now as STORED records, id of the last event they
        reflect): what a directory loads to resynchronize."""
        n, last = C.c_uint32(), C.c_uint64()
        capacity = 1024
        while True:
            out = (S.kvrt_kv_event_t * capacity)()
            status = _lib.fn("kvrt_kv_events_snapshot")(self._handle("snapshot"), out,
                                                        capacity, C.byref(n), C.byref(last))
            if status != ERR_BUFFER_TOO_SMALL:
                _lib.check(status, self._ctx_ptr(), "kvrt_kv_events_snapshot")
                return _prefix(out, n.value), last.value
            capacity = max(capacity * 2, n.value)

    _destroy = "kvrt_kv_events_destroy"


def _prefix(array, count):
    return (S.kvrt_kv_event_t * count).from_buffer_copy(array, 0) if count else \
        (S.kvrt_kv_event_t * 0)()


class Directory(Handle):
    """The prefix directory: which node holds which block, per tier."""

    _kind = "cluster directory"

    def __init__(self, context, expected_blocks=None):
        p = S.kvrt_cluster_dir_params_t()
        S.set_masked(p, _DIR, expected_blocks=None if expected_blocks is None else
                     int(expected_blocks))
        super().__init__(context, _create(context, "kvrt_cluster_dir_create", p, "Directory"))
        self._routers = []

    def add_node(self, node_id, model, epoch):
        model = block_hash(model, "model", "add_node")
        self._call("kvrt_cluster_dir_add_node", self._handle("add_node"), int(node_id),
                   C.byref(model), int(epoch))

    def remove_node(self, node_id):
        self._call("kvrt_cluster_dir_remove_node", self._handle("remove_node"), int(node_id))

    def apply(self, node_id, epoch, events):
        """Applies a node's event batch. KVRT_ERR_RESYNC: load a snapshot."""
        events = _events(events, "Directory.apply")
        self._call("kvrt_cluster_dir_apply", self._handle("apply"), int(node_id), int(epoch),
                   events, len(events))

    def load_snapshot(self, node_id, epoch, last_event_id, records):
        records = _events(records, "Directory.load_snapshot")
        self._call("kvrt_cluster_dir_load_snapshot", self._handle("load_snapshot"),
                   int(node_id), int(epoch), int(last_event_id), records, len(records))

    def forget(self, node_id, keys):
        """Drops keys of a node (e.g. a pull from it found them gone)."""
        keys = _hashes(keys, "keys", "Directory.forget")
        self._call("kvrt_cluster_dir_forget", self._handle("forget"), int(node_id), keys,
                   len(keys))

    def node_info(self, node_id):
        out = S.kvrt_cluster_node_info_t()
        self._call("kvrt_cluster_dir_node_info", self._handle("node_info"), int(node_id),
                   C.byref(out))
        return out.as_dict()

    def match(self, model, keys, tier_mask=0):
        """{node_id: (prefix_blocks, gpu_prefix_blocks)} for a prompt's keys."""
        model = block_hash(model, "model", "Directory.match")
        keys = _hashes(keys, "keys", "Directory.match")
        out = (S.kvrt_cluster_match_t * 64)()  # KVRT_CLUSTER_MAX_NODES
        n = C.c_uint32()
        self._call("kvrt_cluster_dir_match", self._handle("match"), C.byref(model), keys,
                   len(keys), _u32(tier_mask, "tier_mask", "Directory.match"), out, len(out),
                   C.byref(n))
        return {m.node_id: (m.prefix_blocks, m.gpu_prefix_blocks) for m in out[:n.value]}

    def set_load(self, node_id, queued_prefill_tokens=None, running_decodes=None,
                 free_blocks=None):
        load = S.kvrt_cluster_load_t()
        S.set_masked(load, _LOAD, queued_prefill_tokens=queued_prefill_tokens,
                     running_decodes=running_decodes, free_blocks=free_blocks)
        self._call("kvrt_cluster_dir_set_load", self._handle("set_load"), int(node_id),
                   C.byref(load))

    def stats(self):
        out = S.kvrt_cluster_dir_stats_t()
        self._call("kvrt_cluster_dir_stats", self._handle("stats"), C.byref(out))
        return out.as_dict()

    _destroy = "kvrt_cluster_dir_destroy"

    def close(self):
        """Closes the routers over this directory first (they read it)."""
        for router in self._routers:
            router.close()
        super().close()


class Router(Handle):
    """Picks a node for each prompt (policy ROUTE_*; kvrt's defaults when None)."""

    _kind = "cluster router"

    def __init__(self, directory, policy=None, prefill_weight=None, decode_weight=None,
                 tokens_per_block=None, tier_mask=None):
        if not isinstance(directory, Directory):
            raise _lib.bad_arg("directory must be a kvrt.Directory", "Router")
        p = S.kvrt_cluster_router_params_t()
        S.set_masked(p, _ROUTER, policy=policy,
                     prefill_weight=None if prefill_weight is None else float(prefill_weight),
                     decode_weight=None if decode_weight is None else float(decode_weight),
                     tokens_per_block=tokens_per_block, tier_mask=tier_mask)
        ptr = C.c_void_p()
        directory._call("kvrt_cluster_router_create", directory._handle("Router"), C.byref(p),
                        C.byref(ptr))
        super().__init__(directory._context, ptr.value)
        self.directory = directory
        directory._routers.append(self)

    def pick(self, model, keys, prompt_tokens):
        """The chosen node as a dict (node_id, cached_blocks, best_blocks,
        best_node_id, cost)."""
        if self.directory._ptr is None:
            raise KvrtError(ERR_BAD_STATE, "router used after its directory was closed",
                            "Router.pick")
        model = block_hash(model, "model", "Router.pick")
        keys = _hashes(keys, "keys", "Router.pick")
        out = S.kvrt_route_choice_t()
        self._call("kvrt_cluster_router_pick", self._handle("pick"), C.byref(model), keys,
                   len(keys), int(prompt_tokens), C.byref(out))
        return out.as_dict()

    _destroy = "kvrt_cluster_router_destroy"
