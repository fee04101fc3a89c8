"""Tests for the model registry and the released model's card (node.inference.registry)."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.spec import INPUT as SPEC
from models.spec import OUTPUT
from node.inference.card import ModelCard, load_card, sha256_of
from node.inference.registry import DEFAULT_MODEL_DIR, ModelNotFound, find_model

RELEASED_NAME = "lvseg-unet"


def _release(model_dir: Path, name: str, version: str, payload: bytes = b"onnx bytes") -> Path:
    """Write ``<name>-<version>.onnx`` and a valid card for it; return the model path."""
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / f"{name}-{version}.onnx"
    path.write_bytes(payload)
    card = ModelCard(
        name=name, version=version, file=path.name, sha256=sha256_of(path), input=SPEC, output=OUTPUT
    )
    (model_dir / f"{name}-{version}.json").write_text(card.model_dump_json(indent=2), encoding="utf-8")
    return path


def test_find_model_returns_card_and_verified_path(tmp_path: Path) -> None:
    """A card with a matching file is found by name, with its validated card and the file's path."""
    path = _release(tmp_path, "tiny", "1.0.0")
    model = find_model(tmp_path, "tiny")
    assert model.path == path
    assert model.card.name == "tiny"
    assert model.card.version == "1.0.0"
    assert model.card.input == SPEC
    assert model.card.class_index("lv_blood_pool") == 3


def test_tampered_model_file_raises(tmp_path: Path) -> None:
    """A file whose sha256 differs from its card's raises ModelNotFound."""
    path = _release(tmp_path, "tiny", "1.0.0")
    path.write_bytes(b"onnx bytes, tampered")
    with pytest.raises(ModelNotFound, match="sha256"):
        find_model(tmp_path, "tiny")


def test_missing_model_file_raises(tmp_path: Path) -> None:
    """A card whose .onnx is absent raises ModelNotFound."""
    _release(tmp_path, "tiny", "1.0.0").unlink()
    with pytest.raises(ModelNotFound, match="missing"):
        find_model(tmp_path, "tiny")


def test_unknown_name_or_version_raises(tmp_path: Path) -> None:
    """A name or version that no card declares raises ModelNotFound."""
    _release(tmp_path, "tiny", "1.0.0")
    with pytest.raises(ModelNotFound):
        find_model(tmp_path, "other")
    with pytest.raises(ModelNotFound):
        find_model(tmp_path, "tiny", "2.0.0")
    with pytest.raises(ModelNotFound):
        find_model(tmp_path / "absent", "tiny")


def test_newest_version_is_chosen_numerically(tmp_path: Path) -> None:
    """Without a version the newest is chosen, comparing numerically (1.10.0 > 1.2.0)."""
    _release(tmp_path, "tiny", "1.2.0", b"old")
    newest = _release(tmp_path, "tiny", "1.10.0", b"new")
    model = find_model(tmp_path, "tiny")
    assert model.card.version == "1.10.0"
    assert model.path == newest
    assert find_model(tmp_path, "tiny", "1.2.0").card.version == "1.2.0"


def test_unrelated_json_files_are_ignored(tmp_path: Path) -> None:
    """JSON files that are not model cards (or not valid JSON) do not stop the search."""
    _release(tmp_path, "tiny", "1.0.0")
    (tmp_path / "metrics.json").write_text('{"dice": 0.9}', encoding="utf-8")
    (tmp_path / "broken.json").write_text("{not json", encoding="utf-8")
    assert find_model(tmp_path, "tiny").card.name == "tiny"


def test_released_model_matches_its_card_sha256() -> None:
    """The released .onnx in models/ is found and its sha256 equals the one in its card."""
    model = find_model(DEFAULT_MODEL_DIR, RELEASED_NAME)
    card = load_card(DEFAULT_MODEL_DIR / f"{model.card.name}-{model.card.version}.json")
    assert card.file == model.path.name
    assert sha256_of(model.path) == card.sha256


def test_released_graph_has_opset_17_and_dynamic_axes() -> None:
    """The released graph passes the full ONNX check, opset >= 17, with dynamic batch/height/width."""
    pytest.importorskip("onnx", reason="onnx (the train extra) checks the graph")
    pytest.importorskip("torch", reason="export.onnx_export imports torch (the train extra)")
    from export.onnx_export import check_graph

    model = find_model(DEFAULT_MODEL_DIR, RELEASED_NAME)
    summary = check_graph(model.path, model.card.input, model.card.output)
    assert isinstance(summary["opset"], int)
    assert summary["opset"] >= 17
    shape = summary["input_shape"]
    assert isinstance(shape, list)
    assert shape[1] == 1
    assert all(isinstance(shape[axis], str) for axis in (0, 2, 3))
    framework = (model.card.model_extra or {}).get("framework", {})
    assert framework.get("onnx_opset") == summary["opset"]


def test_released_card_carries_data_citations_licences_and_commands() -> None:
    """The card cites ACDC (research, non-commercial) and Sunnybrook (CC0) and records how it was built."""
    card = find_model(DEFAULT_MODEL_DIR, RELEASED_NAME).card
    extra = card.model_extra or {}
    datasets = [*extra.get("training_data", []), *extra.get("validation_data", [])]
    acdc = [d for d in datasets if "ACDC" in d["name"]]
    sunnybrook = [d for d in datasets if "Sunnybrook" in d["name"]]
    assert acdc, "no ACDC entry in the card"
    assert sunnybrook, "no Sunnybrook entry in the card"
    assert "Bernard" in acdc[0]["citation"]
    assert "IEEE TMI" in acdc[0]["citation"]
    assert "research" in acdc[0]["licence"].lower()
    assert "non-commercial" in acdc[0]["licence"].lower()
    assert "Radau" in sunnybrook[0]["citation"]
    assert "CC0" in sunnybrook[0]["licence"]
    assert "non-commercial" in extra["licence"].lower()
    commands = extra["commands"]
    assert "models.train" in commands["train"]
    assert commands["export"].startswith("python -m export")
