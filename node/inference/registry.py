"""Model registry: find released models by their cards and check each file against its sha256."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from node.errors import ConfigError
from node.inference.card import ModelCard, load_card, sha256_of

#: Where a source checkout keeps the released artifacts (the repository's top-level ``models/``).
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[2] / "models"


class ModelNotFound(ConfigError):
    """No released model matches the requested name, or its file fails its card's checksum.

    The settings name the model, so this is a configuration error: the CLI prints it and exits 2.
    """


@dataclass(frozen=True)
class ReleasedModel:
    """A model file together with its validated card, and its companion network where the card names one
    (the companion's card is the model's with the companion's file)."""

    card: ModelCard
    path: Path
    companion: ReleasedModel | None = None


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) if part.isdigit() else 0 for part in version.split("."))


def find_model(model_dir: Path, name: str, version: str | None = None) -> ReleasedModel:
    """The released model ``name`` (newest version unless one is given), checksum verified.

    Raises
    ------
    ModelNotFound
        No card for that name/version, or the .onnx is missing or differs from the card's sha256.
    """
    candidates: list[ModelCard] = []
    for card_path in sorted(model_dir.glob("*.json")):
        try:
            card = load_card(card_path)
        except (ValidationError, ValueError):
            continue
        if card.name == name and (version is None or card.version == version):
            candidates.append(card)
    if not candidates:
        raise ModelNotFound(f"no released model named {name!r} in {model_dir}")
    card = max(candidates, key=lambda c: _version_key(c.version))
    companion = companion_card(card)
    return ReleasedModel(
        card=card,
        path=_verified(model_dir, card.file, card.sha256),
        companion=(
            ReleasedModel(companion, _verified(model_dir, companion.file, companion.sha256))
            if companion is not None
            else None
        ),
    )


def companion_card(card: ModelCard) -> ModelCard | None:
    """The card the model's companion network runs under (the model's, with its file), or None."""
    spec = card.companion
    if spec is None:
        return None
    return card.model_copy(update={"file": spec.file, "sha256": spec.sha256, "companion": None})


def _verified(model_dir: Path, file: str, sha256: str) -> Path:
    """The path of a file a card names, inside ``model_dir`` and matching its sha256."""
    path = model_dir / file
    if path.resolve().parent != model_dir.resolve():
        raise ModelNotFound(f"model file {file!r} named by its card is outside {model_dir}")
    if not path.is_file():
        raise ModelNotFound(f"model file {file} named by its card is missing")
    if sha256_of(path) != sha256:
        raise ModelNotFound(f"model file {file} does not match the sha256 in its card")
    return path
