"""Native thread pools of a server process.

The embedders run native code with their own thread pools: OpenBLAS under USE's numpy
forward pass, OpenMP inside the e5 engine. Both keep idle threads spinning for a while
after each call so the next call starts fast. That is right for one big batch on an idle
machine and wrong for a server: at concurrency 64 on two cores, the spinning pools took
the CPU from the event loop, the store and each other (``bench/load.py``, SQLite gateway,
semantic tier on: 14 req/s with the libraries' defaults, 72 req/s with one thread per call
and passive waiting, same workload, same machine, minutes apart).

So server roles call ``limit_native_threads`` once at start. Library users (the LangChain
adapter runs inside their process) are left alone.
"""

from __future__ import annotations

import os


def limit_native_threads(threads: int) -> None:
    """One pool size for every native library loaded now or later in this process.

    OpenMP reads its environment when its runtime starts, which is when the e5 engine is
    first loaded (after this call); OpenBLAS is already loaded with numpy, so it is limited
    through ``threadpoolctl``. Values already set in the environment win.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import numpy  # noqa: F401  (loads OpenBLAS, so that there is a pool to limit)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads, user_api="blas")
