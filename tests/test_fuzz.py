"""Fuzzing the readers: whatever bytes a user hands in, the CLI ends with 0 or 2, never a crash.

(a) ingest through the real loaders (`datasets`) and (b) predict's history reader plus
`Forecaster.predict`, both through `pipeline.orchestrators.cli.main`, the function the console script runs.
An exit code of 2 must come with exactly one `error: ` line on stderr and no traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import cli_in_process, run_main, write_config

FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def assert_clean_outcome(code: int, err: str, shown: str) -> None:
    assert "Traceback" not in err, f"{shown}\n{err}"
    assert code in (0, 2), f"exit {code} for {shown}\n{err[-3000:]}"
    if code == 2:
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, f"{shown}\n{err}"
        assert err.rstrip("\n").splitlines()[-1] == errors[0], f"{shown}\n{err}"
        assert len(errors[0]) > len("error: ") + 5


# ---------------------------------------------------------------- text that looks like data

TIMES = [
    "2022-01-01 00:00",
    "2022-01-01 01:00",
    "2022-01-01 02:00",
    "2022-01-01 03:00",
    "2022-01-01T04:00:00Z",
    "2022-01-01 05:00+02:00",
    "2022-01-01 06:30",
    "2022-01-02",
    "1677-09-21 00:13",
    "2262-04-11 23:00",
    "9999-12-31",
    "yesterday",
    "",
    "0",
    "1e20",
    "NaT",
    "2022-13-45 25:61",
]
VALUES = ["1", "2.5", "-3e2", "", "nan", "NaN", "inf", "-inf", "1e39", "1e400", "abc", "0x1F", "TRUE", '"4"', "  7 "]
IDS = ["a", "b", "s0000", "s0001", "", "nan", '"x,y"', '"multi\nline"', "1", "2.0"]
COLUMNS = ["time", "y", "id", "series", "value", "other", "", "time"]


NUMBERS = st.one_of(st.floats(-1e9, 1e9, allow_subnormal=False).map(repr), st.integers(-1000, 1000).map(str))


GOOD_HEADERS = {
    ("time", "y"): [],
    ("id", "time", "y"): ["data.id_column=id"],
    ("time", "y", "id"): ["data.id_column=id"],
    ("time", "a", "b"): ["data.format=wide"],
}


@st.composite
def table_text(draw, good_header: bool = True) -> tuple[str, list[str]]:
    """Mostly a well-formed long or wide table, then damaged: rows dropped, duplicated, cells replaced.

    Returns the text and the config overrides that match its header.
    """
    import pandas as pd

    if good_header:
        header = list(draw(st.sampled_from(sorted(GOOD_HEADERS))))
    else:
        header = draw(st.lists(st.sampled_from(COLUMNS), min_size=1, max_size=4))
    sep = "," if draw(st.integers(0, 9)) else ";"
    start = pd.Timestamp(draw(st.sampled_from(["2022-01-01", "2021-06-30 12:00", "2262-04-10", "1677-09-22"])))
    step = pd.Timedelta(draw(st.sampled_from(["1h", "1h", "30min", "1D", "7s"])))
    n = draw(st.integers(0, 24))
    ids = draw(st.lists(st.sampled_from(["a", "b", "c", *IDS]), min_size=1, max_size=3, unique=True))
    if "id" not in header and "series" not in header:
        ids = ids[:1]
    rows = []
    for sid in ids:
        offset = draw(st.integers(0, 3))
        for i in range(n):
            cells = []
            for col in header:
                if col == "time":
                    cells.append(_shifted(start, step * (i + offset)))
                elif col in ("id", "series"):
                    cells.append(sid)
                else:
                    cells.append(draw(NUMBERS))
            rows.append(cells)
    for _ in range(draw(st.sampled_from([0, 0, 1, 2, 4]))):
        if not rows:
            break
        k = draw(st.integers(0, len(rows) - 1))
        action = draw(st.sampled_from(["drop", "dup", "cell", "cell", "ragged"]))
        if action == "drop":
            rows.pop(k)
        elif action == "dup":
            rows.insert(draw(st.integers(0, len(rows))), list(rows[k]))
        elif action == "cell" and 0 < len(rows[k]) <= len(header):
            j = draw(st.integers(0, len(rows[k]) - 1))
            rows[k][j] = draw(st.sampled_from(TIMES if header[j] == "time" else VALUES + IDS))
        elif action == "ragged":
            rows[k] = rows[k][: draw(st.integers(0, len(rows[k])))] + draw(
                st.lists(st.sampled_from(VALUES), max_size=2)
            )
    if rows and draw(st.booleans()):
        rows = draw(st.permutations(rows))
    text = "\n".join(sep.join(r) for r in [header, *rows]) + draw(st.sampled_from(["\n", "", "\r\n"]))
    return text, list(GOOD_HEADERS.get(tuple(header), []))


def _shifted(start, delta) -> str:
    try:
        return str(start + delta)
    except (OverflowError, ValueError):  # past the last timestamp pandas can hold
        return "2262-04-12 00:00"


# ---------------------------------------------------------------- (a) ingest


@pytest.fixture(scope="module")
def ingest_root(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("fuzz_ingest")
    config = write_config(root, {"data.source": str(root / "data.csv"), "data.target_column": "y"})
    return root, config


def _ingest(root: Path, config: Path, payload: bytes, suffix: str, extra: list[str]) -> None:
    data = root / f"data{suffix}"
    data.write_bytes(payload)
    argv = ["ingest", "--config", str(config), "--force", f"data.source={data}", *extra]
    code, err = run_main(argv)
    assert_clean_outcome(code, err, f"{argv} with {payload[:300]!r}")


POLICIES = st.lists(
    st.sampled_from(
        [
            "data.missing=interpolate",
            "data.missing=ffill",
            "data.missing=drop",
            "data.freq=h",
            "data.val_size=2",
            "data.test_size=2",
        ]
    ),
    max_size=3,
    unique=True,
)


@FUZZ
@given(
    payload=st.binary(max_size=400),
    suffix=st.sampled_from([".csv", ".tsv", ".json", ".jsonl", ".parquet"]),
    extra=POLICIES,
)
def test_ingest_survives_random_bytes(ingest_root, payload, suffix, extra):
    _ingest(*ingest_root, payload, suffix, extra)


@FUZZ
@given(table=table_text(), extra=POLICIES)
def test_ingest_survives_damaged_tables(ingest_root, table, extra):
    text, matching = table
    _ingest(*ingest_root, text.encode(), ".csv", [*matching, *extra])


@FUZZ
@given(table=table_text(good_header=False), suffix=st.sampled_from([".csv", ".tsv"]), extra=POLICIES)
def test_ingest_survives_csv_like_text(ingest_root, table, suffix, extra):
    _ingest(*ingest_root, table[0].encode(), suffix, extra)


@FUZZ
@given(
    records=st.lists(
        st.dictionaries(
            st.sampled_from(["time", "y", "id"]),
            st.one_of(
                st.sampled_from(TIMES + VALUES),
                st.floats(allow_nan=True, allow_subnormal=False),
                st.integers(),
                st.booleans(),
                st.none(),
                st.lists(st.integers(), max_size=2),
                st.just({"k": 1}),
            ),
        ),
        max_size=20,
    ),
    lines=st.booleans(),
)
def test_ingest_survives_json_records(ingest_root, records, lines):
    import json

    text = "\n".join(json.dumps(r) for r in records) if lines else json.dumps(records)
    _ingest(*ingest_root, text.encode(), ".jsonl" if lines else ".json", ["data.id_column=id"])


# ---------------------------------------------------------------- (b) predict

LOOKBACK = 8


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """One small exported model (two hourly synthetic series s0000, s0001; lookback 8)."""
    root = tmp_path_factory.mktemp("fuzz_model")
    config = write_config(
        root,
        {
            "data.synthetic": {"n_series": 2, "length": 120, "freq": "h", "seed": 3},
            "window.lookback": LOOKBACK,
            "window.horizon": 4,
            "train.max_steps": 2,
            "train.eval_every": 2,
            "train.checkpoint_every": 0,
            "train.warmup_steps": 0,
            "train.num_threads": 1,
            "evaluate.season_length": 4,
            "evaluate.plot_series": 0,
            "export.onnx": False,
        },
    )
    result = cli_in_process("run", "--config", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "run" / "export"


@st.composite
def history_text(draw) -> str:
    """Mostly a valid history of the model's series, then damaged in a few random ways."""
    import pandas as pd

    ids = draw(st.lists(st.sampled_from(["s0000", "s0001", "s0001", "s9999"]), min_size=1, max_size=2, unique=True))
    n = (
        draw(st.integers(0, LOOKBACK + 4))
        if draw(st.integers(0, 4)) == 0
        else draw(st.integers(LOOKBACK, LOOKBACK + 4))
    )
    end = pd.Timestamp(draw(st.sampled_from(["2024-01-01", "2262-04-11 20:00", "1677-09-22"])))
    rows = [
        [sid, str(end - pd.Timedelta(hours=n - 1 - i)), repr(draw(st.floats(-1e6, 1e6, allow_subnormal=False)))]
        for sid in ids
        for i in range(n)
    ]
    for _ in range(draw(st.sampled_from([0, 0, 1, 2, 3]))):
        if not rows:
            break
        k = draw(st.integers(0, len(rows) - 1))
        action = draw(st.sampled_from(["drop", "dup", "time", "value", "id"]))
        if action == "drop":
            rows.pop(k)
        elif action == "dup":
            rows.insert(k, list(rows[k]))
        elif action == "time":
            rows[k][1] = draw(st.sampled_from(TIMES))
        elif action == "value":
            rows[k][2] = draw(st.sampled_from(VALUES))
        else:
            rows[k][0] = draw(st.sampled_from(IDS))
    header = draw(
        st.sampled_from(
            [["series", "time", "value"]] * 3
            + [["time", "value", "series"], ["id", "time", "value"], ["series", "ts", "v"]]
        )
    )
    if header[0] == "time":
        rows = [[r[1], r[2], r[0]] for r in rows]
    if draw(st.booleans()):
        rows = draw(st.permutations(rows))
    return "\n".join(",".join(r) for r in [header, *rows]) + "\n"


def _predict(model_dir: Path, tmp: Path, payload: bytes, suffix: str) -> None:
    history = tmp / f"history{suffix}"
    history.write_bytes(payload)
    argv = ["predict", "--model", str(model_dir), "--input", str(history), "--output", str(tmp / "forecast.csv")]
    code, err = run_main(argv)
    assert_clean_outcome(code, err, f"predict with {payload[:300]!r}")


@FUZZ
@given(payload=st.binary(max_size=400), suffix=st.sampled_from([".csv", ".json", ".jsonl", ".parquet", ".txt"]))
def test_predict_survives_random_bytes(model_dir, tmp_path, payload, suffix):
    _predict(model_dir, tmp_path, payload, suffix)


@FUZZ
@given(text=st.one_of(history_text(), table_text(good_header=False).map(lambda t: t[0])))
def test_predict_survives_csv_like_text(model_dir, tmp_path, text):
    _predict(model_dir, tmp_path, text.encode(), ".csv")
