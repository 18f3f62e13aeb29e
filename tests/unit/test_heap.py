"""A full garbage collection in a worker walks only what the worker made after start-up."""
import gc

from common import heap


class Node:
    def __init__(self):
        self.me = self  # a cycle: only the collector can free it, so it is tracked


def test_objects_alive_at_start_up_are_left_out_of_every_later_collection():
    started_with = [Node() for _ in range(100)]
    try:
        assert heap.freeze_startup() >= len(started_with)
        made_later = Node()
        tracked = {id(obj) for obj in gc.get_objects()}
        assert not tracked & {id(node) for node in started_with}
        assert id(made_later) in tracked
    finally:
        gc.unfreeze()
