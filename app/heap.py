"""Keep the cyclic garbage collector's full passes short in the serving processes.

After startup, the API and the workers hold millions of long-lived objects
(torch, sentence-transformers, the model, caches). CPython's full (generation
2) collection walks all of them. In the API with in-process scoring, it paused
the event loop for up to 124 ms about every 60 requests. With those objects
frozen, the p99 of sequential requests on ml-latest-small fell from 150 ms to
67 ms (bench/request_cost.py, medians of 3 rounds, 2-core machine). ``gc.freeze`` moves every object alive now to a permanent
generation that the collector skips. Reference counting still frees frozen
objects that are not in reference cycles.
"""

from __future__ import annotations

import gc
import logging
import time

logger = logging.getLogger(__name__)


def freeze_long_lived(reason: str) -> None:
    """Collect, then freeze every object alive now; call after loading models and caches.

    Unfreezes first, so objects frozen earlier (a model replaced since) become collectable again. The
    collection holds the GIL for tens to hundreds of milliseconds, so call it at startup or after a
    reload, not per request.
    """
    started = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    logger.info("froze %d long-lived objects after %s (%.0f ms)", gc.get_freeze_count(), reason,
                (time.perf_counter() - started) * 1000)


def thaw() -> None:
    """Return frozen objects to the collector; call at shutdown, so the final collection frees them.

    Without it, extension modules that check for leaked instances at exit (nanobind) report the frozen
    model objects as leaks.
    """
    gc.unfreeze()
