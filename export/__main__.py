"""Release the trained model: ``python -m export``.

Exports the best checkpoint to ONNX in a scratch folder, checks the graph, compares ONNX Runtime
with torch on real frames, evaluates the exported file, and only then writes
``models/<name>-<version>.onnx`` and its card ``models/<name>-<version>.json``.

Where the companion network has been trained (:data:`COMPANION_COMMAND`), it is exported and checked
the same way, released beside the model as ``<name>-<version>-companion.onnx`` and named in the card
(``companion``) before the evaluation measures with the pair and fits the calibration.
``--keep-model`` releases only the companion for a model already released: the model file and its
card's other sections stay.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from export.card import (
    ACDC_CITATION,
    ARCHITECTURE_NOTE,
    SUNNYBROOK_CITATION,
    build_card,
    write_card,
)
from export.onnx_export import check_graph, export_onnx
from export.parity import MAX_ABS_LOGIT_DIFF, MIN_ARGMAX_AGREEMENT, Parity, check_parity
from models.augment import __doc__ as AUGMENTATION
from models.data import (
    SPLIT_SEED,
    VALIDATION_PER_GROUP,
    acdc_patients,
    data_root,
    load_acdc,
    load_sunnybrook,
    split_patients,
)
from models.network import UNet
from models.spec import CHANNELS, INPUT, MODEL_NAME, MODEL_VERSION, OUTPUT, artifact_stem
from models.train import CROP_FIELDS_MM, CROP_SIZES, RUNS
from node.inference.card import InputSpec, sha256_of
from node.inference.preprocess import normalise, plan_geometry, to_model_grid
from node.inference.registry import ReleasedModel, companion_card, find_model

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
TRAIN_COMMAND = "python -m models.train --epochs 56 --restart 40 --steps 120 --seed 0"
EXPORT_COMMAND = "python -m export"


def parity_batches(root: Path, spec: InputSpec) -> list[npt.NDArray[np.float32]]:
    """Real frames on the model grid: a Sunnybrook mid-ventricular slice over the cycle and ACDC frames.

    Falls back to smooth synthetic frames when ``../shared/data`` is absent.
    """
    batches: list[npt.NDArray[np.float32]] = []
    sunnybrook = root / "sunnybrook" / "SCD0000101"
    if sunnybrook.is_dir():
        case = load_sunnybrook(root, "SCD0000101")
        frames = normalise(case.frames, spec.normalisation)[case.frames.shape[0] // 2]
        geometry = plan_geometry(frames.shape[1], frames.shape[2], case.pixel_spacing, spec)
        batches.append(to_model_grid(frames, geometry, spec.pad_value))
    patients = acdc_patients(root) if (root / "acdc-info.csv").is_file() else []
    if patients:
        _, validation = split_patients(root)
        case_acdc = load_acdc(root, validation[0], spec.normalisation)
        image = case_acdc.ed_image
        geometry = plan_geometry(image.shape[1], image.shape[2], case_acdc.pixel_spacing, spec)
        batches.append(to_model_grid(image, geometry, spec.pad_value))
    if not batches:
        grid = np.linspace(0, 4 * np.pi, 96, dtype=np.float32)
        smooth = (np.sin(grid)[:, None] * np.cos(grid)[None, :] + 1) / 2
        batches.append(np.stack([smooth, smooth.T, 1 - smooth])[:, None].astype(np.float32))
    return batches


COMPANION_SEED = 1
#: Where ``python -m models.train`` leaves the companion network's checkpoints (``--out``).
COMPANION_RUN = RUNS / f"{artifact_stem()}-companion"
COMPANION_COMMAND = (
    f"python -m models.train --epochs 40 --steps 120 --seed {COMPANION_SEED} "
    f"--out models/runs/{artifact_stem()}-companion"
)
#: Card sections the export writes from what it measures; the rest, with ``--keep-model``, are kept.
MEASURED_SECTIONS = ("qc_calibration", "companion", "metrics")


def export_checked(checkpoint_path: Path, onnx_path: Path, root: Path) -> tuple[dict[str, Any], Parity]:
    """Export a checkpoint to ONNX, check its graph and its parity with torch on real frames; the
    checkpoint (its epoch and metrics) and the parity found."""
    model = UNet(CHANNELS, len(OUTPUT.classes))
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    export_onnx(model, onnx_path, INPUT, OUTPUT)
    graph = check_graph(onnx_path, INPUT, OUTPUT)
    parity = check_parity(model, onnx_path, parity_batches(root, INPUT), INPUT.name)
    print(
        f"{onnx_path.name} parity on {parity.frames} frames: max |logit diff| "
        f"{parity.max_abs_logit_diff:.2e} (<= {MAX_ABS_LOGIT_DIFF:.0e}), argmax agreement "
        f"{parity.argmax_agreement:.5f} (>= {MIN_ARGMAX_AGREEMENT})"
    )
    parameters = sum(p.numel() for p in model.parameters())
    return {**checkpoint, "opset": graph["opset"], "parameters": parameters}, parity


def parity_section(parity: Parity) -> dict[str, Any]:
    """The card's record of a parity check."""
    return {
        "frames": parity.frames,
        "max_abs_logit_diff": parity.max_abs_logit_diff,
        "argmax_agreement": parity.argmax_agreement,
        "thresholds": {"max_abs_logit_diff": MAX_ABS_LOGIT_DIFF, "argmax_agreement": MIN_ARGMAX_AGREEMENT},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", type=Path, default=RUNS / artifact_stem() / "best.pt")
    parser.add_argument(
        "--companion",
        type=Path,
        default=COMPANION_RUN / "best.pt",
        help="the companion network's checkpoint (released when the file exists)",
    )
    parser.add_argument(
        "--keep-model",
        action="store_true",
        help="keep the released .onnx and its card; release (or replace) only the companion, "
        "evaluate again and rewrite the card's QC calibration and metrics",
    )
    parser.add_argument("--out-dir", type=Path, default=MODELS_DIR)
    parser.add_argument("--skip-evaluation", action="store_true", help="card without metrics (tests)")
    args = parser.parse_args(argv)

    stem = artifact_stem()
    root = data_root()
    with tempfile.TemporaryDirectory(prefix="dicomnode-export-") as scratch:
        if args.keep_model:
            if not args.companion.is_file():
                print(f"--keep-model releases a companion: {args.companion} is no file", file=sys.stderr)
                return 2
            released = find_model(args.out_dir, MODEL_NAME, MODEL_VERSION)
            onnx_path, digest = released.path, released.card.sha256
            kept = released.card.model_dump(mode="json")
            extra = {k: v for k, v in kept.items() if k not in {*IDENTITY, *MEASURED_SECTIONS}}
        else:
            onnx_path = Path(scratch) / f"{stem}.onnx"
            checkpoint, parity = export_checked(args.checkpoint, onnx_path, root)
            if not parity.passed:
                print("parity check failed; nothing released", file=sys.stderr)
                return 1
            digest = sha256_of(onnx_path)
            extra = model_sections(checkpoint, parity, root)
        companion_path = None
        if args.companion.is_file():
            companion_path = Path(scratch) / f"{stem}-companion.onnx"
            companion, parity = export_checked(args.companion, companion_path, root)
            if not parity.passed:
                print("the companion's parity check failed; nothing released", file=sys.stderr)
                return 1
            extra["companion"] = {
                "file": companion_path.name,
                "sha256": sha256_of(companion_path),
                "use": (
                    "a deep ensemble of two (Lakshminarayanan et al., NeurIPS 2017): the same network, "
                    "augmentation and data from another seed, trained for one 40-epoch cycle (the "
                    "model: 56 epochs and a 40-epoch restart); the node measures the ED and ES volumes "
                    "with the mean of the two networks' logits (averaged logits rather than the paper's "
                    "averaged probabilities) on the ED and ES phases, which the model alone finds on "
                    "every frame (under the every-phase basal rule, the pair segments every frame); "
                    "how far the companion alone lies from the pair on the ED and ES frames is offered "
                    "to the QC calibration as a term, which weighs it only where it tells off results "
                    "apart on patients held out (qc_calibration, metrics.qc_held_out)."
                ),
                "train": COMPANION_COMMAND,
                "best_epoch": int(companion.get("epoch", 0)),
                "validation_dice_at_best_epoch": companion.get("metrics", {}),
                "parity": parity_section(parity),
            }
            extra["commands"] = {**extra["commands"], "train_companion": COMPANION_COMMAND}
        identity = {
            "name": MODEL_NAME,
            "version": MODEL_VERSION,
            "file": f"{stem}.onnx",
            "sha256": digest,
            "spec": INPUT,
            "output": OUTPUT,
        }
        card = build_card(**identity, extra=extra)  # type: ignore[arg-type]
        if not args.skip_evaluation:
            from dataclasses import asdict

            from models.evaluate import print_report, run
            from node.inference.runner import Segmenter
            from node.pipeline.measure import StackMeasurer

            # The card names a companion exactly when one was exported above.
            paired = companion_card(card)
            model = ReleasedModel(
                card=card,
                path=onnx_path,
                companion=ReleasedModel(paired, companion_path) if paired and companion_path else None,
            )
            found = run(StackMeasurer(Segmenter(model), augment=True), root, fit=True)
            print_report(found)
            extra = {**extra, "qc_calibration": asdict(found.calibration), "metrics": found.card_metrics()}
            card = build_card(**identity, extra=extra)  # type: ignore[arg-type]
        args.out_dir.mkdir(parents=True, exist_ok=True)
        if not args.keep_model:
            shutil.copyfile(onnx_path, args.out_dir / f"{stem}.onnx")
        if companion_path is not None:
            shutil.copyfile(companion_path, args.out_dir / companion_path.name)
        write_card(card, args.out_dir / f"{stem}.json")
    print(f"released {args.out_dir / (stem + '.onnx')} sha256 {digest}")
    return 0


#: The card's fields that identify the model file and its interface (written by :func:`build_card`).
IDENTITY = ("name", "version", "file", "sha256", "input", "output")


def model_sections(checkpoint: dict[str, Any], parity: Parity, root: Path) -> dict[str, Any]:
    """The card's description of a newly exported model: provenance, data, training and parity."""
    held_out = len(split_patients(root)[1]) if (root / "acdc-info.csv").is_file() else 0
    return {
        "created": datetime.now(UTC).date().isoformat(),
        "framework": {"torch": torch.__version__, "onnx_opset": checkpoint["opset"]},
        "architecture": {
            "family": "U-Net",
            "channels": list(CHANNELS),
            "parameters": checkpoint["parameters"],
            "justification": ARCHITECTURE_NOTE,
        },
        "preprocessing": (
            "Normalise all frames of a stack together: (x - p_low) / (p_high - p_low) with the "
            "stack's percentiles, clipped to [clip_min, clip_max]; resample each frame linearly to "
            "spacing_mm; pad centred with pad_value to a multiple of size_multiple. Postprocessing: "
            "crop the padding, resample logits linearly to the original grid, softmax, argmax."
        ),
        "training_data": [
            {
                "name": (
                    "ACDC (Automated Cardiac Diagnosis Challenge, MICCAI 2017): the 100 training "
                    "and the 50 test patients the project holds (130 in all)"
                ),
                "use": (
                    f"training; patients split by a fixed seed ({SPLIT_SEED}), stratified by "
                    f"pathology group: {VALIDATION_PER_GROUP} validation patients per group "
                    f"({held_out} in all) held out for "
                    "checkpoint choice, the QC calibration and the metrics below"
                ),
                "citation": ACDC_CITATION,
                "licence": (
                    "Research use; published copies are CC BY-NC-SA 4.0. A model trained on it "
                    "carries those non-commercial, share-alike terms."
                ),
                "spacing_note": (
                    "Each patient at its real voxel spacing (acdc-info.csv: in-plane 0.70-1.95 mm, "
                    "slices 5-10 mm); scale augmentation 0.85-1.18 covers anatomy, not spacing."
                ),
            }
        ],
        "validation_data": [
            {
                "name": "Sunnybrook Cardiac Data, 3 heart-failure SAX cine series with expert contours",
                "use": "validation only, never training",
                "citation": SUNNYBROOK_CITATION,
                "licence": "CC0 1.0 (public domain)",
            }
        ],
        "licence": "Model weights: CC BY-NC-SA 4.0 terms inherited from ACDC (non-commercial research).",
        "intended_use": (
            "Decision support for LV volumes on short-axis cine MR. Every result must be verified "
            "by a radiologist; not a diagnosis."
        ),
        "training": {
            "best_epoch": int(checkpoint.get("epoch", 0)),
            "validation_dice_at_best_epoch": checkpoint.get("metrics", {}),
            "augmentation": " ".join((AUGMENTATION or "").split())
            + f" Crop sizes {min(CROP_SIZES)}-{max(CROP_SIZES)} pixels ({min(CROP_FIELDS_MM):.0f}-"
            f"{max(CROP_FIELDS_MM):.0f} mm).",
            "loss": "cross-entropy + soft Dice over foreground classes",
        },
        "parity": parity_section(parity),
        "commands": {
            "train": TRAIN_COMMAND,
            "export": EXPORT_COMMAND,
            "evaluate": "python -m models.evaluate",
        },
    }


if __name__ == "__main__":
    sys.exit(main())
