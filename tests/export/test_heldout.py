"""The held-out check of QC terms (``python -m models.heldout``): its training leaves the held-out
patients out, and each term is scored in the direction it may move the confidence."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("torch", reason="models.train needs torch (the train extra)")

import torch

import models.train
from models.data import split_patients
from models.evaluate import Case, _failed
from models.heldout import HELD_OUT, RECIPE, term_aucs, train
from node.inference.qc import QcFeatures


class _Stop(Exception):
    """Raised where training would start: the patients are chosen by then."""


def test_training_leaves_the_held_out_patients_out(
    shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train_ids, validation = split_patients(shared_data)
    assert set(HELD_OUT) <= set(train_ids)
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
            train([])
    finally:
        torch.set_num_threads(threads)  # models.train sets its own for the process
    assert sorted(loaded) == sorted([p for p in train_ids if p not in HELD_OUT] + validation)
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
