"""Progress bars: on a terminal, long local work shows its progress and the time left; anywhere else
(a log file, CI, a captured stream) it prints nothing."""

import io
import sys

import pytest

from f3ocus_core.data.medvqa_build import build_medvqa_fl
from f3ocus_core.pretrain import build_base_checkpoint
from f3ocus_core.progress import progress_bar
from tests.data_fixtures import write_medmnist_fixture


class _Terminal(io.StringIO):
    """A stream that says it is a terminal, as a user's stderr does."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal", [True, False])
def test_a_bar_shows_progress_and_time_left_on_a_terminal_only(monkeypatch, terminal):
    stream = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    with progress_bar(4, "work", unit="step") as bar:
        bar.update(4)
    if terminal:
        assert "work" in stream.getvalue() and "4/4" in stream.getvalue()
        assert "<00:00" in stream.getvalue()  # [elapsed<left]: the estimate of the time left
    else:
        assert stream.getvalue() == ""


def test_building_a_base_checkpoint_shows_its_steps_on_a_terminal(tmp_path, monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    build_base_checkpoint(tmp_path / "base", steps=3)
    assert "base checkpoint builtin:tiny-vilt-easyvqa" in terminal.getvalue() and "3/3" in terminal.getvalue()


def test_building_medvqa_fl_shows_its_parts_on_a_terminal_and_nothing_otherwise(tmp_path, monkeypatch, capfd):
    npz = tmp_path / "npz"
    write_medmnist_fixture(npz, per_class=1)
    build_medvqa_fl(npz, tmp_path / "quiet")
    assert "MedVQA-FL" not in capfd.readouterr().err  # captured: not a terminal

    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    build_medvqa_fl(npz, tmp_path / "shown")
    assert "MedVQA-FL" in terminal.getvalue() and "18/18" in terminal.getvalue()  # 9 clients x (train, test)
