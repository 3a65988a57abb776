"""Transfer agents (kvrt_xfer_*): register memory, connect to peers, move
bytes or whole KV blocks between agents.

Threads: an agent runs its own progress threads; the log callback of its
context may be called from them (see Context). Handles (regions, peers,
remotes, requests) die with their agent: close the agent last.
"""
import ctypes as C

import numpy as np

from . import _lib
from . import _structs as S
from ._handle import Handle
from .context import Context
from .errors import KvrtError, INPROGRESS
from .pool import Pool

BACKEND_AUTO, BACKEND_TCP, BACKEND_VERBS = 0, 1, 2
REMOTE_READ, REMOTE_WRITE = 1, 2
WRITE, READ = 0, 1
_A_BACKEND, _A_LISTEN, _A_NAME, _A_TIMEOUT = 1, 2, 4, 8
_R_ACCESS, _R_POOL = 2, 4
_KV_INTEGRITY, _KV_NOTIFY, _KV_TIMEOUT = 1, 2, 4


class Agent(Handle):
    """A transfer agent. cluster_key (bytes, >= 16) authenticates peers."""

    _kind = "transfer agent"

    def __init__(self, context, cluster_key, listen="127.0.0.1:0", backend=BACKEND_TCP,
                 name=None, timeout_ms=None):
        if not isinstance(context, Context):
            raise _lib.bad_arg("context must be a kvrt.Context", "Agent")
        if not isinstance(cluster_key, (bytes, bytearray)):
            raise _lib.bad_arg("cluster_key must be bytes", "Agent")
        self._key = (C.c_uint8 * len(cluster_key)).from_buffer_copy(cluster_key)
        p = S.kvrt_xfer_agent_params_t(
            field_mask=_A_BACKEND | _A_LISTEN, cluster_key=self._key,
            cluster_key_bytes=len(cluster_key), backend=int(backend))
        self._listen = listen.encode()
        p.listen_address = self._listen
        if name is not None:
            p.field_mask |= _A_NAME
            self._name = name.encode()
            p.name = self._name
        if timeout_ms is not None:
            p.field_mask |= _A_TIMEOUT
            p.default_timeout_ms = int(timeout_ms)
        ptr = C.c_void_p()
        _lib.call(context._handle("Agent"), "kvrt_xfer_agent_create", context._ptr,
                  C.byref(p), C.byref(ptr))
        super().__init__(context, ptr.value)

    def address(self):
        buf = C.create_string_buffer(256)
        self._call("kvrt_xfer_agent_address", self._handle("address"), buf, len(buf))
        return buf.value.decode()

    def register(self, memory, access=REMOTE_READ | REMOTE_WRITE):
        """Registers a Pool (held until deregistered), a numpy array, a torch
        tensor, or (address, length)."""
        p = S.kvrt_xfer_register_params_t(field_mask=_R_ACCESS, access=int(access))
        keep = memory
        if isinstance(memory, Pool):
            info = memory.info()
            p.field_mask |= _R_POOL
            p.pool = memory._handle("register")
            p.address, p.length = info["base"], info["block_bytes"] * info["num_blocks"]
        elif isinstance(memory, tuple):
            p.address, p.length = int(memory[0]), int(memory[1])
        elif isinstance(memory, np.ndarray) and memory.flags.c_contiguous:
            p.address, p.length = memory.ctypes.data, memory.nbytes
        elif type(memory).__module__.startswith("torch") and memory.is_contiguous():
            p.address, p.length = memory.data_ptr(), memory.numel() * memory.element_size()
        else:
            raise _lib.bad_arg("memory must be a Pool, a contiguous numpy array or torch "
                               "tensor, or (address, length)", "register")
        ptr = C.c_void_p()
        self._call("kvrt_xfer_register", self._handle("register"), C.byref(p), C.byref(ptr))
        return Region(self, ptr.value, keep)

    def connect(self, address, timeout_ms=5000):
        ptr = C.c_void_p()
        self._call("kvrt_xfer_connect", self._handle("connect"), address.encode(),
                   int(timeout_ms), C.byref(ptr))
        return Peer(self, ptr.value)

    def poll(self, capacity=64):
        """Completions of requests posted with user_data: [(user_data, status, bytes)]."""
        out = (S.kvrt_xfer_completion_t * capacity)()
        count = C.c_uint32()
        self._call("kvrt_xfer_poll", self._handle("poll"), out, capacity, C.byref(count))
        return [(out[i].user_data, out[i].status, out[i].bytes) for i in range(count.value)]

    _destroy = "kvrt_xfer_agent_destroy"

    def close(self):
        if not self.closed:
            for child in list(self._context._children):
                if getattr(child, "_agent", None) is self:
                    child._forget()
        super().close()


class _AgentChild(Handle):
    def __init__(self, agent, ptr):
        self._agent = agent
        super().__init__(agent._context, ptr)

    @property
    def closed(self):
        return super().closed or self._agent.closed

    def _handle(self, function=None):
        self._agent._handle(function)
        return super()._handle(function)


class Region(_AgentChild):
    _kind = "transfer region"

    def __init__(self, agent, ptr, keep):
        super().__init__(agent, ptr)
        self._keep = keep  # the registered memory stays alive with the region

    def descriptor(self):
        """The bytes a peer imports to reach this region."""
        buf = C.create_string_buffer(1024)
        length = C.c_size_t()
        self._call("kvrt_xfer_region_descriptor", self._handle("descriptor"), buf, len(buf),
                   C.byref(length))
        return buf.raw[:length.value]

    _destroy = "kvrt_xfer_deregister"


class Peer(_AgentChild):
    _kind = "transfer peer"

    def info(self):
        """State, counters and "instance", the remote agent's: it changes
        when the peer has reconnected to a restarted agent, whose regions
        must be imported again (kvrt_xfer_peer_info)."""
        out = S.kvrt_xfer_peer_info_t(struct_size=C.sizeof(S.kvrt_xfer_peer_info_t))
        self._call("kvrt_xfer_peer_info", self._handle("info"), C.byref(out))
        return {"state": out.state, "last_error": out.last_error,
                "connections": out.connections, "reconnects": out.reconnects,
                "outstanding": out.outstanding, "name": out.name.decode(),
                "instance": out.instance}

    def import_region(self, descriptor):
        ptr = C.c_void_p()
        data = C.create_string_buffer(bytes(descriptor), len(descriptor))
        self._call("kvrt_xfer_import", self._handle("import_region"), data, len(descriptor),
                   C.byref(ptr))
        return Remote(self._agent, ptr.value)

    def post(self, ops):
        """ops: [(WRITE|READ, local Region, local_offset, Remote, remote_offset,
        length)]. Returns a Request."""
        arr = (S.kvrt_xfer_op_t * len(ops))()
        for i, (op, local, loff, remote, roff, length) in enumerate(ops):
            arr[i] = S.kvrt_xfer_op_t(int(op), local._handle("post"), int(loff),
                                      remote._handle("post"), int(roff), int(length))
        ptr = C.c_void_p()
        self._call("kvrt_xfer_post", self._handle("post"), arr, len(ops), None, C.byref(ptr))
        return Request(self._agent, ptr.value)

    def kv_post(self, opcode, local, remote, local_blocks, remote_blocks, integrity=True,
                notify=None, timeout_ms=None):
        """Moves whole KV blocks between a registered pool and a peer's."""
        lb = np.ascontiguousarray(local_blocks, dtype=np.int32)
        rb = np.ascontiguousarray(remote_blocks, dtype=np.int32)
        if len(lb) != len(rb):
            raise _lib.bad_arg("local_blocks and remote_blocks differ in length", "kv_post")
        p = S.kvrt_xfer_kv_params_t(field_mask=_KV_INTEGRITY, opcode=int(opcode),
                                    local=local._handle("kv_post"),
                                    remote=remote._handle("kv_post"),
                                    local_blocks=lb.ctypes.data_as(_lib.i32p),
                                    remote_blocks=rb.ctypes.data_as(_lib.i32p), count=len(lb),
                                    integrity=int(bool(integrity)))
        if notify is not None:
            note = bytes(notify)
            p.field_mask |= _KV_NOTIFY
            p.notify = C.cast(C.c_char_p(note), C.c_void_p)
            p.notify_bytes = len(note)
        if timeout_ms is not None:
            p.field_mask |= _KV_TIMEOUT
            p.timeout_ms = int(timeout_ms)
        ptr = C.c_void_p()
        self._call("kvrt_xfer_kv_post", self._handle("kv_post"), C.byref(p), C.byref(ptr))
        return Request(self._agent, ptr.value)

    _destroy = "kvrt_xfer_disconnect"


class Remote(_AgentChild):
    _kind = "remote region"

    _destroy = "kvrt_xfer_remote_release"


class Request(_AgentChild):
    _kind = "transfer request"

    def test(self):
        """True when done; KvrtError when it failed."""
        st = _lib.fn("kvrt_xfer_request_test")(self._handle("test"))
        if st == INPROGRESS:
            return False
        _lib.check(st, self._ctx_ptr(), "kvrt_xfer_request_test")
        return True

    def wait(self, timeout_ms=10000):
        st = _lib.fn("kvrt_xfer_request_wait")(self._handle("wait"), int(timeout_ms))
        _lib.check(st, self._ctx_ptr(), "kvrt_xfer_request_wait")
        return st == 0

    _destroy = "kvrt_xfer_request_release"


__all__ = ["Agent", "Region", "Peer", "Remote", "Request", "KvrtError"]
