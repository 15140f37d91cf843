"""The per-round pictures: the front with the chosen point, and the coverage histogram."""

import numpy as np
import pytest

from f3ocus_core.selection import select, top_b_masks
from f3ocus_core.selection.figures import plot_coverage, plot_front
from f3ocus_core.selection.synthetic import lntk_like_scores

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_plot_front_and_coverage_write_pngs(tmp_path):
    scores = lntk_like_scores(5, 12, seed=0)
    result = select(scores, 4, algorithm="exact")
    front_png = plot_front(result, tmp_path / "fronts" / "round_001.png")
    coverage_png = plot_coverage(top_b_masks(scores, 4), result.masks, tmp_path / "coverage" / "round_001.png")
    for path in (front_png, coverage_png):
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000


def test_plot_front_handles_a_single_point(tmp_path):
    result = select(np.array([[0.2, 0.8]]), 1, algorithm="local")
    assert plot_front(result, tmp_path / "one.png").read_bytes().startswith(PNG_MAGIC)


def test_plot_coverage_rejects_mismatched_masks(tmp_path):
    with pytest.raises(ValueError, match="equal shape"):
        plot_coverage(np.zeros((3, 4), bool), np.zeros((3, 5), bool), tmp_path / "bad.png")
