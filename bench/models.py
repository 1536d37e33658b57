"""Benchmark the prediction nodes: CLV fitting vs `lifetimes`, propensity at 100k customers,
and how well the propensity node's probabilities are calibrated on CDNOW.

Run:  .venv/bin/python bench/models.py            (full: 1M synthetic, 100k demo customers)
      .venv/bin/python bench/models.py --quick    (100k synthetic, 10k demo customers)
      .venv/bin/python bench/models.py --calibration-only   (the CDNOW calibration and
                                                             holdout coverage tables)

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


def lifetimes_datasets() -> Path:
    spec = importlib.util.find_spec("lifetimes")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("bench/models.py needs the dev extra (lifetimes): pip install -e '.[dev]'")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets"


def cdnow() -> tuple[np.ndarray, ...]:
    path = lifetimes_datasets()
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


CALIBRATION_SETTINGS = (  # (label, node keys): today's default last
    ("before calibration: refit on both windows, raw scores (`calibration: none`)",
     {"calibration": "none"}),
    ("isotonic calibration, level as calibrated (`base_rate: model`, the previous default)",
     {"calibration": "isotonic", "base_rate": "model"}),
    ("isotonic, level = validation window's rate (`base_rate: validation`)",
     {"calibration": "isotonic", "base_rate": "validation"}),
    ("platt, level from BG/NBD's drift (`calibration: platt`)",
     {"calibration": "platt", "base_rate": "clv"}),
    ("isotonic, level from BG/NBD's drift (the default)",
     {"calibration": "isotonic", "base_rate": "clv"}),
)


def cdnow_calibration() -> list[list[str]]:
    """CDNOW's 23,570 customers: purchases up to 1997-12-31, "buys in the next 90 days",
    graded on who bought from 1998-01-01 to 1998-03-31; each calibration setting, side by
    side on the same data in one run."""
    import pyarrow as pa

    from segloop.models.calibration import brier, expected_calibration_error
    from segloop.models.scoring import log_loss, roc_auc
    from segloop.operators.base import RunContext
    from segloop.operators.propensity import PropensityConfig, PropensityOperator
    from segloop.warehouses import Warehouse

    path = lifetimes_datasets() / "CDNOW_master.txt"
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
    rows = []
    for label, keys in CALIBRATION_SETTINGS:
        config = PropensityConfig.model_validate(
            {"type": "propensity", "input": "ev", "window_days": 90, **keys})
        ctx = RunContext(warehouse=wh, pipeline="bench", node="n", run_id="b")
        seconds, out = best_of(
            lambda config=config, ctx=ctx: PropensityOperator(config).run(
                {"ev": wh.table("purchases")}, ctx), 1)
        table = wh.to_arrow(out.table)  # the output: a query over the node's scores
        p = table["probability"].to_numpy()
        y = np.isin(table["user_id"].to_numpy(), buyers).astype(float)
        rows.append([
            label, f"{seconds:.2f} s", f"{p.mean():.3f}", f"{y.mean():.3f}",
            f"{(p.mean() - y.mean()) * 100:+.1f}", f"{expected_calibration_error(y, p):.3f}",
            f"{roc_auc(y, p):.3f}", f"{log_loss(y, p):.4f}", f"{brier(y, p):.4f}",
        ])
    wh.close()
    return rows


def holdout_coverage() -> list[list[str]]:
    """The clv node's intervals on CDNOW's 2,357-customer sample (39 weeks to fit, the
    next 39 to check), with and without the parameters' uncertainty; and the lift node's
    95% interval over 200 simulated holdout tests with a planted +5 point effect."""
    import pyarrow as pa

    from segloop.models.btyd import BetaGeoParams, unique_rows
    from segloop.models.btyd_intervals import purchase_distribution, total_interval
    from segloop.operators.base import RunContext
    from segloop.operators.clv import ClvConfig, ClvOperator
    from segloop.operators.lift import lift_metrics
    from segloop.warehouses import Warehouse

    raw = np.loadtxt(lifetimes_datasets() / "CDNOW_sample.txt", dtype=str)
    days = np.array([f"{d[:4]}-{d[4:6]}-{d[6:]}" for d in raw[:, 2]], dtype="datetime64[us]")
    wh = Warehouse.duckdb()
    wh.create_table("cdnow", pa.table({"customer": raw[:, 1].astype(np.int64), "ts": days,
                                       "dollars": raw[:, 4].astype(float)}))
    keys = {"type": "clv", "input": "tx", "customer_id": "customer", "timestamp": "ts",
            "amount": "dollars", "time_unit": "weeks", "horizon": "39 weeks"}
    ctx = RunContext(warehouse=wh, pipeline="bench", node="ltv", run_id="b")
    checked = ClvOperator(ClvConfig.model_validate({**keys, "as_of": "1998-06-30", "validate": True}))
    m = checked.run({"tx": wh.table("cdnow")}, ctx).metrics
    fitted = ClvOperator(ClvConfig.model_validate({**keys, "as_of": "1997-09-30", "validate": False}))
    out = fitted.run({"tx": wh.table("cdnow")}, ctx)
    table = out.table if isinstance(out.table, pa.Table) else wh.to_arrow(out.table)
    x, t_x, T = (table[c].to_numpy().astype(float) for c in ("frequency", "recency", "tenure"))
    (xu, tu, Tu), wu, _ = unique_rows(x, t_x, T)
    params = BetaGeoParams(**out.metrics["bgnbd"])
    fixed = purchase_distribution(np.array([[params.r, params.alpha, params.a, params.b]]),
                                  xu, tu, Tu, 39.0)
    lo, hi = total_interval(fixed.draw_mean, fixed.draw_var, wu, levels=(0.01, 0.99))
    wh.close()
    actual = m["holdout_purchases"]
    rows = [
        ["clv: customers whose randomized PIT lies in [0.1, 0.9] (0.80 when calibrated)",
         f"{m['holdout_interval_coverage']:.3f}", ""],
        ["clv: total holdout purchases, 1-99% range, parameters taken as exact (plug-in)",
         f"{lo:,.0f}-{hi:,.0f}", f"actual {actual:,}: {'covered' if lo <= actual <= hi else 'missed'}"],
        ["clv: the same with the parameters' uncertainty (Laplace, the node's output)",
         f"{m['holdout_purchases_p01']:,.0f}-{m['holdout_purchases_p99']:,.0f}",
         f"actual {actual:,}: "
         f"{'covered' if m['holdout_purchases_p01'] <= actual <= m['holdout_purchases_p99'] else 'missed'}"
         f" (point forecast {m['holdout_purchases_p50']:,.0f})"],
    ]
    rng = np.random.default_rng(0)
    covered, errors = 0, []
    seeds = 200
    for _ in range(seeds):  # as tests/operators/test_lift.py: 200,000 customers, 10% held out, 20% vs 25%
        n_h = int(rng.binomial(200_000, 0.10))
        n_t = 200_000 - n_h
        x_h, x_t = int(rng.binomial(n_h, 0.20)), int(rng.binomial(n_t, 0.25))
        lm = lift_metrics(x_t, n_t, x_h, n_h)
        covered += lm["lift_ci_low"] <= 0.05 <= lm["lift_ci_high"]
        errors.append(abs(lm["lift"] - 0.05))
    rows.append([f"lift: Newcombe 95% interval covers the planted +5 points ({seeds} simulated tests)",
                 f"{covered / seeds:.1%}",
                 f"estimate within 1.5 points of the truth in {np.mean(np.array(errors) <= 0.015):.1%}"])
    return rows


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
    calibration = cdnow_calibration()
    coverage = holdout_coverage()
    if not args.calibration_only:
        demo_nodes(demo, rows, args.demo_db)
    load = os.getloadavg()[0]
    print(f"\nPython {sys.version.split()[0]}, {os.cpu_count()} cores, load average {load:.1f}\n")
    if rows:
        print("| what | segloop | lifetimes | ratio / quality |")
        print("|---|---|---|---|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
        print()
    print("Propensity on CDNOW (23,570 customers; purchases to 1997-12-31, graded on 1998-01-01 "
          "to 1998-03-31):\n")
    print("| setting | time | mean predicted | actual | gap (points) | ECE | AUC | log loss | Brier |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in calibration:
        print("| " + " | ".join(row) + " |")
    print("\nHoldout coverage:\n")
    print("| what | figure | against |")
    print("|---|---|---|")
    for row in coverage:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
