"""Benchmark: the demo's RFM pipeline (sql + rfm nodes) against a hand-written DuckDB query.

For each size, demo Segment data (segloop.demo) is written to a DuckDB file, then, each in
a fresh subprocess so peak memory is its own:

- ``segloop``: the demo pipeline's sql and rfm nodes through ``segloop.pipeline.Pipeline``
  (everything a real ``segloop run`` does: the `orders` view and the `bench__rfm` table,
  row counts, the rejects check, run history, the pipeline lock and the HTML report);
- ``hand``: one hand-written DuckDB SQL statement computing the same RFM table
  (``main.hand_rfm``), and its row count;

Both sides leave the same persisted table behind (the RFM scores, ordered by customer);

and both results are compared row by row. At the smallest size the same pipeline also runs
on PostgreSQL (a throwaway cluster, or --pg-dsn-like settings), on Spark local mode and on
emulated Snowflake (fakesnow in server mode, through the Snowflake connector).
Seconds are wall time of the work (imports and Spark/JVM start-up reported apart); peak
memory is the peak RSS of the Python process (for PostgreSQL the server's is not included).

    .venv/bin/python bench/pipeline.py                          # 1M and 10M events, all backends
    .venv/bin/python bench/pipeline.py --sizes 1m               # a few minutes
    .venv/bin/python bench/pipeline.py --sizes 200k --backends duckdb
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WARM_RUNS = 3  # warm runs per child process (their median is the warm figure)
EVENTS_PER_CUSTOMER = 131.6  # demo data: ~5k customers make ~660k events
SOURCE = "demo_shop"
SEGLOOP_PIPELINE = """\
name: bench
warehouse: default
nodes:
  orders:
    type: sql
    dialect: duckdb
    sql: select user_id, "timestamp", revenue from demo_shop.order_completed where user_id is not null
  rfm:
    type: rfm
    input: orders
    customer_id: user_id
    timestamp: timestamp
    amount: revenue
"""

# The same RFM as the rfm node (see segloop.operators.rfm), written by hand for DuckDB.
HAND_SQL = """
create or replace table main.hand_rfm as
with orders as (
    select user_id, "timestamp"::timestamp as ts, revenue
    from demo_shop.order_completed
    where user_id is not null and "timestamp" is not null
), per_customer as (
    select user_id, max(ts) as last_purchase_at, count(*) as frequency,
           sum(coalesce(revenue::decimal(38, 6), 0))::double as monetary  -- exact sum, as the rfm node
    from orders group by user_id
), recency as (
    select *, cast(round((epoch(date_trunc('day', max(last_purchase_at) over ()))
                          - epoch(date_trunc('day', last_purchase_at))) / 86400) as bigint) as recency_days
    from per_customer
), scored as (
    select *,
        1 + cast(floor((rank() over (order by recency_days desc) - 1) * 5 / count(*) over ()) as bigint) as r_score,
        1 + cast(floor((rank() over (order by frequency) - 1) * 5 / count(*) over ()) as bigint) as f_score,
        1 + cast(floor((rank() over (order by monetary) - 1) * 5 / count(*) over ()) as bigint) as m_score
    from recency
)
select user_id, recency_days, frequency, monetary, last_purchase_at, r_score, f_score, m_score,
    r_score::varchar || f_score::varchar || m_score::varchar as rfm_score,
    case
        when r_score = 5 and f_score in (4, 5) then 'champions'
        when r_score in (3, 4) and f_score in (4, 5) then 'loyal_customers'
        when r_score in (4, 5) and f_score in (2, 3) then 'potential_loyalists'
        when r_score = 5 and f_score = 1 then 'new_customers'
        when r_score = 4 and f_score = 1 then 'promising'
        when r_score = 3 and f_score = 3 then 'need_attention'
        when r_score = 3 and f_score in (1, 2) then 'about_to_sleep'
        when r_score in (1, 2) and f_score in (3, 4) then 'at_risk'
        when r_score in (1, 2) and f_score = 5 then 'cant_lose'
        when r_score in (1, 2) and f_score in (1, 2) then 'hibernating'
        else 'unscored'
    end as segment
from scored
order by user_id
"""


def parse_size(text: str) -> int:
    text = text.strip().lower().replace("_", "")
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1], 1)
    return int(float(text.rstrip("km")) * scale)


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- children: each measured step runs in its own process ---------------------------------


def child_generate(args: argparse.Namespace) -> dict[str, Any]:
    from segloop.demo import write_demo_data
    from segloop.warehouses import Warehouse

    started = time.perf_counter()
    with Warehouse.duckdb(args.duckdb) as wh:
        stats = write_demo_data(wh, schema=SOURCE, customers=args.customers, days=365, seed=7)
    return {"seconds": time.perf_counter() - started, "events": stats.events,
            "orders": stats.orders, "customers": stats.customers}


def child_segloop(args: argparse.Namespace) -> dict[str, Any]:
    imported = time.perf_counter()
    import ibis
    import pyarrow  # noqa: F401
    import sqlglot.dialects  # noqa: F401

    from segloop.pipeline import Pipeline

    ibis.duckdb  # noqa: B018 - load the backend before the clock runs, as `import duckdb` does for hand

    root = Path(args.workspace)
    if args.fresh_cache:  # as the very first run of the pipeline: no SQL compiled by an earlier process
        shutil.rmtree(root / ".segloop" / "cache", ignore_errors=True)
    pipeline = Pipeline.load(root / "pipelines" / "bench.yml")
    import_seconds = time.perf_counter() - imported
    startup = 0.0
    if args.warm:  # Spark: start the session before the clock runs, report it apart
        started = time.perf_counter()
        pipeline.connect()
        startup = time.perf_counter() - started
    timings: dict[str, list[float]] = {"cold": [], "bare_cold": [], "warm": [], "bare": []}
    # Cold (a one-shot `segloop run`), then warm (a long-lived process: scheduler, web UI)
    # with and without the HTML report, alternating, to show what the report costs.
    first = "bare_cold" if args.no_report else "cold"
    for kind in (first, *("warm", "bare") * WARM_RUNS):
        started = time.perf_counter()
        result = pipeline.run(options={"report": False} if kind.startswith("bare") else {})
        timings[kind].append(time.perf_counter() - started)
        if not result.ok:
            raise SystemExit("; ".join(n.error or "" for n in result.nodes if n.error))
    return {"seconds": (timings["cold"] or timings["bare_cold"])[0], "warm_seconds": statistics.median(timings["warm"]),
            "warm_no_report_seconds": statistics.median(timings["bare"]),
            "rows": result.node("rfm").rows, "import_seconds": import_seconds, "startup_seconds": startup}


def child_hand(args: argparse.Namespace) -> dict[str, Any]:
    import duckdb

    timings = []
    for _ in range(1 + WARM_RUNS):  # same as for segloop: cold, then warm
        started = time.perf_counter()
        con = duckdb.connect(args.duckdb)
        con.execute(HAND_SQL)
        rows = con.execute("select count(*) from main.hand_rfm").fetchone()[0]  # type: ignore[index]
        con.close()
        timings.append(time.perf_counter() - started)
    return {"seconds": timings[0], "warm_seconds": statistics.median(timings[1:]), "rows": rows}


def child_load_pg(args: argparse.Namespace) -> dict[str, Any]:
    """Copy the DuckDB demo source into PostgreSQL (COPY through segloop's loader)."""
    from segloop.config import Workspace
    from segloop.warehouses import Warehouse

    workspace = Workspace.load(args.workspace)
    started = time.perf_counter()
    rows = 0
    with Warehouse.duckdb(args.duckdb) as src, \
            Warehouse.connect(workspace.warehouse_config("default"), workspace.root) as dst:
        for name in args.tables.split(","):
            table = src.table(name, SOURCE).to_pyarrow()
            dst.create_table(name, table, schema=SOURCE)
            rows += table.num_rows
    return {"seconds": time.perf_counter() - started, "rows": rows}


CHILDREN = {"generate": child_generate, "segloop": child_segloop, "hand": child_hand, "load-pg": child_load_pg}


def run_child(step: str, **options: Any) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", step]
    for key, value in options.items():
        if value is True:
            cmd.append(f"--{key}")
        elif value is not None and value is not False:
            cmd += [f"--{key}", str(value)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{step} failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each figure of several runs of one child."""
    return {key: statistics.median(r[key] for r in runs) if isinstance(runs[0][key], float) else runs[0][key]
            for key in runs[0]}


def interleaved(repeat: int, steps: dict[str, tuple[str, dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """Run each child once per round, ``repeat`` rounds: a load spike on this shared machine
    then hits both sides of a comparison, not only the one that happened to run during it."""
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in steps}
    for _ in range(repeat):
        for label, (step, options) in steps.items():
            runs[label].append(run_child(step, **options))
    return runs


def paired_ratio(a: list[dict[str, Any]], b: list[dict[str, Any]], key: str) -> float:
    """The median over rounds of a[key] / b[key] (each ratio from the same round)."""
    return statistics.median(x[key] / y[key] for x, y in zip(a, b, strict=True))


# -- parent -----------------------------------------------------------------------------------


def workspace(root: Path, warehouse_yml: str) -> Path:
    (root / "pipelines").mkdir(parents=True, exist_ok=True)
    (root / "segloop.yml").write_text("warehouses:\n  default:\n" + warehouse_yml)
    (root / "pipelines" / "bench.yml").write_text(SEGLOOP_PIPELINE)
    return root


def existing_demo(duckdb_file: Path, customers: int) -> dict[str, Any] | None:
    """Figures of demo data left in --workdir by an earlier run with the same size, if any."""
    import duckdb

    if not duckdb_file.exists():
        return None
    con = duckdb.connect(str(duckdb_file), read_only=True)
    try:
        events, orders, users = con.execute(
            f"select (select count(*) from {SOURCE}.tracks), (select count(*) from {SOURCE}.order_completed), "
            f"(select count(*) from {SOURCE}.users)").fetchone()  # type: ignore[misc]
    except duckdb.Error:
        return None
    finally:
        con.close()
    return {"events": events, "orders": orders, "customers": users} if users == customers else None


def same_result(duckdb_file: Path) -> bool:
    """Both persisted tables have the same columns, types, and rows (compared one by one)."""
    import duckdb

    con = duckdb.connect(str(duckdb_file), read_only=True)
    shapes = [con.execute("select column_name, data_type from information_schema.columns where table_schema = 'main' "
                          "and table_name = ? order by ordinal_position", [name]).fetchall()
              for name in ("bench__rfm", "hand_rfm")]
    # Every column compared exactly: both sides sum money as DECIMAL(38, 6).
    cols = "user_id, recency_days, frequency, monetary, last_purchase_at, r_score, f_score, m_score, rfm_score, segment"
    diff = con.execute(
        f"select count(*) from ((select {cols} from main.bench__rfm except all select {cols} from main.hand_rfm)"
        f" union all (select {cols} from main.hand_rfm except all select {cols} from main.bench__rfm))"
    ).fetchone()[0]  # type: ignore[index]
    con.close()
    if shapes[0] != shapes[1]:
        print(f"   columns differ: segloop {shapes[0]} vs hand-written {shapes[1]}", flush=True)
    return diff == 0 and shapes[0] == shapes[1] and bool(shapes[0])


def bench_postgres(work: Path, duck_ws: Path, duckdb_file: Path) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from tests.fixtures_pg import _start_cluster

    clusters = _start_cluster()
    try:
        cluster = next(clusters)
    except BaseException as exc:  # pytest.skip outside pytest: no PostgreSQL here
        return {"error": f"no PostgreSQL: {exc}"}
    try:
        database = cluster.new_database("bench")
        pg_ws = workspace(work / "pg", cluster.workspace_yml(database, "default").split("\n", 2)[2])
        load = run_child("load-pg", duckdb=duckdb_file, workspace=pg_ws, tables="order_completed")
        run = run_child("segloop", workspace=pg_ws)
        return {**run, "load_seconds": load["seconds"]}
    finally:
        for _ in clusters:  # stops the server and removes its folder
            pass


def bench_spark(work: Path, duckdb_file: Path) -> dict[str, Any]:
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return {"error": "pyspark is not installed (pip install 'segloop[pyspark]')"}
    if shutil.which("java") is None:
        return {"error": "Java is not on PATH"}
    import duckdb

    parquet = work / "order_completed.parquet"
    con = duckdb.connect(str(duckdb_file), read_only=True)
    con.execute(f"copy (select * from {SOURCE}.order_completed) to '{parquet}' (format parquet)")
    con.close()
    spark_ws = workspace(work / "spark", (
        f"    type: pyspark\n    master: local[*]\n    warehouse_dir: {work / 'spark-warehouse'}\n"
        f"    driver_memory: 4g\n    conf:\n      spark.sql.shuffle.partitions: '4'\n"))
    # Register the source as a Parquet table in the Hive metastore, then run the pipeline.
    setup = (
        "from pathlib import Path; from segloop.config import Workspace; "
        "from segloop.warehouses import Warehouse; "
        f"ws = Workspace.load({str(spark_ws)!r}); wh = Warehouse.connect(ws.warehouse_config('default'), ws.root); "
        f"wh.ensure_schema({SOURCE!r}); "
        f"wh.raw_sql('create table if not exists {SOURCE}.order_completed using parquet "
        f"location \"{parquet}\"')"
    )
    proc = subprocess.run([sys.executable, "-c", setup], cwd=spark_ws, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"error": "spark setup failed: " + proc.stderr.strip().splitlines()[-1]}
    return run_child("segloop", workspace=spark_ws, warm=True)


def bench_snowflake(work: Path, duckdb_file: Path) -> dict[str, Any]:
    """The pipeline on emulated Snowflake: the fakesnow server (tests/warehouses/snowflake_server.py,
    its test adapters included) in a thread of this process, the segloop child reaching it
    over HTTP through the real Snowflake connector. A figure of the emulator, not of Snowflake."""
    try:
        import fakesnow  # noqa: F401
    except ImportError:
        return {"error": "fakesnow is not installed (the dev extra)"}
    import duckdb

    sys.path.insert(0, str(ROOT))
    from tests.warehouses.snowflake_server import PASSWORD_ENV, running_server

    from segloop.warehouses import Warehouse

    os.environ.setdefault(PASSWORD_ENV, "emulator-secret")
    con = duckdb.connect(str(duckdb_file), read_only=True)
    orders = con.sql(f"select * from {SOURCE}.order_completed").to_arrow_table()
    con.close()
    with running_server() as server:
        sf_ws = workspace(work / "snowflake", server.workspace_yml("BENCH").split("\n", 2)[2])
        started = time.perf_counter()
        with Warehouse.connect(server.config("BENCH"), sf_ws) as wh:
            wh.create_table("order_completed", orders, schema=SOURCE)
        load_seconds = time.perf_counter() - started
        return {**run_child("segloop", workspace=sf_ws), "load_seconds": load_seconds}


def fmt(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:,.2f}{unit}"


def fmt_load(load: tuple[float, float, float]) -> str:
    return " / ".join(f"{x:.1f}" for x in load)


def cell(part: dict[str, Any] | None) -> str:
    if not part:
        return "-"
    if "error" in part:
        return f"n/a ({part['error']})"
    return f"{part['seconds']:.2f} s / {part['peak_mb']:.0f} MB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1m,10m", help="Event counts, e.g. 1m,10m or 200k.")
    parser.add_argument("--backends", default="duckdb,postgres,spark,snowflake",
                        help="postgres, spark and snowflake (the fakesnow emulator) run at the smallest size only.")
    parser.add_argument("--workdir", default=None,
                        help="Keep data here and reuse it on the next run (default: a temp folder).")
    parser.add_argument("--json", default=None, help="Also write the figures to this file.")
    parser.add_argument("--repeat", type=int, default=3, help="DuckDB runs per figure (median).")
    parser.add_argument("--no-bytecode", action="store_true",
                        help="Do not compile segloop's modules to bytecode first (a source checkout "
                             "with PYTHONDONTWRITEBYTECODE=1 then compiles them in every child).")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    for hidden in ("duckdb", "workspace", "customers", "tables"):
        parser.add_argument(f"--{hidden}", help=argparse.SUPPRESS)
    parser.add_argument("--warm", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-report", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--fresh-cache", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        if args.customers:
            args.customers = int(args.customers)
        result = CHILDREN[args.child](args)
        print(json.dumps({**result, "peak_mb": peak_mb()}))
        return 0

    # A wheel install has segloop's modules compiled to bytecode (pip does it); a source
    # checkout run with PYTHONDONTWRITEBYTECODE=1 compiles each module at every import,
    # ~20-30 ms of a run for the modules a run imports lazily (report, lock, SQL cache).
    # Compile them once, as pip would, unless --no-bytecode asks for the source-only case.
    if not args.no_bytecode:
        import compileall

        import segloop

        compileall.compile_dir(Path(segloop.__file__).parent, quiet=1)
    load_before = os.getloadavg()
    sizes = sorted(parse_size(s) for s in args.sizes.split(","))
    backends = set(args.backends.split(","))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="segloop-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("SEGMENT_WRITE_KEY", "bench")
    figures: list[dict[str, Any]] = []
    try:
        for size in sizes:
            folder = work / f"{size}"
            duck_ws = workspace(folder / "duckdb", "    type: duckdb\n    path: .segloop/warehouse.duckdb\n")
            duckdb_file = duck_ws / ".segloop" / "warehouse.duckdb"
            duckdb_file.parent.mkdir(parents=True, exist_ok=True)
            customers = max(10, round(size / EVENTS_PER_CUSTOMER))
            print(f"\n== {size:,} events target: generating demo data for {customers:,} customers...", flush=True)
            gen = existing_demo(duckdb_file, customers) if args.workdir else None
            if gen is None:
                gen = run_child("generate", duckdb=duckdb_file, customers=customers)
                print(f"   {gen['events']:,} events, {gen['orders']:,} orders in {gen['seconds']:.1f}s", flush=True)
            else:
                print(f"   reusing {gen['events']:,} events, {gen['orders']:,} orders in {duckdb_file}", flush=True)
            row: dict[str, Any] = {"target_events": size, **{k: gen[k] for k in ("events", "orders", "customers")}}
            if "duckdb" in backends:
                runs = interleaved(args.repeat, {
                    "segloop": ("segloop", {"workspace": duck_ws}),
                    "hand": ("hand", {"duckdb": duckdb_file}),
                    # A cold run without the HTML report (the report's queries and rendering).
                    "bare": ("segloop", {"workspace": duck_ws, "no-report": True}),
                    # The very first run: no compiled SQL on disk from an earlier process.
                    "first": ("segloop", {"workspace": duck_ws, "fresh-cache": True}),
                })
                row["segloop"], row["hand"] = medians(runs["segloop"]), medians(runs["hand"])
                row["segloop"]["cold_no_report_seconds"] = medians(runs["bare"])["seconds"]
                row["segloop"]["cold_first_seconds"] = medians(runs["first"])["seconds"]
                row["first_ratio"] = paired_ratio(runs["first"], runs["hand"], "seconds")
                row["ratio"] = paired_ratio(runs["segloop"], runs["hand"], "seconds")
                row["warm_ratio"] = paired_ratio(runs["segloop"], runs["hand"], "warm_seconds")
                row["same_result"] = same_result(duckdb_file)
                print(f"   duckdb: segloop {row['segloop']['seconds']:.2f}s / {row['segloop']['peak_mb']:.0f} MB, "
                      f"hand-written {row['hand']['seconds']:.2f}s / {row['hand']['peak_mb']:.0f} MB, "
                      f"ratio {row['ratio']:.2f}x (warm {row['warm_ratio']:.2f}x), "
                      f"same result: {row['same_result']}", flush=True)
            if size == sizes[0] and "postgres" in backends:
                row["postgres"] = bench_postgres(folder, duck_ws, duckdb_file)
                print(f"   postgres: {row['postgres']}", flush=True)
            if size == sizes[0] and "spark" in backends:
                row["spark"] = bench_spark(folder, duckdb_file)
                print(f"   spark: {row['spark']}", flush=True)
            if size == sizes[0] and "snowflake" in backends:
                row["snowflake"] = bench_snowflake(folder, duckdb_file)
                print(f"   snowflake (fakesnow): {row['snowflake']}", flush=True)
            figures.append(row)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)

    load_after = os.getloadavg()
    print(f"\nload average (1, 5, 15 min): before {fmt_load(load_before)}, after {fmt_load(load_after)}")
    print("\n| events | orders | customers | segloop (DuckDB) cold s / MB | hand-written DuckDB cold s / MB "
          "| ratio cold | segloop warm s | hand warm s | ratio warm | segloop without report: cold / warm s "
          "| segloop first run (no SQL cache) s / ratio | segloop on PostgreSQL s / MB | segloop on Spark local s / MB "
          "| segloop on emulated Snowflake (fakesnow) s / MB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in figures:
        cells = [cell(row.get(key)) for key in ("segloop", "hand", "postgres", "spark", "snowflake")]
        warm = [fmt(row[key]["warm_seconds"]) if row.get(key) else "-" for key in ("segloop", "hand")]
        bare = (f"{fmt(row['segloop']['cold_no_report_seconds'])} / {fmt(row['segloop']['warm_no_report_seconds'])}"
                if row.get("segloop") else "-")
        first = (f"{fmt(row['segloop']['cold_first_seconds'])} / {fmt(row.get('first_ratio'), 'x')}"
                 if row.get("segloop") else "-")
        print(f"| {row['events']:,} | {row['orders']:,} | {row['customers']:,} | {cells[0]} | {cells[1]} "
              f"| {fmt(row.get('ratio'), 'x')} | {warm[0]} | {warm[1]} | {fmt(row.get('warm_ratio'), 'x')} "
              f"| {bare} | {first} | {cells[2]} | {cells[3]} | {cells[4]} |")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
