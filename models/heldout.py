"""QC terms judged on patients the network never saw: ``python -m models.heldout``.

The card's calibration is fitted on the validation data, where the shipped model's failures come from
a few patients, so a term can look better there than it is. A candidate term passes this check before a
card may weigh it: for each fold of :data:`FOLDS` (22 of the training patients each), a network of the
companion's recipe (one 40-epoch cycle, seed 1) is trained without the fold, and the fold's patients
are measured under the evaluation's shifts (:data:`models.evaluate.SHIFTS`) with every test-time
augmentation on; for each term, the AUC of "EDV or ESV off by more than 15 %" is printed (the term in
the direction it may move the confidence, :data:`models.evaluate.TERM_DIRECTIONS`).

``python -m models.heldout train --fold N`` trains into ``models/runs/heldout`` (fold 0) or
``models/runs/heldout-N`` (about 40 minutes on 2 cores; ``--resume`` and the other options of
``models.train`` pass through); ``python -m models.heldout evaluate --fold N`` exports the fold's best
checkpoint to a scratch folder, measures (about 4 minutes) and writes the results beside it;
``python -m models.heldout compare`` pools the folds (or takes one: ``--fold N``) and prints how
calibrations over candidate term sets do there, each patient judged by a fit without it (AUC, and the
share of off and of good results ``check`` at the level that marks every off result of the others).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import asdict
from pathlib import Path

from export.__main__ import export_checked
from models.data import data_root
from models.evaluate import (
    SHIFTS,
    TERM_DIRECTIONS,
    Case,
    HeldOut,
    acdc_case,
    auc,
    chosen_terms,
    held_out_figures,
)
from models.train import RUNS
from models.train import main as train_main
from node.inference.card import sha256_of
from node.inference.qc import CALIBRATION_TERMS, QcFeatures
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
#: 22 more of the training patients, none of :data:`HELD_OUT`: drawn on 2026-12-04 by
#: ``numpy.random.default_rng(2027).choice`` from the other 88, and kept as drawn.
SECOND_FOLD = (
    "patient003", "patient012", "patient015", "patient017", "patient019", "patient037", "patient040",
    "patient044", "patient060", "patient062", "patient072", "patient074", "patient088", "patient092",
    "patient095", "patient096", "patient103", "patient116", "patient123", "patient135", "patient143",
    "patient150",
)  # fmt: skip
#: The folds, by number: each is left out of one network's training and measured by it.
FOLDS = (HELD_OUT, SECOND_FOLD)
RECIPE = ["--epochs", "40", "--steps", "120", "--seed", "1"]


def run_folder(fold: int) -> Path:
    """Where fold ``fold``'s network trains (fold 0 where the single fold trained before)."""
    return RUNS / ("heldout" if fold == 0 else f"heldout-{fold}")


def train(extra: list[str], fold: int = 0) -> None:
    """The companion's recipe without the patients of fold ``fold`` (:data:`FOLDS`)."""
    left_out = (f"--without={patient}" for patient in FOLDS[fold])
    train_main([*RECIPE, "--out", str(run_folder(fold)), *left_out, *extra])


def measured(checkpoint: Path, fold: int = 0) -> list[Case]:
    """The patients of fold ``fold`` under every shift, measured by ``checkpoint`` (trained without
    them) as the node measures (exported, on ONNX Runtime), with the shipped card's input and output
    and no companion."""
    patients = FOLDS[fold]
    root = data_root()
    template = find_model(DEFAULT_MODEL_DIR, "lvseg-unet").card
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        onnx_path = folder / "heldout.onnx"
        trained, _ = export_checked(checkpoint, onnx_path, root)
        if sorted(trained.get("without", [])) != sorted(patients):
            raise SystemExit(f"{checkpoint} was not trained without fold {fold} (models.heldout train)")
        identity = {"version": "0.0.0-heldout", "file": onnx_path.name, "sha256": sha256_of(onnx_path)}
        card = template.model_copy(update={**identity, "companion": None})
        segmenter = Segmenter(ReleasedModel(card=card, path=onnx_path), providers=[CPU])
        measurer = StackMeasurer(segmenter, augment=True)
        return [acdc_case(measurer, root, patient, shift)[0] for patient in patients for shift in SHIFTS]


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


def cases_path(fold: int) -> Path:
    """Where ``evaluate`` writes fold ``fold``'s results, which ``compare`` reads."""
    return run_folder(fold) / "cases.json"


def write_cases(path: Path, cases: list[Case], checkpoint_sha256: str) -> None:
    """Write ``cases`` (with whether each is off, and its terms), measured by the checkpoint of that
    sha256, for :func:`load_cases`."""
    rows = [{**asdict(case), "off": case.off, "terms": case.features.terms()} for case in cases]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps({"checkpoint_sha256": checkpoint_sha256, "results": rows}, indent=1, default=float)
    )


def load_cases(path: Path) -> tuple[list[Case], str]:
    """The results ``evaluate`` wrote to ``path``, and the sha256 of the checkpoint that measured them."""
    written = json.loads(path.read_text())
    found = []
    for row in written["results"]:
        fields = {k: v for k, v in row.items() if k not in ("off", "terms", "features", "flags")}
        found.append(Case(**fields, flags=tuple(row["flags"]), features=QcFeatures(**row["features"])))
    return found, written["checkpoint_sha256"]


def fold_cases(fold: int) -> list[Case]:
    """Fold ``fold``'s results, as ``evaluate`` wrote them from the fold's ``best.pt``.

    Raises
    ------
    SystemExit
        The fold was not measured, or its results come from another checkpoint than its ``best.pt``
        (trained again since, or measured with ``--checkpoint``).
    """
    path, checkpoint = cases_path(fold), run_folder(fold) / "best.pt"
    if not path.exists() or not checkpoint.exists():
        raise SystemExit(
            f"fold {fold} not trained and measured (python -m models.heldout train, evaluate --fold {fold})"
        )
    cases, measured_by = load_cases(path)
    if measured_by != sha256_of(checkpoint):
        raise SystemExit(
            f"{path} was measured by another checkpoint than {checkpoint}: evaluate --fold {fold} again"
        )
    return cases


#: Term sets ``compare`` scores besides each term alone and the forward selection's choice.
COMPARED_SETS = (("log_uncertain", "log_disagreement"),)


def compare(cases: list[Case]) -> list[tuple[str, HeldOut]]:
    """How calibrations over candidate term sets do on these patients, each patient left out of the
    fit that judges it (:func:`models.evaluate.held_out_figures`): each term alone (of those with a
    direction and measured), :data:`COMPARED_SETS`, and the terms the forward selection of
    ``models.evaluate --fit`` picks (:func:`models.evaluate.chosen_terms`)."""
    sets: list[tuple[str, ...]] = [(name,) for name in term_aucs(cases)]
    sets += [names for names in COMPARED_SETS if names not in sets]
    labels = [" + ".join(names) for names in sets]
    chosen = tuple(chosen_terms(cases))
    if chosen:
        sets.append(chosen)
        labels.append("forward selection: " + " + ".join(chosen))
    return [(label, held_out_figures(cases, list(names))) for label, names in zip(labels, sets, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("step", choices=("train", "evaluate", "compare"))
    folds_help = "train, evaluate (default 0); compare: this fold only (default: every fold)"
    parser.add_argument("--fold", type=int, choices=range(len(FOLDS)), help=folds_help)
    parser.add_argument("--checkpoint", type=Path, help="evaluate (default: the fold's best.pt)")
    args, extra = parser.parse_known_args()
    fold = 0 if args.fold is None else args.fold
    if args.step == "train":
        train(extra, fold)
        return
    if extra:
        parser.error(f"unrecognised arguments: {' '.join(extra)}")
    if args.step == "compare":
        folds = range(len(FOLDS)) if args.fold is None else [args.fold]
        cases = [case for each in folds for case in fold_cases(each)]
        patients = len({case.case for case in cases})
        off = sum(case.off for case in cases)
        print(
            f"{len(cases)} results of {patients} patients ({len(folds)} folds), {off} off by more than 15 %"
        )
        print(
            "term set: AUC (leave-patient-pair-out); off results check, others check (leave-one-patient-out)"
        )
        for label, held in compare(cases):
            print(f"  {label}: {held.auc:.3f}; {held.off_checked:.0%}, {held.good_checked:.0%}")
        return
    checkpoint = args.checkpoint or run_folder(fold) / "best.pt"
    cases = measured(checkpoint, fold)
    off = sum(case.off for case in cases)
    print(f"{len(cases)} results of {len(FOLDS[fold])} held-out patients, {off} off by more than 15 %")
    for name, value in term_aucs(cases).items():
        print(f"AUC {name}: {value:.3f}")
    write_cases(cases_path(fold), cases, sha256_of(checkpoint))
    print(f"results written to {cases_path(fold)}")


if __name__ == "__main__":
    main()
