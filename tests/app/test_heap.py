import gc
import weakref

from app.heap import freeze_long_lived


class Node:
    def __init__(self) -> None:
        self.self_reference = self  # a reference cycle: only the cyclic collector frees it


def test_freeze_counts_live_objects():
    try:
        live_nodes = [Node() for _ in range(1000)]
        freeze_long_lived("a test")
        assert gc.get_freeze_count() >= len(live_nodes)
    finally:
        gc.unfreeze()


def test_refreeze_frees_cycles_dropped_since():
    try:
        cycle = Node()
        alive = weakref.ref(cycle)
        freeze_long_lived("a first load")
        del cycle
        gc.collect()
        assert alive() is not None  # frozen: skipped by the collector
        freeze_long_lived("a reload")
        assert alive() is None  # unfrozen first, so the dropped cycle was collected
    finally:
        gc.unfreeze()
