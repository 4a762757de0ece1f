"""Window index: exact small cases, split properties by hypothesis, and no leakage through the data path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.library.buffer import WindowBuffer
from pipeline.library.windows import SPLITS, build_window_index, window_starts

from .conftest import series_table

# ---------------------------------------------------------------- hand-checked cases


def _assert_index(index, expected):
    assert set(index) == set(SPLITS)
    for split in SPLITS:
        got = index[split]
        assert got.dtype == np.int64, split
        assert got.shape == (len(expected[split]), 2), split
        np.testing.assert_array_equal(got, np.array(expected[split], dtype=np.int64).reshape(-1, 2), err_msg=split)


def test_single_series_by_hand():
    # length 10, train [0, 6), val [6, 8), test [8, 10); lookback 3, horizon 2
    index = build_window_index([10], [6], [8], lookback=3, horizon=2)
    # train targets start at 3 or 4 (end at 5 or 6 <= 6): input starts 0, 1
    # val targets start at 6 (ends 8): input start 3; test targets start at 8: input start 5
    _assert_index(index, {"train": [[0, 0], [0, 1]], "val": [[0, 3]], "test": [[0, 5]]})


def test_two_series_with_strides_by_hand():
    lengths, train_end, val_end = [14, 7], [8, 3], [10, 5]
    index = build_window_index(lengths, train_end, val_end, lookback=2, horizon=2, stride=2)
    # series 0: train targets 2, 4, 6 -> inputs 0, 2, 4; val target 8 -> 6; test targets 10, 12 (stride=horizon)
    # series 1: no train window (targets would start at 2 and end at 4 > 3); val target 3 -> 1; test 5 -> 3
    _assert_index(
        index,
        {
            "train": [[0, 0], [0, 2], [0, 4]],
            "val": [[0, 6], [1, 1]],
            "test": [[0, 8], [0, 10], [1, 3]],
        },
    )


def test_explicit_val_and_test_strides_by_hand():
    index = build_window_index([14], [7], [10], lookback=2, horizon=2, stride=3, val_stride=1, test_stride=1)
    # train targets 2, 5 (stride 3; 8 would end at 10 > 7); val targets 7, 8; test targets 10, 11, 12
    _assert_index(
        index,
        {
            "train": [[0, 0], [0, 3]],
            "val": [[0, 5], [0, 6]],
            "test": [[0, 8], [0, 9], [0, 10]],
        },
    )


def test_lookback_longer_than_train_part_by_hand():
    # the inputs of a validation window may reach back into the train part (history), never before 0
    index = build_window_index([10], [4], [7], lookback=5, horizon=1)
    _assert_index(index, {"train": [], "val": [[0, 0], [0, 1]], "test": [[0, 2], [0, 3], [0, 4]]})


def test_too_short_for_any_window():
    index = build_window_index([5], [3], [4], lookback=4, horizon=2)
    _assert_index(index, {"train": [], "val": [], "test": []})


def test_window_starts_vectorised():
    series, starts = window_starts(np.array([2, 5, 0]), np.array([6, 4, 0]), 2)
    np.testing.assert_array_equal(series, [0, 0, 0, 2])
    np.testing.assert_array_equal(starts, [2, 4, 6, 0])


# ---------------------------------------------------------------- properties


@st.composite
def layouts(draw):
    n = draw(st.integers(1, 4))
    lengths, train_end, val_end = [], [], []
    for _ in range(n):
        length = draw(st.integers(1, 80))
        t = draw(st.integers(0, length))
        v = draw(st.integers(t, length))
        lengths.append(length)
        train_end.append(t)
        val_end.append(v)
    return {
        "lengths": np.array(lengths, dtype=np.int64),
        "train_end": np.array(train_end, dtype=np.int64),
        "val_end": np.array(val_end, dtype=np.int64),
        "lookback": draw(st.integers(1, 25)),
        "horizon": draw(st.integers(1, 12)),
        "stride": draw(st.integers(1, 5)),
        "val_stride": draw(st.none() | st.integers(1, 5)),
        "test_stride": draw(st.none() | st.integers(1, 5)),
    }


def _index(lay):
    return build_window_index(
        lay["lengths"],
        lay["train_end"],
        lay["val_end"],
        lay["lookback"],
        lay["horizon"],
        lay["stride"],
        lay["val_stride"],
        lay["test_stride"],
    )


def _brute_force(lay) -> dict[str, list[list[int]]]:
    """Every window by a plain loop over series and target start positions."""
    lb, h = lay["lookback"], lay["horizon"]
    steps = {
        "train": lay["stride"],
        "val": lay["val_stride"] or lay["stride"],
        "test": lay["test_stride"] or h,
    }
    out: dict[str, list[list[int]]] = {s: [] for s in SPLITS}
    for i, (length, t_end, v_end) in enumerate(zip(lay["lengths"], lay["train_end"], lay["val_end"])):
        ranges = {"train": (0, int(t_end)), "val": (int(t_end), int(v_end)), "test": (int(v_end), int(length))}
        for split, (lo, hi) in ranges.items():
            first = max(lo, lb)  # first target position whose inputs start at or after 0
            t = first
            while t + h <= hi:
                out[split].append([i, t - lb])
                t += steps[split]
    return out


@settings(max_examples=300, deadline=None)
@given(layouts())
def test_windows_stay_inside_their_split(lay):
    index = _index(lay)
    lb, h = lay["lookback"], lay["horizon"]
    for split in SPLITS:
        pairs = index[split]
        assert pairs.dtype == np.int64 and pairs.ndim == 2 and pairs.shape[1] == 2
        if len(pairs) == 0:
            continue
        s, start = pairs[:, 0], pairs[:, 1]
        assert ((s >= 0) & (s < len(lay["lengths"]))).all()
        target_first = start + lb
        target_end = start + lb + h  # exclusive
        # never reads before the series' start or past its end
        assert (start >= 0).all()
        assert (target_end <= lay["lengths"][s]).all()
        if split == "train":
            # neither inputs nor targets reach index >= train_end
            assert (target_end <= lay["train_end"][s]).all()
        elif split == "val":
            assert (target_first >= lay["train_end"][s]).all()
            assert (target_end <= lay["val_end"][s]).all()
        else:
            assert (target_first >= lay["val_end"][s]).all()
            assert (target_end <= lay["lengths"][s]).all()


@settings(max_examples=300, deadline=None)
@given(layouts())
def test_index_matches_brute_force(lay):
    index = _index(lay)
    expected = _brute_force(lay)
    for split in SPLITS:
        want = np.array(expected[split], dtype=np.int64).reshape(-1, 2)
        assert len(index[split]) == len(want), split
        np.testing.assert_array_equal(index[split], want, err_msg=split)


@settings(max_examples=100, deadline=None)
@given(layouts())
def test_index_is_a_pure_function(lay):
    a, b = _index(lay), _index(lay)
    for split in SPLITS:
        np.testing.assert_array_equal(a[split], b[split])


# ---------------------------------------------------------------- leakage through the real data path


def _poisoned_buffer(lengths, train_end, lookback, horizon) -> WindowBuffer:
    """Scaled values = series * 1000 + position on the train part, NaN on validation and test."""
    parts = []
    for i, (length, end) in enumerate(zip(lengths, train_end)):
        v = np.full(length, np.nan, dtype=np.float32)
        v[:end] = i * 1000 + np.arange(end)
        parts.append(v)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return WindowBuffer(
        values=torch.from_numpy(np.concatenate(parts)),
        offsets=torch.from_numpy(offsets),
        lookback=lookback,
        horizon=horizon,
    )


def test_no_val_or_test_value_enters_a_training_window():
    lengths = np.array([120, 60, 200, 45])
    train_end = np.array([84, 40, 150, 30])
    val_end = np.array([102, 50, 175, 38])
    lookback, horizon = 12, 6
    buffer = _poisoned_buffer(lengths, train_end, lookback, horizon)
    index = build_window_index(lengths, train_end, val_end, lookback, horizon, stride=1, val_stride=1, test_stride=1)
    train = torch.from_numpy(index["train"])
    assert len(train) == sum(end - lookback - horizon + 1 for end in train_end)

    x, y = buffer.gather(train)
    assert x.shape == (len(train), lookback, 1) and y.shape == (len(train), horizon)
    assert not torch.isnan(x).any()
    assert not torch.isnan(y).any()
    # the gather reads exactly the positions of each window
    expect = train[:, :1] * 1000 + train[:, 1:2] + torch.arange(lookback + horizon)
    torch.testing.assert_close(torch.cat([x[:, :, 0], y], dim=1), expect.float(), rtol=0, atol=0)

    # the poisoning is real: every validation and test target is NaN
    for split in ("val", "test"):
        _, targets = buffer.gather(torch.from_numpy(index[split]))
        assert len(targets) > 0 and torch.isnan(targets).all(), split


@settings(max_examples=100, deadline=None)
@given(layouts())
def test_no_leakage_property(lay):
    lengths, train_end = lay["lengths"], lay["train_end"]
    buffer = _poisoned_buffer(lengths, train_end, lay["lookback"], lay["horizon"])
    index = _index(lay)
    train = torch.from_numpy(index["train"])
    if len(train):
        x, y = buffer.gather(train)
        assert not torch.isnan(x).any() and not torch.isnan(y).any()
    for split in ("val", "test"):
        pairs = torch.from_numpy(index[split])
        if len(pairs):
            _, targets = buffer.gather(pairs)
            assert torch.isnan(targets).all()


def test_from_ingest_scales_per_series():
    raw = np.array([1.0, 3.0, 5.0, 10.0, 20.0, 30.0, 40.0], dtype=np.float32)
    records = [{"length": 3, "mean": 3.0, "scale": 2.0}, {"length": 4, "mean": 20.0, "scale": 10.0}]
    buffer = WindowBuffer.from_ingest(raw, series_table(records), lookback=2, horizon=1)
    torch.testing.assert_close(buffer.values, torch.tensor([-1.0, 0.0, 1.0, -1.0, 0.0, 1.0, 2.0]))
    assert buffer.values.dtype == torch.float32
    np.testing.assert_array_equal(buffer.offsets.numpy(), [0, 3])
    x, y = buffer.gather(torch.tensor([[1, 1], [0, 0]]))
    torch.testing.assert_close(x[:, :, 0], torch.tensor([[0.0, 1.0], [-1.0, 0.0]]))
    torch.testing.assert_close(y, torch.tensor([[2.0], [1.0]]))


@pytest.mark.parametrize("stride", [1, 3])
def test_every_train_target_position_is_covered_with_stride_one(stride):
    # with stride 1 every train position after the first lookback is some window's target
    lengths, train_end, val_end = np.array([30]), np.array([20]), np.array([25])
    index = build_window_index(lengths, train_end, val_end, lookback=4, horizon=3, stride=stride)
    covered = set()
    for _, start in index["train"]:
        covered.update(range(start + 4, start + 7))
    if stride == 1:
        assert covered == set(range(4, 20))
    else:
        assert covered <= set(range(4, 20))
        assert index["train"][:, 1].tolist() == [0, 3, 6, 9, 12]


@settings(max_examples=100, deadline=None)
@given(
    lengths=st.lists(st.integers(2, 40), min_size=1, max_size=5),
    seed=st.integers(0, 2**16),
    log_scale=st.floats(-3, 6),
)
def test_scaling_round_trips(lengths, seed, log_scale):
    """Scaled values mapped back with each series' own (mean, scale) give the raw values again."""
    rng = np.random.default_rng(seed)
    raw = (rng.normal(size=sum(lengths)) * 10**log_scale + rng.normal() * 10**log_scale).astype(np.float32)
    records, start = [], 0
    for n in lengths:
        part = raw[start : start + n].astype(np.float64)
        records.append({"length": n, "mean": float(part.mean()), "scale": float(part.std()) or 1.0})
        start += n
    buffer = WindowBuffer.from_ingest(raw, series_table(records), lookback=1, horizon=1)
    mean = np.repeat([r["mean"] for r in records], lengths)
    scale = np.repeat([r["scale"] for r in records], lengths)
    restored = buffer.values.numpy().astype(np.float64) * scale + mean
    np.testing.assert_allclose(restored, raw, rtol=1e-5, atol=1e-5 * 10**log_scale)


# ---------------------------------------------------------------- a season the test part cannot be scored at


def test_a_season_the_test_part_cannot_be_scored_at_is_refused_by_the_window_stage():
    from pipeline.config import load_config
    from pipeline.library.errors import DataError
    from pipeline.stages.window import check_scoring_season

    rows = [
        {"id": "a", "length": 100, "train_end": 30, "val_end": 40},
        {"id": "b", "length": 100, "train_end": 20, "val_end": 40},
        {"id": "c", "length": 40, "train_end": 10, "val_end": 40},  # no test part: not scored
    ]
    table = series_table(rows)

    def config(season: int):
        return load_config(None, ["window.lookback=10", "window.horizon=30", f"evaluate.season_length={season}"])

    with pytest.raises(DataError, match=r"^evaluate.season_length \(24\): series 'b' has a train part of 20 steps"):
        check_scoring_season(config(24), table, [])
    back = r"series 'a' reads 48 steps back from its first test forecast, before its start \(40 steps earlier\)"
    with pytest.raises(DataError, match=back):  # two seasons back for a 30-step horizon
        check_scoring_season(config(24), table, ["b"])  # b dropped as too short: not scored either
    check_scoring_season(config(12), table, [])  # 36 steps back


def test_a_series_constant_on_its_train_part_is_refused_before_training():
    """`data.scaling: none` admits a series constant on its train part; its MASE scale (the seasonal-naive error
    there) is 0, and evaluate refused it after the whole training had run. The window stage says so first."""
    from pipeline.config import load_config
    from pipeline.library.errors import DataError
    from pipeline.stages.window import check_mase_scale

    rows = [
        {"id": "a", "length": 60, "train_end": 30, "val_end": 40},
        {"id": "b", "length": 60, "train_end": 30, "val_end": 40},
        {"id": "c", "length": 40, "train_end": 30, "val_end": 40},  # no test part: not scored
    ]
    table = series_table(rows)
    rng = np.random.default_rng(0)
    raw = rng.normal(size=160).astype(np.float32)
    raw[60:90] = 0.0  # b: zero over its train part, then demand
    raw[120:] = 5.0  # c: constant, not scored
    cfg = load_config(None, ["window.lookback=10", "window.horizon=5", "evaluate.season_length=4"])
    message = (
        r"^evaluate.season_length \(4\): series 'b' repeats itself exactly at that season over its train part "
        r"\(constant there, or periodic without noise\), so its seasonal-naive error there, which scales MASE, is 0"
    )
    with pytest.raises(DataError, match=message):
        check_mase_scale(cfg, table, [], raw)
    check_mase_scale(cfg, table, ["b"], raw)  # dropped: not scored
    raw[60:90] = np.tile([1.0, 2.0, 3.0, 4.0], 8)[:30]  # periodic at the season: the same
    with pytest.raises(DataError, match=message):
        check_mase_scale(cfg, table, [], raw)
    raw[65] = 2.5
    check_mase_scale(cfg, table, [], raw)


def test_the_window_stage_refuses_a_constant_series_in_one_line(tmp_path):
    import pandas as pd

    from .conftest import cli_in_process, write_config

    time = pd.date_range("2024-01-01", periods=300, freq="h")
    wave = 10 + np.sin(np.arange(300) / 3.8) + np.random.default_rng(0).normal(0, 0.1, 300)
    frame = pd.concat(
        [
            pd.DataFrame({"id": "shop", "time": time, "value": wave}),
            pd.DataFrame({"id": "closed", "time": time, "value": np.where(np.arange(300) < 250, 0.0, wave)}),
        ]
    )
    frame.to_csv(tmp_path / "data.csv", index=False)
    overrides = {
        "data": {"source": str(tmp_path / "data.csv"), "id_column": "id", "target_column": "value", "freq": "h"},
        "data.scaling": "none",
        "data.transform": "none",
        "window.lookback": 48,
        "window.horizon": 12,
        "evaluate.season_length": 24,
    }
    done = cli_in_process("run", "--config", str(write_config(tmp_path, overrides)))
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: evaluate.season_length (24): series 'closed' repeats itself exactly"), last
    assert "Traceback" not in done.stderr and (tmp_path / "run" / "ingest").is_dir()
    assert not (tmp_path / "run" / "window").exists() and not (tmp_path / "run" / "train").exists()


def test_a_series_observed_too_little_to_scale_mase_is_refused_before_training(tmp_path):
    """Its train part is observed only in its first day and filled after (data.missing: interpolate): no two
    observed values lie a season apart there, so evaluate could not scale its MASE; the window stage says so."""
    import pandas as pd

    from .conftest import cli_in_process, write_config

    time = pd.date_range("2024-01-01", periods=300, freq="h")
    wave = 10 + np.sin(np.arange(300) / 3.8) + np.random.default_rng(0).normal(0, 0.1, 300)
    seen = (np.arange(300) < 24) | (np.arange(300) >= 250)
    frame = pd.concat(
        [
            pd.DataFrame({"id": "shop", "time": time, "value": wave}),
            pd.DataFrame({"id": "sparse", "time": time[seen], "value": wave[seen]}),
        ]
    )
    frame.to_csv(tmp_path / "data.csv", index=False)
    overrides = {
        "data": {
            "source": str(tmp_path / "data.csv"), "id_column": "id", "target_column": "value", "freq": "h",
            "missing": "interpolate", "transform": "none",
        },
        "window.lookback": 48,
        "window.horizon": 12,
        "evaluate.season_length": 24,
    }  # fmt: skip
    done = cli_in_process("run", "--config", str(write_config(tmp_path, overrides)))
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last == (
        "error: series 'sparse': no two observed values evaluate.season_length (24) apart on its train part to scale "
        "MASE by (data.missing=interpolate filled the others); give it more observed history or leave it out"
    )
    assert not (tmp_path / "run" / "window").exists() and not (tmp_path / "run" / "train").exists()


def test_training_windows_whose_every_target_was_filled_are_left_out():
    """They teach nothing (their targets are out of the loss) but counted in its fixed denominator: every batch that
    drew one took a smaller step. Validation and test windows stay; a window with one observed target stays."""
    from pipeline.library.windows import without_unobserved_targets

    lengths = np.array([20, 15])
    index = build_window_index(lengths, np.array([14, 10]), np.array([17, 12]), lookback=3, horizon=2)
    observed = np.arange(35, dtype=np.float64)
    observed[[8, 9, 10]] = np.nan  # series 0: a filled gap of three points
    observed[20 + 5] = np.nan  # series 1: one filled point
    kept, dropped = without_unobserved_targets(index, np.array([0, 20]), observed, lookback=3, horizon=2)
    gone = {tuple(p) for p in index["train"].tolist()} - {tuple(p) for p in kept["train"].tolist()}
    assert gone == {(0, 5), (0, 6)} and dropped == 2  # targets [8, 10) and [9, 11); [7, 9) and [10, 12) keep one
    assert all(np.array_equal(kept[s], index[s]) for s in ("val", "test"))
    full, none = without_unobserved_targets(index, np.array([0, 20]), np.arange(35.0), lookback=3, horizon=2)
    assert none == 0 and np.array_equal(full["train"], index["train"])
