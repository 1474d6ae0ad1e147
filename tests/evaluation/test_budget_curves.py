"""ε₅₀ of budget curves and its bootstrap interval (evaluation/budget_curves.py), on synthetic numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from danp_pipeline.evaluation.budget_curves import eps50, eps50_interval, format_eps50

BUDGETS = [2 / 255, 4 / 255, 8 / 255, 16 / 255]


def test_eps50_interpolates_the_crossing_in_log_eps_and_keeps_open_bounds() -> None:
    clean = np.array([0.8, 0.8, 0.8, 0.8, 0.0, 0.6])
    protected = np.array([[0.8, 0.6, 0.2, 0.0],     # half (0.4) crossed halfway between 4 and 8 (in t): √32
                          [0.8, 0.7, 0.6, 0.5],     # never reaches half: > 16/255
                          [0.3, 0.2, 0.1, 0.0],     # below half at the smallest budget: < 2/255
                          [0.8, 0.4, 0.4, 0.0],     # exactly half at 4/255: 4/255
                          [0.0, 0.0, 0.0, 0.0],     # no clean success: nothing to halve
                          [0.6, 0.5, 0.4, 0.1]])    # 0.3 crossed at 1/3 of the way from 8 to 16: 8·2^(1/3)
    got = eps50(BUDGETS, clean, protected)
    assert got[0] == pytest.approx(math.sqrt(32) / 255)
    assert got[1] == math.inf and got[2] == -math.inf and got[3] == pytest.approx(4 / 255)
    assert math.isnan(got[4]) and got[5] == pytest.approx(8 * 2 ** (1 / 3) / 255)
    assert format_eps50(got[0], BUDGETS) == "5.66/255"
    assert format_eps50(got[1], BUDGETS) == "> 16/255" and format_eps50(got[2], BUDGETS) == "< 2/255"
    with pytest.raises(ValueError, match="ascending"):
        eps50([4 / 255, 2 / 255], 0.8, [0.8, 0.1])


def test_eps50_interval_is_a_fixed_seed_bootstrap_over_scenes() -> None:
    n = np.full((6, 4), 2.0)
    same = np.tile([2.0, 1.0, 0.0, 0.0], (6, 1))                 # every scene: 100 %, 50 %, 0 %, 0 % of 2 edits
    assert eps50_interval(BUDGETS, [2.0] * 6, [2.0] * 6, same, n) == pytest.approx((4 / 255,) * 3)
    mixed = np.array([[2, 2, 1, 0], [2, 1, 0, 0], [2, 2, 2, 2], [2, 0, 0, 0], [2, 2, 1, 1], [2, 1, 1, 0]], float)
    point, lo, hi = eps50_interval(BUDGETS, [2.0] * 6, [2.0] * 6, mixed, n)
    assert point == pytest.approx(float(eps50(BUDGETS, 1.0, mixed.sum(0) / 12)))
    assert lo < point < hi and (lo, hi) == eps50_interval(BUDGETS, [2.0] * 6, [2.0] * 6, mixed, n)[1:]
    assert lo >= BUDGETS[0] and hi == math.inf           # some draws never reach half: the bound stays open
