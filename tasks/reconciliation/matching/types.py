"""What the matching engine takes and gives: parameters, item types, items."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import pyarrow as pa

from tasks.reconciliation.money import Tolerance


class ItemType(StrEnum):
    """Every line of both inputs ends up in exactly one item of one of these types."""

    # matches, in the order the rules run
    EXACT = "exact"
    REFERENCE = "reference"
    TOLERANCE = "tolerance"
    GROUPED = "grouped"
    # discrepancies
    MISSING_IN_STATEMENT = "missing_in_statement"
    MISSING_IN_LEDGER = "missing_in_ledger"
    AMOUNT_MISMATCH = "amount_mismatch"
    CURRENCY_MISMATCH = "currency_mismatch"
    DUPLICATE_IN_LEDGER = "duplicate_in_ledger"
    DUPLICATE_IN_STATEMENT = "duplicate_in_statement"
    AMBIGUOUS = "ambiguous"

    @property
    def is_match(self) -> bool:
        return self in MATCH_TYPES


MATCH_TYPES = (ItemType.EXACT, ItemType.REFERENCE, ItemType.TOLERANCE, ItemType.GROUPED)
DISCREPANCY_TYPES = tuple(t for t in ItemType if t not in MATCH_TYPES)


@dataclass(frozen=True)
class Params:
    """The matching parameters; part of a run's key."""

    date_tolerance_days: int = 3
    amount_tolerance: Tolerance = field(default_factory=Tolerance)
    #: At most this many window candidates are searched for a grouped match without reference.
    group_max_candidates: int = 12

    def as_dict(self) -> dict[str, object]:
        return {
            "date_tolerance_days": self.date_tolerance_days,
            "amount_tolerance": str(self.amount_tolerance),
            "group_max_candidates": self.group_max_candidates,
        }


@dataclass(frozen=True)
class Item:
    """One match or discrepancy found outside the bulk 1:1 rules: row ids (`rid`) per side."""

    type: ItemType
    ledger: tuple[int, ...]
    statement: tuple[int, ...]
    reason: str


@dataclass
class Outcome:
    """The engine's answer: bulk 1:1 pairs as a table (type, l_rid, s_rid, reason) and the rest."""

    pairs: pa.Table
    items: list[Item]
    stats: dict[str, float] = field(default_factory=dict)


PAIRS_SCHEMA = pa.schema(
    [("type", pa.string()), ("l_rid", pa.int32()), ("s_rid", pa.int32()), ("reason", pa.string())]
)
