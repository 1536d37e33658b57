"""Benchmark the prediction nodes: CLV fitting vs `lifetimes`, propensity at 100k customers,
and how well the propensity node's probabilities are calibrated on CDNOW.

Run:  .venv/bin/python bench/models.py            (full: 1M synthetic, 100k demo customers)
      .venv/bin/python bench/models.py --quick    (100k synthetic, 10k demo customers)
      .venv/bin/python bench/models.py --calibration-only   (the CDNOW calibration rows)

Prints a Markdown table; copy it into bench/README.md. Side-by-side in one run, so the
ratios hold even when the machine is slower or faster than the one in the README.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def best_of(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def cdnow() -> tuple[np.ndarray, ...]:
    spec = importlib.util.find_spec("lifetimes")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("bench/models.py needs the dev extra (lifetimes): pip install -e '.[dev]'")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets"
    with (path / "cdnow_customers_summary_with_transactions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    return tuple(np.array([float(r[k]) for r in rows]) for k in ("x", "t_x", "T", "zbar"))


def simulate(n: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """BG/NBD customers on day-level data (a year of history), plus Gamma-Gamma spend."""
    rng = np.random.default_rng(seed)
    lam, p = rng.gamma(0.25, 1 / 30.0, n), rng.beta(0.8, 2.4, n)
    T = rng.integers(1, 366, n).astype(float)
    x, t_x, clock = np.zeros(n), np.zeros(n), np.zeros(n)
    active = np.ones(n, dtype=bool)
    while active.any():
        idx = np.flatnonzero(active)
        clock[idx] += rng.exponential(1 / lam[idx])
        bought = clock[idx] <= T[idx]
        buyers = idx[bought]
        x[buyers] += 1
        t_x[buyers] = np.floor(clock[buyers])
        active[idx[~bought]] = False
        active[buyers[rng.random(len(buyers)) < p[buyers]]] = False
    nu = rng.gamma(3.7, 1 / 15.0, n)
    m = np.where(x > 0, rng.gamma(6.0 * np.maximum(x, 1), 1 / (nu * np.maximum(x, 1))), 0.0)
    return x, t_x, T, m


def clv_fits(label: str, data: tuple[np.ndarray, ...], repeat: int, rows: list[list[str]]) -> None:
    from lifetimes import BetaGeoFitter, GammaGammaFitter

    from segloop.models.btyd import fit_bgnbd, fit_gamma_gamma, unique_rows

    x, t_x, T, m = data
    ours_bg, (bg, fit) = best_of(lambda: fit_bgnbd(x, t_x, T), repeat)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs_bg, ref = best_of(lambda: BetaGeoFitter().fit(x, t_x, T), repeat)
    (xu, tu, Tu), wu, _ = unique_rows(x, t_x, T)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs_w, _ = best_of(lambda: BetaGeoFitter().fit(xu, tu, Tu, weights=wu), repeat)
    keep = x > 0
    ours_gg, _ = best_of(lambda: fit_gamma_gamma(x, m), repeat)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs_gg, _ = best_of(lambda: GammaGammaFitter().fit(x[keep], m[keep]), repeat)
    same = max(abs(getattr(bg, k) / ref.params_[k] - 1) for k in ("r", "alpha", "a", "b"))
    rows.append(
        [
            f"BG/NBD fit, {label} ({len(x):,} customers, {fit.n_unique_rows:,} unique rows)",
            f"{ours_bg:.3f} s",
            f"{theirs_bg:.3f} s",
            f"{theirs_bg / ours_bg:.1f}x faster (params agree to {same:.1e})",
        ]
    )
    rows.append(
        [
            f"BG/NBD fit, {label}, lifetimes given the same unique rows + weights",
            f"{ours_bg:.3f} s",
            f"{theirs_w:.3f} s",
            f"{theirs_w / ours_bg:.1f}x faster",
        ]
    )
    rows.append(
        [
            f"Gamma-Gamma fit, {label} ({int(keep.sum()):,} repeat customers)",
            f"{ours_gg:.3f} s",
            f"{theirs_gg:.3f} s",
            f"{theirs_gg / ours_gg:.1f}x faster",
        ]
    )


def cdnow_calibration(rows: list[list[str]]) -> None:
    """CDNOW's 23,570 customers: purchases up to 1997-12-31, "buys in the next 90 days",
    graded on who bought from 1998-01-01 to 1998-03-31; each calibration setting."""
    import pyarrow as pa

    from segloop.models.calibration import expected_calibration_error
    from segloop.models.scoring import roc_auc
    from segloop.operators.base import RunContext
    from segloop.operators.propensity import PropensityConfig, PropensityOperator
    from segloop.warehouses import Warehouse

    spec = importlib.util.find_spec("lifetimes")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("bench/models.py needs the dev extra (lifetimes): pip install -e '.[dev]'")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "CDNOW_master.txt"
    raw = np.loadtxt(path, dtype=str, skiprows=1)
    ids = raw[:, 0].astype(np.int64)
    days = np.array([f"{d[:4]}-{d[4:6]}-{d[6:]}" for d in raw[:, 1]], dtype="datetime64[us]")
    seen = days < np.datetime64("1998-01-01")
    future = ~seen & (days < np.datetime64("1998-04-01"))
    wh = Warehouse.duckdb()
    wh.create_table("purchases", pa.table({
        "user_id": ids[seen], "timestamp": days[seen],
        "event": pa.array(["Order Completed"] * int(seen.sum())),
        "revenue": raw[:, 3].astype(float)[seen],
    }))
    buyers = np.unique(ids[future])
    for method in ("none", "isotonic", "platt"):
        config = PropensityConfig(type="propensity", input="ev", window_days=90,
                                  calibration=method)  # type: ignore[arg-type]
        ctx = RunContext(warehouse=wh, pipeline="bench", node="n", run_id="b")
        seconds, out = best_of(
            lambda config=config, ctx=ctx: PropensityOperator(config).run(
                {"ev": wh.table("purchases")}, ctx), 1)
        table = wh.to_arrow(out.table)  # the output: a query over the node's scores
        p = table["probability"].to_numpy()
        y = np.isin(table["user_id"].to_numpy(), buyers).astype(float)
        label = {"none": "before: refit on both windows, raw scores", "isotonic": "the default",
                 "platt": "logistic curve"}[method]
        rows.append([
            f"propensity on CDNOW ({len(y):,} customers), `calibration: {method}` ({label})",
            f"{seconds:.2f} s",
            "",
            f"mean {p.mean():.3f} vs actual {y.mean():.3f}, ECE {expected_calibration_error(y, p):.3f}, "
            f"AUC {roc_auc(y, p):.3f}",
        ])
    wh.close()


def demo_nodes(customers: int, rows: list[list[str]], demo_db: str | None = None) -> None:
    from segloop.demo import write_demo_data
    from segloop.operators.base import RunContext
    from segloop.operators.clv import ClvConfig, ClvOperator
    from segloop.operators.propensity import PropensityConfig, PropensityOperator
    from segloop.warehouses import Warehouse

    with tempfile.TemporaryDirectory() as tmp:
        wh = Warehouse.duckdb(demo_db or Path(tmp) / "bench.duckdb")
        if demo_db and wh.has_table("tracks", schema="demo_shop"):
            customers = wh.count(wh.table("users", schema="demo_shop"))
        else:
            write_demo_data(wh, customers=customers)
        tracks = wh.table("tracks", schema="demo_shop")
        orders = wh.table("order_completed", schema="demo_shop")
        n_orders, n_events = wh.count(orders), wh.count(tracks)
        tracks = tracks.filter(tracks.user_id.notnull())
        ctx = RunContext(warehouse=wh, pipeline="bench", node="n", run_id="b")
        clv = ClvOperator(ClvConfig(type="clv", input="orders"))
        clv_s, out = best_of(lambda: clv.run({"orders": orders}, ctx), 1)
        rows.append(
            [
                f"clv node on demo data ({customers:,} customers, {n_orders:,} orders; "
                "summary + 2 fits + scoring, holdout included)",
                f"{clv_s:.2f} s",
                "",
                f"holdout Spearman {out.metrics['holdout_spearman']:.3f}",
            ]
        )
        prop = PropensityOperator(
            PropensityConfig(type="propensity", input="events", orders="orders")
        )
        prop_s, out = best_of(lambda: prop.run({"events": tracks, "orders": orders}, ctx), 1)
        rows.append(
            [
                f"propensity node train + validate + score on demo data ({customers:,} "
                f"customers, {n_events:,} events; features "
                f"{out.metrics['seconds_features']:.1f} s)",
                f"{prop_s:.2f} s",
                "",
                f"AUC {out.metrics['auc']:.3f} (recency baseline "
                f"{out.metrics['baseline_auc']:.3f})",
            ]
        )
        wh.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--synthetic", type=int, default=None, help="synthetic customers")
    parser.add_argument("--demo", type=int, default=None, help="demo customers")
    parser.add_argument("--calibration-only", action="store_true",
                        help="only the CDNOW calibration rows")
    parser.add_argument(
        "--demo-db", default=None, help="DuckDB file to keep demo data in (made if missing)"
    )
    args = parser.parse_args()
    synthetic = args.synthetic or (100_000 if args.quick else 1_000_000)
    demo = args.demo or (10_000 if args.quick else 100_000)

    rows: list[list[str]] = []
    if not args.calibration_only:
        clv_fits("CDNOW", cdnow(), 5, rows)
        clv_fits("synthetic", simulate(synthetic), 1, rows)
    cdnow_calibration(rows)
    if not args.calibration_only:
        demo_nodes(demo, rows, args.demo_db)
    load = os.getloadavg()[0]
    print(f"\nPython {sys.version.split()[0]}, {os.cpu_count()} cores, load average {load:.1f}\n")
    print("| what | segloop | lifetimes | ratio / quality |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
