"""Context: kvrt's root object, its log callback, kvrt_ctl and metrics."""
import atexit
import ctypes as C
import logging
import sys
import threading
import weakref

from . import _lib
from . import _structs as S
from ._handle import Children, Handle
from .errors import ERR_BUFFER_TOO_SMALL

LOG_ERROR, LOG_WARN, LOG_INFO, LOG_DEBUG, LOG_TRACE = range(5)
HUGEPAGE_AUTO, HUGEPAGE_OFF, HUGEPAGE_REQUIRE = range(3)
_PYTHON_LEVELS = {LOG_ERROR: logging.ERROR, LOG_WARN: logging.WARNING, LOG_INFO: logging.INFO,
                  LOG_DEBUG: logging.DEBUG, LOG_TRACE: logging.DEBUG - 5}

_PARAM_LOG_FN, _PARAM_LOG_LEVEL, _PARAM_REGION, _PARAM_HUGEPAGES, _PARAM_NAME = (
    1, 2, 4, 8, 16)


# Contexts still open at interpreter exit are closed first, while Python can
# still run callbacks: closing joins kvrt's threads, which may be logging
# through a Python callback that must not run during finalization.
_open_contexts = weakref.WeakSet()


@atexit.register
def _close_open_contexts():
    if _lib.threads_inside() - {threading.get_ident()}:
        # A thread (a daemon: the others were joined) is inside a kvrt call:
        # freeing its objects under it would crash the exit. The process
        # ends; the system takes the memory back.
        return
    for context in list(_open_contexts):
        context.close()


def version():
    """(encoded version, "major.minor.patch") of the loaded library."""
    v, text = C.c_uint32(), C.c_char_p()
    _lib.lib().kvrt_version(C.byref(v), C.byref(text))
    return v.value, text.value.decode()


class Context(Handle):
    """A kvrt context (kvrt_ctx_t). Everything else is made from one.

    log: None (kvrt's stderr default), a callable log(level, message), or a
    logging.Logger. kvrt may call it from its own threads (transfer
    progress): ctypes takes the GIL for the call, and an exception the
    callable raises is printed and dropped, never propagated into C.
    Close with close() or a with-block; closing frees every object made from
    the context, and their Python handles then raise KvrtError.
    """

    _kind = "context"

    def __init__(self, name=None, log=None, log_level=LOG_WARN, host_region_bytes=None,
                 hugepages=None):
        self._children = Children()
        self._log_target = None
        self._log_trampoline = None
        params = S.kvrt_ctx_params_t()
        if name is not None:
            if not isinstance(name, str):
                raise _lib.bad_arg("name must be a str", "Context")
            params.field_mask |= _PARAM_NAME
            self._name_bytes = name.encode()
            params.name = self._name_bytes
        if not isinstance(log_level, int) or not LOG_ERROR <= log_level <= LOG_TRACE:
            raise _lib.bad_arg("log_level must be 0..4", "Context")
        params.field_mask |= _PARAM_LOG_LEVEL
        params.log_level = log_level
        if log is not None:
            params.field_mask |= _PARAM_LOG_FN
            params.log_fn = self._make_trampoline(log)
        S.set_masked(params, {"host_region_bytes": _PARAM_REGION, "hugepages": _PARAM_HUGEPAGES},
                     host_region_bytes=host_region_bytes, hugepages=hugepages)
        ptr = C.c_void_p()
        _lib.check(_lib.fn("kvrt_ctx_create_versioned")(_lib.API_VERSION, C.byref(params),
                                                        C.byref(ptr)),
                   None, "kvrt_ctx_create")
        super().__init__(None, ptr.value)
        _open_contexts.add(self)

    @property
    def closed(self):
        return self._ptr is None

    def _ctx_ptr(self):
        return self._ptr

    def _make_trampoline(self, log):
        if isinstance(log, logging.Logger):
            logger = log

            def log(level, message):
                logger.log(_PYTHON_LEVELS.get(level, logging.INFO), message)
        elif not callable(log):
            raise _lib.bad_arg("log must be callable or a logging.Logger", "Context")

        def trampoline(user_data, level, message):
            try:
                log(level, message.decode("utf-8", "replace"))
            except BaseException:  # never unwind into C
                sys.excepthook(*sys.exc_info())

        self._log_target = log
        self._log_trampoline = S.LOG_FN(trampoline)  # kept alive with the context
        return self._log_trampoline

    def set_log(self, log=None, level=LOG_WARN):
        """Replaces the log callback (None: stderr) and level. Not while a
        transfer agent exists (kvrt's threads may be logging); see
        kvrt_ctx_set_log."""
        fn = self._make_trampoline(log) if log is not None else S.LOG_FN()
        keep = self._log_trampoline
        self._call("kvrt_ctx_set_log", self._handle("set_log"), fn, None, int(level))
        self._keep_old_trampolines = getattr(self, "_keep_old_trampolines", []) + [keep]

    def last_error(self):
        raw = _lib.lib().kvrt_ctx_last_error(self._handle("last_error"))
        return raw.decode("utf-8", "replace") if raw else ""

    # ---- kvrt_ctl ----------------------------------------------------------
    def ctl_names(self):
        """{name: (type, mode)} of every ctl node."""
        value = C.c_char_p()
        size = C.c_size_t(C.sizeof(value))
        self._call("kvrt_ctl", self._handle("ctl_names"), b"ctl.names", C.byref(value),
                   C.byref(size), None, 0)
        nodes = {}
        for line in value.value.decode().splitlines():
            name, kind, mode = line.split()
            nodes[name] = (kind, mode)
        return nodes

    def ctl(self, name, value=None):
        """Reads a ctl node (int, float or str by its type); with value,
        writes it and returns the old value."""
        if not isinstance(name, str):
            raise _lib.bad_arg("ctl name must be a str", "ctl")
        nodes = self.ctl_names()
        if name not in nodes:
            # let kvrt word the error
            self._call("kvrt_ctl", self._handle("ctl"), name.encode(), None, None, None, 0)
        kind = nodes[name][0]
        ctype = {"u64": C.c_uint64, "double": C.c_double, "string": C.c_char_p}[kind]
        old = ctype()
        size = C.c_size_t(C.sizeof(old))
        new = None
        if value is not None:
            if kind == "string":
                raise _lib.bad_arg("%s is a string node; strings are read-only" % name, "ctl")
            new = ctype(value)
        self._call("kvrt_ctl", self._handle("ctl"), name.encode(), C.byref(old),
                   C.byref(size), C.byref(new) if new is not None else None,
                   C.sizeof(new) if new is not None else 0)
        return old.value.decode() if kind == "string" else old.value

    def metrics(self):
        """Every counter and gauge in the Prometheus text format
        (kvrt_metrics_render)."""
        length = C.c_size_t()
        st = _lib.fn("kvrt_metrics_render")(self._handle("metrics"), None, 0, C.byref(length))
        if st != ERR_BUFFER_TOO_SMALL:
            _lib.check(st, self._ptr, "kvrt_metrics_render")
        while True:
            buf = C.create_string_buffer(length.value + 4096)
            st = _lib.fn("kvrt_metrics_render")(self._ptr, buf, len(buf), C.byref(length))
            if st != ERR_BUFFER_TOO_SMALL:
                _lib.check(st, self._ptr, "kvrt_metrics_render")
                return buf.value.decode()

    def close(self):
        """Destroys the context and everything made from it. Idempotent."""
        if self._ptr is None:
            return
        for child in list(self._children):
            child._forget()
        ptr, self._ptr = self._ptr, None
        _lib.lib().kvrt_ctx_destroy(ptr)

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
