"""The forecast service, `lstm-pipeline serve`, as a user runs it: a real server on 127.0.0.1 (a subprocess) and
a real HTTP client. Its endpoints; forecasts equal to `Forecaster.predict`'s, in JSON and in the CSV `predict`
writes; the CLI's one-line errors for bad input; a model that fails its manifest never served; and a registry
promotion under 200 concurrent requests, each answered entirely by the old or the new version."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pandas as pd
import pytest

from pipeline.config import SyntheticConfig
from pipeline.library import registry_store
from pipeline.library.artifacts import sha256_file
from pipeline.library.errors import UserError
from pipeline.library.forecaster import Forecaster
from pipeline.library.synthetic import generate_synthetic

from .conftest import REPO, cli, cli_in_process, run_main, write_config

OLD, NEW = "v0001", "v0002"
JSON = {"Content-Type": "application/json"}
CSV = {"Content-Type": "text/csv"}


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> SimpleNamespace:
    """The small config trained with seeds 0 and 1, exported as versions v0001 and v0002 of a registry
    (current -> v0001); a history file, and each version's forecast for it from `Forecaster.predict`."""
    tmp = tmp_path_factory.mktemp("serve")
    config = write_config(tmp, {"export.onnx": False, "evaluate.plot_series": 0})
    root = tmp / "registry" / "small"
    root.mkdir(parents=True)
    for seed, version in ((0, OLD), (1, NEW)):  # the second run reuses the first's ingest and window stages
        result = cli_in_process("run", "--config", str(config), f"seed={seed}")
        assert result.returncode == 0, result.stderr[-3000:]
        shutil.copytree(tmp / "run" / "export", root / version)
    registry_store.switch_current(root, OLD)
    data = generate_synthetic(SyntheticConfig(n_series=4, length=400, min_length=300, freq="h", seed=1))
    history_file = tmp / "history.csv"
    data.groupby("series", observed=True).tail(60).to_csv(history_file, index=False)
    history = pd.read_csv(history_file)  # what `predict --input` reads
    expected = {v: Forecaster.load(root / v).predict(history) for v in (OLD, NEW)}
    assert not expected[OLD]["forecast"].equals(expected[NEW]["forecast"])
    return SimpleNamespace(tmp=tmp, root=root, export=tmp / "run" / "export", history_file=history_file,
                           history=history, expected=expected)  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def server(model: Path, log: Path, *flags: str) -> Iterator[str]:
    """`python -m pipeline serve --model MODEL` on a free port, up once /health answers; its base URL."""
    port = free_port()
    command = [sys.executable, "-m", "pipeline", "serve", "--model", str(model), "--port", str(port)]
    with open(log, "w") as out:  # a file, not a pipe: a pipe nobody reads would block the server
        proc = subprocess.Popen([*command, "--threads", "1", *flags], cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"serve did not answer /health within 120 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def frame_of(body: dict, time_column: str = "time") -> pd.DataFrame:
    """A JSON forecast as the frame `Forecaster.predict` returns."""
    frame = pd.DataFrame(body["forecast"])
    frame[time_column] = pd.to_datetime(frame[time_column]).astype("datetime64[ns]")
    return frame


def assert_same(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(got, expected, check_exact=True)


def records(history: pd.DataFrame) -> list[dict]:
    """A history frame as JSON records (floats exact)."""
    return history.to_dict("records")


@pytest.fixture(scope="module")
def plain(exports, tmp_path_factory) -> Iterator[str]:
    """A server on a plain export directory (not a registry)."""
    with server(exports.export, tmp_path_factory.mktemp("plain") / "serve.log") as url:
        yield url


@pytest.mark.slow
def test_health_model_and_forecasts_equal_predict(exports, plain, tmp_path):
    version = sha256_file(exports.export / "manifest.json")[:12]
    health = httpx.get(f"{plain}/health")
    assert health.status_code == 200 and health.headers["X-Model-Version"] == version
    assert health.json() == {"status": "ok", "version": version, "error": None}

    model = httpx.get(f"{plain}/model")
    spec = Forecaster.load(exports.export).spec
    assert model.headers["X-Model-Version"] == version
    described = model.json()
    assert described["version"] == version and described["path"] == str(exports.export)
    assert described["registry"] is None
    assert described["data_fingerprint"] == spec.data_fingerprint
    assert described["test_metrics"] == spec.test_metrics and described["test_metrics"]["model"]["mase"] > 0
    assert (described["lookback"], described["horizon"], described["freq"]) == (48, 12, "h")

    expected = exports.expected[NEW]  # the last run's export is the seed-1 model
    rows = records(exports.history)
    for payload in (rows, {"records": rows}):
        answer = httpx.post(f"{plain}/forecast", json=payload)
        assert answer.status_code == 200, answer.text
        assert answer.headers["X-Model-Version"] == answer.json()["version"] == version
        assert_same(frame_of(answer.json()), expected)

    csv = exports.history_file.read_bytes()
    answer = httpx.post(f"{plain}/forecast", content=csv, headers=CSV)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/json")
    assert_same(frame_of(answer.json()), expected)

    # CSV out: byte for byte the file `lstm-pipeline predict` writes for the same history
    answer = httpx.post(f"{plain}/forecast", content=csv, headers={**CSV, "Accept": "text/csv"})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
    assert answer.headers["X-Model-Version"] == version
    out = tmp_path / "forecast.csv"
    result = cli_in_process(
        "predict", "--model", str(exports.export), "--input", str(exports.history_file), "--output", str(out)
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert answer.text == out.read_text()
    from_csv = pd.read_csv(io.StringIO(answer.text), float_precision="round_trip")
    assert_same(frame_of({"forecast": from_csv}), expected)


def too_short(history: pd.DataFrame) -> str:
    return history.groupby("series").tail(10).to_csv(index=False)


def malformed(history: pd.DataFrame) -> str:
    return "series,time,value\ns0000,2024-01-01 00:00:00,1.0\ns0000,2024-01-01 01:00:00,1.0,2.0,3.0\n"


@pytest.mark.slow
@pytest.mark.parametrize("bad", [too_short, malformed])  # the forecaster's checks, and the reader's
def test_bad_input_is_400_with_the_line_the_cli_prints(exports, plain, tmp_path, bad):
    """The service calls a body `history`: `predict --input history` names its file exactly so."""
    text = bad(exports.history)
    (tmp_path / "history").write_text(text)
    result = cli_in_process(
        "predict", "--model", str(exports.export), "--input", "history", "--output", "out.csv", cwd=tmp_path
    )
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: history: ")

    answer = httpx.post(f"{plain}/forecast", content=text.encode(), headers=CSV)
    assert answer.status_code == 400 and answer.headers["X-Model-Version"]
    assert f"error: {answer.json()['error']}" == line
    if bad is not malformed:  # the same rows as JSON records: the same line
        answer = httpx.post(f"{plain}/forecast", json=records(pd.read_csv(io.StringIO(text))))
        assert answer.status_code == 400 and f"error: {answer.json()['error']}" == line


@pytest.mark.slow
def test_requests_the_service_does_not_read(plain):
    for content, headers, status, words in [
        (b"{", JSON, 400, "not valid JSON"),
        (b'{"rows": []}', JSON, 400, 'must be a list of records, or {"records"'),
        (b'{"records": [], "extra": 1}', JSON, 400, "unknown key 'extra'"),
        (b"[1, 2]", JSON, 400, "record 1 is not an object"),
        (b"[]", JSON, 400, "history: no rows"),  # said: time column 'time' not found; columns:
        (b"[" * 100_000 + b"]" * 100_000, JSON, 400, "nests too deep to be a history"),  # was a 500
        (b"a=1", {"Content-Type": "application/x-www-form-urlencoded"}, 415, "application/json or text/csv"),
    ]:
        answer = httpx.post(f"{plain}/forecast", content=content, headers=headers)
        assert answer.status_code == status, answer.text
        assert words in answer.json()["error"] and "\n" not in answer.json()["error"]
        assert answer.json()["version"] == answer.headers["X-Model-Version"]


def tamper(source: Path, target: Path) -> Path:
    """A copy of an export with one byte of its weights changed (its manifest no longer matches)."""
    shutil.copytree(source, target)
    weights = target / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    return target


@pytest.mark.slow
def test_a_model_that_fails_its_manifest_is_never_served(exports, tmp_path):
    bad = tamper(exports.export, tmp_path / "export")
    result = cli("serve", "--model", str(bad), "--port", str(free_port()), timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: model directory {bad}: model.safetensors does not match its sha256 in manifest.json"
    ]


@pytest.mark.slow
def test_a_port_in_use_is_one_line(exports):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err = run_main(["serve", "--model", str(exports.export), "--port", str(port), "--threads", "1"])
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[-1] == f"error: cannot listen on 127.0.0.1:{port}: Address already in use", lines


def test_a_host_that_names_no_address_is_one_line_saying_so():
    """`--host 999.1.1.1` said 'Unknown error -2' (the resolver's code, which os.strerror cannot name)."""
    from pipeline.orchestrators.serve import listen

    with pytest.raises(UserError) as info:
        listen("999.1.1.1", 8080)
    assert str(info.value).startswith("cannot listen on 999.1.1.1:8080: ") and "Unknown error" not in str(info.value)
    assert str(info.value) != "cannot listen on 999.1.1.1:8080: "


async def ask(client, body: bytes) -> tuple[int, str, dict]:
    answer = await client.post("/forecast", content=body, headers=JSON)
    return answer.status_code, answer.headers.get("X-Model-Version", ""), answer.json()


async def wait_for(client, version: str, error: bool = False, seconds: float = 60) -> dict:
    """/health once it reports `version` (and a swap error, when `error`)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        health = (await client.get("/health")).json()
        if health["version"] == version and (health["error"] is not None) == error:
            return health
        await asyncio.sleep(0.05)
    raise AssertionError(f"/health never reported {version} (error: {error}): {health}")


async def promote_under_load(url: str, root: Path, body: bytes) -> tuple[list, list]:
    """200 concurrent requests: 100 sent 5 ms apart with the promotion (current -> v0002) after the 50th;
    once /health reports the new version, 100 more."""
    limits = httpx.Limits(max_connections=200)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        first = []
        for i in range(100):
            first.append(asyncio.create_task(ask(client, body)))
            if i == 50:
                registry_store.switch_current(root, NEW)
            await asyncio.sleep(0.005)
        await wait_for(client, NEW)
        second = [asyncio.create_task(ask(client, body)) for _ in range(100)]
        return await asyncio.gather(*first), await asyncio.gather(*second)


@pytest.mark.slow
def test_a_promotion_under_200_concurrent_requests(exports, tmp_path):
    root = tmp_path / "registry" / "small"
    root.mkdir(parents=True)
    for version in (OLD, NEW):
        shutil.copytree(exports.root / version, root / version)
    registry_store.switch_current(root, OLD)
    body = json.dumps({"records": records(exports.history)}).encode()
    with server(root / "current", tmp_path / "serve.log", "--poll", "0.2") as url:
        health = httpx.get(f"{url}/health").json()
        assert health == {"status": "ok", "version": OLD, "error": None}
        assert httpx.get(f"{url}/model").json()["registry"] == str(root)

        first, second = asyncio.run(promote_under_load(url, root, body))
        for status, header, answer in [*first, *second]:
            assert status == 200, answer
            assert header in (OLD, NEW) and answer["version"] == header
            assert_same(frame_of(answer), exports.expected[header])  # all of one version, never mixed
        assert OLD in {header for _, header, _ in first}  # most of the first 100: the swap takes a poll and a load
        assert {header for _, header, _ in second} == {NEW}
        described = httpx.get(f"{url}/model").json()
        assert described["version"] == NEW and described["path"] == str(root / NEW)

        # a promoted version that fails its manifest: the old one keeps serving, /health says why
        tamper(exports.root / OLD, root / "v0003")
        registry_store.switch_current(root, "v0003")

        async def after_bad_swap() -> tuple[dict, tuple]:
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                return await wait_for(client, NEW, error=True), await ask(client, body)

        health, (status, header, answer) = asyncio.run(after_bad_swap())
        assert "v0003" in health["error"] and "does not match its sha256" in health["error"]
        assert status == 200 and header == NEW
        assert_same(frame_of(answer), exports.expected[NEW])
        # the next change is tried again, and serves
        registry_store.switch_current(root, OLD)

        async def after_good_swap() -> tuple[dict, tuple]:
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                return await wait_for(client, OLD), await ask(client, body)

        health, (status, header, answer) = asyncio.run(after_good_swap())
        assert health["error"] is None and status == 200 and header == OLD
        assert_same(frame_of(answer), exports.expected[OLD])
    log = (tmp_path / "serve.log").read_text()
    assert "now serving v0002 (was v0001)" in log and "version v0003 not served" in log


def test_serve_without_fastapi_exits_2_naming_the_extra(monkeypatch):
    monkeypatch.delitem(sys.modules, "pipeline.orchestrators.serve", raising=False)
    monkeypatch.setitem(sys.modules, "fastapi", None)  # an import of fastapi now fails as if it were missing
    code, err = run_main(["serve", "--model", "anywhere"])
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "pip install 'lstm-pipeline[serve]'" in lines[0]


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["serve"], "--model"),
        (["serve", "--model", "m", "--port", "70000"], "--port must be between 0 and 65535"),
        (["serve", "--model", "m", "--poll", "0"], "--poll must be a positive number"),
        (["serve", "--model", "m", "--threads", "0"], "--threads must be at least 1"),
        (["serve", "--model", "m", "seed=1"], "serve takes no config overrides"),
        (["serve", "--model", "m", "--bogus"], "serve has no option --bogus; its options: --model, --host, --port, "),
        (["serve", "--model", "m", "--input", "h.csv"], "serve has no option --input"),  # predict's, not serve's
    ],
)
def test_bad_serve_flags_are_one_line(argv, words):
    code, err = run_main(argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], lines


@pytest.mark.slow
def test_a_series_the_model_never_saw_and_the_scale_switch(exports, plain, tmp_path):
    forecaster = Forecaster.load(exports.export)
    renamed = exports.history.assign(series=exports.history["series"] + "_new")  # none of these ids was trained
    answer = httpx.post(f"{plain}/forecast", json=records(renamed))
    assert answer.status_code == 200, answer.text
    assert_same(frame_of(answer.json()), forecaster.predict(renamed))
    rescaled = httpx.post(f"{plain}/forecast", params={"scale": "history"}, json=records(exports.history))
    assert rescaled.status_code == 200, rescaled.text
    assert_same(frame_of(rescaled.json()), forecaster.predict(exports.history, scale="history"))
    bad = httpx.post(f"{plain}/forecast", params={"scale": "nope"}, json=records(exports.history))
    assert bad.status_code == 400 and bad.json()["error"] == "scale must be one of training, history, got 'nope'"
    out = tmp_path / "forecast.csv"  # the CLI's switch gives the same numbers
    args = ["--model", str(exports.export), "--input", str(exports.history_file), "--output", str(out)]
    assert cli_in_process("predict", *args, "--scale", "history").returncode == 0
    np.testing.assert_allclose(pd.read_csv(out)["forecast"], frame_of(rescaled.json())["forecast"], rtol=1e-12)


COMPAT = REPO / "tests" / "fixtures" / "run_2232a71"  # an export with past, future (workday) and static covariates


@pytest.fixture(scope="module")
def covariate_model(tmp_path_factory) -> Iterator[SimpleNamespace]:
    """A server on the compat fixture's export, its history and future covariates, and their forecast."""
    history, future = pd.read_csv(COMPAT / "data.csv"), pd.read_csv(COMPAT / "future.csv")
    expected = Forecaster.load(COMPAT / "run" / "export").predict(history, future=future)
    with server(COMPAT / "run" / "export", tmp_path_factory.mktemp("covariates") / "serve.log") as url:
        yield SimpleNamespace(url=url, history=history, future=future, expected=expected)


@pytest.mark.slow
def test_future_covariates_are_asked_for_in_the_json_body(covariate_model):
    url, history, future = covariate_model.url, covariate_model.history, covariate_model.future
    answer = httpx.post(f"{url}/forecast", json={"records": records(history), "future": records(future)})
    assert answer.status_code == 200, answer.text
    assert_same(frame_of(answer.json()), covariate_model.expected)
    needed = (
        "this model needs the future covariates workday for the 12 steps after each series' history: send them as "
        'the "future" records of a JSON body, {"records": [...], "future": [...]}, with the columns store, time, '
        "workday (a text/csv body cannot carry them)"
    )
    csv = history.to_csv(index=False).encode()
    for request in (
        {"json": records(history)},
        {"json": {"records": records(history)}},
        {"content": csv, "headers": CSV},
    ):
        answer = httpx.post(f"{url}/forecast", **request)
        assert answer.status_code == 400 and answer.json()["error"] == needed


@pytest.mark.slow
def test_values_beyond_float32_are_400_naming_the_series_and_time(covariate_model):
    url, history, future = covariate_model.url, covariate_model.history, covariate_model.future
    last = len(history) - 1  # series 'c' at 2024-01-10 23:00
    for column, value, error in [
        ("sales", 1e300, "history: series 'c': value 1e+300 at 2024-01-10 23:00:00 is too large for float32 "
                         "(|value| > 3.4e38)"),
        ("sales", -1e300, "history: series 'c': value -1e+300 at 2024-01-10 23:00:00 is too large for float32 "
                          "(|value| > 3.4e38)"),
        ("temp", 1e300, "history: series 'c': covariate 'temp' value 1e+300 at 2024-01-10 23:00:00 is too large for "
                        "float32 (|value| > 3.4e38)"),
        # within float32, but 3.65e37 once scaled by the series' statistics: the forecast would be NaN and inf
        ("sales", 3e38, "history: series 'c': value 3e+38 at 2024-01-10 23:00:00 is too large for this model: "
                        "scaled by the series' statistics it is 3.65e+37, and the forecast overflows float32"),
    ]:  # fmt: skip
        body = {"records": records(history.assign(**{column: history[column].where(history.index != last, value)}))}
        answer = httpx.post(f"{url}/forecast", json={**body, "future": records(future)})
        assert answer.status_code == 400 and answer.json()["error"] == error, answer.text
    ahead = future.assign(workday=future["workday"].where(future.index != 0, 1e300))
    answer = httpx.post(f"{url}/forecast", json={"records": records(history), "future": records(ahead)})
    assert answer.status_code == 400 and answer.json()["error"] == (
        "future: series 'a': covariate 'workday' value 1e+300 at 2024-01-11 00:00:00 is too large for float32 "
        "(|value| > 3.4e38)"
    )


@pytest.mark.slow
def test_an_error_quotes_at_most_a_few_short_names(covariate_model):
    """A 60 MB junk body, or a 100,000-character column name: the answer stays a short line, and it still
    says which column is missing and what the body has."""
    url, history = covariate_model.url, covariate_model.history
    answer = httpx.post(f"{url}/forecast", content=b"a" * 60_000_000, headers=CSV, timeout=120)
    cut = "a" * 37 + "..."
    assert answer.status_code == 400
    assert answer.json()["error"] == f"history: covariate column 'temp' not found; columns: {cut}"
    long_name = history.groupby("store").tail(48).rename(columns={"temp": "t" * 100_000})  # 14 MB of JSON keys
    many = long_name.assign(**{f"extra{k}": 0.0 for k in range(20)})
    answer = httpx.post(f"{url}/forecast", json=records(many))
    assert answer.status_code == 400 and len(answer.text) < 600, answer.text[:2000]
    assert answer.json()["error"] == (
        "history: covariate column 'temp' not found; columns: store, time, sales, " + "t" * 37 + "..., workday, size, "
        "extra0, extra1, extra2, extra3 (16 more)"
    )
    repeated = ("store,time,sales," + ",".join(["temp"] * 60_000) + "\n").encode()  # pandas renames: minutes
    answer = httpx.post(f"{url}/forecast", content=repeated, headers=CSV, timeout=30)
    assert answer.status_code == 400
    assert answer.json()["error"] == "history: column 'temp' appears twice in the header (columns 4 and 5)"
    answer = httpx.post(f"{url}/forecast", json={"records": [], "x" * 100_000: 1})
    assert answer.status_code == 400 and answer.json()["error"].startswith("history: unknown key 'xxx")
    assert len(answer.text) < 300, answer.text[:2000]
    answer = httpx.post(f"{url}/forecast", params={"scale": "s" * 10_000}, json=records(history))
    assert answer.status_code == 400 and answer.json()["error"] == (
        "scale must be one of training, history, got '" + "s" * 36 + "..."
    )


def test_model_lists_every_column_a_history_needs():
    """/model's `history` left out the static covariates a new series must carry, and gave wide models the
    target column of the config's default, which a wide history does not have."""
    import dataclasses

    from pipeline.orchestrators.serve import ModelHolder

    holder = ModelHolder(COMPAT / "run" / "export")
    assert holder.describe()["history"] == {
        "format": "long",
        "id_column": "store",
        "time_column": "time",
        "target_column": "sales",
        "covariates": ["temp", "workday"],
        "future_covariates": ["workday"],
        "static_covariates": ["size"],
    }
    forecaster = holder.served.forecaster
    forecaster.spec = dataclasses.replace(forecaster.spec, format="wide", id_column=None)
    wide = holder.describe()["history"]
    assert (wide["format"], wide["id_column"], wide["target_column"]) == ("wide", None, None)


@pytest.mark.slow
def test_a_body_over_the_limit_is_413_before_it_is_read_whole(tmp_path):
    """Without a limit one request with an endless body held the service's memory (docs/serving.md said to rely
    on a gateway); --max-body-mb answers 413, declared or streamed, and the service goes on serving."""
    history, future = pd.read_csv(COMPAT / "data.csv"), pd.read_csv(COMPAT / "future.csv")
    expected = Forecaster.load(COMPAT / "run" / "export").predict(history, future=future)
    payload = {"records": records(history), "future": records(future)}
    with server(COMPAT / "run" / "export", tmp_path / "serve.log", "--max-body-mb", "0.5") as url:
        error = (
            "the request body is over 0.5 MB (serve --max-body-mb); send a shorter history: the model reads the last "
            f"{Forecaster.load(COMPAT / 'run' / 'export').lookback} steps of each series"
        )
        declared = httpx.post(f"{url}/forecast", content=b"a" * 600_000, headers=CSV)
        assert declared.status_code == 413 and declared.json()["error"] == error

        def chunks():  # no Content-Length: the limit holds as the body streams in
            for _ in range(100):
                yield b"b" * 10_000

        streamed = httpx.post(f"{url}/forecast", content=chunks(), headers=CSV)
        assert streamed.status_code == 413 and streamed.json()["error"] == error
        answer = httpx.post(f"{url}/forecast", json=payload)
        assert answer.status_code == 200, answer.text
        assert_same(frame_of(answer.json()), expected)


def test_max_body_mb_must_be_positive(tmp_path):
    result = cli_in_process("serve", "--model", str(COMPAT / "run" / "export"), "--max-body-mb", "0")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: --max-body-mb must be a positive number of MB, got 0"]
