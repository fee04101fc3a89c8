"""Each QC term's AUC on patients the network never saw: ``python -m models.heldout``.

The card's calibration is fitted on the validation data, where the shipped model's failures come from
a few patients, so a term can look better there than it is. A candidate term passes this check before a
card may weigh it: a network of the companion's recipe (one 40-epoch cycle, seed 1) is trained without
:data:`HELD_OUT`, 22 of the training patients, and those patients are measured under the evaluation's
shifts (:data:`models.evaluate.SHIFTS`) with every test-time augmentation on; for each term, the AUC
of "EDV or ESV off by more than 15 %" is printed (the term in the direction it may move the confidence,
:data:`models.evaluate.TERM_DIRECTIONS`).

``python -m models.heldout train`` trains into ``models/runs/heldout`` (about 40 minutes on 2 cores;
``--resume`` and the other options of ``models.train`` pass through), ``python -m models.heldout
evaluate`` exports its best checkpoint to a scratch folder and measures (about 4 minutes).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import asdict
from pathlib import Path

from export.__main__ import export_checked
from models.data import data_root
from models.evaluate import SHIFTS, TERM_DIRECTIONS, Case, acdc_case, auc
from models.train import RUNS
from models.train import main as train_main
from node.inference.card import sha256_of
from node.inference.qc import CALIBRATION_TERMS
from node.inference.registry import DEFAULT_MODEL_DIR, ReleasedModel, find_model
from node.inference.runner import CPU, Segmenter
from node.pipeline.measure import StackMeasurer

#: A fifth of the 110 training patients (models.data.split_patients), drawn with seed 2026 on
#: 2026-12-04 and kept as drawn.
HELD_OUT = (
    "patient006", "patient029", "patient030", "patient045", "patient046", "patient047", "patient051",
    "patient069", "patient079", "patient082", "patient091", "patient094", "patient097", "patient099",
    "patient102", "patient105", "patient110", "patient114", "patient119", "patient130", "patient132",
    "patient141",
)  # fmt: skip
RUN = RUNS / "heldout"
RECIPE = ["--epochs", "40", "--steps", "120", "--seed", "1", "--out", str(RUN)]


def train(extra: list[str]) -> None:
    """The companion's recipe without :data:`HELD_OUT`."""
    train_main([*RECIPE, *(f"--without={patient}" for patient in HELD_OUT), *extra])


def measured(checkpoint: Path) -> list[Case]:
    """:data:`HELD_OUT` under every shift, measured by ``checkpoint`` as the node measures (exported,
    on ONNX Runtime), with the shipped card's input and output and no companion."""
    root = data_root()
    template = find_model(DEFAULT_MODEL_DIR, "lvseg-unet").card
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        onnx_path = folder / "heldout.onnx"
        trained, _ = export_checked(checkpoint, onnx_path, root)
        if sorted(trained.get("without", [])) != sorted(HELD_OUT):
            raise SystemExit(f"{checkpoint} was not trained without HELD_OUT (models.heldout train)")
        identity = {"version": "0.0.0-heldout", "file": onnx_path.name, "sha256": sha256_of(onnx_path)}
        card = template.model_copy(update={**identity, "companion": None})
        segmenter = Segmenter(ReleasedModel(card=card, path=onnx_path), providers=[CPU])
        measurer = StackMeasurer(segmenter, augment=True)
        return [acdc_case(measurer, root, patient, shift)[0] for patient in HELD_OUT for shift in SHIFTS]


def term_aucs(cases: list[Case]) -> dict[str, float]:
    """Each term's AUC for the off results, scored in the direction the term may lower the
    confidence; terms without a direction (the ejection fraction) or not measured are left out."""
    off = [case.off for case in cases]
    terms = [case.features.terms() for case in cases]
    found = {}
    for name in CALIBRATION_TERMS:
        if name not in TERM_DIRECTIONS or any(name not in measured for measured in terms):
            continue
        found[name] = auc([-TERM_DIRECTIONS[name] * measured[name] for measured in terms], off)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("step", choices=("train", "evaluate"))
    parser.add_argument("--checkpoint", type=Path, default=RUN / "best.pt")
    parser.add_argument("--json", type=Path, help="evaluate: also write every case here")
    args, extra = parser.parse_known_args()
    if args.step == "train":
        train(extra)
        return
    if extra:
        parser.error(f"unrecognised arguments: {' '.join(extra)}")
    cases = measured(args.checkpoint)
    off = sum(case.off for case in cases)
    print(f"{len(cases)} results of {len(HELD_OUT)} held-out patients, {off} off by more than 15 %")
    for name, value in term_aucs(cases).items():
        print(f"AUC {name}: {value:.3f}")
    if args.json:
        rows = [{**asdict(case), "off": case.off, "terms": case.features.terms()} for case in cases]
        args.json.write_text(json.dumps(rows, indent=1, default=float))


if __name__ == "__main__":
    main()
