"""The driver's commit stage: parts of many rows, on count or on time, and nothing held back at the end."""

from __future__ import annotations

import time

from danp_pipeline.job.committer import Committer
from danp_pipeline.manifest import provenance
from danp_pipeline.manifest.output import Output


def rows(start: int, n: int):
    return provenance.to_table([provenance.make_row(source_uri=f"s3://b/{i}.jpg", status="ok", config_sha256="c")
                                for i in range(start, start + n)])


def parts(output: Output) -> list[int]:
    return sorted(provenance.read_part(output.fs, p, ["source_uri"]).num_rows
                  for p in provenance.list_parts(output.fs, output.manifest_dir))


def test_parts_of_at_least_n_rows_then_the_rest_at_the_end(tmp_path):
    output = Output.open(str(tmp_path))
    with Committer(output, rows=5, seconds=3600) as committer:
        for start in range(0, 12, 2):              # batches of 2 rows, as the write tasks return them
            committer.add(rows(start, 2))
        assert parts(output) == [6, 6]             # committed once 5 rows had arrived, not per batch
        committer.add(rows(12, 1))
    assert parts(output) == [1, 6, 6]              # the rest, when the run ends
    assert output.read().num_rows == 13


def test_rows_are_committed_on_time_while_nothing_new_arrives(tmp_path):
    """A job waiting on its last slow photos must not hold finished rows back for ever."""
    output = Output.open(str(tmp_path))
    with Committer(output, rows=1000, seconds=0.3):
        time.sleep(0.8)
    assert parts(output) == []                     # nothing was added: nothing committed
    deadline = time.monotonic() + 30
    with Committer(output, rows=1000, seconds=0.3) as committer:
        committer.add(rows(0, 3))
        while not parts(output):
            assert time.monotonic() < deadline, "no part committed on time"
            time.sleep(0.1)
        assert parts(output) == [3]
    assert parts(output) == [3]
