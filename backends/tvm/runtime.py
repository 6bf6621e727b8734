"""Control of TVM's CPU thread pool: thread count and spin-waiting.

What TVM 0.27 does (read in `tvm/src/runtime/thread_pool.cc` and `threading_backend.cc` of the wheel):

- The pool is **thread-local**: each Python thread that runs a parallel kernel gets its own pool, created
  at its first parallel launch with `MaxConcurrency()` workers, and never grown afterwards.
- `MaxConcurrency()` is a process-wide override (set only by `runtime.config_threadpool` with a CPU list),
  else `TVM_NUM_THREADS`, else `OMP_NUM_THREADS`, else `hardware_concurrency() / 2` on x86 (it assumes
  hyper-threading: on a 2-core machine that is a single thread). It is read from the environment at each
  call, and `TVMBackendParallelLaunch` runs a parallel loop serially when it is 1.
- Workers busy-wait `TVM_THREAD_POOL_SPIN_COUNT` iterations (default 300000) before sleeping. The value is
  read once, when the first worker starts. On a shared machine spinning workers steal cores, so qcc sets it
  to 0 (workers sleep on a condition variable at once).
- Unless `TVM_BIND_THREADS` is set to something other than 1, the pool pins its workers to cores and the
  *calling* thread to core 0. qcc sets it to 0 so that running a model does not pin the user's Python thread.
- The global function `runtime.config_threadpool(mode, nthreads[, cpus])` (mode 1 = "big" cores) caps the
  calling thread's pool at `min(pool size, nthreads)`; `runtime.NumThreads` reports it. There is no
  `tvm.runtime.config_threadpool` Python wrapper in 0.27; we call the global function.

So `configure_threads(n)` exports `TVM_NUM_THREADS=n` (sizes pools created later and selects the serial path
for n = 1) and calls `runtime.config_threadpool(1, n)` for the calling thread's pool. A pool that already
exists with fewer workers cannot grow: ask for the largest count first in a thread, or use a fresh thread.
"""

from __future__ import annotations

import os
import threading

# Defaults applied before any TVM pool exists (this module is imported before the first kernel runs).
# setdefault: a user's explicit environment wins.
ENV_DEFAULTS = {
    "TVM_THREAD_POOL_SPIN_COUNT": "0",
    "TVM_BIND_THREADS": "0",
}
for _key, _value in ENV_DEFAULTS.items():
    os.environ.setdefault(_key, _value)

_local = threading.local()
_lock = threading.Lock()


def configure_threads(num_threads: int) -> int:
    """Use `num_threads` workers for TVM kernels run from the calling thread; returns the count in effect.

    The one thread-pool setting of qcc (the kernels package re-exports it). Also (re)applies ENV_DEFAULTS
    where the environment lacks them: no spinning idle workers, no core pinning."""
    import tvm

    from qcc.errors import BackendError

    if int(num_threads) < 1:
        raise BackendError(f"num_threads must be >= 1, got {num_threads}")
    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    n = int(num_threads)
    os.environ["TVM_NUM_THREADS"] = str(n)
    if getattr(_local, "num_threads", None) == n:
        return int(getattr(_local, "effective", n))
    with _lock:
        os.environ["TVM_NUM_THREADS"] = str(n)
        # mode 1 = kBig (all cores of the pool); no CPU list, so the process-wide override is reset to the
        # environment value we just set.
        tvm.get_global_func("runtime.config_threadpool")(1, n)
    _local.num_threads = n
    _local.effective = int(tvm.get_global_func("runtime.NumThreads")())
    return int(_local.effective)


def current_threads() -> int:
    """Workers the calling thread's TVM pool uses (creates the pool if needed)."""
    import tvm

    return int(tvm.get_global_func("runtime.NumThreads")())
