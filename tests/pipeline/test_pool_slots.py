"""ActorSlots, the replicas of every pool (the job's scheduler and ReplicaPool): no Ray needed for the rules."""

from __future__ import annotations

import itertools

import pytest

from sgcore.pipeline.scheduler import ActorSlots, short_error

_killed: list[str] = []


@pytest.fixture
def killed():
    _killed.clear()
    return _killed


def _slots(n: int) -> ActorSlots:
    names = (f"actor{i}" for i in itertools.count())
    return ActorSlots(lambda: next(names), n, kill=_killed.append)


def test_work_goes_to_the_least_loaded_live_replica():
    slots = _slots(3)
    assert [slots.take()[1] for _ in range(6)] == ["actor0", "actor1", "actor2"] * 2
    slots.release(1)
    assert slots.take() == (1, "actor1")
    assert slots.load == [2, 2, 2]


def test_a_dead_replica_is_killed_and_forgotten_once_and_not_replaced_while_others_live(killed):
    slots = _slots(2)
    slot, actor = slots.take()
    assert slots.drop(slot, actor) and killed == ["actor0"]
    assert not slots.drop(slot, actor)  # the second report of the same death
    assert not slots.drop(1, object())  # not the handle that slot holds: nothing dropped
    assert (slots.actors, slots.live, slots.lost) == ([None, "actor1"], 1, 1)
    assert all(slots.take()[1] == "actor1" for _ in range(3))  # never the dead slot


def test_the_last_replica_is_replaced_so_queued_work_can_run(killed):
    slots = _slots(1)
    assert slots.drop(0, slots.actors[0]) and slots.actors == ["actor1"] and slots.lost == 1


def test_growing_fills_a_dead_slot_first_then_appends(killed):
    slots = _slots(2)
    slots.drop(0, slots.actors[0])
    slots.add()
    assert slots.actors == ["actor2", "actor1"]
    slots.add()
    assert slots.actors == ["actor2", "actor1", "actor3"] and slots.load == [0, 0, 0]
    slots.close()
    assert killed == ["actor0", "actor2", "actor1", "actor3"] and slots.live == 0


def test_short_error_is_the_last_line_and_bounded():
    assert short_error(RuntimeError("Traceback ...\n  File x\nValueError: bad pixel")) == "ValueError: bad pixel"
    assert short_error(RuntimeError("")) == "RuntimeError"
    assert len(short_error(RuntimeError("x" * 1000))) == 300
