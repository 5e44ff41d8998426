"""The main job's stages at once (``Timer.run_parallel``) and its timings line; the whole job runs
in tests/test_slow_e2e.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest

from causaljepa.pipeline import Timer, _times_line
from causaljepa.training.loop import TrainingInterrupted


def _note(path: str, seconds: float = 0.0) -> None:
    """A stage: waits, then writes its process id, torch's thread count and when it ran."""
    import torch

    start = time.time()
    time.sleep(seconds)
    note = {"pid": os.getpid(), "threads": torch.get_num_threads(), "start": start, "end": time.time()}
    Path(path).write_text(json.dumps(note))


def _fail(path: str) -> None:
    Path(path).write_text("started")
    raise ValueError("stage input 'x' is wrong: expected 'y'")


class _TwoArgs(Exception):
    """Pickles, but does not unpickle: its __init__ takes two arguments, its args hold one."""

    def __init__(self, a, b):
        super().__init__(f"{a} and {b}")


def _raise_two_args() -> None:
    raise _TwoArgs("left", "right")


def _raise_unpicklable() -> None:
    e = ValueError("holds a lambda")
    e.hook = lambda: None  # a lambda does not pickle
    raise e


def _interrupted() -> None:
    raise TrainingInterrupted(signal.SIGINT)


def _until_sigterm(path: str) -> None:
    """A stage that stops as a trainer does on SIGTERM: says it saved, raises TrainingInterrupted."""
    got = []
    signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    Path(path + ".started").write_text("")
    deadline = time.monotonic() + 60
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)
    Path(path).write_text(f"saved after signal {got[0] if got else None}")
    raise TrainingInterrupted(got[0] if got else 0)


def test_stages_run_at_once_in_processes_of_their_own(tmp_path, capsys):
    timer = Timer(tmp_path / "timings.json")
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    stages = [("one", partial(_note, str(a), 2.0), False), ("two", partial(_note, str(b), 2.0), False)]
    t0 = time.perf_counter()
    timer.run_parallel("pair", stages, threads=1)
    wall = time.perf_counter() - t0
    one, two = json.loads(a.read_text()), json.loads(b.read_text())
    assert one["threads"] == two["threads"] == 1
    assert len({one["pid"], two["pid"], os.getpid()}) == 3
    assert max(one["start"], two["start"]) < min(one["end"], two["end"])  # they ran at once
    times = json.loads((tmp_path / "timings.json").read_text())
    assert set(times) == {"one", "two", "pair (parallel)"}
    assert times["one"] >= 2.0 and times["two"] >= 2.0  # each stage's own time, in its process
    assert 2.0 <= times["pair (parallel)"] <= wall + 0.1  # the group's wall time, start-up included
    out = capsys.readouterr().out
    assert "[main] one, two at once, 1 thread(s) each ..." in out and "[main] pair (parallel):" in out


def test_a_done_stage_is_skipped_and_one_left_runs_here(tmp_path, capsys):
    timer = Timer(tmp_path / "timings.json")
    a = tmp_path / "a.json"
    stages = [("one", partial(_note, str(a)), False), ("two", _interrupted, True)]
    timer.run_parallel("pair", stages, threads=1)
    assert json.loads(a.read_text())["pid"] == os.getpid()
    assert set(json.loads((tmp_path / "timings.json").read_text())) == {"one"}
    assert "[main] two: done before, skipped" in capsys.readouterr().out
    # threads=0: one after the other, here (MainConfig.parallel=false)
    b, c = tmp_path / "b.json", tmp_path / "c.json"
    stages = [("b", partial(_note, str(b)), False), ("c", partial(_note, str(c)), False)]
    timer.run_parallel("pair", stages, threads=0)
    assert json.loads(b.read_text())["pid"] == json.loads(c.read_text())["pid"] == os.getpid()


def test_a_failing_stage_fails_the_job_after_the_other_ends(tmp_path, capfd):
    timer = Timer(tmp_path / "timings.json")
    ok, bad = tmp_path / "ok.json", tmp_path / "bad.txt"
    stages = [("bad", partial(_fail, str(bad)), False), ("ok", partial(_note, str(ok), 1.0), False)]
    with pytest.raises(ValueError, match="stage input 'x' is wrong: expected 'y'"):
        timer.run_parallel("pair", stages, threads=1)
    assert bad.read_text() == "started" and json.loads(ok.read_text())["threads"] == 1  # both ran
    assert set(json.loads((tmp_path / "timings.json").read_text())) == {"bad", "ok", "pair (parallel)"}
    assert "ValueError: stage input 'x' is wrong" in capfd.readouterr().err  # the stage's traceback


def test_an_interrupted_stage_stops_the_job_with_its_signal(tmp_path):
    timer = Timer(tmp_path / "timings.json")
    ok = tmp_path / "ok.json"
    stages = [("ok", partial(_note, str(ok)), False), ("stopped", _interrupted, False)]
    with pytest.raises(TrainingInterrupted) as e:
        timer.run_parallel("pair", stages, threads=1)
    assert e.value.signum == signal.SIGINT and e.value.hard is False
    assert ok.exists()


def test_sigterm_to_the_job_reaches_every_stage(tmp_path):
    """The job killed with SIGTERM: each stage gets it, saves and stops; the job exits with 143."""
    repo = Path(__file__).resolve().parents[1]
    script = tmp_path / "job.py"
    script.write_text(
        "import sys\n"
        f"sys.path[:0] = [{str(repo)!r}, {str(Path(__file__).parent)!r}]\n"
        "from functools import partial\n"
        "from pathlib import Path\n"
        "from causaljepa.pipeline import Timer\n"
        "from causaljepa.training.loop import TrainingInterrupted\n"
        "from test_pipeline import _until_sigterm\n"
        "if __name__ == '__main__':\n"
        f"    d = Path({str(tmp_path)!r})\n"
        "    stages = [(n, partial(_until_sigterm, str(d / n)), False) for n in ('one', 'two')]\n"
        "    try:\n"
        "        Timer(d / 'timings.json').run_parallel('pair', stages, threads=1)\n"
        "    except TrainingInterrupted as e:\n"
        "        sys.exit(128 + e.signum)\n"
    )
    job = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"{n}.started").exists() for n in ("one", "two")):
        assert job.poll() is None and time.monotonic() < deadline, job.communicate()
        time.sleep(0.05)
    job.send_signal(signal.SIGTERM)
    job.communicate(timeout=60)
    assert job.returncode == 128 + signal.SIGTERM
    for n in ("one", "two"):
        assert (tmp_path / n).read_text() == f"saved after signal {int(signal.SIGTERM)}"


def test_times_line_counts_stages_run_at_once_once():
    times = {"data": 10.0, "predictor_object": 80.0, "predictor_none": 90.0, "predictors (parallel)": 95.0,
             "qa_object": 30.0, "interventions": 5.0}  # fmt: skip
    line = _times_line(times)
    assert "predictor_none 90 (predictor_object and predictor_none at once: 95)" in line
    assert "qa_object 30, interventions 5" in line and "(parallel)" not in line
    assert "total of stages 2.3 min" in line  # (10 + 95 + 30 + 5) / 60
    assert "total of stages 3.6 min" in _times_line({k: v for k, v in times.items() if "parallel" not in k})


def test_an_error_that_does_not_travel_still_fails_the_job_with_its_message(tmp_path):
    timer = Timer(tmp_path / "timings.json")
    note = partial(_note, str(tmp_path / "c.json"))
    stages = [("a", _raise_unpicklable, False), ("b", _interrupted, True), ("c", note, False)]
    with pytest.raises(RuntimeError, match="ValueError: holds a lambda"):
        timer.run_parallel("pair", stages, threads=1)
    with pytest.raises(RuntimeError, match=r"stage a failed \(its traceback is above\)"):
        timer.run_parallel("pair", [("a", _raise_two_args, False), ("c", note, False)], threads=1)
