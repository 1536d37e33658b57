"""stitch()'s two joins against one lookup (bench/identity.py's ``stitch_one_lookup``) on a
throwaway PostgreSQL cluster (started as the tests start it: tests/fixtures_pg.py).

Run:  .venv/bin/python bench/identity_stitch_pg.py --workdir <a bench/identity.py workdir> --rows 1000000

Copies the first ``--rows`` rows of the workdir's ``demo_past.tracks`` and its stitched
run's identities into PostgreSQL, checks that both variants give the same events per
canonical user, then reads them ``--repeats`` times each, alternating (bench/identity.py's
``time_stitch_variants``, which its ``--stitch-timing`` uses too).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from tests.fixtures_pg import _start_cluster

    from segloop.segment.identity import stitch
    from segloop.warehouses import DuckDBConfig, Warehouse

    spec = importlib.util.spec_from_file_location("bench_identity", ROOT / "bench" / "identity.py")
    bench = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(bench)  # type: ignore[union-attr]
    with Warehouse.connect(DuckDBConfig(path=".segloop/warehouse.duckdb"), args.workdir) as duck:
        tracks = duck.to_arrow(duck.table("tracks", schema="demo_past").select(
            "id", "anonymous_id", "user_id", "timestamp", "event").limit(args.rows))
        identities = duck.to_arrow(duck.table("stitched__shop__identities"))
    cluster_gen = _start_cluster()
    cluster = next(cluster_gen)
    try:
        wh = Warehouse.connect(cluster.config(cluster.new_database()), Path("."), "pg")
        wh.create_table("tracks", tracks)
        wh.create_table("identities", identities)
        wh.raw_sql("analyze")

        def rows(fn: object) -> list[tuple[str, int]]:
            view = bench.per_canonical_user(fn, wh.table("tracks"), wh.table("identities"))
            return sorted((r["canonical_user_id"] or "", r["n"]) for r in wh.to_arrow(view).to_pylist())

        if rows(stitch) != rows(bench.stitch_one_lookup):
            raise SystemExit("the two variants give different canonical user ids")
        seconds = bench.time_stitch_variants(
            lambda fn: wh.to_arrow(bench.per_canonical_user(fn, wh.table("tracks"), wh.table("identities"))),
            args.repeats)
    finally:
        with contextlib.suppress(StopIteration):
            next(cluster_gen)
    print(f"PostgreSQL, {tracks.num_rows:,} tracks, {identities.num_rows:,} ids, {args.repeats} times each:\n")
    bench.print_stitch_timing(seconds, "the same canonical user ids")


if __name__ == "__main__":
    main()
