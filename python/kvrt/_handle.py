"""Handle: lifetime bookkeeping shared by every kvrt object.

A kvrt object dies when it is closed, or when the context it came from is
closed (kvrt_ctx_destroy frees everything made from it). Every handle keeps
its context alive (a Python reference) and checks, before each call, that
neither it nor its context has been closed, so using a freed handle raises
KvrtError instead of touching freed memory.
"""
import weakref

from . import _lib
from .errors import KvrtError, ERR_BAD_STATE


class Handle:
    _kind = "object"

    def __init__(self, context, ptr):
        self._context = context
        self._ptr = ptr
        if context is not None:
            context._children.add(self)

    @property
    def closed(self):
        return self._ptr is None or (self._context is not None and self._context.closed)

    def _handle(self, function=None):
        """The C pointer, or KvrtError when this handle is no longer usable."""
        if self._context is not None and self._context._ptr is None:
            raise KvrtError(ERR_BAD_STATE, "%s used after its context was closed" %
                            self._kind, function)
        if self._ptr is None:
            raise KvrtError(ERR_BAD_STATE, "%s used after close()" % self._kind, function)
        return self._ptr

    def _ctx_ptr(self):
        return self._context._ptr if self._context is not None else None

    def _call(self, name, *args):
        return _lib.call(self._ctx_ptr(), name, *args)

    def _forget(self):
        """Marks the handle dead without calling C (its context freed it)."""
        self._ptr = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    _destroy = None  # the C destroy function of this kind

    def close(self):
        """Destroys the object. Idempotent; a no-op once its context (or
        agent) is gone, which freed it already."""
        if self._ptr is not None and not self.closed:
            self._call(self._destroy, self._ptr)
        self._ptr = None


class Children(weakref.WeakSet):
    """The live handles of a context, to invalidate when it closes."""
