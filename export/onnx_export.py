"""Export a segmenter to ONNX (opset >= 17) with dynamic batch and spatial size, and check the graph."""

from __future__ import annotations

from pathlib import Path

import onnx
import torch

from node.inference.card import InputSpec, OutputSpec

OPSET = 18
_MAX_BLOCKS = 256  # spatial size up to 256 x size_multiple pixels


def export_onnx(model: torch.nn.Module, path: Path, spec: InputSpec, output: OutputSpec) -> None:
    """Write ``model`` to ``path`` with dynamic batch, height and width (multiples of the stride)."""
    model.eval()
    multiple = spec.size_multiple
    example = torch.zeros(2, 1, 4 * multiple, 4 * multiple)
    batch = torch.export.Dim("batch", min=1, max=4096)
    height = torch.export.Dim("height_blocks", min=1, max=_MAX_BLOCKS)
    width = torch.export.Dim("width_blocks", min=1, max=_MAX_BLOCKS)
    program = torch.onnx.export(
        model,
        (example,),
        input_names=[spec.name],
        output_names=[output.name],
        dynamic_shapes=({0: batch, 2: multiple * height, 3: multiple * width},),
        opset_version=OPSET,
        dynamo=True,
        verbose=False,
    )
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    program.save(str(path), external_data=False)


def check_graph(path: Path, spec: InputSpec, output: OutputSpec) -> dict[str, object]:
    """Run ``onnx.checker`` (full) and confirm names, opset and dynamic axes; return a summary."""
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    opset = max(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))
    if opset < 17:
        raise ValueError(f"opset {opset} is below 17")
    inputs = {item.name: item for item in model.graph.input}
    outputs = {item.name: item for item in model.graph.output}
    if spec.name not in inputs or output.name not in outputs:
        raise ValueError("graph input/output names differ from the card")
    dims = inputs[spec.name].type.tensor_type.shape.dim
    dynamic = [bool(dims[axis].dim_param) for axis in (0, 2, 3)]
    if not all(dynamic):
        raise ValueError("batch, height and width must be dynamic")
    return {"opset": opset, "input_shape": [d.dim_param or d.dim_value for d in dims]}
