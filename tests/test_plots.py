"""The figures: coincident runs stay visible, long titles stay inside the figure."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from budgetsft.experiment import run  # noqa: E402
from budgetsft.plots import plot_runs, plot_sweep  # noqa: E402
from budgetsft.regret import to_frame  # noqa: E402


def _image(path):
    import matplotlib.image

    return matplotlib.image.imread(path)[..., :3]


def _pixels_of(img, colour: str, tol: float = 0.12) -> int:
    from matplotlib.colors import to_rgb

    return int((np.abs(img - np.asarray(to_rgb(colour))).max(axis=-1) < tol).sum())


def test_a_run_under_an_identical_one_is_still_visible(tmp_path):
    """Two runs with the same curves (first and full until first's budget is spent): both lines show."""
    frame = to_frame(run({"env": {"name": "synthetic", "d": 5, "K": 3, "rounds": 300}, "comparator": "none",
                          "refit": False, "test_rounds": 0}).records)
    alone = _pixels_of(_image(plot_runs({"a": frame}, tmp_path / "alone.png")), "C0")
    both = _image(plot_runs({"a": frame, "b": frame.copy()}, tmp_path / "both.png"))
    # Drawn one over the other with the same solid line, "a" would survive in its legend sample only.
    assert _pixels_of(both, "C0") > 0.2 * alone  # through the gaps of b's dashes, and at a's markers
    assert _pixels_of(both, "C1") > 0.2 * alone


@pytest.mark.parametrize("title", [
    "hf:some-organisation/a-rather-long-data-set-name (encoder features): mistakes, mean ± sd over 3 seeds, "
    "learner logistic",
    # wide glyphs, and a first line that the 0.55 em estimate alone let run off the right edge
    "synthetic: d=20, K=5, T=1000, ridge learner: pseudo-regret, mean ± sd over 2 seeds",
    "WWWWWWWWWW MMMMMMMMMM WWWWWWWWWW MMMMMMMMMM WWWWWWWWWW MMMMMMMMMM WWWWWWWWWW",
])
def test_a_long_bar_chart_title_is_wrapped_inside_the_figure(tmp_path, title):
    rows = [{"gate": g, "beta": 0.1, "mistakes": m, "mistakes_sd": 1.0} for g, m in (("llf", 90), ("first", 95))]
    img = _image(plot_sweep(rows, "mistakes", tmp_path / "bars.png", title=title))
    band = img[: img.shape[0] // 6]  # the title's rows
    assert (band < 0.5).any()  # the title is drawn
    for edge in (band[:, :6], band[:, -6:]):  # and runs off neither side
        assert (edge > 0.9).all()
