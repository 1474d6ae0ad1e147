"""Listing and planning at archive scale: the driver's memory, the plan's answers, listing speed.

    python benchmarks/listing_scale.py rss 100000 1000000 10000000   # driver peak RSS per size
    python benchmarks/listing_scale.py speed 1000000                  # list file vs today's serial listing

``rss``: for each N, a synthetic archive is generated first (in its own process): an input list of
N object URIs (Parquet files of ≤ 1 M rows, as an S3 Inventory would give) and a manifest in which
10% of the objects are ``ok`` and 1% ``error`` for the benchmark's configuration. Then, in a fresh
process that starts its own local Ray (2 CPUs), the job's own steps run — listing.dataset →
planning.plan → remove_superseded → the todo rows streamed back to the driver (where protection
would start) — and the driver's peak RSS (``VmHWM`` = ru_maxrss, this process only; Ray's workers
and object store are other processes) is recorded with the time of each step. Up to
``LEDGER_MAX`` keys, today's plan (the whole list and manifest in the driver, ledger.decide) runs in a
third process on the same inputs, and both plans are compared by an order-free digest of
(source URI, reason) and by their reason counts.

``speed``: N empty files in a 1000-directory tree; today's serial listing (reader.list_inputs, the
driver alone) against reading the same N URIs from Parquet list files (125,000 rows each, as an
inventory comes in several files) with Ray Data, and against the fan-out listing of the tree by Ray
tasks — each in a fresh process (serial twice, list file three times), with and without Ray's
start-up time. Not a test: the figures depend on the machine and on what else runs on it.
JSON goes to benchmarks/results/cpu/listing_*.json.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from _support import peak_rss_mb, rss_mb, run_self

RESULTS = Path(__file__).resolve().parent / "results" / "cpu"
WORK = Path(os.environ.get("DANP_BENCH_DIR", tempfile.gettempdir())) / "danp-listing-bench"
CONFIG_SHA = "bench-config"
LIST_FILE_ROWS = 1_000_000
MANIFEST_PART_ROWS = 50_000
LEDGER_MAX = 1_000_000
TREE_LIST_ROWS = 125_000


def uris(root: str, start: int, stop: int) -> list[str]:
    return [f"file://{root}/d{i % 1000:03d}/photo{i:09d}.jpg" for i in range(start, stop)]


# -- generating an archive's list and manifest ---------------------------------------------------------

def generate(n: int) -> Path:
    """WORK/<n>/: list/*.parquet (uri, size, etag) and out/manifest/part-*.parquet; reused if present."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from danp_pipeline.config import DEFAULT_PROMPTS
    from danp_pipeline.manifest.provenance import SCHEMA

    base = WORK / str(n)
    if (base / "done").exists():
        return base
    (base / "list").mkdir(parents=True, exist_ok=True)
    (base / "out" / "manifest").mkdir(parents=True, exist_ok=True)
    root = str(base / "in")
    for start in range(0, n, LIST_FILE_ROWS):
        stop = min(n, start + LIST_FILE_ROWS)
        table = pa.table({"uri": uris(root, start, stop), "size": pa.array(range(start, stop), pa.int64()),
                          "etag": [f"e{i}" for i in range(start, stop)]})
        pq.write_table(table, base / "list" / f"{start:010d}.parquet")
    done = [i for i in range(n) if i % 10 == 0 or i % 100 == 1]   # 10% ok, 1% error
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    for start in range(0, len(done), MANIFEST_PART_ROWS):
        ids = done[start:start + MANIFEST_PART_ROWS]
        m = len(ids)
        columns = {name: pa.nulls(m, SCHEMA.field(name).type) for name in SCHEMA.names}
        columns.update({
            "source_uri": pa.array([f"file://{root}/d{i % 1000:03d}/photo{i:09d}.jpg" for i in ids]),
            "status": pa.array(["ok" if i % 10 == 0 else "error" for i in ids]),
            "config_sha256": pa.array([CONFIG_SHA] * m),
            "finished_at": pa.array([t0] * m, SCHEMA.field("finished_at").type),
            "source_sha256": pa.array([hashlib.sha256(str(i).encode()).hexdigest() for i in ids]),
            "source_bytes": pa.array(ids, pa.int64()), "source_etag": pa.array([f"etag:e{i}" for i in ids]),
            "prompts": pa.array([list(DEFAULT_PROMPTS)] * m, SCHEMA.field("prompts").type)})
        pq.write_table(pa.table(columns, schema=SCHEMA), base / "out" / "manifest" / f"part-{start:010d}.parquet",
                       compression="zstd")
    (base / "done").write_text("")
    return base


def digest(pairs) -> str:
    """Order-free digest of (source URI, reason) pairs."""
    total = 0
    for uri, reason in pairs:
        total = (total + int.from_bytes(hashlib.blake2b(f"{uri}\0{reason}".encode(), digest_size=8).digest(), "big")) \
            % 2**64
    return f"{total:016x}"


def count_block(batch):
    import pyarrow as pa

    return pa.table({"rows": [batch.num_rows - batch["source_uri"].null_count]})   # placeholder rows left out


def digest_block(batch):
    import pyarrow as pa

    return pa.table({"rows": [batch.num_rows],
                     "digest": [digest(zip(batch["source_uri"].to_pylist(), batch["reason"].to_pylist()))]})


# -- the measured processes ---------------------------------------------------------------------------

def distributed(n: int) -> dict:
    """The job's listing and planning on a fresh local Ray; the driver's peak RSS."""
    import ray

    from danp_pipeline.config import PipelineConfig
    from danp_pipeline.job import listing, planning, progress
    from danp_pipeline.job.identity import Run
    from danp_pipeline.job.pipeline import SLOW_START_ENV
    from danp_pipeline.manifest.output import Output

    base = WORK / str(n)
    imports_mb = rss_mb()
    for name, value in SLOW_START_ENV.items():
        os.environ.setdefault(name, value)
    clock = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False
    started = time.perf_counter()
    cfg = PipelineConfig(input_uri=str(base / "in"), output_uri=str(base / "out"),
                         input_list=str(base / "list"))
    output = Output.open(cfg.output_uri)
    with progress.Reporter(output, "bench", cfg.progress_interval_s) as report:
        listed = listing.dataset(cfg, {}, report.counter)
        plan = planning.plan(listed, Run(cfg, "bench", "{}", CONFIG_SHA), prompts=cfg.run_prompts,
                             counter=report.counter)
        planned = time.perf_counter()
        planning.remove_superseded(plan, cfg)
        report.planned(plan.listed, plan.todo_count, plan.skipped, plan.reasons)
        # The todo rows flow on to Ray tasks, as they would to the read tasks; the driver gets one
        # (rows, digest) pair per block.
        total, rows = 0, 0
        digests = plan.todo().map_batches(digest_block, batch_format="pyarrow", num_cpus=0.25)
        for batch in digests.iter_batches(batch_size=None, batch_format="pyarrow"):
            rows += sum(batch["rows"].to_pylist())
            total = (total + sum(int(d, 16) for d in batch["digest"].to_pylist())) % 2**64
    drained = time.perf_counter()
    ray.shutdown()
    return {"keys": n, "mode": "distributed", "listed": plan.listed, "todo": rows, "reasons": plan.reasons,
            "skipped": plan.skipped, "digest": f"{total:016x}", "ray_start_s": round(started - clock, 1),
            "list_and_plan_s": round(planned - started, 1), "stream_todo_s": round(drained - planned, 1),
            "driver_rss_after_imports_mb": round(imports_mb), "driver_peak_rss_mb": round(peak_rss_mb())}


def ledger_today(n: int) -> dict:
    """Today's plan on the same inputs: the whole list and manifest on the driver, ledger.decide."""
    import pyarrow.parquet as pq

    from danp_pipeline.config import DEFAULT_PROMPTS
    from danp_pipeline.manifest import ledger
    from danp_pipeline.manifest.output import Output

    base = WORK / str(n)
    imports_mb = rss_mb()
    clock = time.perf_counter()
    table = pq.read_table(base / "list")
    prefix = f"file://{base}/in/"
    items = [{"source_key": u[len(prefix):], "source_uri": u, "path": u[7:], "size": s, "prompts": [],
              "source_etag": f"etag:{e}"} for u, s, e in zip(table["uri"].to_pylist(), table["size"].to_pylist(),
                                                            table["etag"].to_pylist())]
    del table
    index = Output.open(str(base / "out")).read(ledger.LEDGER_COLUMNS)
    todo = ledger.decide(items, index, CONFIG_SHA, prompts=DEFAULT_PROMPTS)
    seconds = time.perf_counter() - clock
    reasons: dict[str, int] = {}
    for item in todo:
        reasons[item["reason"]] = reasons.get(item["reason"], 0) + 1
    return {"keys": n, "mode": "ledger on the driver (today)", "listed": len(items), "todo": len(todo),
            "reasons": reasons, "digest": digest((i["source_uri"], i["reason"]) for i in todo),
            "plan_s": round(seconds, 1), "driver_rss_after_imports_mb": round(imports_mb),
            "driver_peak_rss_mb": round(peak_rss_mb())}


def make_tree(n: int) -> Path:
    base = WORK / f"tree-{n}"
    if (base / "done").exists():
        return base
    root = base / "in"
    for d in range(1000):
        (root / f"d{d:03d}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"d{i % 1000:03d}" / f"photo{i:09d}.jpg").touch()
    import pyarrow as pa
    import pyarrow.parquet as pq

    (base / "list").mkdir(exist_ok=True)
    for start in range(0, n, TREE_LIST_ROWS):   # several files, as an S3 Inventory delivers them
        pq.write_table(pa.table({"uri": uris(str(root), start, min(n, start + TREE_LIST_ROWS))}),
                       base / "list" / f"{start:010d}.parquet")
    (base / "done").write_text("")
    return base


def listing_time(n: int, how: str) -> dict:
    """Seconds to list the tree of N files: ``serial`` (today), ``list-file`` or ``fan-out`` (Ray)."""
    from danp_pipeline.config import PipelineConfig
    from danp_pipeline.job import reader

    base = WORK / f"tree-{n}"
    cfg = PipelineConfig(input_uri=str(base / "in"), output_uri=str(base / "out"),
                         input_list=str(base / "list") if how == "list-file" else None)
    clock = time.perf_counter()
    if how == "serial":
        count = sum(1 for _ in reader.list_inputs(cfg))
        return {"keys": n, "how": how, "listed": count, "seconds": round(time.perf_counter() - clock, 1),
                "driver_peak_rss_mb": round(peak_rss_mb())}
    import ray

    from danp_pipeline.job import listing

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False
    started = time.perf_counter()
    # The rows stay in Ray (as they flow on to planning); the driver gets one count per block.
    cpus = listing.LIST_FILE_CPUS if how == "list-file" else listing.LIST_CPUS   # fused with the listing tasks
    counts = listing.dataset(cfg, {}).map_batches(count_block, batch_format="pyarrow", num_cpus=cpus)
    count = sum(sum(b["rows"].to_pylist()) for b in counts.iter_batches(batch_size=None, batch_format="pyarrow"))
    end = time.perf_counter()
    again = listing.dataset(cfg, {}).map_batches(count_block, batch_format="pyarrow", num_cpus=cpus)
    assert sum(sum(b["rows"].to_pylist()) for b in again.iter_batches(batch_size=None, batch_format="pyarrow")) == count
    warm = time.perf_counter() - end   # the same listing again, Ray's worker processes already started
    ray.shutdown()
    return {"keys": n, "how": how, "listed": count, "seconds": round(end - started, 1),
            "seconds_with_ray_start": round(end - clock, 1), "seconds_warm_workers": round(warm, 1),
            "driver_peak_rss_mb": round(peak_rss_mb())}


def child(*args: str) -> dict:
    return run_self(__file__, "_child", *args, what=str(args))


def main(argv: list[str]) -> None:
    if argv[:1] == ["_child"]:
        fn = {"generate": lambda n: {"dir": str(generate(n))}, "distributed": distributed, "ledger": ledger_today,
              "tree": lambda n: {"dir": str(make_tree(n))}, "time": None}[argv[1]]
        result = listing_time(int(argv[2]), argv[3]) if argv[1] == "time" else fn(int(argv[2]))
        print(json.dumps(result))
        return
    load = os.getloadavg()[0]
    results = []
    if argv[:1] == ["rss"]:
        for n in [int(a) for a in argv[1:]] or [100_000, 1_000_000, 10_000_000]:
            child("generate", str(n))
            results.append(child("distributed", str(n)))
            if n <= LEDGER_MAX:
                today = child("ledger", str(n))
                today["same_plan"] = (today["digest"], today["reasons"]) == (results[-1]["digest"],
                                                                             results[-1]["reasons"])
                results.append(today)
            print(json.dumps(results[-1]), flush=True)
        name = "listing_rss.json"
    elif argv[:1] == ["speed"]:
        n = int(argv[1]) if len(argv) > 1 else 1_000_000
        child("tree", str(n))
        for how, repeats in (("serial", 2), ("list-file", 3), ("fan-out", 1)):   # each run a fresh process
            for _ in range(repeats):
                results.append(child("time", str(n), how))
                print(json.dumps(results[-1]), flush=True)
        name = f"listing_speed_{n}.json"
    else:
        raise SystemExit(__doc__)
    report = {"load_average_start": round(load, 1), "load_average_end": round(os.getloadavg()[0], 1),
              "cpus": os.cpu_count(), "results": results}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / name).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
