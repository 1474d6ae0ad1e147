"""Planning as a distributed join: the listing ⋈ the manifest, inside Ray Data.

Both sides are hash-partitioned on ``source_uri`` (``plan_partitions`` partitions): listing rows
from job/listing.py and every manifest row (all configurations, read part by part by Ray tasks).
Each partition holds every row of its objects, so it is planned on its own by the ledger's own
decision (``ledger.decide``: new / changed / prompts changed / retry / skip) — the same answers as
planning the whole archive at once, without any process holding the whole listing or manifest.
Objects with no row of this configuration are "new" without going through Python row by row.

The partition also finds the manifest rows that lost to newer ones (provenance.winners; a crashed
run's leftovers, or rows this run is about to replace) and emits them, so that their parts are
rewritten by Ray tasks too, one task per part (:func:`remove_superseded`). Each partition reports
its counts (objects listed, duplicates, reasons) to the run's progress.Counter, keyed by partition,
so that a retried partition replaces its own counts: the run's counts are exact.

The planned rows are materialized in Ray's object store (the driver holds only block references):
the join is a barrier anyway, and the counts are then exact before any photo is protected.

A manifest part that cannot be read (truncated, empty) fails the plan closed, before any work: the
task that meets it hands its name on as a ``corrupt`` row rather than failing (a failed Ray task ends
the run in a traceback), and :func:`plan` raises provenance.CorruptPartError, one line naming the part.
Rows record their image relative to OUTPUT too (``output_key``): the clean-up deletes an orphaned
image under the OUTPUT it was given, even when that OUTPUT was copied or moved since.
"""

from __future__ import annotations

import logging
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray

from .. import storage
from ..config import PipelineConfig
from ..manifest import ledger, writer
from ..manifest.output import Output
from ..manifest.provenance import SCHEMA, CorruptPartError, list_parts, read_part, winners
from . import progress
from .identity import Run
from .listing import LISTING_SCHEMA

logger = logging.getLogger(__name__)

#: Planning tasks: a quarter CPU each, like the listing and read tasks.
PLAN_CPUS = 0.25
#: Manifest parts read per task.
PARTS_PER_TASK = 16
#: Manifest columns a plan needs: the ledger's, plus where each row lives (for the clean-up).
MANIFEST_COLUMNS: tuple[str, ...] = (*ledger.LEDGER_COLUMNS, "output_uri")

PLAN_SCHEMA = pa.schema([
    ("kind", pa.string()),                # "todo" | "loser" | "corrupt" (an unreadable part: plan() refuses)
    *LISTING_SCHEMA,
    ("reason", pa.string()),
    ("previous_sha256", pa.string()),
    ("part", pa.string()),                # loser: the part holding the row, its position, its image; corrupt: the part
    ("row", pa.int64()),
    ("config_sha256", pa.string()),
    ("output_uri", pa.string()),
])
TODO_COLUMNS: tuple[str, ...] = (*LISTING_SCHEMA.names, "reason", "previous_sha256")
#: The reason of an object with rows of other configurations only: "config changed (<old> → <new>)".
CONFIG_CHANGED = "config changed"
_M = "m_"   # manifest columns travel beside the listing's under this prefix
_MANIFEST_FIELDS = [pa.field(_M + f.name, f.type) for f in
                    (*(SCHEMA.field(c) for c in MANIFEST_COLUMNS), pa.field("part", pa.string()),
                     pa.field("row", pa.int64()))]
JOIN_SCHEMA = pa.schema([("_bucket", pa.int32()), ("side", pa.string()), *LISTING_SCHEMA, *_MANIFEST_FIELDS])


@dataclass
class Plan:
    """A run's plan: exact counts, and the rows to protect as a (lazy) dataset."""

    planned: Any                          # ray.data.MaterializedDataset of PLAN_SCHEMA rows
    listed: int = 0
    duplicates: int = 0
    losers: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def todo_count(self) -> int:
        return sum(self.reasons.values())

    @property
    def skipped(self) -> int:
        return self.listed - self.todo_count

    @property
    def replaces_rows(self) -> bool:
        """Whether this run's rows replace rows of its own configuration (a new configuration replaces none)."""
        return any(not reason.startswith(("new", CONFIG_CHANGED)) for reason in self.reasons)

    def todo(self) -> ray.data.Dataset:
        """The rows to read and protect (LISTING_SCHEMA + reason, previous_sha256)."""
        return self.planned.map_batches(_select, batch_format="pyarrow", num_cpus=PLAN_CPUS,
                                        fn_kwargs={"kind": "todo", "columns": TODO_COLUMNS})


def plan(listing: ray.data.Dataset | None, run: Run, *, prompts: Sequence[str] | None, counter: Any = None) -> Plan:
    """Join ``listing`` with the manifest under the run's OUTPUT; ``listing=None`` plans the clean-up only.
    ``prompts``: what a photo without its own is protected against (None: no prompts check)."""
    cfg, output, config_sha = run.config, run.output, run.config_sha256
    parts = list_parts(output.fs, output.manifest_dir)
    if not parts and listing is None:
        return Plan(planned=ray.data.from_items([]))
    own_counter = counter is None
    counter = progress.Counter.remote() if own_counter else counter
    options = {"config_sha": config_sha, "retry_errors": cfg.retry_errors, "detect_changes": cfg.detect_changes,
               "prompts": list(prompts) if prompts is not None else None, "counter": counter}
    sides = [_manifest(parts, cfg, cfg.plan_partitions)] if parts else []
    if listing is not None:
        sides.append(listing.map_batches(_listing_side, batch_format="pyarrow", num_cpus=PLAN_CPUS,
                                         fn_kwargs={"partitions": cfg.plan_partitions}))
    joined = sides[0].union(*sides[1:]) if len(sides) > 1 else sides[0]
    planned = joined.groupby("_bucket", num_partitions=cfg.plan_partitions).map_groups(
        _plan_partition, batch_format="pyarrow", num_cpus=PLAN_CPUS, fn_kwargs=options)
    result = Plan(planned=planned.materialize())
    stats = ray.get(counter.plan_stats.remote())
    corrupt = ray.get(counter.snapshot.remote()).get("corrupt_parts", 0)
    if own_counter:
        ray.kill(counter)
    if corrupt:
        _refuse_corrupt(result, output)
    result.listed, result.duplicates, result.losers = stats["listed"], stats["duplicates"], stats["losers"]
    result.reasons = stats["reasons"]
    logger.info("plan: %d object(s) listed, %d to process (%s), %d already done%s", result.listed, result.todo_count,
                ", ".join(f"{n} {why}" for why, n in sorted(result.reasons.items())) or "nothing",
                result.skipped, f", {result.duplicates} duplicate(s) in the list dropped" if result.duplicates else "")
    return result


def _refuse_corrupt(result: Plan, output: Output) -> None:
    """Fail closed on a manifest part that cannot be read (its photos' rows are unknown: protecting
    them again or not would be a guess): CorruptPartError, one line naming the first such part."""
    found = result.planned.map_batches(_select, batch_format="pyarrow", num_cpus=PLAN_CPUS,
                                       fn_kwargs={"kind": "corrupt", "columns": ("part",)})
    parts = sorted({row["part"] for row in found.take_all()})
    for part in parts:
        read_part(output.fs, part, ["source_uri"])   # raises CorruptPartError, with the reason
    if parts:   # readable again (replaced meanwhile): still refuse, the plan was made without it
        raise CorruptPartError(f"manifest part {output.to_uri(parts[0])} was unreadable while planning; run again")


def remove_superseded(result: Plan, cfg: PipelineConfig) -> int:
    """Drop the manifest rows the plan found superseded, one Ray task per affected part."""
    if not result.losers:
        return 0
    losers = result.planned.map_batches(_select, batch_format="pyarrow", num_cpus=PLAN_CPUS,
                                        fn_kwargs={"kind": "loser", "columns": ("part", "row", "source_uri",
                                                                                "config_sha256", "output_uri")})
    parts = losers.groupby("part", num_partitions=max(1, min(cfg.plan_partitions, result.losers)))
    done = parts.map_groups(_rewrite_part, batch_format="pyarrow", num_cpus=PLAN_CPUS,
                            fn_kwargs={"root_uri": cfg.output_uri, "options": cfg.storage_options})
    removed = int(done.sum("removed") or 0)
    storage.filesystem(cfg.output_uri, cfg.storage_options)[0].invalidate_cache()  # the tasks changed OUTPUT
    logger.info("manifest: removed %d superseded row(s)", removed)
    return removed


def finish(run: Run, result: Plan) -> None:
    """After the job: drop the rows that retried, changed or re-prompted photos replaced, then
    compact if due (writer.compact, on the driver)."""
    if result.replaces_rows:
        remove_superseded(plan(None, run, prompts=None), run.config)
    writer.compact(run.output.fs, run.output.manifest_dir)


# -- Ray tasks -----------------------------------------------------------------------------------

def _buckets(uris: pa.ChunkedArray | pa.Array, partitions: int) -> pa.Array:
    """A stable hash partition of each URI (Python's hash() differs between processes)."""
    return pa.array([zlib.crc32(u.encode()) % partitions if u is not None else 0 for u in uris.to_pylist()],
                    pa.int32())


def _listing_side(batch: pa.Table, *, partitions: int) -> pa.Table:
    batch = batch.select(LISTING_SCHEMA.names).cast(LISTING_SCHEMA)
    columns = {"_bucket": _buckets(batch["source_uri"], partitions), "side": pa.array(["L"] * batch.num_rows)}
    columns.update({name: batch[name] for name in LISTING_SCHEMA.names})
    for f in _MANIFEST_FIELDS:
        columns[f.name] = pa.nulls(batch.num_rows, f.type)
    return pa.table(columns, schema=JOIN_SCHEMA)


def _manifest(parts: list[str], cfg: PipelineConfig, partitions: int) -> ray.data.Dataset:
    items = [{"part": p} for p in parts]
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), -(-len(items) // PARTS_PER_TASK))))
    return ds.map_batches(_read_parts, batch_format="pyarrow", num_cpus=PLAN_CPUS,
                          fn_kwargs={"root_uri": cfg.output_uri, "options": cfg.storage_options,
                                     "partitions": partitions})


def _read_parts(batch: pa.Table, *, root_uri: str, options: dict[str, Any], partitions: int) -> pa.Table:
    """Ray task: read manifest parts (MANIFEST_COLUMNS, missing ones as nulls) as JOIN_SCHEMA rows."""
    output = Output.open(root_uri, options)
    fs, here = output.fs, pa.scalar(output.uri.rstrip("/") + "/", pa.string())
    tables = []
    for part in batch["part"].to_pylist():
        try:
            table = read_part(fs, part, (*MANIFEST_COLUMNS, "output_key"))
        except FileNotFoundError:   # compacted away since it was listed: its rows are in a newer part
            logger.warning("manifest part %s vanished while planning", part)
            continue
        except CorruptPartError:    # named to the driver by a row (plan() fails closed with one line)
            corrupt = {f.name: [None] for f in JOIN_SCHEMA}
            corrupt.update({"_bucket": [0], "side": ["C"], _M + "part": [part]})
            tables.append(pa.table(corrupt, schema=JOIN_SCHEMA))
            continue
        keys = table["output_key"]   # where each row's image is under this OUTPUT, wherever it was written
        table = table.set_column(table.schema.get_field_index("output_uri"), "output_uri", pc.if_else(
            pc.is_valid(keys), pc.binary_join_element_wise(here, keys, ""), table["output_uri"]))
        n = table.num_rows
        columns = {"_bucket": _buckets(table["source_uri"], partitions), "side": pa.array(["M"] * n)}
        for f in LISTING_SCHEMA:
            columns[f.name] = pa.nulls(n, f.type)
        for name in MANIFEST_COLUMNS:
            columns[_M + name] = table[name]
        columns[_M + "part"] = pa.array([part] * n, pa.string())
        columns[_M + "row"] = pa.array(range(n), pa.int64())
        tables.append(pa.table(columns, schema=JOIN_SCHEMA))
    return pa.concat_tables(tables) if tables else JOIN_SCHEMA.empty_table()


def _plan_partition(group: pa.Table, *, config_sha: str, retry_errors: bool, detect_changes: bool,
                    prompts: list[str] | None, counter: Any) -> pa.Table:
    """Ray task: plan one hash partition (every row of its objects, both sides)."""
    side = group["side"]
    listed = group.filter(pc.and_(pc.equal(side, "L"), pc.is_valid(group["source_uri"])))   # no placeholders
    listed, duplicates = _unique(listed.select(LISTING_SCHEMA.names))
    index = group.filter(pc.equal(side, "M"))
    index = index.select([_M + c for c in (*MANIFEST_COLUMNS, "part", "row")]).rename_columns(
        [*MANIFEST_COLUMNS, "part", "row"])
    mine = pc.equal(index["config_sha256"], config_sha)
    known = pc.fill_null(pc.is_in(listed["source_uri"], value_set=index.filter(mine)["source_uri"]), False)
    unknown = listed.filter(pc.invert(known))                # no row of this configuration
    others = index.filter(pc.invert(mine))
    reconfigured = pc.fill_null(pc.is_in(unknown["source_uri"], value_set=others["source_uri"]), False)
    new = unknown.filter(pc.invert(reconfigured))            # no row of any configuration: new
    decided = ledger.decide(listed.filter(known).to_pylist(), index.select(list(ledger.LEDGER_COLUMNS)),
                            config_sha, retry_errors=retry_errors, detect_changes=detect_changes, prompts=prompts)
    decided += _config_changed(unknown.filter(reconfigured), others, config_sha)
    losers = _losers(index)
    reasons = Counter(item["reason"] for item in decided)
    if new.num_rows:
        reasons["new"] += new.num_rows
    corrupt = [{"kind": "corrupt", "part": p} for p in group.filter(pc.equal(side, "C"))[_M + "part"].to_pylist()]
    if corrupt:
        counter.add.remote(corrupt_parts=len(corrupt))
    stats = {"listed": listed.num_rows, "duplicates": duplicates, "losers": len(losers), "reasons": dict(reasons)}
    ray.get(counter.partition.remote(group["_bucket"][0].as_py(), stats))   # acknowledged before the task ends
    return _output(_todo_table(new, "new"), decided, losers, corrupt)


def _config_changed(listed: pa.Table, others: pa.Table, config_sha: str) -> list[dict]:
    """Objects whose only rows are of other configurations: todo, with the newest of those named."""
    if not listed.num_rows:
        return []
    newest: dict[str, tuple[Any, str]] = {}
    for uri, sha, finished in zip(others["source_uri"].to_pylist(), others["config_sha256"].to_pylist(),
                                  others["finished_at"].to_pylist()):
        if uri not in newest or (finished is not None and (newest[uri][0] is None or finished > newest[uri][0])):
            newest[uri] = (finished, sha)
    return [{**row, "reason": f"{CONFIG_CHANGED} ({newest[row['source_uri']][1][:12]} → {config_sha[:12]})",
             "previous_sha256": None} for row in listed.to_pylist()]


def _unique(listed: pa.Table) -> tuple[pa.Table, int]:
    """One row per source URI (a list may name an object twice): the first; and how many were dropped."""
    if listed.num_rows == 0 or pc.count_distinct(listed["source_uri"]).as_py() == listed.num_rows:
        return listed, 0
    seen: set[str] = set()
    first = [i for i, uri in enumerate(listed["source_uri"].to_pylist()) if not (uri in seen or seen.add(uri))]
    return listed.take(pa.array(first, pa.int64())), listed.num_rows - len(first)


def _todo_table(listed: pa.Table, reason: str) -> pa.Table:
    """Listing rows as PLAN_SCHEMA ``todo`` rows with one reason, without a Python loop over rows."""
    n = listed.num_rows
    columns = {f.name: pa.nulls(n, f.type) for f in PLAN_SCHEMA}
    columns.update({name: listed[name] for name in LISTING_SCHEMA.names})
    columns["kind"], columns["reason"] = pa.array(["todo"] * n, pa.string()), pa.array([reason] * n, pa.string())
    return pa.table(columns, schema=PLAN_SCHEMA)


def _losers(index: pa.Table) -> list[dict]:
    """Manifest rows that lost to another row of their (source_uri, config) — provenance.winners —
    each with its image when no current row of the same object lists that image."""
    if index.num_rows == 0 or index.group_by(["source_uri", "config_sha256"]).aggregate([]).num_rows == index.num_rows:
        return []
    kept = winners(index)
    if kept.num_rows == index.num_rows:
        return []
    keep = set(zip(kept["part"].to_pylist(), kept["row"].to_pylist()))
    listed_images = set(kept["output_uri"].to_pylist())
    losers = []
    for row in index.select(["part", "row", "source_uri", "config_sha256", "output_uri"]).to_pylist():
        if (row["part"], row["row"]) not in keep:
            orphan = row["output_uri"] if row["output_uri"] not in listed_images else None
            losers.append({**row, "output_uri": orphan})
    return losers


def _output(new: pa.Table, decided: list[dict], losers: list[dict], corrupt: list[dict]) -> pa.Table:
    rows = [{**item, "kind": "todo"} for item in decided] + [{**row, "kind": "loser"} for row in losers] + corrupt
    return pa.concat_tables([new, pa.Table.from_pylist(rows, schema=PLAN_SCHEMA)])


def _select(batch: pa.Table, *, kind: str, columns: tuple[str, ...]) -> pa.Table:
    return batch.filter(pc.equal(batch["kind"], kind)).select(list(columns))


def _rewrite_part(group: pa.Table, *, root_uri: str, options: dict[str, Any]) -> pa.Table:
    """Ray task: rewrite one part without its losing rows; delete their orphaned images."""
    output = Output.open(root_uri, options)
    fs = output.fs
    rows = group.to_pylist()
    removed = writer.drop_rows(fs, rows[0]["part"], {r["row"]: (r["source_uri"], r["config_sha256"]) for r in rows})
    for uri in sorted({r["output_uri"] for r in rows if r["output_uri"]}):
        try:
            fs.rm(output.path_of(uri))
            logger.info("removed %s: its row was superseded and no current row lists it", uri)
        except FileNotFoundError:
            pass
    return pa.table({"removed": pa.array([removed], pa.int64())})
