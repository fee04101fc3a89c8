"""Benchmark the measurement pipeline on one 240-frame Sunnybrook series (prints figures, asserts nothing).

Usage: ``python tests/benchmarks/measure_benchmark.py [--threads N] [--repeat 5]``

Prints, for SCD0000101 (12 slices x 20 phases): wall time of ``dicomnode measure`` end to end (a
fresh process: start-up, model load, reading, inference, QC), the inference step alone (ONNX Runtime
as the node runs it: the model alone on the 240 frames, then the pair on the ED and ES phases'
frames, again where the pair moves them; preprocessing and resampling back included; and the pair
on every frame, for comparison),
frames/s, and peak RSS of the ``dicomnode measure`` process, and the measure step in-process with
the model's companion network and without it (its cost). Targets: < 5 s end to end, < 2 s inference
on 2 CPU cores. The node's settings are used throughout (by default the two-pass heart window); for
comparison the inference step is also timed on the whole grid
(``DICOMNODE_INFERENCE__HEART_WINDOW_MARGIN=0``).
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
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SERIES = REPO.parent / "shared" / "data" / "sunnybrook" / "SCD0000101"


def end_to_end(threads: int) -> tuple[float, float]:
    """Seconds and peak RSS (MiB) of one ``dicomnode measure --json`` run in a child process."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("DICOMNODE_")}
    env["DICOMNODE_INFERENCE__INTRA_OP_THREADS"] = str(threads)
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


def inference_only(
    threads: int, repeat: int, heart_margin: int, compare: bool = True
) -> tuple[dict[str, list[float]], str]:
    """Seconds of the series' segmentation after one warm-up (margin 0: whole grid): ``node``, the
    segmentation calls of one ``StackMeasurer.measure`` (the model alone on the 240 frames, then the
    pair on the ED and ES phases' frames, again where the pair moves ED or ES), timed around each
    call; with ``compare``, ``pair``: the pair on every frame (normalised frames, as the node's)."""
    from node.config import InferenceSettings
    from node.inference.preprocess import normalise
    from node.inference.runner import Segmentation, load_segmenter
    from node.pipeline.measure import StackMeasurer
    from node.pipeline.offline import collect
    from node.pipeline.pixels import load_pixels
    from node.pipeline.stacks import find_sax_stacks

    # The node's own loader, so the benchmark runs what ``dicomnode measure`` and ``serve`` run.
    settings = InferenceSettings(intra_op_threads=threads, heart_window_margin=heart_margin)
    segmenter = load_segmenter(settings)
    measurer = StackMeasurer(segmenter, settings.basal_rule)
    (plan,) = find_sax_stacks(collect([SERIES], [])).stacks
    stored = load_pixels(plan, Path("/")).frames.reshape(-1, plan.rows, plan.columns)
    frames = normalise(stored, segmenter.card.input.normalisation)
    segment = segmenter.segment
    spent: list[float] = []

    def timed(*args: Any, **kwargs: Any) -> Segmentation:
        started = time.perf_counter()
        try:
            return segment(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - started)

    segmenter.segment = timed  # type: ignore[method-assign]
    measurer.measure(plan, Path("/"))  # warm-up
    timings: dict[str, list[float]] = {"node": [], "pair": []}
    for _ in range(repeat):
        spent.clear()
        measurer.measure(plan, Path("/"))
        timings["node"].append(sum(spent))
        if compare:
            started = time.perf_counter()
            segment(frames, plan.pixel_spacing, normalised=True)
            timings["pair"].append(time.perf_counter() - started)
    plan_text = (
        f"{segmenter.threading.parallel_batches} batch(es) of {segmenter.batch_size} frames at once, "
        f"{segmenter.threading.intra_op_threads or 'ORT-chosen'} thread(s) each; the node's measure "
        f"segments {len(spent)} times"
    )
    return timings, plan_text


def measure_step(threads: int, repeat: int) -> tuple[list[float], list[float]]:
    """Seconds of ``StackMeasurer.measure`` (reading, inference, volumes, QC) on the series, with the
    model's companion and without it (its cost: the pair on the ED and ES frames)."""
    from node.config import InferenceSettings
    from node.inference.runner import load_segmenter
    from node.pipeline.measure import StackMeasurer
    from node.pipeline.offline import collect
    from node.pipeline.stacks import find_sax_stacks

    settings = InferenceSettings(intra_op_threads=threads)
    measurer = StackMeasurer(load_segmenter(settings), settings.basal_rule)
    (plan,) = find_sax_stacks(collect([SERIES], [])).stacks
    measurer.measure(plan, Path("/"))
    companion = measurer.segmenter.companion
    found: list[list[float]] = []
    for with_companion in (True, False):
        measurer.segmenter.companion = companion if with_companion else None
        timings = []
        for _ in range(repeat):
            started = time.perf_counter()
            measurer.measure(plan, Path("/"))
            timings.append(time.perf_counter() - started)
        found.append(timings)
    measurer.segmenter.companion = companion
    return found[0], found[1]


def _spread(values: list[float]) -> str:
    return f"median of {len(values)}, range {min(values):.2f}-{max(values):.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: the node's default)"
    )
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if not SERIES.is_dir():
        raise SystemExit(f"{SERIES} is absent")
    frames = 240
    runs = [end_to_end(args.threads) for _ in range(args.repeat)]
    walls = [seconds for seconds, _ in runs]
    peak = max(rss for _, rss in runs)
    from node.config import HEART_WINDOW_MARGIN

    found, threading = inference_only(args.threads, args.repeat, HEART_WINDOW_MARGIN)
    timings, everywhere = found["node"], found["pair"]
    inference = statistics.median(timings)
    load = os.getloadavg()[0]
    print(f"series: SCD0000101, {frames} frames, {os.cpu_count()} CPUs, load average {load:.2f}")
    print(f"inference threading: {threading}; heart window margin {HEART_WINDOW_MARGIN} model pixels")
    print(f"dicomnode measure end to end: {statistics.median(walls):.2f} s (target < 5 s; {_spread(walls)})")
    print(
        f"inference step alone:         {inference:.2f} s (target < 2 s; {_spread(timings)}), "
        f"{frames / inference:.0f} frames/s: the model alone on every frame, the pair on ED and ES"
    )
    print(f"the pair on every frame:      {statistics.median(everywhere):.2f} s ({_spread(everywhere)})")
    print(f"peak RSS of dicomnode measure: {peak:.0f} MiB")
    paired, alone = measure_step(args.threads, args.repeat)
    print(
        f"measure step (inference, volumes, QC): {statistics.median(paired):.2f} s with the companion "
        f"(the pair), {statistics.median(alone):.2f} s with the network alone "
        f"({_spread(paired)}; {_spread(alone)})"
    )
    whole_found, _ = inference_only(args.threads, args.repeat, 0, compare=False)
    whole_timings = whole_found["node"]
    whole = statistics.median(whole_timings)
    print(f"inference, whole grid:        {whole:.2f} s (HEART_WINDOW_MARGIN=0; {_spread(whole_timings)})")


if __name__ == "__main__":
    main()
