"""The scheduler (kvrt_sched_t): requests, steps, plans, commits, speculation.

Zero-copy plans: Scheduler.step() returns a Plan whose arrays are numpy
views of kvrt's own memory, read-only, valid until the next step() or
commit() of that scheduler (or its close). A Plan checks this on every
attribute access and raises KvrtError(KVRT_ERR_BAD_STATE) once stale; an
array taken from it earlier cannot be checked, so copy what you keep.
"""
import ctypes as C
import time

import numpy as np

from . import _lib
from . import _structs as S
from ._handle import Handle
from .cache import PrefixCache, hash_keys
from .errors import KvrtError, ERR_BAD_STATE
from .pool import Pool, _u32

PLAN_PREFILL, PLAN_DECODE, PLAN_SPEC = 0, 1, 2
SEQ_STATES = {0: "waiting", 1: "running", 2: "preempted", 3: "ended", 4: "waiting_kv"}
END_REASONS = {0: "none", 1: "length", 2: "stop", 3: "aborted", 4: "failed"}
MAX_DRAFT = 16
TOKEN_PLACEHOLDER = -1  # KVRT_TOKEN_PLACEHOLDER: a token the previous plan samples

_P = dict(max_batch_tokens=1, max_seqs=2, prefill_chunk_tokens=4, use_watermark=8,
          max_requests=16, max_seq_tokens=32, max_draft_tokens=64, ngram=128,
          adaptive_draft=256, csr_block_tables=512, max_plans_in_flight=1024,
          shared_prefill_min_tokens=2048)
_SEQ_STOP, _SEQ_PRIORITY, _SEQ_DEADLINE, _SEQ_KEYS, _SEQ_USER_TAG = 1, 2, 4, 8, 16
_SEQ_CACHE_FLAGS, _SEQ_MIN_TOKENS = 32, 64
_ARRIVAL_DEADLINE = 1
# Per-request prefix-cache control (enum kvrt_seq_cache_flags): add(cache_flags=...).
CACHE_SKIP_READ, CACHE_SKIP_WRITE, CACHE_DROP_LAST_HIT = 1, 2, 4
_COMMIT_ACCEPTED = 1
_COMMIT_DRAFTS = 2
_GROUP_CACHE, _GROUP_WINDOW = 1, 2
MAX_GROUPS = 8  # KVRT_SCHED_MAX_GROUPS


def _view(pointer, count, owner=None):
    """A read-only numpy view of count elements at a ctypes pointer; the
    view keeps owner (the object whose memory it shows) alive."""
    if count == 0 or not pointer:
        return np.zeros(0, dtype=_dtype_of(pointer))
    memory = (pointer._type_ * count).from_address(C.addressof(pointer.contents))
    memory._kvrt_owner = owner
    array = np.ctypeslib.as_array(memory)
    array.flags.writeable = False
    return array


def _dtype_of(pointer):
    return np.dtype(pointer._type_) if hasattr(pointer, "_type_") else np.int32


def _tokens(values, name, function, allow_empty=False):
    array = _lib.int_array(values, np.int32, name, function)
    if array.ndim != 1 or (len(array) == 0 and not allow_empty):
        raise _lib.bad_arg("%s must be a non-empty 1-D sequence of token ids" % name, function)
    return array


def _token_lists(items, name, function):
    """(key, token ids) pairs as (counts uint32, their concatenation int32);
    a bad list is named name[key]."""
    parts = [_tokens(t, "%s[%d]" % (name, k), function, allow_empty=True) for k, t in items]
    counts = np.fromiter((len(t) for t in parts), dtype=np.uint32, count=len(parts))
    return counts, (np.concatenate(parts) if parts else np.zeros(0, np.int32))


def _info_dict(info, copy_output=True):
    d = {f[0]: getattr(info, f[0]) for f in info._fields_ if f[0] != "output"}
    d["state"] = SEQ_STATES.get(info.state, info.state)
    d["end_reason"] = END_REASONS.get(info.end_reason, info.end_reason)
    d["output"] = (np.ctypeslib.as_array(info.output, (info.output_tokens,)).tolist()
                   if info.output_tokens and info.output else [])
    return d


def _copies(copies, count):
    return [(copies[i].src_block, copies[i].dst_block) for i in range(count)]


def _rows(pointer, num_rows, stride, owner):
    n = num_rows * stride
    return _view(pointer, n, owner).reshape(num_rows, stride) if n else \
        np.zeros((0, 0), np.int32)


class Plan:
    """One step's batch plan (kvrt_batch_plan_t); see the module notes."""

    _ARRAYS = {  # name: (field, length attribute)
        "query_start_loc": ("query_start_loc", lambda p: p.num_seqs + 1 if p.num_seqs else 0),
        "seq_lens": ("seq_lens", lambda p: p.num_seqs),
        "input_tokens": ("input_tokens", lambda p: p.num_tokens),
        "positions": ("positions", lambda p: p.num_tokens),
        "slot_mapping": ("slot_mapping", lambda p: p.num_tokens),
        "row_index": ("row_index", lambda p: p.num_seqs),
        "rows_changed": ("rows_changed", lambda p: p.num_rows_changed),
        "preempted": ("preempted", lambda p: p.num_preempted),
        "seqs": ("seqs", lambda p: p.num_seqs),
    }

    def __init__(self, sched, plan_ptr):
        self._sched = sched
        self._plan = plan_ptr.contents
        self._life = sched._life
        self._taken_at = sched._steps
        self._committed_at = None
        self._empty = self._plan.num_seqs == 0
        self._step = self._plan.step

    @property
    def valid(self):
        """kvrt's rule (sched.h): a plan is valid until it is committed and
        the step after; an empty plan (no commit needed) until the next step."""
        s = self._sched
        if s.closed or s._life != self._life:
            return False
        if self._committed_at is not None:
            return s._steps == self._committed_at
        return not self._empty or s._steps == self._taken_at

    def _check(self, what):
        if not self.valid:
            raise KvrtError(ERR_BAD_STATE, "plan of step %d used (%s) after the scheduler "
                            "moved on: a plan is valid until it is committed and the step "
                            "after" % (self._step, what), "Plan")
        return self._plan

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        plan = self._check(name)
        if name in self._ARRAYS:
            field, length = self._ARRAYS[name]
            return _view(getattr(plan, field), length(plan), self._sched)
        if name == "block_rows":
            return _rows(plan.block_rows, plan.num_rows, plan.row_stride, self._sched)
        if name in ("block_table_offsets", "block_table_ids"):  # csr_block_tables only
            if not plan.block_table_offsets:
                return None
            offsets = _view(plan.block_table_offsets, plan.num_seqs + 1, self._sched)
            if name == "block_table_offsets":
                return offsets
            return _view(plan.block_table_ids, int(offsets[-1]), self._sched)
        if name == "copies":
            return _copies(plan.copies, plan.num_copies)
        if name == "groups":
            return [PlanGroup(self, g) for g in range(plan.num_groups)]
        return getattr(plan, name)

    def __len__(self):
        return self._check("len").num_seqs


class PlanGroup:
    """One cache group's part of a Plan (kvrt_plan_group_t): slot_mapping
    (plan order, like Plan.input_tokens), block_rows (indexed by
    Plan.row_index; in a sliding-window group, blocks that left the window
    are NULL_BLOCK), copies, the CSR tables (csr_block_tables only),
    tokens_per_block and sliding_window (0: full attention). Valid as long
    as its Plan, checked on every access like the Plan's own fields."""

    def __init__(self, plan, index):
        self._plan, self._index = plan, index

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        raw = self._plan._check("groups[%d].%s" % (self._index, name))
        group, owner = raw.groups[self._index], self._plan._sched
        if name == "slot_mapping":
            return _view(group.slot_mapping, raw.num_tokens, owner)
        if name == "block_rows":
            return _rows(group.block_rows, raw.num_rows, group.row_stride, owner)
        if name == "copies":
            return _copies(group.copies, group.num_copies)
        if name in ("block_table_offsets", "block_table_ids"):
            if not group.block_table_offsets:
                return None
            offsets = _view(group.block_table_offsets, raw.num_seqs + 1, owner)
            if name == "block_table_offsets":
                return offsets
            return _view(group.block_table_ids, int(offsets[-1]), owner)
        if name in ("tokens_per_block", "sliding_window", "row_stride"):
            return getattr(group, name)
        raise AttributeError(name)


class CacheGroup:
    """One cache group of a hybrid scheduler (kvrt_sched_group_params_t):
    the layers that share a block size and an attention span, in a pool of
    their own or in one that groups whose blocks hold the same bytes share
    (name the same pool and cache in each). sliding_window is the tokens a
    query reads back, itself included (0: full attention). Either every
    group has a prefix cache or none."""

    __slots__ = ("pool", "cache", "sliding_window")

    def __init__(self, pool, cache=None, sliding_window=0):
        if not isinstance(pool, Pool):
            raise _lib.bad_arg("pool must be a kvrt.Pool", "CacheGroup")
        if cache is not None and not isinstance(cache, PrefixCache):
            raise _lib.bad_arg("cache must be a kvrt.PrefixCache or None", "CacheGroup")
        self.pool, self.cache = pool, cache
        self.sliding_window = _u32(sliding_window, "sliding_window", "CacheGroup")

    def __repr__(self):
        return "CacheGroup(%r, %r, sliding_window=%d)" % (self.pool, self.cache,
                                                          self.sliding_window)


class Scheduler(Handle):
    """A scheduler over pool with an optional prefix cache, or over several
    cache groups (groups=[CacheGroup, ...]: kvrt_sched_create_groups, for
    models that mix full-attention and sliding-window layers; pool and cache
    are then group 0's).

    Parameters are those of kvrt_sched_params_t (None: kvrt's default);
    ngram=(min, max) turns the n-gram proposer on (needs max_draft_tokens).
    """

    _kind = "scheduler"

    def __init__(self, pool=None, cache=None, max_batch_tokens=None, max_seqs=None,
                 prefill_chunk_tokens=None, use_watermark=None, max_requests=None,
                 max_seq_tokens=None, max_draft_tokens=None, ngram=None, adaptive_draft=None,
                 csr_block_tables=None, max_plans_in_flight=None,
                 shared_prefill_min_tokens=None, groups=None):
        if groups is None:
            if not isinstance(pool, Pool):
                raise _lib.bad_arg("pool must be a kvrt.Pool (or give groups)", "Scheduler")
            if cache is not None and not isinstance(cache, PrefixCache):
                raise _lib.bad_arg("cache must be a kvrt.PrefixCache or None", "Scheduler")
            groups = (CacheGroup(pool, cache),)
            hybrid = False
        else:
            if pool is not None or cache is not None:
                raise _lib.bad_arg("give pool and cache, or groups, not both", "Scheduler")
            if isinstance(groups, CacheGroup) or not hasattr(groups, "__iter__"):
                raise _lib.bad_arg("groups must be a sequence of kvrt.CacheGroup",
                                   "Scheduler")
            groups = tuple(groups)
            if not 1 <= len(groups) <= MAX_GROUPS or \
                    not all(isinstance(g, CacheGroup) for g in groups):
                raise _lib.bad_arg("groups must be 1..%d kvrt.CacheGroup, got %r"
                                   % (MAX_GROUPS, groups), "Scheduler")
            # Copies, checked again: a group's attributes may have been
            # changed since, and later changes must not reach this scheduler.
            groups = tuple(CacheGroup(g.pool, g.cache, g.sliding_window) for g in groups)
            hybrid = True
        p = S.kvrt_sched_params_t()
        given = dict(max_batch_tokens=max_batch_tokens, max_seqs=max_seqs,
                     prefill_chunk_tokens=prefill_chunk_tokens, use_watermark=use_watermark,
                     max_requests=max_requests, max_seq_tokens=max_seq_tokens,
                     max_draft_tokens=max_draft_tokens, adaptive_draft=adaptive_draft,
                     csr_block_tables=csr_block_tables, max_plans_in_flight=max_plans_in_flight,
                     shared_prefill_min_tokens=shared_prefill_min_tokens)
        S.set_masked(p, _P, **{name: None if value is None else _u32(value, name, "Scheduler")
                               for name, value in given.items()})
        if ngram is not None:
            p.field_mask |= _P["ngram"]
            p.ngram_min, p.ngram_max = (_u32(v, "ngram", "Scheduler") for v in ngram)
        ptr = C.c_void_p()
        first = groups[0].pool
        if hybrid:
            params = (S.kvrt_sched_group_params_t * len(groups))()
            for g, group in zip(params, groups):
                g.pool = group.pool._handle("Scheduler")
                if group.cache is not None:
                    g.field_mask |= _GROUP_CACHE
                    g.cache = group.cache._handle("Scheduler")
                if group.sliding_window:
                    g.field_mask |= _GROUP_WINDOW
                    g.sliding_window = group.sliding_window
            pointers = (C.POINTER(S.kvrt_sched_group_params_t) * len(groups))(
                *(C.pointer(g) for g in params))
            _lib.call(first._ctx_ptr(), "kvrt_sched_create_groups",
                      first._context._handle("Scheduler"), len(groups), pointers,
                      C.byref(p), C.byref(ptr))
        else:
            _lib.call(first._ctx_ptr(), "kvrt_sched_create",
                      first._context._handle("Scheduler"), first._handle("Scheduler"),
                      cache._handle("Scheduler") if cache else None, C.byref(p),
                      C.byref(ptr))
        super().__init__(first._context, ptr.value)
        self.groups = groups
        self.pool, self.cache = first, groups[0].cache
        self._life = 0   # moves at close: every plan of before is stale
        self._steps = 0  # steps taken: a committed plan is valid until the next
        self._plan = None
        self._drain_buffer = (S.kvrt_seq_info_t * 64)()

    # ---- requests -----------------------------------------------------------
    def add(self, prompt, max_new_tokens, stop=None, priority=None, deadline_ns=None,
            user_tag=None, adapter_id=None, salt=None, mm_items=None, cache_flags=None,
            min_tokens=None):
        """Enqueues a request; returns its id (an int).

        mm_items: multimodal items as (content_hash, offset, length), the hash
        a kvrt_block_hash_t or a (lo, hi) pair; cache_flags: CACHE_SKIP_READ,
        CACHE_SKIP_WRITE, CACHE_DROP_LAST_HIT or'd; min_tokens: outputs before
        a stop token may end the request."""
        prompt = _tokens(prompt, "prompt", "add")
        p = S.kvrt_seq_params_t(prompt=prompt.ctypes.data_as(_lib.i32p),
                                prompt_len=len(prompt),
                                max_new_tokens=_u32(max_new_tokens, "max_new_tokens", "add"))
        if stop is not None:
            stop = _tokens(stop, "stop", "add", allow_empty=True)
            p.field_mask |= _SEQ_STOP
            p.stop_tokens, p.num_stop_tokens = stop.ctypes.data_as(_lib.i32p), len(stop)
        S.set_masked(p, {"priority": _SEQ_PRIORITY, "deadline_ns": _SEQ_DEADLINE,
                         "user_tag": _SEQ_USER_TAG, "cache_flags": _SEQ_CACHE_FLAGS,
                         "min_tokens": _SEQ_MIN_TOKENS},
                     priority=None if priority is None else
                     _lib.sint(priority, "priority", "add"),
                     deadline_ns=None if deadline_ns is None else
                     _lib.uint(deadline_ns, "deadline_ns", "add", bits=64),
                     user_tag=None if user_tag is None else
                     _lib.uint(user_tag, "user_tag", "add", bits=64),
                     cache_flags=None if cache_flags is None else
                     _u32(cache_flags, "cache_flags", "add"),
                     min_tokens=None if min_tokens is None else
                     _u32(min_tokens, "min_tokens", "add"))
        keys = hash_keys(adapter_id, salt, mm_items, "add")  # alive until the call returns
        if keys is not None:
            p.field_mask |= _SEQ_KEYS
            p.keys = C.pointer(keys)
        seq = C.c_uint64()
        self._call("kvrt_seq_add", self._handle("add"), C.byref(p), C.byref(seq))
        return seq.value

    def abort(self, seq_id):
        self._call("kvrt_seq_abort", self._handle("abort"),
                   _lib.uint(seq_id, "seq_id", "abort", bits=64))

    def set_draft(self, seq_id, tokens):
        tokens = _tokens(tokens, "tokens", "set_draft", allow_empty=True)
        self._call("kvrt_seq_set_draft", self._handle("set_draft"),
                   _lib.uint(seq_id, "seq_id", "set_draft", bits=64),
                   tokens.ctypes.data_as(_lib.i32p), len(tokens))

    def set_drafts(self, drafts):
        """Every sequence's next draft in one call (kvrt_sched_set_drafts):
        drafts maps a request id to its draft tokens (empty clears it). All or
        nothing: a bad entry raises and no draft changes."""
        ids = np.fromiter((int(i) for i in drafts), dtype=np.uint64, count=len(drafts))
        counts, tokens = _token_lists(drafts.items(), "drafts", "set_drafts")
        self._call("kvrt_sched_set_drafts", self._handle("set_drafts"), len(ids),
                   ids.ctypes.data_as(_lib.u64p), counts.ctypes.data_as(_lib.u32p),
                   tokens.ctypes.data_as(_lib.i32p))

    def await_kv(self, seq_id, num_tokens, deadline_ns=None):
        """Starts an arrival for a queued request: its first num_tokens
        tokens' K/V will be written by the caller. Returns (arrival id,
        blocks to fill): the block ids, a copy, in table order; write them,
        then call arrival_complete(arrival, landed) in every case."""
        p = S.kvrt_arrival_params_t(num_tokens=_u32(num_tokens, "num_tokens", "await_kv"))
        if deadline_ns is not None:
            p.field_mask |= _ARRIVAL_DEADLINE
            p.deadline_ns = _lib.uint(deadline_ns, "deadline_ns", "await_kv", bits=64)
        arrival, first, count = C.c_uint64(), C.c_uint32(), C.c_uint32()
        self._call("kvrt_seq_await_kv", self._handle("await_kv"),
                   _lib.uint(seq_id, "seq_id", "await_kv", bits=64), C.byref(p),
                   C.byref(arrival), C.byref(first), C.byref(count))
        blocks, _ = self.seq_blocks(seq_id)
        return arrival.value, blocks[first.value:first.value + count.value]

    def await_kv_groups(self, seq_id, num_tokens, deadline_ns=None):
        """await_kv over every cache group (kvrt_seq_await_kv_groups; needed
        when there are several). Returns (arrival id, [blocks to fill of
        group g, for each g]); a sliding-window group names only the window
        the first recomputed token reads. Then call
        arrival_complete(arrival, landed, group=g) for every group."""
        p = S.kvrt_arrival_params_t(num_tokens=_u32(num_tokens, "num_tokens",
                                                    "await_kv_groups"))
        if deadline_ns is not None:
            p.field_mask |= _ARRIVAL_DEADLINE
            p.deadline_ns = _lib.uint(deadline_ns, "deadline_ns", "await_kv_groups", bits=64)
        n = len(self.groups)
        arrival, first, count = C.c_uint64(), (C.c_uint32 * n)(), (C.c_uint32 * n)()
        self._call("kvrt_seq_await_kv_groups", self._handle("await_kv_groups"),
                   _lib.uint(seq_id, "seq_id", "await_kv_groups", bits=64), C.byref(p), n,
                   C.byref(arrival), first, count)
        blocks = [self.seq_blocks(seq_id, group=g)[0] for g in range(n)]
        return arrival.value, [b[first[g]:first[g] + count[g]] for g, b in enumerate(blocks)]

    def arrival_complete(self, arrival, landed_blocks, group=None):
        """Ends an arrival: its first landed_blocks blocks hold valid K/V.
        With group=g (several cache groups), only group g's part ends; the
        arrival ends when every group has reported. Without group on a
        scheduler of several groups, every group not yet reported ends at
        once and landed_blocks must be 0 (giving the arrival up)."""
        arrival = _lib.uint(arrival, "arrival", "arrival_complete", bits=64)
        landed = _u32(landed_blocks, "landed_blocks", "arrival_complete")
        if group is None:
            self._call("kvrt_arrival_complete", self._handle("arrival_complete"), arrival,
                       landed)
        else:
            self._call("kvrt_arrival_group_complete", self._handle("arrival_complete"),
                       arrival, _u32(group, "group", "arrival_complete"), landed)

    def info(self, seq_id):
        out = S.kvrt_seq_info_t()
        self._call("kvrt_seq_info_sized", self._handle("info"),
                   _lib.uint(seq_id, "seq_id", "info", bits=64), C.byref(out),
                   C.sizeof(out))
        return _info_dict(out)

    def seq_blocks(self, seq_id, group=0):
        """(block ids, a copy; tokens) of a request's table in cache group
        `group`; in a sliding-window group, blocks that left the window are
        NULL_BLOCK."""
        ids, nblocks, ntokens = _lib.i32p(), C.c_uint32(), C.c_uint32()
        self._call("kvrt_seq_group_blocks", self._handle("seq_blocks"),
                   _lib.uint(seq_id, "seq_id", "seq_blocks", bits=64),
                   _u32(group, "group", "seq_blocks"), C.byref(ids), C.byref(nblocks),
                   C.byref(ntokens))
        return _view(ids, nblocks.value).copy(), ntokens.value

    def drain(self):
        """Every ended request as a dict (its output tokens copied)."""
        events = []
        count = C.c_uint32()
        while True:
            self._call("kvrt_sched_drain_ended_sized", self._handle("drain"),
                       self._drain_buffer, C.sizeof(S.kvrt_seq_info_t),
                       len(self._drain_buffer), C.byref(count))
            events += [_info_dict(self._drain_buffer[i]) for i in range(count.value)]
            if count.value < len(self._drain_buffer):
                return events

    # ---- steps --------------------------------------------------------------
    def step(self, now_ns=None):
        """The next batch plan (a Plan; len(plan) == 0 when nothing runs)."""
        plan = C.POINTER(S.kvrt_batch_plan_t)()
        now = (time.monotonic_ns() if now_ns is None
               else _lib.uint(now_ns, "now_ns", "step", bits=64))
        self._call("kvrt_sched_step", self._handle("step"), now, C.byref(plan))
        self._steps += 1
        self._plan = Plan(self, plan)
        return self._plan

    def commit(self, plan, tokens, num_accepted=None, next_drafts=None):
        """Commits the sampled tokens of plan (in plan order: for each
        sampling entry, its accepted drafts then one bonus token).
        next_drafts, one token list per plan entry (empty for none), sets
        each request's drafts for the next step with the commit
        (KVRT_COMMIT_DRAFTS), as set_drafts would."""
        if not isinstance(plan, Plan) or plan._sched is not self:
            raise _lib.bad_arg("plan must be a Plan of this scheduler", "commit")
        raw = plan._check("commit")
        if plan._committed_at is not None:
            raise KvrtError(ERR_BAD_STATE, "plan of step %d is already committed" % plan._step,
                            "commit")
        tokens = _tokens(tokens, "tokens", "commit", allow_empty=True)
        c = S.kvrt_commit_t(step=raw.step, num_seqs=raw.num_seqs, num_tokens=len(tokens),
                            tokens=tokens.ctypes.data_as(_lib.i32p))
        if num_accepted is not None:
            accepted = _lib.int_array(num_accepted, np.uint32, "num_accepted", "commit")
            if len(accepted) != raw.num_seqs:
                raise _lib.bad_arg("num_accepted needs one count per plan entry (%d), got %d"
                                   % (raw.num_seqs, len(accepted)), "commit")
            c.field_mask |= _COMMIT_ACCEPTED
            c.num_accepted = accepted.ctypes.data_as(_lib.u32p)
        if next_drafts is not None:
            if len(next_drafts) != raw.num_seqs:
                raise _lib.bad_arg("next_drafts needs one list per plan entry (%d), got %d"
                                   % (raw.num_seqs, len(next_drafts)), "commit")
            counts, drafts = _token_lists(enumerate(next_drafts), "next_drafts", "commit")
            c.field_mask |= _COMMIT_DRAFTS
            c.num_next_drafts = counts.ctypes.data_as(_lib.u32p)
            c.next_drafts = drafts.ctypes.data_as(_lib.i32p)
        self._call("kvrt_sched_commit", self._handle("commit"), C.byref(c))
        plan._committed_at = self._steps

    def stats(self):
        """kvrt_sched_stats_t as a dict; spec_proposed_at and
        spec_accepted_at are lists (one entry per draft position)."""
        out = S.kvrt_sched_stats_t()
        self._call("kvrt_sched_stats_sized", self._handle("stats"), C.byref(out),
                   C.sizeof(out))
        return out.as_dict()

    _destroy = "kvrt_sched_destroy"

    def close(self):
        self._life += 1
        super().close()

    def _forget(self):
        self._life += 1
        super()._forget()
