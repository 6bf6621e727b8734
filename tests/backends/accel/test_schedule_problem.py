"""The scratchpad Problem/Schedule contract: validate(), check_schedule() on every violation, traffic accounting."""

from __future__ import annotations

import pytest

from qcc.backends.accel.problem import Buffer, Event, Problem, Schedule, Task, check_schedule
from qcc.backends.accel.scheduler import schedule
from qcc.errors import OptionError, ScratchpadError


def chain(capacity: int = 512) -> Problem:
    """x -> t0(w0) -> a0 -> t1(w1) -> a1 -> t2(a0, a1) -> y: a0 lives across t1."""
    bufs = [Buffer("x", 64, "input"), Buffer("w0", 64, "weight"), Buffer("w1", 100, "weight"),
            Buffer("a0", 128, "activation"), Buffer("a1", 64, "activation"), Buffer("y", 64, "output")]
    tasks = [Task("t0", ("x", "w0"), ("a0",)), Task("t1", ("a0", "w1"), ("a1",)), Task("t2", ("a0", "a1"), ("y",))]
    return Problem({b.name: b for b in bufs}, tasks, capacity)


def valid_events() -> list[Event]:
    return [Event("load", "x", 0), Event("load", "w0", 64), Event("alloc", "a0", 128), Event("run", "t0"),
            Event("free", "x"), Event("free", "w0"), Event("load", "w1", 0), Event("alloc", "a1", 256),
            Event("run", "t1"), Event("free", "w1"), Event("alloc", "y", 0), Event("run", "t2"),
            Event("store", "y"), Event("free", "a0"), Event("free", "a1"), Event("free", "y")]


def test_hand_schedule_traffic_peak_occupancy():
    s = Schedule(chain(), valid_events(), "hand", "heuristic")
    check_schedule(s)
    assert s.order() == ["t0", "t1", "t2"]
    tr = s.traffic()
    assert tr == {"load": 64 + 64 + 100, "store": 64, "compulsory": 64 + 64 + 100 + 64, "noncompulsory": 0}
    assert s.peak() == 320  # a1 at [256, 320)
    occ = s.occupancy()
    assert len(occ) == len(s.events)
    assert occ[3] == {"x": (0, 64), "w0": (64, 64), "a0": (128, 128)}
    assert occ[-1] == {}


def test_spill_counts_as_noncompulsory():
    # Spill a0 after t0 and reload it for t1: 2 x 128 non-compulsory bytes.
    ev = valid_events()
    ev[6:6] = [Event("store", "a0"), Event("free", "a0"), Event("load", "a0", 128)]
    s = Schedule(chain(), ev, "hand", "heuristic")
    check_schedule(s)
    assert s.traffic()["noncompulsory"] == 256


@pytest.mark.parametrize("mutate, message", [
    (lambda ev: ev.__setitem__(2, Event("alloc", "a0", 64)), "overlaps 'w0'"),
    (lambda ev: ev.__setitem__(2, Event("alloc", "a0", 160)), "aligned"),
    (lambda ev: ev.__setitem__(7, Event("alloc", "a1", 512)), "exceeds the capacity"),
    (lambda ev: ev.__delitem__(1), "operand 'w0' is not resident"),
    (lambda ev: ev.__delitem__(2), "output 'a0' was not allocated"),
    (lambda ev: ev.__delitem__(12), "never stored"),
    (lambda ev: ev.insert(5, Event("free", "x")), "free of a buffer that is not resident"),
    (lambda ev: ev.__setitem__(slice(6, 6), [Event("free", "a0"), Event("load", "a0", 128)]), "never stored to DRAM"),
    (lambda ev: ev.__setitem__(slice(11, 13), []), "tasks never run"),
    (lambda ev: ev.insert(4, Event("run", "t0")), "runs twice"),
    (lambda ev: ev.insert(4, Event("store", "w0")), "weight buffers are never stored"),
    (lambda ev: ev.insert(4, Event("load", "x", 384)), "already resident"),
    (lambda ev: ev.insert(0, Event("store", "a0")), "not resident with its data"),
    (lambda ev: ev.insert(0, Event("jump", "x")), "unknown event kind"),
    (lambda ev: ev.insert(0, Event("run", "nope")), "unknown task"),
])
def test_check_schedule_catches(mutate, message):
    ev = valid_events()
    mutate(ev)
    with pytest.raises(ScratchpadError, match=message):
        check_schedule(Schedule(chain(), ev, "hand", "heuristic"))


def test_validate_rejects_task_that_never_fits():
    p = chain(capacity=300)  # t1 needs a0 (128) + w1 (100 -> 128 aligned) + a1 (64) = 320
    with pytest.raises(ScratchpadError, match="task 't1' needs 320 bytes"):
        p.validate()
    with pytest.raises(ScratchpadError, match="can never fit"):
        schedule(p, "belady")


@pytest.mark.parametrize("edit, message", [
    (lambda p: p.tasks.append(Task("t3", ("zz",), ())), "unknown buffer 'zz'"),
    (lambda p: p.tasks.append(Task("t3", ("x",), ("a1",))), "written by more than one task"),
    (lambda p: p.tasks.insert(0, Task("t9", ("a1",), ())), "before any task writes it"),
    (lambda p: p.tasks.append(Task("t3", ("x",), ("w0",))), "only activations and outputs"),
    (lambda p: p.tasks.append(Task("t0", ("x",), ())), "two tasks are named"),
    (lambda p: p.buffers.update(q=Buffer("q", 8, "temp")), "unknown kind"),
    (lambda p: p.buffers.update(q=Buffer("q", 8, "activation")), "never written"),
    (lambda p: p.buffers.update(q=Buffer("q", 0, "weight")), "non-positive size"),
    (lambda p: setattr(p, "alignment", 0), "must be positive"),
])
def test_validate_errors(edit, message):
    p = chain()
    edit(p)
    with pytest.raises(ScratchpadError, match=message):
        p.validate()


def test_unknown_method_and_time_limit():
    with pytest.raises(OptionError, match="unknown scratchpad scheduling method"):
        schedule(chain(), "fifo")
    with pytest.raises(OptionError, match="time_limit_s"):
        schedule(chain(), "lru", time_limit_s=0)
