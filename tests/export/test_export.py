"""Component tests for torch-to-ONNX export, graph checks and numeric parity (export/)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="export needs torch (the train extra)")
onnx = pytest.importorskip("onnx", reason="export needs onnx (the train extra)")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper  # noqa: E402

from export.__main__ import main, parity_batches  # noqa: E402
from export.onnx_export import check_graph, export_onnx  # noqa: E402
from export.parity import MAX_ABS_LOGIT_DIFF, MIN_ARGMAX_AGREEMENT, check_parity  # noqa: E402
from models.network import UNet  # noqa: E402
from models.spec import CHANNELS, INPUT, MODEL_NAME, MODEL_VERSION, OUTPUT, artifact_stem  # noqa: E402
from node.inference.card import load_card, sha256_of  # noqa: E402
from node.inference.registry import ModelNotFound, find_model  # noqa: E402
from node.inference.runner import Segmenter  # noqa: E402
from tests.support import SHARED_DATA  # noqa: E402

#: Five levels like the released network (stride 16), a fraction of its width.
TINY_CHANNELS = (4, 8, 16, 32, 64)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    """A randomly initialised tiny U-Net and its ONNX export."""
    torch.manual_seed(0)
    model = UNet(TINY_CHANNELS, len(OUTPUT.classes)).eval()
    path = tmp_path_factory.mktemp("tiny-export") / "tiny.onnx"
    export_onnx(model, path, INPUT, OUTPUT)
    return model, path


def test_tiny_export_passes_graph_check(tiny: tuple[torch.nn.Module, Path]) -> None:
    """The exported graph passes onnx.checker, has opset >= 17 and dynamic batch, height and width."""
    _, path = tiny
    summary = check_graph(path, INPUT, OUTPUT)
    assert isinstance(summary["opset"], int)
    assert summary["opset"] >= 17
    shape = summary["input_shape"]
    assert isinstance(shape, list)
    assert all(isinstance(shape[axis], str) for axis in (0, 2, 3))


def test_tiny_export_matches_torch_on_real_frames(tiny: tuple[torch.nn.Module, Path]) -> None:
    """ONNX Runtime reproduces torch logits within 1e-4 with >= 99.9% argmax agreement on parity frames."""
    model, path = tiny
    batches = parity_batches(SHARED_DATA.resolve(), INPUT)
    assert batches
    for batch in batches:
        assert batch.ndim == 4 and batch.shape[1] == 1
        assert batch.shape[2] % INPUT.size_multiple == 0 and batch.shape[3] % INPUT.size_multiple == 0
    parity = check_parity(model, path, batches, INPUT.name)
    assert parity.frames == sum(batch.shape[0] for batch in batches)
    assert parity.max_abs_logit_diff <= MAX_ABS_LOGIT_DIFF
    assert parity.argmax_agreement >= MIN_ARGMAX_AGREEMENT
    assert parity.passed


def test_parity_detects_a_different_network(tiny: tuple[torch.nn.Module, Path]) -> None:
    """Parity fails when the ONNX file is compared against a network with other weights."""
    _, path = tiny
    torch.manual_seed(1)
    other = UNet(TINY_CHANNELS, len(OUTPUT.classes)).eval()
    frames = np.random.default_rng(0).uniform(size=(2, 1, 64, 64)).astype(np.float32)
    parity = check_parity(other, path, [frames], INPUT.name)
    assert parity.max_abs_logit_diff > MAX_ABS_LOGIT_DIFF
    assert not parity.passed


@pytest.mark.parametrize(("batch", "height", "width"), [(1, 64, 96), (3, 128, 80)])
def test_tiny_export_runs_at_other_sizes(
    tiny: tuple[torch.nn.Module, Path], batch: int, height: int, width: int
) -> None:
    """The exported graph runs at batch sizes and spatial sizes other than the export example."""
    model, path = tiny
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    frames = np.random.default_rng(batch).uniform(size=(batch, 1, height, width)).astype(np.float32)
    (logits,) = session.run([OUTPUT.name], {INPUT.name: frames})
    assert logits.shape == (batch, len(OUTPUT.classes), height, width)
    with torch.no_grad():
        reference = model(torch.from_numpy(frames)).numpy()
    assert float(np.abs(logits - reference).max()) <= MAX_ABS_LOGIT_DIFF


def _identity_graph(path: Path, shape: list[int | str], opset: int, input_name: str = "image") -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", [input_name], ["logits"])],
        "probe",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, shape)],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))


def test_check_graph_rejects_static_shapes_old_opsets_and_wrong_names(tmp_path: Path) -> None:
    """check_graph refuses a fixed input size, an opset below 17, and input names unlike the card's."""
    path = tmp_path / "probe.onnx"
    _identity_graph(path, ["batch", 1, "height", "width"], 18)
    assert check_graph(path, INPUT, OUTPUT)["opset"] == 18
    _identity_graph(path, ["batch", 1, 176, 176], 18)
    with pytest.raises(ValueError, match="dynamic"):
        check_graph(path, INPUT, OUTPUT)
    _identity_graph(path, ["batch", 1, "height", "width"], 16)
    with pytest.raises(ValueError, match="opset"):
        check_graph(path, INPUT, OUTPUT)
    _identity_graph(path, ["batch", 1, "height", "width"], 18, input_name="pixels")
    with pytest.raises(ValueError, match="names"):
        check_graph(path, INPUT, OUTPUT)


def test_python_m_export_releases_onnx_and_valid_card(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``python -m export --skip-evaluation`` writes <name>-<version>.onnx and a card whose sha256 matches."""
    # Parity on real frames is covered above; synthetic frames keep this end-to-end run short.
    monkeypatch.setenv("DICOMNODE_DATA_ROOT", str(tmp_path / "no-data"))
    torch.manual_seed(0)
    checkpoint = tmp_path / "best.pt"
    torch.save(
        {"state_dict": UNet(CHANNELS, len(OUTPUT.classes)).state_dict(), "epoch": 0, "metrics": {}},
        checkpoint,
    )
    out_dir = tmp_path / "release"
    no_companion = str(tmp_path / "no-companion.pt")
    argv = ["--checkpoint", str(checkpoint), "--companion", no_companion, "--skip-evaluation"]
    assert main([*argv, "--out-dir", str(out_dir)]) == 0
    onnx_path = out_dir / f"{artifact_stem()}.onnx"
    card_path = out_dir / f"{artifact_stem()}.json"
    assert onnx_path.is_file()
    assert card_path.is_file()
    card = load_card(card_path)
    assert (card.name, card.version, card.file) == (MODEL_NAME, MODEL_VERSION, onnx_path.name)
    assert card.sha256 == sha256_of(onnx_path)
    assert card.input == INPUT
    assert card.output == OUTPUT
    raw = json.loads(card_path.read_text(encoding="utf-8"))
    assert "metrics" not in raw
    assert raw["parity"]["max_abs_logit_diff"] <= MAX_ABS_LOGIT_DIFF
    assert raw["architecture"]["channels"] == list(CHANNELS)
    assert card.companion is None
    assert find_model(out_dir, MODEL_NAME).companion is None


def test_export_releases_the_companion_beside_a_kept_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--companion``: its .onnx beside the model, named and checksummed in the card, loaded with the
    model by the registry and run in a session of its own; ``--keep-model`` replaces only the companion."""
    monkeypatch.setenv("DICOMNODE_DATA_ROOT", str(tmp_path / "no-data"))
    checkpoints = []
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        path = tmp_path / f"seed{seed}.pt"
        torch.save(
            {"state_dict": UNet(CHANNELS, len(OUTPUT.classes)).state_dict(), "epoch": seed, "metrics": {}},
            path,
        )
        checkpoints.append(str(path))
    out_dir = tmp_path / "release"
    common = ["--skip-evaluation", "--out-dir", str(out_dir)]
    assert main(["--checkpoint", checkpoints[0], "--companion", checkpoints[1], *common]) == 0
    released = find_model(out_dir, MODEL_NAME)
    assert released.companion is not None
    spec = released.card.companion
    assert spec is not None
    assert released.companion.path == out_dir / f"{artifact_stem()}-companion.onnx"
    assert spec.sha256 == sha256_of(released.companion.path) != released.card.sha256
    assert released.companion.card.input == released.card.input
    raw = json.loads((out_dir / f"{artifact_stem()}.json").read_text(encoding="utf-8"))
    assert raw["companion"]["best_epoch"] == 1
    assert raw["companion"]["parity"]["max_abs_logit_diff"] <= MAX_ABS_LOGIT_DIFF
    assert raw["commands"]["train_companion"].startswith("python -m models.train")
    segmenter = Segmenter(released)
    assert segmenter.companion is not None
    frames = np.random.default_rng(0).random((2, 40, 40)).astype(np.float32)
    assert segmenter.companion.segment(frames, (2.0, 2.0)).labels.shape == frames.shape

    model_digest = released.card.sha256
    assert main(["--keep-model", "--companion", checkpoints[2], *common]) == 0
    again = find_model(out_dir, MODEL_NAME)
    assert again.card.sha256 == model_digest
    assert again.card.companion is not None
    assert again.card.companion.sha256 not in (spec.sha256, model_digest)
    assert again.card.model_dump()["training"] == released.card.model_dump()["training"]

    # Without a companion checkpoint, --keep-model refuses rather than write a card without one.
    assert main(["--keep-model", "--companion", str(tmp_path / "absent.pt"), *common]) == 2
    assert find_model(out_dir, MODEL_NAME).card == again.card

    # A companion file that no longer matches its card is refused like the model's own file.
    again.companion.path.write_bytes(b"not a model")  # type: ignore[union-attr]
    with pytest.raises(ModelNotFound, match=r"companion\.onnx does not match"):
        find_model(out_dir, MODEL_NAME)


def test_learning_rate_cycles_of_warm_restarts() -> None:
    """``--epochs 56 --restart 40``: epochs 0-55 are the first cycle, 56-95 the restart; past the last
    cycle is an error (a resumed run that is done trains no more)."""
    from models.train import cycle_of

    assert cycle_of(0, [56, 40]) == (0, 0)
    assert cycle_of(55, [56, 40]) == (0, 0)
    assert cycle_of(56, [56, 40]) == (1, 56)
    assert cycle_of(95, [56, 40]) == (1, 56)
    with pytest.raises(ValueError, match="past the last cycle"):
        cycle_of(96, [56, 40])
