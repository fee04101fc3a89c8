"""The held-out check of QC terms (``python -m models.heldout``): its training leaves each fold's
patients out, each term is scored in the direction it may move the confidence, and term sets are
compared on patients left out of the fit that judges them."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("torch", reason="models.train needs torch (the train extra)")

import torch

import models.heldout
import models.train
from models.data import split_patients
from models.evaluate import Case, _failed
from models.heldout import (
    FOLDS,
    RECIPE,
    cases_path,
    compare,
    fold_cases,
    load_cases,
    term_aucs,
    train,
    write_cases,
)
from node.inference.card import sha256_of
from node.inference.qc import QcFeatures


class _Stop(Exception):
    """Raised where training would start: the patients are chosen by then."""


def test_the_folds_are_disjoint_fifths_of_the_training_patients(shared_data: Path) -> None:
    train_ids, _ = split_patients(shared_data)
    assert [len(set(fold)) for fold in FOLDS] == [22, 22]
    assert set(FOLDS[0]).isdisjoint(FOLDS[1])
    assert set(FOLDS[0]) | set(FOLDS[1]) <= set(train_ids)


@pytest.mark.parametrize("fold", [0, 1])
def test_training_leaves_the_fold_out(shared_data: Path, monkeypatch: pytest.MonkeyPatch, fold: int) -> None:
    train_ids, validation = split_patients(shared_data)
    loaded: list[str] = []
    empty = np.zeros((0, 4, 4), np.float32)

    def load(root: Path, patient: str, spec: object) -> SimpleNamespace:
        loaded.append(patient)
        return SimpleNamespace(
            ed_image=empty, ed_label=empty, es_image=empty, es_label=empty, pixel_spacing=(1.0, 1.0)
        )

    def network(*args: object) -> None:
        raise _Stop

    monkeypatch.setenv("DICOMNODE_DATA_ROOT", str(shared_data))  # the folder split above
    monkeypatch.setattr(models.train, "load_acdc", load)
    monkeypatch.setattr(models.train, "UNet", network)
    threads = torch.get_num_threads()
    try:
        with pytest.raises(_Stop):
            train([], fold)
    finally:
        torch.set_num_threads(threads)  # models.train sets its own for the process
    assert sorted(loaded) == sorted([p for p in train_ids if p not in FOLDS[fold]] + validation)
    assert "--seed" in RECIPE and RECIPE[RECIPE.index("--epochs") + 1] == "40"
    with pytest.raises(SystemExit):
        models.train.main(["--without", "patient999"])


def _case(index: int, off: bool, uncertain: float, scale: float, esv: float) -> Case:
    features = QcFeatures(None, uncertain, 0.1, esv, 150.0, 0.0, scale_sensitivity=scale)
    ref_edv = 150.0 / (1.3 if off else 1.02)
    name = f"case{index}"
    return Case("synthetic", "none", name, ref_edv, esv, 150.0, esv, 0.9, 0.9, "ok", (), 0.5, features)


def test_each_term_is_scored_in_the_direction_it_may_move_the_confidence() -> None:
    """More uncertain pixels and more scale sensitivity lower the confidence, a larger ESV raises it:
    terms that order the off results first score 1, a term that tells nothing 0.5; a term measured on
    no result (test-time augmentation off) and the ejection fraction (no direction) are left out; a
    result with no LV counts as off with every term at its worst."""
    cases = [
        _case(i, off, uncertain=0.2 if off else 0.01, scale=0.05, esv=30.0 if off else 60.0)
        for i, off in enumerate([True] * 4 + [False] * 12)
    ]
    found = term_aucs([*cases, _failed("synthetic", "none", "nothing", 150.0, 60.0)])
    assert found["log_uncertain"] == 1.0
    assert found["log_esv"] == 1.0
    assert math.isclose(found["scale_sensitivity"], 0.5 + 0.5 * 12 / (5 * 12), rel_tol=1e-9)
    assert "log_disagreement" not in found and "ejection_fraction" not in found


def _patient_case(patient: int, shift: str, off: bool, uncertain: float, disagreement: float) -> Case:
    features = QcFeatures(disagreement, uncertain, 0.1, 60.0, 150.0, 0.0, scale_sensitivity=0.05)
    ref_edv = 150.0 / (1.3 if off else 1.02)
    return Case(
        "synthetic", shift, f"case{patient}", ref_edv, 60.0, 150.0, 60.0, 0.9, 0.9, "ok", (), 0.5, features
    )


def test_term_sets_are_compared_on_patients_left_out_of_the_fit() -> None:
    """Uncertain pixels that set the off patients apart, and a disagreement that tells nothing. The
    uncertain pixels alone rank every off result first on patients left out, and mark no good one;
    the off patient least uncertain, left out, lies beyond the level the other three set, so its two
    results are missed (6 of 8 marked). The disagreement alone ranks at chance; the forward selection
    picks the uncertain pixels."""
    rng = np.random.default_rng(0)
    cases = [
        _patient_case(patient, shift, off, uncertain, float(rng.uniform(0.01, 0.1)))
        for patient in range(12)
        for shift in ("none", "noise")
        for off in [patient < 4]
        for uncertain in [0.2 + 0.01 * patient if off else float(rng.uniform(0.01, 0.1))]
    ]
    found = dict(compare(cases))
    alone = found["log_uncertain"]
    assert (alone.patients, alone.auc, alone.off_checked, alone.good_checked) == (12, 1.0, 0.75, 0.0)
    assert 0.2 < found["log_disagreement"].auc < 0.8
    assert found["log_uncertain + log_disagreement"].auc > found["log_disagreement"].auc
    assert found["forward selection: log_uncertain"] == alone


def test_compare_reads_each_fold_as_its_best_checkpoint_measured_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A result without the augmentations' disagreement and one with flags survive the file; a fold
    trained again since it was measured, or never measured, is refused rather than pooled."""
    plain = _patient_case(0, "none", False, 0.05, 0.05)
    flagged = replace(plain, flags=("apex_missing", "unstable_segmentation"), status="check")
    unmeasured = replace(plain, features=replace(plain.features, disagreement=None, scale_sensitivity=None))
    monkeypatch.setattr(models.heldout, "run_folder", lambda fold: tmp_path / f"fold{fold}")
    checkpoint = tmp_path / "fold0" / "best.pt"
    with pytest.raises(SystemExit, match="not trained and measured"):
        fold_cases(0)
    write_cases(cases_path(0), [plain, flagged, unmeasured], "0" * 64)
    checkpoint.write_bytes(b"weights")
    with pytest.raises(SystemExit, match="another checkpoint"):
        fold_cases(0)
    write_cases(cases_path(0), [plain, flagged, unmeasured], sha256_of(checkpoint))
    assert fold_cases(0) == [plain, flagged, unmeasured]
    assert load_cases(cases_path(0)) == ([plain, flagged, unmeasured], sha256_of(checkpoint))
