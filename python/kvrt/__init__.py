"""kvrt for Python: ctypes bindings over libkvrt's C ABI (nothing compiles
at install). See docs/python.md for the threading, lifetime and zero-copy
rules, and python/examples/ for an engine served end to end.

    import kvrt
    with kvrt.Context() as ctx:
        pool = kvrt.Pool(ctx, kvrt.Layout(2, 2, 16, 16), num_blocks=256)
        sched = kvrt.Scheduler(pool, kvrt.PrefixCache(pool))
        rid = sched.add([1, 2, 3, 4], max_new_tokens=8)
        plan = sched.step()
        sched.commit(plan, [42])
"""
from ._lib import API_MAJOR, API_MINOR, API_VERSION
from .cache import (ADAPTIVE, LFU, LFU_AGED, LRU, LRU_LEAF, PrefixCache, block_keys,
                    model_fingerprint)
from .cluster import Directory, KvEvents, Router
from .context import (Context, HUGEPAGE_AUTO, HUGEPAGE_OFF, HUGEPAGE_REQUIRE, LOG_DEBUG,
                      LOG_ERROR, LOG_INFO, LOG_TRACE, LOG_WARN, version)
from .errors import KvrtError, STATUS, status_name
from .kernels import KVCache, cuda_device_count
from .pool import (DTYPE_BF16, DTYPE_FP16, DTYPE_FP32, KV_FUSED, KV_SEPARATE, NULL_BLOCK,
                   ORDER_BLOCK_MAJOR, ORDER_LAYER_MAJOR, BlockTable, Layout, Pool)
from .sched import (CACHE_DROP_LAST_HIT, CACHE_SKIP_READ, CACHE_SKIP_WRITE, PLAN_DECODE,
                    PLAN_PREFILL, PLAN_SPEC, TOKEN_PLACEHOLDER, CacheGroup, Plan, PlanGroup,
                    Scheduler)
from .tier import Tier
from . import cluster
from . import xfer

from . import _lib

_lib.kvrt_errors_only(globals(), __name__)
for _module in (cluster, xfer):
    _lib.kvrt_errors_only(vars(_module), __name__)
del _module

__version__ = "1.0.0"
__all__ = [name for name in dir() if not name.startswith("_")]
