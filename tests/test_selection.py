"""The one-standard-error rule (`pipeline.library.selection`) on losses worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.library.selection import effective_windows, one_standard_error


def test_effective_windows_count_the_horizons_each_series_spans():
    pairs = np.array([[0, s] for s in range(10)] + [[1, 0], [1, 100]] + [[2, 7]])
    # series 0: ten windows over 9 steps, 9 / 4 + 1 = 3.25 independent ones; series 1: two far apart; series 2: one
    assert effective_windows(pairs, 4) == pytest.approx(3.25 + 2 + 1)
    assert effective_windows(pairs, 1) == pytest.approx(10 + 2 + 1)  # one-step windows never overlap


def test_the_simplest_candidate_within_one_standard_error_of_the_lowest_wins():
    best = np.array([1.0, 2.0, 3.0, 4.0])
    close = best + np.array([0.5, -0.3, 0.4, -0.2])  # mean +0.1; the differences' sd 0.408 / sqrt(4) = 0.204
    far = best + np.array([0.6, 0.5, 0.7, 0.6])  # mean +0.6, sd 0.0816 / 2 = 0.041: clearly worse
    losses = np.stack([far, close, best], axis=1)
    assert one_standard_error(losses, 4) == 1  # `far` is out, `close` within: 0.1 <= 0.204
    assert one_standard_error(losses, 100) == 2  # with 100 independent windows 0.1 > 0.041: the lowest
    assert one_standard_error(losses[:, [0, 2]], 4) == 1
    assert one_standard_error(losses[:1], 4) == 2  # one window: no standard error, the lowest
    tie = np.stack([best, best], axis=1)
    assert one_standard_error(tie, 4) == 0  # equal losses: the simplest


def test_a_candidate_worse_than_the_first_is_never_chosen():
    first = np.array([1.0, 1.0, 1.0, 1.0])  # mean 1.0, 0.5 above the lowest, its error 0.289: out
    noisy = np.array([0.0, 4.2, 0.0, 0.4])  # mean 1.15, 0.65 above the lowest but its error is 0.86: within
    best = np.array([0.0, 1.0, 0.0, 1.0])  # mean 0.5
    losses = np.stack([first, noisy, best], axis=1)
    assert one_standard_error(losses, 4) == 2  # noisy would lose to the first (the base): the lowest instead
    assert one_standard_error(losses[:, 1:], 4) == 0  # without the first, noisy is the simplest within the error
