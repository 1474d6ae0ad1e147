"""``run``, ``ingest``, ``demo``, ``verify``, ``report`` and ``compact``: protecting an archive and checking its
outputs."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from .. import config as C
from ..config import (
    PipelineConfig,
)
from .options import _default, _storage_options, _weights, add_attack_options, attack_config

logger = logging.getLogger("danp_pipeline")


# -- run / ingest --------------------------------------------------------------------------------

def configure_run(parser: argparse.ArgumentParser) -> None:
    p = lambda name: _default(PipelineConfig, name)  # noqa: E731
    parser.add_argument("input", metavar="INPUT", help="fsspec URI or path of the photos (s3://bucket/prefix, ./dir)")
    parser.add_argument("output", metavar="OUTPUT", help="fsspec URI or path for images/ and manifest/")
    parser.add_argument("--model", action="append", default=None,
                        help=f"the editor to protect against: a diffusers repo id (from the local Hugging Face cache, "
                             f"else downloaded) or local directory, safetensors only (default {p('model')}, "
                             "InstructPix2Pix; also SD img2img, SDXL img2img and InstructPix2Pix, SD inpainting); "
                             "repeat it to protect against several editors at once (one perturbation, the mean of "
                             "their objectives; each actor holds every editor). tiny-ip2p, tiny-sd, tiny-sdxl, "
                             "tiny-sdxl-ip2p, tiny-sd-inpaint (random weights) and the micro-editors are test "
                             "editors: outputs protected against them protect against nothing real")
    parser.add_argument("--model-weights", type=_weights, default=(), metavar="W1,W2,…",
                        help="with several --model: their weights, in order (default equal)")
    parser.add_argument("--revision", default=p("revision"), help="revision of the first --model (branch, tag or "
                                                                   "commit)")
    parser.add_argument("--prompt", action="append", default=[],
                        help="edit instruction to protect against (repeatable)")
    parser.add_argument("--prompts-file", default=p("prompts_file"),
                        help="JSON or CSV sidecar mapping object keys to prompts")
    parser.add_argument("--actors", type=int, default=p("actors"),
                        help=f"editor actors (one editor each; default {p('actors')})")
    parser.add_argument("--gpus-per-actor", type=float, default=p("gpus_per_actor"),
                        help="default: 1 when the cluster has a GPU, else 0")
    parser.add_argument("--cpus-per-actor", type=float, default=p("cpus_per_actor"),
                        help=f"CPUs each editor actor asks Ray for; keep it below the node's CPUs so that reads fit "
                             f"beside it (default {p('cpus_per_actor'):g})")
    parser.add_argument("--actor-memory", type=int, default=p("actor_memory"), metavar="BYTES",
                        help="host memory each editor actor asks Ray for (default: the editor's weights plus "
                             f"{C.ACTOR_BYTES_PER_PIXEL} bytes per pixel of a batch of photos of --max-pixels)")
    parser.add_argument("--cpus-per-task", type=float, default=p("cpus_per_task"),
                        help="CPUs each read/decode and write task asks Ray for; a fraction fits beside the actors "
                             "on any node, more keeps Ray from starting more tasks than a node has cores "
                             f"(default {p('cpus_per_task'):g})")
    parser.add_argument("--tasks-per-actor", type=int, default=p("tasks_per_actor"),
                        help="concurrent tasks of each CPU stage (decode; encode and write) per editor actor: about "
                             "the CPU seconds a photo takes outside the editor over the editor's seconds per photo "
                             f"(default {p('tasks_per_actor')})")
    parser.add_argument("--batch-size", type=int, default=p("batch_size"),
                        help=f"photos per immunizer call (default {p('batch_size')})")
    parser.add_argument("--max-pixels", type=int, default=p("max_pixels"),
                        help=f"refuse larger photos (an error row each; default {p('max_pixels'):,})")
    _storage_options(parser)
    parser.add_argument("--retry-errors", action="store_true",
                        help="redo photos whose manifest row is an error (default: a rerun skips them)")
    parser.add_argument("--max-photo-attempts", type=int, default=p("max_photo_attempts"),
                        help="a photo whose protection kills its worker process this many times becomes an "
                             f"error row instead of being retried again (default {p('max_photo_attempts')})")
    parser.add_argument("--commit-rows", type=int, default=p("commit_rows"),
                        help="manifest parts hold at least this many rows … (a driver killed outright loses at most "
                             f"one part of finished work; default {p('commit_rows')})")
    parser.add_argument("--commit-seconds", type=float, default=p("commit_seconds"),
                        help=f"… or what finished within this many seconds (default {p('commit_seconds'):g})")
    g = parser.add_argument_group("the lease on OUTPUT (one run at a time)")
    g.add_argument("--lease-ttl", type=float, default=p("lease_ttl_s"),
                   help="seconds the lease lasts without renewal; a dead holder's lease is taken over after it "
                        f"(object stores; local paths are freed when the holder exits; default {p('lease_ttl_s'):g})")
    g.add_argument("--wait", type=float, default=p("lease_wait_s"),
                   help="seconds to wait for a lease another run holds before giving up (default 0)")
    g = parser.add_argument_group("the report")
    g.add_argument("--no-report", dest="report", action="store_false",
                   help="do not write OUTPUT/report/index.html when the run ends (`danp-protect report` writes it)")
    g.add_argument("--report-sample", type=int, default=p("report_sample"),
                   help=f"photos in the report's gallery (default {p('report_sample')})")
    add_listing_options(parser)
    add_output_options(parser)
    add_attack_options(parser)


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """What the protected files look like: format, metadata, content credentials."""
    p = lambda name: _default(PipelineConfig, name)  # noqa: E731
    g = parser.add_argument_group("outputs")
    g.add_argument("--output-format", choices=C.OUTPUT_FORMATS, default=p("output_format"),
                   help="png (default), webp-lossless and tiff keep every pixel (L∞ guaranteed; png/tiff keep "
                        "16 bits); a lossless copy of a JPEG source is several times its size (about 9x as PNG); "
                        "jpeg and webp are lossy (L∞ measured and recorded, not bounded); source: the input's own "
                        "format")
    g.add_argument("--quality", type=int, default=p("quality"), help=f"lossy formats, 1..100 (default {p('quality')})")
    g.add_argument("--strip-gps", action="store_true", help="drop GPS from EXIF and XMP (default: keep all metadata)")
    g.add_argument("--strip-metadata", action="store_true",
                   help="drop EXIF, XMP and IPTC (the ICC profile stays: the pixels are in its colour space)")
    g.add_argument("--c2pa-cert", default=None, metavar="CHAIN.pem",
                   help=f"sign each output with C2PA content credentials: PEM chain, signing cert first "
                        f"(default ${C.C2PA_CERT_ENV})")
    g.add_argument("--c2pa-key", default=None, metavar="KEY.pem",
                   help=f"the signing key, PEM (default ${C.C2PA_KEY_ENV}); never logged or recorded")


def add_listing_options(parser: argparse.ArgumentParser) -> None:
    """Where the objects come from at scale, and how the run reports progress (job/listing.py, progress.py)."""
    p = lambda name: _default(PipelineConfig, name)  # noqa: E731
    g = parser.add_argument_group("listing and progress (large archives)")
    g.add_argument("--input-list", default=p("input_list"), metavar="URI",
                   help="Parquet/CSV/JSONL file (or folder of them) of object URIs under INPUT (columns uri or key; "
                        "optional size, etag, prompts), or an S3 Inventory manifest.json; read by Ray tasks "
                        "instead of listing INPUT")
    g.add_argument("--list-fanout-depth", type=int, default=p("list_fanout_depth"),
                   help="without --input-list: directory levels walked to split the listing across Ray tasks "
                        f"(default {p('list_fanout_depth')})")
    g.add_argument("--plan-partitions", type=int, default=p("plan_partitions"),
                   help=f"hash partitions of the distributed plan (default {p('plan_partitions')}; "
                        "about one per 200,000 objects)")
    g.add_argument("--progress-interval", type=float, default=p("progress_interval_s"),
                   help="seconds between progress lines and OUTPUT/_status.json updates "
                        f"(default {p('progress_interval_s'):g})")


def pipeline_config(args: argparse.Namespace) -> PipelineConfig:
    import os

    from ..storage import parse_options

    models = args.model or [_default(PipelineConfig, "model")]
    return PipelineConfig(
        input_uri=args.input, output_uri=args.output, model=models[0], revision=args.revision,
        ensemble=tuple(models[1:]), editor_weights=tuple(args.model_weights),
        prompts=tuple(args.prompt), prompts_file=args.prompts_file, attack=attack_config(args),
        actors=args.actors, gpus_per_actor=args.gpus_per_actor, cpus_per_actor=args.cpus_per_actor,
        batch_size=args.batch_size, max_pixels=args.max_pixels, storage_options=parse_options(args.storage_options),
        retry_errors=args.retry_errors, max_photo_attempts=args.max_photo_attempts,
        output_format=args.output_format, quality=args.quality, strip_gps=args.strip_gps,
        strip_metadata=args.strip_metadata,
        c2pa_cert=args.c2pa_cert or os.environ.get(C.C2PA_CERT_ENV) or None,
        c2pa_key=args.c2pa_key or os.environ.get(C.C2PA_KEY_ENV) or None,
        input_list=args.input_list, list_fanout_depth=args.list_fanout_depth, plan_partitions=args.plan_partitions,
        progress_interval_s=args.progress_interval, actor_memory=args.actor_memory, lease_ttl_s=args.lease_ttl,
        lease_wait_s=args.wait, commit_rows=args.commit_rows, commit_seconds=args.commit_seconds,
        cpus_per_task=args.cpus_per_task, tasks_per_actor=args.tasks_per_actor, report=args.report,
        report_sample=args.report_sample,
    )



#: Exit statuses of run and ingest (every command): all done; the run failed; refused before any
#: work; finished, but some photos ended as error rows. A stop by signal exits 128 + the signal.
EXIT_OK, EXIT_FAILED, EXIT_REFUSED, EXIT_SOME_ERRORS = 0, 1, 2, 3


def run_run(args: argparse.Namespace) -> int:
    cfg = pipeline_config(args)        # run() checks it first (job/preflight.py): one-line ValueErrors
    from ..job.pipeline import LockHeld, run

    try:
        summary = run(cfg)
    except LockHeld as exc:
        logger.error("%s: this run does nothing (--wait SECONDS waits for it)", exc)
        return EXIT_REFUSED
    return _summary_status(summary)


def configure_ingest(parser: argparse.ArgumentParser) -> None:
    configure_run(parser)


def run_ingest(args: argparse.Namespace) -> int:
    cfg = pipeline_config(args)
    from ..job.ingest import ingest

    return _summary_status(ingest(cfg))


def _summary_status(summary: Any) -> int:
    """0 when every photo is ok or skipped (or an ingest found the lease held), 3 with error rows."""
    if summary is None or not summary.errors:
        return EXIT_OK
    where = f"; report: {summary.report_uri}" if summary.report_uri else ""
    logger.error("%d photo(s) ended as error rows (reasons above; `--retry-errors` redoes them)%s", summary.errors,
                 where)
    return EXIT_SOME_ERRORS


# -- demo, verify, compact -------------------------------------------------------------------------

def configure_demo(parser: argparse.ArgumentParser) -> None:
    from .. import demo

    parser.add_argument("--dir", default=demo.DEMO_DIR, help="where originals/ and protected/ go")
    parser.add_argument("--model", default="tiny-ip2p", help="editor (default: the tiny random InstructPix2Pix)")
    parser.add_argument("--steps", type=int, default=demo.DEMO_STEPS, help="PGD iterations (the paper uses 100)")
    parser.add_argument("--timesteps", type=int, default=demo.DEMO_TIMESTEPS,
                        help="timesteps per iteration (the paper uses 10)")
    parser.add_argument("--resolution", type=int, default=demo.DEMO_RESOLUTION,
                        help="working resolution (the paper uses 512)")


def run_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo as demo

    return demo(args.dir, model=args.model, steps=args.steps, timesteps=args.timesteps, resolution=args.resolution)


def configure_verify(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", metavar="OUTPUT", help="the OUTPUT of a run (fsspec URI or path)")
    _storage_options(parser)
    parser.add_argument("--threads", type=int, default=8, help="parallel hashing threads")
    parser.add_argument("--c2pa-trust", default=None, metavar="ANCHORS.pem",
                        help="also require signed outputs' C2PA signers to chain to these PEM trust anchors "
                             "(default: signatures and hashes are checked, the signer's CA is not)")


def run_verify(args: argparse.Namespace) -> int:
    from ..manifest.verify import log_report, verify
    from ..storage import parse_options

    report = verify(args.output, parse_options(args.storage_options), threads=args.threads,
                    c2pa_trust=args.c2pa_trust)
    log_report(args.output, report)
    return 0 if report.ok else 1


def configure_report(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", metavar="OUTPUT", help="the OUTPUT of a run (fsspec URI or path)")
    _storage_options(parser)
    parser.add_argument("--sample", type=int, default=C.REPORT_SAMPLE,
                        help=f"photos in the gallery: the worst PSNR and a fixed sample (default {C.REPORT_SAMPLE})")


def run_report(args: argparse.Namespace) -> int:
    from ..report import write_report
    from ..storage import parse_options

    if args.sample < 0:
        raise ValueError(f"--sample must be >= 0, got {args.sample}")
    logger.info("report: %s", write_report(args.output, parse_options(args.storage_options), sample=args.sample))
    return 0


def configure_compact(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", metavar="OUTPUT", help="the OUTPUT of a run (fsspec URI or path)")
    _storage_options(parser)
    parser.add_argument("--rows-per-part", type=int, default=C.COMPACT_ROWS,
                        help=f"rows per merged part (default {C.COMPACT_ROWS})")
    parser.add_argument("--min-parts", type=int, default=C.COMPACT_MIN_PARTS_ON_DEMAND,
                        help=f"merge once this many small parts exist (default {C.COMPACT_MIN_PARTS_ON_DEMAND}: "
                             f"now; runs merge on their own past {C.COMPACT_MIN_PARTS})")


def run_compact(args: argparse.Namespace) -> int:
    from ..manifest.output import Output
    from ..storage import parse_options

    Output.open(args.output, parse_options(args.storage_options)).compact(
        rows_per_part=args.rows_per_part, min_parts=args.min_parts)
    return 0
