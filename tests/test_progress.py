"""Progress of long work: :class:`LineMonitor`'s lines under a fake clock, nested stages, the
active monitor, and the lines a run, a defence and an adaptive mask write when the output is not
a terminal (the ``cli`` fixture captures it, as a pipe would)."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import SYNTHETIC, TINY_RUN

from perturbd import progress
from perturbd.progress import LineMonitor, SilentMonitor, current, duration, stage, watching


class Clock:
    """A fake clock: ``tick`` seconds pass at each reading."""

    def __init__(self, tick: float = 1.0) -> None:
        self.t, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.t += self.tick
        return self.t


def test_lines_start_stop_and_at_most_one_every_ten_seconds() -> None:
    lines: list[str] = []
    m = LineMonitor(lines.append, clock=Clock(1.0))  # one second per step
    m.start("backdoored", 100)
    for _ in range(100):
        m.step(64)
    m.epoch(1, 0.4123, 5310.0)
    m.stop()
    assert lines[0] == "backdoored: started, 100 steps"
    middle = lines[1:-1]
    assert len(middle) == 10, middle  # 100 s of work: one line every 10 s, never more
    assert middle[0] == "backdoored: 10/100 steps (10 %) · 10 s elapsed · about 1 min 30 s left"
    assert lines[-1] == "backdoored: done, 100/100 steps in 1 min 41 s · epoch 1, loss 0.412, 5,310 img/s"


def test_nested_stages_name_their_outer_stage_and_an_early_stop_says_so() -> None:
    lines: list[str] = []
    m = LineMonitor(lines.append, every=5, clock=Clock(1.0))
    with stage("sweep", 3, m) as runs:
        runs.advance()
        with stage("neural_cleanse", 20, m) as nc:
            nc.advance(8)
    assert "sweep 1/3 › neural_cleanse: started, 20 steps" in lines
    assert any(line.startswith("sweep 1/3 › neural_cleanse: 5/20 steps (25 %)") and "left" in line for line in lines), lines
    assert any(line.startswith("sweep 1/3 › neural_cleanse: stopped at 8/20 steps after") for line in lines), lines
    assert lines[-1].startswith("sweep: stopped at 1/3 steps after")


def test_a_stage_stops_on_an_error_so_stages_stay_nested() -> None:
    lines: list[str] = []
    m = LineMonitor(lines.append, clock=Clock())
    with pytest.raises(ValueError), stage("outer", 2, m):
        raise ValueError("boom")
    assert m.open == [] and lines[-1].startswith("outer: stopped at 0/2 steps")


def test_the_active_monitor_is_set_for_a_block_and_restored() -> None:
    assert isinstance(current(), SilentMonitor)
    lines: list[str] = []
    with watching(LineMonitor(lines.append)) as m:
        assert current() is m
        with watching(None):
            assert current() is m, "None keeps the active monitor"
        with stage("inner", 1) as s:
            s.advance()
    assert isinstance(current(), SilentMonitor)
    assert lines[0] == "inner: started, 1 step" and lines[-1].startswith("inner: done, 1/1 steps")


@pytest.mark.parametrize(("seconds", "text"), [(8.4, "8 s"), (125, "2 min 05 s"), (3780, "1 h 03 min"), (-1, "0 s")])
def test_duration(seconds: float, text: str) -> None:
    assert duration(seconds) == text


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every reading of the progress clock is one second later: the periodic lines come every ten readings."""
    monkeypatch.setattr(progress, "now", Clock(1.0))


def test_a_piped_run_writes_progress_lines(cli, tmp_path, fake_time) -> None:
    sets = [f"--set={s}" for s in TINY_RUN]
    code, _, err = cli("run", *sets, "--set", "train.epochs=3", "-o", str(tmp_path))  # 400 victim images, batches of 50: 24 steps
    assert code == 0, err
    for model in ("clean twin", "backdoored"):
        assert f"{model}: started, 24 steps" in err and f"{model}: done, 24/24 steps in" in err, err
    periodic = [line for line in err.splitlines() if "steps (" in line and "elapsed" in line]
    assert any("about" in line and "left" in line for line in periodic), err
    assert "\x1b[" not in err, "no terminal control codes in a pipe"


def test_a_piped_defence_writes_progress_lines(cli, run_dir, tmp_path, fake_time) -> None:
    code, _, err = cli("defend", str(run_dir), "-d", "spectral_signature", "-d", "strip", "-o", str(tmp_path / "d"))
    assert code == 0, err
    for name in ("defenses", "defenses 0/2 › features", "defenses 1/2 › strip entropy"):
        assert f"{name}: started" in err, err
    assert "defenses: done, 2/2 steps" in err


def test_neural_cleanse_reports_each_label_epoch(planted) -> None:
    from perturbd.defenses.neural_cleanse import NeuralCleanse

    lines: list[str] = []
    k = planted.clean.num_classes
    with watching(LineMonitor(lines.append, every=0, clock=itertools.count().__next__)):
        NeuralCleanse(epochs=3, batch_size=8, n_clean=32, seed=0).fit(planted.model, planted.clean)
    assert lines[0] == f"neural_cleanse: started, {3 * k} steps" and lines[-1].startswith(f"neural_cleanse: done, {3 * k}/{3 * k}")
    assert f"neural_cleanse: {k}/{3 * k} steps" in "\n".join(lines)


def test_a_piped_adaptive_mask_writes_progress_lines(cli, tmp_path, fake_time) -> None:
    sets = [f"--set={s}" for s in [*SYNTHETIC, "data.train_limit=300", "data.test_limit=100", "trigger.samples=40", "trigger.passes=2"]]
    code, _, err = cli("trigger", "make", *sets, "-o", str(tmp_path / "mask.safetensors"))
    assert code == 0, err
    assert "adaptive mask: started, 80 steps" in err and "adaptive mask:" in err.split("started, 80 steps", 1)[1], err
    assert any(line.startswith("adaptive mask: ") and "left" in line for line in err.splitlines()), err


def test_stage_over_counts_a_step_per_item_even_after_continue() -> None:
    lines: list[str] = []
    with watching(LineMonitor(lines.append, every=0, clock=Clock())), stage("classes", 4) as s:
        for c in s.over(range(4)):
            if c % 2:
                continue
            torch.zeros(1)
    assert lines[-1].startswith("classes: done, 4/4 steps")


def _terminal_progress():
    import io

    from rich.console import Console

    from perturbd.report.console import make_progress

    return make_progress(Console(file=io.StringIO(), force_terminal=True, width=100))


def test_on_a_terminal_inner_bars_go_when_done_and_the_outer_stays_full() -> None:
    from perturbd.report.console import RichMonitor

    progress = _terminal_progress()
    monitor = RichMonitor(progress)
    assert monitor.lines is None, "a terminal draws bars, not lines"
    with progress, watching(monitor), stage("defenses", 2) as outer:
        for name in ("strip", "neural_cleanse"):
            with stage(name, 5) as inner:
                inner.advance(5)
                assert [t.description.strip() for t in progress.tasks] == ["defenses", name]
            outer.advance()
    (task,) = progress.tasks
    assert task.description == "defenses" and task.completed == task.total == 2


def test_a_sweep_reuses_one_bar_per_depth() -> None:
    from perturbd.report.console import SweepMonitor

    progress = _terminal_progress()
    monitor = SweepMonitor(progress)
    with progress, stage("sweep", 3, monitor) as runs:
        for _ in range(3):
            for model in ("clean twin", "backdoored"):
                with stage(model, 4, monitor) as s:
                    s.advance(4)
            runs.advance()
    assert [t.description.strip() for t in progress.tasks] == ["sweep", "backdoored"]
    assert progress.tasks[0].completed == 3 and progress.tasks[1].completed == 4
