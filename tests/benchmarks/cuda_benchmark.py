"""The node's inference on CUDA against its own CPU labels, and both timed (prints figures, asserts nothing).

Usage: ``python tests/benchmarks/cuda_benchmark.py [SERIES] [--repeat 5] [--json OUT]``

Needs onnxruntime-gpu and a GPU it can use; without them it says so and exits with status 2. On one
series (by default Sunnybrook SCD0000101, 12 slices x 20 phases), with the node's own settings
(the shipped model and its companion, the two-pass heart window):

- parity: ``StackMeasurer.measure`` once on ``[CPUExecutionProvider]`` and once on
  ``[CUDAExecutionProvider, CPUExecutionProvider]``; every segmentation call's labels compared pixel by
  pixel, the measured label volume too, and the result's volumes, phases, QC status and confidence;
  every network batch the CUDA run fed is run again on CPU, and the largest logit difference printed;
- speed: per provider, the inference step of one measure (the segmentation calls, as
  ``measure_benchmark.py`` times them), the whole measure step, and the pair on every frame, each the
  median of ``--repeat`` runs after one warm-up; on CUDA also with larger batches.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parents[2]
SERIES = REPO.parent / "shared" / "data" / "sunnybrook" / "SCD0000101"
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


class Recorded:
    """One measure's segmentation calls and network batches, recorded around a segmenter."""

    def __init__(self, segmenter: Any, keep_batches: bool) -> None:
        self.labels: list[npt.NDArray[np.uint8]] = []
        self.batches: list[tuple[npt.NDArray[np.float32], bool, npt.NDArray[np.float32]]] = []
        self.seconds: list[float] = []
        segment, logits = segmenter.segment, segmenter.logits

        def timed_segment(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                found = segment(*args, **kwargs)
            finally:
                self.seconds.append(time.perf_counter() - started)
            self.labels.append(found.labels.copy())
            return found

        def kept_logits(batch: npt.NDArray[np.float32], alone: bool = False) -> npt.NDArray[np.float32]:
            out = logits(batch, alone)
            if keep_batches:
                self.batches.append((batch.copy(), alone, out.copy()))
            return out

        segmenter.segment = timed_segment
        segmenter.logits = kept_logits

    def clear(self) -> None:
        self.labels.clear()
        self.batches.clear()
        self.seconds.clear()


def _load(providers: list[str], batch_size: int, parallel_batches: int = 0) -> Any:
    from node.config import InferenceSettings
    from node.inference.runner import load_segmenter

    settings = InferenceSettings(
        providers=providers, batch_size=batch_size, parallel_batches=parallel_batches
    )
    return load_segmenter(settings), settings


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} s (median of {len(values)}, {min(values):.3f}-{max(values):.3f})"


def timings(providers: list[str], batch_size: int, parallel: int, plan: Any, repeat: int) -> dict[str, Any]:
    """Inference step, measure step and the pair on every frame, after one warm-up."""
    from node.inference.preprocess import normalise
    from node.pipeline.measure import StackMeasurer
    from node.pipeline.pixels import load_pixels

    started = time.perf_counter()
    segmenter, settings = _load(providers, batch_size, parallel)
    loaded = time.perf_counter() - started
    measurer = StackMeasurer(segmenter, settings.basal_rule)
    recorded = Recorded(segmenter, keep_batches=False)
    measurer.measure(plan, Path("/"))  # warm-up (CUDA: kernels chosen, memory arena grown)
    inference, step, pair = [], [], []
    stored = load_pixels(plan, Path("/")).frames.reshape(-1, plan.rows, plan.columns)
    frames = normalise(stored, segmenter.card.input.normalisation)
    for _ in range(repeat):
        recorded.clear()
        started = time.perf_counter()
        measurer.measure(plan, Path("/"))
        step.append(time.perf_counter() - started)
        inference.append(sum(recorded.seconds))
        started = time.perf_counter()
        segmenter.segment(frames, plan.pixel_spacing, normalised=True)
        pair.append(time.perf_counter() - started)
    return {
        "providers": segmenter.providers,
        "batch_size": batch_size,
        "parallel_batches": segmenter.threading.parallel_batches,
        "intra_op_threads": segmenter.threading.intra_op_threads,
        "session_load_s": loaded,
        "inference_s": inference,
        "measure_step_s": step,
        "pair_every_frame_s": pair,
        "frames": int(frames.shape[0]),
    }


def parity(plan: Any) -> dict[str, Any]:
    """The CUDA run's labels, volumes and logits (each network's) against the CPU run's."""
    from node.pipeline.measure import StackMeasurer

    runs = {}
    for name, providers in (("cpu", [CPU]), ("cuda", [CUDA, CPU])):
        segmenter, settings = _load(providers, 8)
        recorded = Recorded(segmenter, keep_batches=name == "cuda")
        # The companion's own batches too (the pair runs each network on its own session).
        networks = [(segmenter, recorded)]
        if name == "cuda" and segmenter.companion is not None:
            networks.append((segmenter.companion, Recorded(segmenter.companion, keep_batches=True)))
        measured = StackMeasurer(segmenter, settings.basal_rule).measure(plan, Path("/"))
        runs[name] = (segmenter, recorded, measured, networks)
    cpu_segmenter, cpu, cpu_measured, _ = runs["cpu"]
    _, cuda, cuda_measured, cuda_networks = runs["cuda"]
    calls = [
        {
            "frames": int(a.shape[0]),
            "pixels": int(a.size),
            "differing_pixels": int((a != b).sum()) if a.shape == b.shape else None,
        }
        for a, b in zip(cpu.labels, cuda.labels, strict=False)
    ]
    worst, argmax_differing, model_pixels, batches = 0.0, 0, 0, 0
    cpu_networks = [cpu_segmenter, cpu_segmenter.companion]
    for (_, network), reference_network in zip(cuda_networks, cpu_networks, strict=False):
        for batch, alone, out in network.batches:
            reference = reference_network.logits(batch, alone)
            worst = max(worst, float(np.abs(reference - out).max()))
            argmax_differing += int((reference.argmax(axis=1) != out.argmax(axis=1)).sum())
            model_pixels += int(out.size // out.shape[1])
            batches += 1
    a, b = cpu_measured.result, cuda_measured.result
    fields = ("edv_ml", "esv_ml", "ef_pct", "sv_ml", "lv_mass_g", "confidence")
    return {
        "segmentation_calls": {"cpu": len(cpu.labels), "cuda": len(cuda.labels)},
        "calls": calls,
        "measured_labels_differing": int((cpu_measured.labels != cuda_measured.labels).sum()),
        "measured_labels_pixels": int(cpu_measured.labels.size),
        "network_batches": batches,
        "max_abs_logit_difference": worst,
        "argmax_differing_model_pixels": argmax_differing,
        "model_pixels": model_pixels,
        "result": {field: {"cpu": getattr(a, field), "cuda": getattr(b, field)} for field in fields}
        | {
            "ed_phase": {"cpu": a.ed_phase, "cuda": b.ed_phase},
            "es_phase": {"cpu": a.es_phase, "cuda": b.es_phase},
            "qc_status": {"cpu": str(a.qc_status), "cuda": str(b.qc_status)},
            "qc_flags": {"cpu": [str(f) for f in a.qc_flags], "cuda": [str(f) for f in b.qc_flags]},
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("series", type=Path, nargs="?", default=SERIES)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    import onnxruntime as ort

    from node.pipeline.offline import collect
    from node.pipeline.stacks import find_sax_stacks

    print(f"onnxruntime {ort.__version__}, device {ort.get_device()}, offers {ort.get_available_providers()}")
    if CUDA not in ort.get_available_providers():
        print("this onnxruntime offers no CUDA provider (install onnxruntime-gpu)")
        sys.exit(2)
    if not args.series.is_dir():
        raise SystemExit(f"{args.series} is absent")
    (plan,) = find_sax_stacks(collect([args.series], [])).stacks
    probe, _ = _load([CUDA, CPU], 8)
    if probe.providers[0] != CUDA:
        print(f"CUDA provider could not start (the session runs on {probe.providers}); see the log above")
        sys.exit(2)
    del probe
    found: dict[str, Any] = {"onnxruntime": ort.__version__, "series": args.series.name}
    found["parity"] = checked = parity(plan)
    pixels = sum(call["pixels"] for call in checked["calls"] if call["differing_pixels"] is not None)
    differing = sum(call["differing_pixels"] or 0 for call in checked["calls"])
    unlike = sum(call["differing_pixels"] is None for call in checked["calls"])
    if unlike or checked["segmentation_calls"]["cpu"] != checked["segmentation_calls"]["cuda"]:
        print(f"the runs segmented differently: {unlike} call(s) on frames of another shape")
    print(f"segmentation calls per measure: {checked['segmentation_calls']}")
    print(
        f"labels, every call: {differing} of {pixels} pixels differ ({100 * differing / pixels:.4f} %); "
        f"measured label volume: {checked['measured_labels_differing']} of "
        f"{checked['measured_labels_pixels']} differ"
    )
    print(
        f"logits: {checked['network_batches']} CUDA batches run again on CPU, largest difference "
        f"{checked['max_abs_logit_difference']:.2e}; model-grid pixels whose class differs "
        f"{checked['argmax_differing_model_pixels']} of {checked['model_pixels']}"
    )
    for field, pair in checked["result"].items():
        print(f"  {field:>11}: CPU {pair['cpu']}  CUDA {pair['cuda']}")
    found["timings"] = []
    # (providers, batch size, batches at once: 0 the node's default)
    cuda = [CUDA, CPU]
    runs = (([CPU], 8, 0), (cuda, 8, 1), (cuda, 8, 0), (cuda, 32, 0), (cuda, 32, 1))
    for providers, batch, parallel in runs:
        timed = timings(providers, batch, parallel, plan, args.repeat)
        found["timings"].append(timed)
        frames = timed["frames"]
        print(
            f"{timed['providers'][0]:<22} batch {batch:3d} x{timed['parallel_batches']:2d} at once "
            f"({timed['intra_op_threads']} thread(s) each): session load {timed['session_load_s']:.2f} s; "
            f"inference step {_median(timed['inference_s'])}; "
            f"measure step {_median(timed['measure_step_s'])}; "
            f"the pair on all {frames} frames {_median(timed['pair_every_frame_s'])}, "
            f"{frames / statistics.median(timed['pair_every_frame_s']):.0f} frames/s"
        )
    if args.json:
        args.json.write_text(json.dumps(found, indent=1, default=str))


if __name__ == "__main__":
    main()
