"""``edgeq.op_profile``: decode-step kernel time per op type from ORT's profiler events."""

import pytest

from edgeq.op_profile import profile_table, summarize


def run(ts, dur):
    return {"name": "model_run", "cat": "Session", "ts": ts, "dur": dur}


def node(op, ts, dur):
    return {"name": f"n_{ts}_kernel_time", "cat": "Node", "ts": ts, "dur": dur, "args": {"op_name": op}}


def test_summarize_counts_only_the_decode_runs():
    # warm-up prompt, warm-up step, prompt (kernels before ts 300 are not decode), then two decode steps
    events = [run(0, 50), run(100, 50), run(200, 90), node("MatMul", 210, 1000),
              run(300, 40), node("MatMul", 301, 10), node("MatMul", 302, 20), node("Add", 303, 10),
              run(400, 60), node("MatMul", 401, 30), node("Add", 403, 30)]
    p = summarize(events)
    assert p.steps == 2 and p.step_ms == pytest.approx(0.05) and p.kernel_ms == pytest.approx(0.05)
    by_op = {o.op_type: o for o in p.ops}
    assert by_op["MatMul"].calls_per_step == 1.5 and by_op["MatMul"].us_per_step == 30
    assert by_op["Add"].share == pytest.approx(0.4)
    assert [o.op_type for o in p.ops] == ["MatMul", "Add"]
    assert "| MatMul | 2 | 30 | 60.0% |" in profile_table("m", p)


def test_summarize_refuses_a_profile_without_decode_steps():
    with pytest.raises(ValueError, match="no decode step"):
        summarize([run(0, 1), run(1, 1), run(2, 1)])
