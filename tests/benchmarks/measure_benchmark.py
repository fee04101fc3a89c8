"""Benchmark the measurement pipeline on one 240-frame Sunnybrook series (prints figures, asserts nothing).

Usage: ``python tests/benchmarks/measure_benchmark.py [--threads 2] [--repeat 3]``

Prints, for SCD0000101 (12 slices x 20 phases): wall time of ``dicomnode measure`` end to end (a
fresh process: start-up, model load, reading, inference, QC), the inference step alone (ONNX Runtime
on the 240 frames, preprocessing and resampling back included), frames/s, and peak RSS of the
``dicomnode measure`` process. Targets: < 5 s end to end, < 2 s inference on 2 CPU cores. For
comparison it also times the inference step with the opt-in two-pass heart window
(``Segmenter(heart_margin=HEART_MARGIN)``), which the node does not use by default.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SERIES = REPO.parent / "shared" / "data" / "sunnybrook" / "SCD0000101"


def end_to_end(threads: int) -> tuple[float, float]:
    """Seconds and peak RSS (MiB) of one ``dicomnode measure --json`` run in a child process."""
    env = {**os.environ, "DICOMNODE_INFERENCE__INTRA_OP_THREADS": str(threads)}
    script = Path(sys.executable).parent / "dicomnode"
    started = time.perf_counter()
    completed = subprocess.run(
        [str(script), "measure", str(SERIES), "--json"], env=env, capture_output=True, check=False
    )
    elapsed = time.perf_counter() - started
    if completed.returncode != 0:
        raise SystemExit(completed.stderr.decode()[-2000:])
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return elapsed, peak_kib / 1024


def inference_only(threads: int, repeat: int, heart_margin: int | None = None) -> list[float]:
    """Seconds of ``Segmenter.segment`` over the 240 frames, after one warm-up."""
    from node.config import InferenceSettings
    from node.inference.registry import find_model
    from node.inference.runner import Segmenter
    from node.pipeline.offline import collect
    from node.pipeline.pixels import load_pixels
    from node.pipeline.stacks import find_sax_stacks

    settings = InferenceSettings(intra_op_threads=threads)
    model = find_model(settings.model_dir, settings.model_name, settings.model_version)
    segmenter = Segmenter(
        model,
        providers=settings.providers,
        intra_op_threads=threads,
        batch_size=settings.batch_size,
        heart_margin=heart_margin,
    )
    (plan,) = find_sax_stacks(collect([SERIES], [])).stacks
    pixels = load_pixels(plan, Path("/"))
    frames = pixels.frames.reshape(-1, plan.rows, plan.columns)
    segmenter.segment(frames[:8], plan.pixel_spacing)
    timings = []
    for _ in range(repeat):
        started = time.perf_counter()
        segmenter.segment(frames, plan.pixel_spacing)
        timings.append(time.perf_counter() - started)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not SERIES.is_dir():
        raise SystemExit(f"{SERIES} is absent")
    runs = [end_to_end(args.threads) for _ in range(args.repeat)]
    wall = statistics.median(seconds for seconds, _ in runs)
    peak = max(rss for _, rss in runs)
    inference = statistics.median(inference_only(args.threads, args.repeat))
    frames = 240
    print(f"series: SCD0000101, {frames} frames, {args.threads} intra-op threads, median of {args.repeat}")
    print(f"dicomnode measure end to end: {wall:.2f} s (target < 5 s)")
    rate = frames / inference
    print(f"inference step alone:         {inference:.2f} s (target < 2 s), {rate:.0f} frames/s")
    print(f"peak RSS of dicomnode measure: {peak:.0f} MiB")
    from node.inference.runner import HEART_MARGIN

    windowed = statistics.median(inference_only(args.threads, args.repeat, HEART_MARGIN))
    label = f"heart window, margin {HEART_MARGIN}:"
    print(f"inference, {label:20s} {windowed:.2f} s (opt-in), {frames / windowed:.0f} frames/s")


if __name__ == "__main__":
    main()
