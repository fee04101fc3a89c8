"""Train the LV segmenter on ACDC: ``python -m models.train``.

The best checkpoint (by mean validation Dice of LV blood pool and myocardium), the last one (every
epoch, so a stopped run loses at most one epoch: ``--resume``) and the per-epoch history are written
under ``models/runs/`` (ignored by git); ``python -m export`` releases the best.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from models.augment import sample
from models.data import AcdcCase, data_root, load_acdc, split_patients
from models.network import UNet
from models.predict import dice, predict_labels
from models.spec import CHANNELS, INPUT, OUTPUT, artifact_stem

RUNS = Path(__file__).resolve().parent / "runs"
#: Fields of view (mm) of the training crops, cycled per epoch; on the model grid each becomes the
#: nearest multiple of the size rule (at 2 mm: 112-160 pixels, at 2.5 mm: 96-128).
CROP_FIELDS_MM = (224.0, 256.0, 288.0, 320.0)


def crop_sizes(spacing_mm: float, multiple: int) -> tuple[int, ...]:
    """Training crop sizes in model pixels for ``CROP_FIELDS_MM`` at ``spacing_mm``."""
    return tuple(max(1, round(field / spacing_mm / multiple)) * multiple for field in CROP_FIELDS_MM)


CROP_SIZES = crop_sizes(INPUT.spacing_mm, INPUT.size_multiple)
#: Each warm restart (``--restart``) peaks at this fraction of the previous cycle's learning rate.
RESTART_LR_FACTOR = 1 / 3


def cycle_of(epoch: int, lengths: list[int]) -> tuple[int, int]:
    """(cycle, its first epoch) for a 0-based ``epoch`` in learning-rate cycles of ``lengths`` epochs."""
    start = 0
    for cycle, length in enumerate(lengths):
        if epoch < start + length:
            return cycle, start
        start += length
    raise ValueError(f"epoch {epoch} is past the last cycle")


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy plus soft Dice over the foreground classes."""
    ce = F.cross_entropy(logits, target)
    probs = logits.softmax(dim=1)
    onehot = F.one_hot(target, probs.shape[1]).permute(0, 3, 1, 2).float()
    inter = (probs * onehot).sum(dim=(0, 2, 3))
    union = probs.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    soft_dice = (2 * inter + 1.0) / (union + 1.0)
    return ce + (1.0 - soft_dice[1:]).mean()


def validate(model: torch.nn.Module, cases: list[AcdcCase]) -> dict[str, float]:
    """Mean per-volume Dice for each foreground class at ED and ES."""
    scores: dict[str, list[float]] = {}
    for case in cases:
        volumes = (("ed", case.ed_image, case.ed_label), ("es", case.es_image, case.es_label))
        for phase, image, label in volumes:
            predicted = predict_labels(model, image, case.pixel_spacing, INPUT)
            for index, name in enumerate(OUTPUT.classes[1:], start=1):
                scores.setdefault(f"{phase}_{name}", []).append(dice(predicted == index, label == index))
    return {key: float(np.mean(values)) for key, values in scores.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=56)
    parser.add_argument("--steps", type=int, default=120, help="optimiser steps per epoch")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RUNS / artifact_stem())
    parser.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    parser.add_argument(
        "--restart",
        type=int,
        action="append",
        default=[],
        metavar="EPOCHS",
        help="after the first cycle, a warm restart of EPOCHS epochs peaking at a third of the "
        "previous cycle's learning rate (repeatable)",
    )
    parser.add_argument(
        "--without",
        action="append",
        default=[],
        metavar="PATIENT",
        help="leave this training patient out (repeatable; models.heldout's check of QC terms)",
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    root = data_root()
    train_ids, val_ids = split_patients(root)
    left_out = set(args.without)
    if unknown := sorted(left_out - set(train_ids)):
        parser.error(f"--without names no training patient: {', '.join(unknown)}")
    train_ids = [patient for patient in train_ids if patient not in left_out]
    train_cases = [load_acdc(root, p, INPUT.normalisation) for p in train_ids]
    val_cases = [load_acdc(root, p, INPUT.normalisation) for p in val_ids]
    # (frame, label, an adjacent slice for the thick-slice transform, the frame's pixel spacing)
    frames = [
        (image[i], label[i], image[i + 1 if i + 1 < image.shape[0] else i - 1], case.pixel_spacing)
        for case in train_cases
        for image, label in ((case.ed_image, case.ed_label), (case.es_image, case.es_label))
        for i in range(image.shape[0])
    ]
    print(f"train patients {len(train_ids)} ({len(frames)} frames), validation patients {len(val_ids)}")

    model = UNet(CHANNELS, len(OUTPUT.classes))
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    cycles = [args.epochs, *args.restart]

    def one_cycle(cycle: int) -> torch.optim.lr_scheduler.OneCycleLR:
        return torch.optim.lr_scheduler.OneCycleLR(
            optimiser,
            max_lr=args.lr * RESTART_LR_FACTOR**cycle,
            total_steps=cycles[cycle] * args.steps,
            pct_start=0.1,
        )

    schedule = one_cycle(0)
    args.out.mkdir(parents=True, exist_ok=True)
    history: list[dict[str, float]] = []
    best = -math.inf
    first = 0
    if args.resume:
        state = torch.load(args.out / "last.pt", weights_only=False)
        model.load_state_dict(state["state_dict"])
        optimiser.load_state_dict(state["optimiser"])
        if state["epoch"] < sum(cycles) and cycle_of(state["epoch"], cycles)[1] == state["epoch"]:
            schedule = one_cycle(cycle_of(state["epoch"], cycles)[0])  # a new cycle starts here
        else:
            schedule.load_state_dict(state["schedule"])
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        history, best, first = state["history"], state["best"], state["epoch"]
        if sorted(state.get("without", [])) != sorted(args.without):
            parser.error("--resume with other --without patients than the run was started with")
    started = time.monotonic()
    for epoch in range(first, sum(cycles)):
        cycle, cycle_start = cycle_of(epoch, cycles)
        if epoch == cycle_start and epoch > first:
            schedule = one_cycle(cycle)
        model.train()
        size = CROP_SIZES[epoch % len(CROP_SIZES)]
        bar = tqdm(range(args.steps), desc=f"epoch {epoch + 1}/{sum(cycles)} crop {size}", leave=False)
        running = 0.0
        for step in bar:
            picks = rng.integers(0, len(frames), args.batch)
            drawn = [sample(*frames[i], size, INPUT.spacing_mm, rng) for i in picks]
            images = torch.stack([d[0] for d in drawn])
            targets = torch.stack([d[1] for d in drawn])
            loss = loss_fn(model(images), targets)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            running += loss.item()
            bar.set_postfix(loss=f"{running / (step + 1):.3f}")
        metrics = validate(model, val_cases)
        score = (
            metrics["ed_lv_blood_pool"]
            + metrics["es_lv_blood_pool"]
            + metrics["ed_lv_myocardium"]
            + metrics["es_lv_myocardium"]
        ) / 4
        record = {"epoch": epoch + 1, "loss": running / args.steps, "score": score, **metrics}
        history.append(record)
        marker = ""
        if score > best:
            best = score
            checkpoint = {
                "state_dict": model.state_dict(),
                "epoch": epoch + 1,
                "metrics": metrics,
                "without": sorted(args.without),
            }
            torch.save(checkpoint, args.out / "best.pt")
            marker = " *best*"
        print(
            f"epoch {epoch + 1:3d} loss {record['loss']:.3f} "
            f"LV Dice ED {metrics['ed_lv_blood_pool']:.3f} ES {metrics['es_lv_blood_pool']:.3f} "
            f"myo ED {metrics['ed_lv_myocardium']:.3f} ES {metrics['es_lv_myocardium']:.3f} "
            f"RV ED {metrics['ed_right_ventricle']:.3f} [{time.monotonic() - started:.0f}s]{marker}",
            flush=True,
        )
        (args.out / "history.json").write_text(json.dumps(history, indent=1))
        last = {
            "state_dict": model.state_dict(),
            "optimiser": optimiser.state_dict(),
            "schedule": schedule.state_dict(),
            "rng": rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "history": history,
            "best": best,
            "epoch": epoch + 1,
            "without": sorted(args.without),
        }
        torch.save(last, args.out / "last.pt.tmp")
        (args.out / "last.pt.tmp").replace(args.out / "last.pt")
    print(f"best score {best:.4f}; checkpoint {args.out / 'best.pt'}")


if __name__ == "__main__":
    main()
