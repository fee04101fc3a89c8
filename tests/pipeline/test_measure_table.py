"""The plain-text table of ``dicomnode measure`` (without ``--json``)."""

from __future__ import annotations

import pytest

from node.cli import _print_table


def _row(companion_sha256: str | None, basal_rule: str | None) -> dict[str, object]:
    return {
        "study_instance_uid": "1.2.3",
        "series_instance_uids": ["1.2.3.4"],
        "edv_ml": 150.0,
        "esv_ml": 60.0,
        "ef_pct": 60.0,
        "sv_ml": 90.0,
        "lv_mass_g": 110.0,
        "ed_phase": 1,
        "es_phase": 9,
        "slices": 10,
        "phases": 25,
        "qc_status": "ok",
        "qc_flags": [],
        "confidence": 0.95,
        "model": {
            "name": "lvseg-unet",
            "version": "1.0.0",
            "sha256": "ab" * 32,
            "companion_sha256": companion_sha256,
        },
        "basal_rule": basal_rule,
    }


def test_a_model_without_companion_names_its_own_file_only(capsys: pytest.CaptureFixture[str]) -> None:
    """1.0.0 has no companion network: the line gives its file's sha256 and no companion."""
    _print_table([_row(None, "every_phase")])
    last = capsys.readouterr().out.splitlines()[-1].strip()
    assert last == "lvseg-unet 1.0.0 (sha256 abababababab), basal slices only where ventricle in every phase"


def test_a_pair_names_both_files_and_an_unrecorded_rule_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    _print_table([_row("cd" * 32, None)])
    last = capsys.readouterr().out.splitlines()[-1].strip()
    assert (
        last
        == "lvseg-unet 1.0.0 (sha256 abababababab, companion sha256 cdcdcdcdcdcd), basal rule not recorded"
    )
