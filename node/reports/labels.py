"""Which label values of the model's output are the LV blood pool and the LV myocardium."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from node.inference.card import ModelCard

#: Output classes of the model card (``output.classes``) the reports draw and encode.
BLOOD_POOL_CLASS: Final = "lv_blood_pool"
MYOCARDIUM_CLASS: Final = "lv_myocardium"


@dataclass(frozen=True)
class LabelClasses:
    """Label values of the LV blood pool and myocardium in a label image."""

    blood_pool: int
    myocardium: int

    def __post_init__(self) -> None:
        if self.blood_pool == self.myocardium:
            raise ValueError("blood pool and myocardium need different label values")

    @classmethod
    def from_card(cls, card: ModelCard) -> LabelClasses:
        """The indices the model card gives its ``lv_blood_pool`` and ``lv_myocardium`` outputs."""
        return cls(card.class_index(BLOOD_POOL_CLASS), card.class_index(MYOCARDIUM_CLASS))
