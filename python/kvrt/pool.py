"""Block pools (kvrt_pool_t), layouts and block tables."""
import ctypes as C

import numpy as np

from . import _lib
from . import _structs as S
from ._handle import Handle
from .context import Context

DTYPE_FP16, DTYPE_BF16, DTYPE_FP8_E4M3, DTYPE_FP8_E5M2, DTYPE_FP32 = 1, 2, 3, 4, 5
KV_SEPARATE, KV_FUSED = 0, 1
ORDER_LAYER_MAJOR, ORDER_BLOCK_MAJOR = 0, 1
NULL_BLOCK = 0
_LAYOUT_DTYPE, _LAYOUT_FORMAT, _LAYOUT_ORDER = 1, 2, 4
_POOL_BASE, _POOL_WATERMARK, _POOL_NAME, _POOL_MAX_TABLES = 1, 2, 4, 8
DTYPE_NAMES = {"float16": DTYPE_FP16, "bfloat16": DTYPE_BF16, "float32": DTYPE_FP32}


_u32 = _lib.uint  # (value, name, function): an int in 0..2**32 - 1


class Layout:
    """A KV layout (kvrt_kv_layout_t): geometry, dtype, format and order."""

    def __init__(self, num_layers, num_kv_heads, head_dim, tokens_per_block,
                 dtype=DTYPE_FP16, format=KV_SEPARATE, order=ORDER_LAYER_MAJOR):
        if isinstance(dtype, str):
            if dtype not in DTYPE_NAMES:
                raise _lib.bad_arg("dtype %r: use one of %s" % (dtype, sorted(DTYPE_NAMES)),
                                   "Layout")
            dtype = DTYPE_NAMES[dtype]
        self.c = S.kvrt_kv_layout_t(
            field_mask=_LAYOUT_DTYPE | _LAYOUT_FORMAT | _LAYOUT_ORDER,
            num_layers=_u32(num_layers, "num_layers", "Layout"),
            num_kv_heads=_u32(num_kv_heads, "num_kv_heads", "Layout"),
            head_dim=_u32(head_dim, "head_dim", "Layout"),
            tokens_per_block=_u32(tokens_per_block, "tokens_per_block", "Layout"),
            dtype=int(dtype), format=int(format), order=int(order))
        _lib.call(None, "kvrt_layout_validate", C.byref(self.c))

    def __getattr__(self, name):
        return getattr(self.c, name)

    @property
    def block_bytes(self):
        out = C.c_uint64()
        _lib.call(None, "kvrt_layout_block_bytes", C.byref(self.c), C.byref(out))
        return out.value

    def page_offset(self, num_blocks, block, layer, half):
        """Byte offset of one block's K (half 0) or V (half 1) page of a layer."""
        out = C.c_uint64()
        _lib.call(None, "kvrt_layout_page_offset", C.byref(self.c), num_blocks, block, layer,
                  half, C.byref(out))
        return out.value


class Pool(Handle):
    """A block pool over engine memory (base, e.g. a GPU tensor's data_ptr())
    or, without base, host memory kvrt allocates."""

    _kind = "pool"

    def __init__(self, context, layout, num_blocks, base=None, base_bytes=None,
                 watermark_blocks=None, name=None, max_tables=None):
        if not isinstance(context, Context):
            raise _lib.bad_arg("context must be a kvrt.Context", "Pool")
        if not isinstance(layout, Layout):
            raise _lib.bad_arg("layout must be a kvrt.Layout", "Pool")
        p = S.kvrt_pool_params_t(layout=layout.c,
                                 num_blocks=_u32(num_blocks, "num_blocks", "Pool"))
        if base is not None:
            p.field_mask |= _POOL_BASE
            p.base = int(base)
            p.base_bytes = int(base_bytes if base_bytes is not None
                               else layout.block_bytes * num_blocks)
        if watermark_blocks is not None:
            p.field_mask |= _POOL_WATERMARK
            p.watermark_blocks = _u32(watermark_blocks, "watermark_blocks", "Pool")
        if name is not None:
            p.field_mask |= _POOL_NAME
            self._name = str(name).encode()
            p.name = self._name
        if max_tables is not None:
            p.field_mask |= _POOL_MAX_TABLES
            p.max_tables = _u32(max_tables, "max_tables", "Pool")
        ptr = C.c_void_p()
        _lib.call(context._handle("Pool"), "kvrt_pool_create", context._ptr, C.byref(p),
                  C.byref(ptr))
        super().__init__(context, ptr.value)
        self.layout = layout
        self.num_blocks = num_blocks

    def info(self):
        """kvrt_pool_info as a dict."""
        out = S.kvrt_pool_info_t()
        self._call("kvrt_pool_info_sized", self._handle("info"), C.sizeof(out), C.byref(out))
        return out.as_dict()

    def verify(self):
        self._call("kvrt_pool_verify", self._handle("verify"))

    def alloc(self, count):
        blocks = np.zeros(_u32(count, "count", "alloc"), dtype=np.int32)
        self._call("kvrt_pool_alloc", self._handle("alloc"), count,
                   blocks.ctypes.data_as(_lib.i32p))
        return blocks

    def free(self, blocks):
        blocks = _lib.int_array(blocks, np.int32, "blocks", "free")
        self._call("kvrt_pool_free", self._handle("free"), len(blocks),
                   blocks.ctypes.data_as(_lib.i32p))

    def table(self):
        """A new, empty block table of this pool."""
        return BlockTable(self)

    # close(): KvrtError KVRT_ERR_BUSY while a cache, scheduler or transfer
    # registration uses the pool.
    _destroy = "kvrt_pool_destroy"


class BlockTable:
    """A block table (kvrt_table_id_t) of a pool."""

    def __init__(self, pool):
        self.pool = pool
        tid = C.c_uint64()
        pool._call("kvrt_table_create", pool._handle("table"), C.byref(tid))
        self.id = tid.value

    def append(self, num_tokens):
        """Appends slots for num_tokens; returns (slots int64 array,
        [(src, dst) block copies to run first])."""
        n = _u32(num_tokens, "num_tokens", "append")
        slots = np.zeros(n, dtype=np.int64)
        copy = S.kvrt_block_copy_t()
        ncopies = C.c_uint32()
        self.pool._call("kvrt_table_append", self.pool._handle("append"), self.id, n,
                        slots.ctypes.data_as(_lib.i64p), C.byref(copy), C.byref(ncopies))
        copies = [(copy.src_block, copy.dst_block)] if ncopies.value else []
        return slots, copies

    def truncate(self, num_tokens):
        self.pool._call("kvrt_table_truncate", self.pool._handle("truncate"), self.id,
                        _u32(num_tokens, "num_tokens", "truncate"))

    def blocks(self):
        """(block ids as a copied int32 array, tokens held)."""
        ids, nblocks, ntokens = _lib.i32p(), C.c_uint32(), C.c_uint32()
        self.pool._call("kvrt_table_view", self.pool._handle("blocks"), self.id, C.byref(ids),
                        C.byref(nblocks), C.byref(ntokens))
        view = np.ctypeslib.as_array(ids, (nblocks.value,)) if nblocks.value else \
            np.zeros(0, np.int32)
        return view.copy(), ntokens.value

    def slots(self, first, count):
        out = np.zeros(_u32(count, "count", "slots"), dtype=np.int64)
        self.pool._call("kvrt_table_slots", self.pool._handle("slots"), self.id,
                        _u32(first, "first", "slots"), count, out.ctypes.data_as(_lib.i64p))
        return out

    def close(self):
        self.pool._call("kvrt_table_destroy", self.pool._handle("table close"), self.id)
