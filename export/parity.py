"""Numeric parity of an exported ONNX model against its torch source on the same inputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import torch

#: Largest tolerated absolute difference between torch and ONNX Runtime logits.
MAX_ABS_LOGIT_DIFF = 1e-4
#: Smallest tolerated fraction of pixels whose argmax class agrees.
MIN_ARGMAX_AGREEMENT = 0.999


@dataclass(frozen=True)
class Parity:
    """How closely ONNX Runtime reproduces torch."""

    frames: int
    max_abs_logit_diff: float
    argmax_agreement: float

    @property
    def passed(self) -> bool:
        """Both thresholds hold."""
        return self.max_abs_logit_diff <= MAX_ABS_LOGIT_DIFF and self.argmax_agreement >= MIN_ARGMAX_AGREEMENT


@torch.no_grad()
def check_parity(
    model: torch.nn.Module,
    onnx_path: Path,
    batches: list[npt.NDArray[np.float32]],
    input_name: str,
) -> Parity:
    """Compare logits of torch and ONNX Runtime (CPU) on model-grid batches ``(n, 1, H, W)``."""
    model.eval()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    agree = 0
    total = 0
    frames = 0
    for batch in batches:
        reference = model(torch.from_numpy(batch)).numpy()
        (candidate,) = session.run(None, {input_name: batch})
        worst = max(worst, float(np.abs(candidate - reference).max()))
        agree += int((candidate.argmax(axis=1) == reference.argmax(axis=1)).sum())
        total += reference.shape[0] * reference.shape[2] * reference.shape[3]
        frames += batch.shape[0]
    return Parity(frames=frames, max_abs_logit_diff=worst, argmax_agreement=agree / total)
