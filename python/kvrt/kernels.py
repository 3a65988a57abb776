"""KV kernels over a pool's memory: write/read K/V by slot, block copies,
gather/scatter for transfers, paged decode attention. CPU and CUDA entry
points.

Buffers may be torch tensors, numpy arrays (CPU only) or raw addresses
(int). Tensors and arrays are checked (contiguous rows, dtype, device,
element count); a raw address is trusted, as in C. A CUDA call is enqueued
on `stream` (a torch.cuda.Stream, a raw cudaStream_t int, or None: torch's
current stream when torch is loaded, else the legacy default stream) and
returns once launched.
"""
import ctypes as C
import math

import numpy as np

from . import _lib
from . import _structs as S
from .pool import DTYPE_BF16, DTYPE_FP16, DTYPE_FP32, Layout, Pool

_ROWS_TOKEN_STRIDE = 1
_ATTN_SCALE, _ATTN_OUT_DTYPE = 1, 2
_NUMPY_DTYPES = {np.dtype(np.float16): DTYPE_FP16, np.dtype(np.float32): DTYPE_FP32}
_ELEMENT_BYTES = {DTYPE_FP16: 2, DTYPE_BF16: 2, DTYPE_FP32: 4}


def _torch_dtypes():
    try:
        import torch
    except ImportError:
        return {}
    return {torch.float16: DTYPE_FP16, torch.bfloat16: DTYPE_BF16, torch.float32: DTYPE_FP32}


def buffer(obj, name, device, function, dtype=None, min_elements=0, any_dtype=False,
           writable=False, rows=None):
    """(address, kvrt dtype, row stride in elements or None) of a buffer.
    any_dtype: raw memory (a pool's base), whose element type is irrelevant;
    writable: an output (a read-only array is refused); rows: (count,
    elements) a buffer with strided rows must hold (its first dimension is
    the rows')."""
    if isinstance(obj, (int, np.integer)) and not isinstance(obj, bool):
        return int(obj), dtype, None
    if isinstance(obj, np.ndarray):
        if device != "cpu":
            raise _lib.bad_arg("%s: a numpy array is host memory; the CUDA kernels need "
                               "device memory" % name, function)
        kd = _NUMPY_DTYPES.get(obj.dtype)
        if (kd is None and not any_dtype) or not obj.flags.c_contiguous:
            raise _lib.bad_arg("%s must be a C-contiguous float16/float32 array" % name,
                               function)
        if writable and not obj.flags.writeable:
            raise _lib.bad_arg("%s is read-only; an output must be writable" % name, function)
        n, address, stride = obj.size, obj.ctypes.data, None
    elif type(obj).__module__.startswith("torch"):
        kd = _torch_dtypes().get(obj.dtype)
        if kd is None and not any_dtype:
            raise _lib.bad_arg("%s: dtype %s is not float16/bfloat16/float32" %
                               (name, obj.dtype), function)
        if (obj.device.type == "cuda") != (device == "cuda"):
            raise _lib.bad_arg("%s is on %s; this call needs %s memory" %
                               (name, obj.device, device), function)
        stride = None
        if not obj.is_contiguous():
            # rows may be strided (a slice of a fused QKV tensor) if each row is dense
            if obj.dim() < 2 or not obj[0].is_contiguous():
                raise _lib.bad_arg("%s must have dense rows" % name, function)
            if rows is None:
                raise _lib.bad_arg("%s must be contiguous" % name, function)
            if obj.shape[0] < rows[0] or obj[0].numel() != rows[1]:
                raise _lib.bad_arg("%s: strided rows must be [%d][%d] (one row per token), "
                                   "not %s" % (name, rows[0], rows[1], tuple(obj.shape)),
                                   function)
            stride = obj.stride(0)
        n, address = obj.numel(), obj.data_ptr()
    else:
        raise _lib.bad_arg("%s must be a torch tensor, numpy array or address, not %s" %
                           (name, type(obj).__name__), function)
    if dtype is not None and kd != dtype:
        raise _lib.bad_arg("%s has kvrt dtype %d, expected %d" % (name, kd, dtype), function)
    if n < min_elements:
        raise _lib.bad_arg("%s holds %d elements, needs %d" % (name, n, min_elements),
                           function)
    return address, kd, stride


def _stream(stream):
    if stream is None:
        try:
            import torch
            if torch.cuda.is_available():
                return torch.cuda.current_stream().cuda_stream
        except ImportError:
            pass
        return None
    return getattr(stream, "cuda_stream", stream)


class KVCache:
    """The kernels' view of a pool's memory (kvrt_kv_cache_t).

    From a Pool (its layout, block count and base), or from a layout, a
    block count and an engine buffer (base: tensor or address). device is
    "cpu" or "cuda"; it selects the entry points.
    """

    def __init__(self, pool=None, layout=None, num_blocks=None, base=None, device="cpu"):
        if device not in ("cpu", "cuda"):
            raise _lib.bad_arg("device must be 'cpu' or 'cuda'", "KVCache")
        if pool is not None:
            if not isinstance(pool, Pool):
                raise _lib.bad_arg("pool must be a kvrt.Pool", "KVCache")
            layout, num_blocks = pool.layout, pool.num_blocks
            if base is None:
                base = pool.info()["base"]
            self._ctx = pool._context
        else:
            self._ctx = None
        if not isinstance(layout, Layout):
            raise _lib.bad_arg("layout must be a kvrt.Layout", "KVCache")
        if base is None or (isinstance(base, int) and base == 0):
            raise _lib.bad_arg("base: no memory to run kernels on", "KVCache")
        address, _, _ = buffer(base, "base", device, "KVCache", any_dtype=True)
        nbytes = (base.nbytes if isinstance(base, np.ndarray) else
                  base.numel() * base.element_size() if hasattr(base, "numel") else None)
        if nbytes is not None and nbytes < layout.block_bytes * int(num_blocks):
            raise _lib.bad_arg("base holds %d bytes, the pool needs %d" %
                               (nbytes, layout.block_bytes * int(num_blocks)), "KVCache")
        self.pool, self.layout, self.device = pool, layout, device
        self._keep = base  # the memory must outlive this view
        self.c = S.kvrt_kv_cache_t(layout=layout.c, num_blocks=int(num_blocks), base=address)

    def _ctx_ptr(self):
        if self._ctx is None:
            return None
        return self._ctx._handle("kernels")

    def _run(self, name, *args, stream=None):
        if self.pool is not None:
            self.pool._handle(name)  # refuse a closed pool before touching its memory
        ctx = self._ctx_ptr()
        full = "kvrt_%s_%s" % (self.device, name)
        extra = (_stream(stream),) if self.device == "cuda" else ()
        return _lib.call(ctx, full, ctx, C.byref(self.c), *args, *extra)

    def _indices(self, values, np_dtype, name, function):
        """(kept object, address, shape) of an index array in this cache's
        memory space: the CUDA kernels read indices from device memory."""
        if self.device == "cpu":
            array = _lib.int_array(values, np_dtype, name, function, ndim=None)
            return array, array.ctypes.data, array.shape
        import torch
        tdtype = {np.int32: torch.int32, np.int64: torch.int64}[np_dtype]
        if type(values).__module__.startswith("torch"):
            t = values.to(device="cuda", dtype=tdtype).contiguous()
        else:
            t = torch.as_tensor(_lib.int_array(values, np_dtype, name, function, ndim=None),
                                device="cuda")
        return t, t.data_ptr(), tuple(t.shape)

    def _rows(self, layer, slot_mapping, dtype, stride, function):
        slots, address, shape = self._indices(slot_mapping, np.int64, "slot_mapping", function)
        rows = S.kvrt_kv_rows_t(layer=int(layer), num_tokens=shape[0], dtype=dtype or 0,
                                slot_mapping=C.cast(address, _lib.i64p))
        if stride is not None:
            rows.field_mask |= _ROWS_TOKEN_STRIDE
            rows.token_stride = stride
        return rows, slots

    def write(self, layer, slot_mapping, key, value, stream=None):
        """Writes key/value rows [num_tokens][num_kv_heads][head_dim] of layer
        into the cache at slot_mapping (kvrt_*_write_kv)."""
        self._move_rows("write_kv", layer, slot_mapping, key, value, ("key", "value"), stream)

    def read(self, layer, slot_mapping, key_out, value_out, stream=None):
        """Reads the K/V rows at slot_mapping into dense outputs (float16,
        bfloat16 or float32) [num_tokens][num_kv_heads][head_dim]."""
        self._move_rows("read_kv", layer, slot_mapping, key_out, value_out,
                        ("key_out", "value_out"), stream)

    def _move_rows(self, kernel, layer, slot_mapping, key, value, names, stream):
        n = len(slot_mapping)
        per = self.layout.num_kv_heads * self.layout.head_dim
        out = kernel == "read_kv"
        k, kd, ks = buffer(key, names[0], self.device, kernel, min_elements=n * per,
                           writable=out, rows=(n, per))
        v, _, vs = buffer(value, names[1], self.device, kernel, dtype=kd, min_elements=n * per,
                          writable=out, rows=(n, per))
        if ks != vs:
            raise _lib.bad_arg("%s and %s must have the same row stride" % names, kernel)
        rows, keep = self._rows(layer, slot_mapping, kd, ks, kernel)
        self._run(kernel, C.byref(rows), k, v, stream=stream)

    def copy_blocks(self, copies, stream=None):
        """Runs (src, dst) block copies (a plan's copy-on-write list)."""
        if not copies:
            return
        pairs, address, _ = self._indices([[int(s), int(d)] for s, d in copies], np.int32,
                                          "copies", "copy_blocks")
        self._run("copy_blocks", C.cast(address, C.POINTER(S.kvrt_block_copy_t)),
                  len(copies), stream=stream)

    def gather_blocks(self, blocks, staging_out, stream=None):
        """Packs the given blocks into staging_out (block_bytes each)."""
        ids, ids_address, shape = self._indices(blocks, np.int32, "blocks", "gather_blocks")
        address, _, _ = buffer(staging_out, "staging_out", self.device, "gather_blocks",
                               writable=True)
        self._check_bytes(staging_out, shape[0], "gather_blocks")
        self._run("gather_blocks", C.cast(ids_address, _lib.i32p), shape[0], address,
                  stream=stream)

    def scatter_blocks(self, staging, blocks, stream=None):
        ids, ids_address, shape = self._indices(blocks, np.int32, "blocks", "scatter_blocks")
        address, _, _ = buffer(staging, "staging", self.device, "scatter_blocks")
        self._check_bytes(staging, shape[0], "scatter_blocks")
        self._run("scatter_blocks", address, C.cast(ids_address, _lib.i32p), shape[0],
                  stream=stream)

    def _check_bytes(self, obj, count, function):
        size = (obj.nbytes if isinstance(obj, np.ndarray) else
                obj.numel() * obj.element_size() if hasattr(obj, "numel") else None)
        if size is not None and size < count * self.layout.block_bytes:
            raise _lib.bad_arg("staging holds %d bytes, %d blocks need %d" %
                               (size, count, count * self.layout.block_bytes), function)

    def decode_attention(self, layer, query, block_tables, seq_lens, out, softmax_scale=None,
                         stream=None):
        """Paged attention of one query token per sequence: query and out are
        [num_seqs][num_q_heads][head_dim]; block_tables [num_seqs][stride]
        int32 rows (a plan's block_rows gathered by row_index)."""
        tables, tables_address, tshape = self._indices(block_tables, np.int32, "block_tables",
                                                       "decode_attention")
        lens, lens_address, lshape = self._indices(seq_lens, np.int32, "seq_lens",
                                                   "decode_attention")
        if len(tshape) != 2 or len(lshape) != 1 or tshape[0] != lshape[0]:
            raise _lib.bad_arg("block_tables must be [num_seqs][stride] with num_seqs = "
                               "len(seq_lens)", "decode_attention")
        num_seqs = lshape[0]
        q, qd, _ = buffer(query, "query", self.device, "decode_attention")
        qn = query.numel() if hasattr(query, "numel") else np.size(query)
        heads = qn // max(num_seqs * self.layout.head_dim, 1)
        if heads * num_seqs * self.layout.head_dim != qn:
            raise _lib.bad_arg("query is not [num_seqs][heads][head_dim]", "decode_attention")
        o, od, _ = buffer(out, "out", self.device, "decode_attention", min_elements=qn,
                          writable=True)
        a = S.kvrt_decode_attention_t(
            field_mask=_ATTN_OUT_DTYPE, layer=int(layer), num_seqs=num_seqs,
            num_q_heads=heads, q_dtype=qd, query=q, block_tables=C.cast(tables_address,
                                                                        _lib.i32p),
            table_stride=tshape[1], seq_lens=C.cast(lens_address, _lib.i32p), out_dtype=od,
            out=o)
        if softmax_scale is not None:
            a.field_mask |= _ATTN_SCALE
            a.softmax_scale = float(softmax_scale)
        self._run("decode_attention", C.byref(a), stream=stream)


def cuda_device_count():
    count = C.c_int()
    _lib.call(None, "kvrt_cuda_device_count", C.byref(count))
    return count.value


def default_scale(head_dim):
    return 1.0 / math.sqrt(head_dim)
