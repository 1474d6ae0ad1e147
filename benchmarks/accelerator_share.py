"""How busy would the accelerator be? The job with its protect step replaced by a wait, everything else real.

    python benchmarks/accelerator_share.py --photos 16 --megapixels 12 --accelerator-seconds 4 --actors 1 \
        --json benchmarks/results/cpu/accelerator_share.json

No GPU is needed: inside this benchmark only, a Ray ``worker_process_setup_hook`` replaces the editor
actor's protection (``Immunizer.protect``) in every worker process by a wait of ``--accelerator-seconds``
that holds no CPU (what a GPU kernel costs the host), returning each photo with its lowest bit flipped.
Every other stage is the job's own: listing, planning, reading, decoding, encoding, measuring on the
written file, writing to local disk (or to a moto S3 server on loopback with ``--s3``), committing.

    busy_share = Σ time inside the protect step / (wall time of the protect phase × actors)

where the protect phase runs from the start of the first protection (after ``--warmup`` of them, none
by default) to the last one's end; the editor actor's own start-up (loading the editor) comes before it.
``busy_share_all`` is the same over every protection. The hook also times each CPU stage (thread CPU
seconds, so waits do not count) and reports CPU seconds per photo of each stage, and each stage's peak
memory per call above its worker's resting memory (VmHWM after a reset through ``/proc/self/clear_refs``):
the CPUs and memory a node needs per accelerator follow from them. The last line of stdout is
``busy_share=<float>``. Not a test: figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

LOG_ENV = "DANP_BENCH_STAGE_LOG"
WAIT_ENV = "DANP_BENCH_ACCELERATOR_S"


def setup_worker() -> None:
    """Ray worker_process_setup_hook: the fake accelerator and the stage timers, in each worker process.

    The CPU stages' modules are patched at once (they import no torch); the editor actor's modules are
    patched when the process first imports them, so that the CPU task workers do not pay for importing
    torch here (5-6 s each on this machine), which the job's own CPU stages never do."""
    import functools
    import importlib.abc
    import importlib.util

    from danp_pipeline.job import outputs, reader

    log_path, wait_s = os.environ[LOG_ENV], float(os.environ[WAIT_ENV])

    def log(**entry) -> None:
        with open(log_path, "a") as fh:
            fh.write(json.dumps(entry) + "\n")

    def timed(stage, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            rss = _status_kb("VmRSS")
            with open("/proc/self/clear_refs", "w") as fh:   # resets VmHWM to the current RSS (Linux >= 4.0)
                fh.write("5")
            clock, start = time.thread_time(), time.time()
            out = fn(*args, **kwargs)
            log(stage=stage, cpu=time.thread_time() - clock, n=getattr(out, "num_rows", 0), start=start,
                end=time.time(), pid=os.getpid(), peak_mb=(_status_kb("VmHWM") - rss) / 1024)
            return out
        return wrapper

    def patch_actor(worker) -> None:
        from danp_pipeline.protect.immunizer import Immunizer, ProtectedImage

        def protect(self, photos, prompts, seeds=None):
            start = time.time()
            time.sleep(wait_s * len(photos))
            results = []
            for image in photos:
                pixels = image.rgb[..., 0] ^ 1 if image.grayscale else image.rgb ^ 1
                results.append(ProtectedImage(pixels, image.alpha, 1, 48.1, 0.0, 0.0, steps=1))
            log(stage="protect", start=start, end=time.time(), n=len(photos))
            return results

        Immunizer.protect = protect
        worker.Protector.__call__ = timed("editor actor, outside protect", worker.Protector.__call__)

    class PatchOnImport(importlib.abc.MetaPathFinder):
        """Runs ``patch_actor`` right after ``danp_pipeline.job.worker`` is first executed."""

        def find_spec(self, name, path, target=None):
            if name != "danp_pipeline.job.worker":
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            execute = spec.loader.exec_module

            def exec_module(module):
                execute(module)
                patch_actor(module)

            spec.loader.exec_module = exec_module
            return spec

    for module, name in ((reader, "read_objects"), (reader, "decode_objects"), (outputs, "write_outputs")):
        if hasattr(module, name):        # the stages of this version of the job
            setattr(module, name, timed(name, getattr(module, name)))
    if "danp_pipeline.job.worker" in sys.modules:
        patch_actor(sys.modules["danp_pipeline.job.worker"])
    else:
        sys.meta_path.insert(0, PatchOnImport())


def _status_kb(field: str) -> int:
    """A ``/proc/self/status`` memory field, in kB."""
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field + ":"))


def make_photos(directory: Path, n: int, megapixels: float) -> None:
    """n distinct JPEG photos (q90) of about ``megapixels``, 4:3, with photo-like detail."""
    import numpy as np
    from PIL import Image
    from skimage import data

    width = int(round((megapixels * 1e6 * 4 / 3) ** 0.5))
    height = int(round(width * 3 / 4))
    names = ["astronaut", "chelsea", "coffee", "rocket"]
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        base = Image.fromarray(getattr(data, names[i % len(names)])()).resize((width, height), Image.Resampling.BICUBIC)
        grain = rng.integers(-6, 7, (height, width, 3), dtype=np.int16)
        pixels = np.clip(np.asarray(base, dtype=np.int16) + grain, 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
        (directory / f"photo{i:03d}.jpg").write_bytes(buf.getvalue())


def busy_share(spans: list[tuple[float, float]], actors: int) -> tuple[float, float, float]:
    """(share, busy seconds, phase seconds) of protect spans."""
    busy = sum(end - start for start, end in spans)
    phase = max(end for _, end in spans) - min(start for start, _ in spans)
    return busy / (phase * actors), busy, phase


def summarize(log_path: Path, photos: int, actors: int, warmup: int) -> dict:
    entries = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    spans = sorted((e["start"], e["end"]) for e in entries if e["stage"] == "protect")
    share_all = busy_share(spans, actors)[0]
    share, busy, phase = busy_share(spans[min(warmup, len(spans) - 1):], actors)
    stages: dict[str, float] = {}
    peaks: dict[str, float] = {}
    for e in entries:
        if e["stage"] != "protect":
            stages[e["stage"]] = stages.get(e["stage"], 0.0) + e["cpu"]
            peaks[e["stage"]] = max(peaks.get(e["stage"], 0.0), e.get("peak_mb", 0.0))
    per_photo = {stage: round(cpu / photos, 3) for stage, cpu in sorted(stages.items())}
    return {"busy_share": round(share, 3), "busy_share_all": round(share_all, 3), "warmup_calls": warmup,
            "protect_calls": len(spans),
            "protect_busy_s": round(busy, 1), "protect_phase_s": round(phase, 1),
            "cpu_s_per_photo": per_photo, "cpu_s_per_photo_total": round(sum(per_photo.values()), 3),
            "peak_mb_per_call": {stage: round(mb, 1) for stage, mb in sorted(peaks.items())}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=16)
    parser.add_argument("--megapixels", type=float, default=12.0)
    parser.add_argument("--accelerator-seconds", type=float, default=4.0, help="the protect step's wait per photo")
    parser.add_argument("--actors", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=0,
                        help="first protections left out of the phase (default 0: the whole run)")
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs of the local Ray instance")
    parser.add_argument("--cpus-per-actor", type=float, default=0.5)
    parser.add_argument("--s3", action="store_true", help="read and write through a moto S3 server on loopback")
    parser.add_argument("--json", default=None, metavar="OUT.json")
    args = parser.parse_args(argv)

    import ray

    from danp_pipeline.config import AttackConfig, PipelineConfig
    from danp_pipeline.job import pipeline

    work = Path(tempfile.mkdtemp(prefix="danp-accel-"))
    make_photos(work / "in", args.photos, args.megapixels)
    log_path = work / "stages.jsonl"
    os.environ[LOG_ENV], os.environ[WAIT_ENV] = str(log_path), str(args.accelerator_seconds)
    input_uri, output_uri, options = str(work / "in"), str(work / "out"), {}
    if args.s3:
        input_uri, output_uri, options = s3_archive(work / "in")
    for name, value in pipeline.SLOW_START_ENV.items():
        os.environ.setdefault(name, value)
    ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="WARNING",
             runtime_env={"worker_process_setup_hook": setup_worker})
    cfg = PipelineConfig(input_uri=input_uri, output_uri=output_uri, model="tiny-ip2p", storage_options=options,
                         actors=args.actors, cpus_per_actor=args.cpus_per_actor, gpus_per_actor=0,
                         attack=AttackConfig(resolution=64, steps=1, num_timesteps=1))
    clock = time.perf_counter()
    summary = pipeline.run(cfg)
    wall = time.perf_counter() - clock
    ray.shutdown()
    result = {"photos": args.photos, "megapixels": args.megapixels, "accelerator_seconds": args.accelerator_seconds,
              "actors": args.actors, "cpus": args.cpus, "storage": "s3 (moto)" if args.s3 else "local disk",
              "ok": summary.ok, "errors": summary.errors, "run_wall_s": round(wall, 1),
              **summarize(log_path, args.photos, args.actors, args.warmup)}
    text = json.dumps(result, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    sys.stdout.write(text + f"\nbusy_share={result['busy_share']}\n")
    return 0 if summary.ok == args.photos else 1


def s3_archive(photos: Path) -> tuple[str, str, dict]:
    """Upload the photos to a moto S3 server on 127.0.0.1 (stopped at exit); INPUT, OUTPUT, options."""
    import atexit
    import socket

    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    atexit.register(server.stop)
    endpoint, key, secret = f"http://127.0.0.1:{port}", "bench", "bench-secret"
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key, aws_secret_access_key=secret,
                          region_name="us-east-1")
    client.create_bucket(Bucket="bench")
    for path in sorted(photos.iterdir()):
        client.put_object(Bucket="bench", Key=f"in/{path.name}", Body=path.read_bytes())
    options = {"endpoint_url": endpoint, "key": key, "secret": secret, "client_kwargs": {"region_name": "us-east-1"}}
    return "s3://bench/in", "s3://bench/out", options


if __name__ == "__main__":
    sys.exit(main())
