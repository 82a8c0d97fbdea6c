"""ISO 20022 camt.053 (bank-to-customer statement) XML, read into the statement's raw columns.

Every version from camt.053.001.02 on is read the same way, by local element names, so the
namespace does not matter. One statement line per booked entry (`Ntry` whose status is BOOK);
pending (PDNG) and informational (INFO) entries are counted and left out. A batch-booked
entry whose transaction details all carry their own amounts, adding up to the entry's, is
split into one line per transaction, which lets each match its ledger line.

- amount: `Amt` (with its `Ccy`), negative when `CdtDbtInd` is DBIT;
- date: `BookgDt/Dt` (or the date part of `BookgDt/DtTm`), else `ValDt`;
- id: the bank's reference (`AcctSvcrRef`), else `NtryRef`, else `<statement id>/<entry number>`;
- reference: `EndToEndId` (unless NOTPROVIDED), else the structured creditor reference, else the
  first unstructured remittance line;
- text: the counterparty's name, remittance lines and additional entry information.

The file is parsed with defusedxml: DTDs, entity expansion and external references are refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from xml.etree.ElementTree import Element, ParseError

import pyarrow as pa
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import iterparse

from tasks.reconciliation.errors import BadValue, UnreadableFile
from tasks.reconciliation.money import to_units

COLUMNS = ("id", "date", "amount", "currency", "reference", "text")
NOT_PROVIDED = "NOTPROVIDED"


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _find(node: Element | None, path: str) -> Element | None:
    """The first descendant along `path` (local names separated by /), whatever the namespace."""
    for step in path.split("/"):
        if node is None:
            return None
        node = next((child for child in node if _local(child.tag) == step), None)
    return node


def _findall(node: Element | None, path: str) -> list[Element]:
    *parents, last = path.split("/")
    parent = _find(node, "/".join(parents)) if parents else node
    if parent is None:
        return []
    return [child for child in parent if _local(child.tag) == last]


def _text(node: Element | None, path: str) -> str | None:
    found = _find(node, path)
    if found is None or found.text is None:
        return None
    text = found.text.strip()
    return text or None


def _signed(amount: str | None, indicator: str | None, label: str, entry: int) -> str:
    if amount is None:
        raise BadValue(label, f"entry {entry}", "Amt", None, "is missing")
    try:
        to_units(amount)
    except ValueError as exc:
        raise BadValue(label, f"entry {entry}", "Amt", amount, f"is not an amount ({exc})") from None
    if indicator not in ("CRDT", "DBIT"):
        raise BadValue(label, f"entry {entry}", "CdtDbtInd", indicator, "is not CRDT or DBIT")
    return ("-" if indicator == "DBIT" else "") + amount.lstrip("+")


def _date(entry: Element, label: str, number: int) -> str:
    for path in ("BookgDt/Dt", "BookgDt/DtTm", "ValDt/Dt", "ValDt/DtTm"):
        value = _text(entry, path)
        if value:
            return value[:10]
    raise BadValue(label, f"entry {number}", "BookgDt", None, "is missing (and so is ValDt)")


def _reference(tx: Element | None) -> str | None:
    e2e = _text(tx, "Refs/EndToEndId")
    if e2e and e2e.upper() != NOT_PROVIDED:
        return e2e
    structured = _text(tx, "RmtInf/Strd/CdtrRefInf/Ref")
    if structured:
        return structured
    return _text(tx, "RmtInf/Ustrd")


def _party(tx: Element | None, credit: bool) -> str | None:
    role = "Dbtr" if credit else "Cdtr"  # who paid us, or whom we paid
    return _text(tx, f"RltdPties/{role}/Nm") or _text(tx, f"RltdPties/{role}/Pty/Nm")


def _description(tx: Element | None, entry: Element, credit: bool) -> str | None:
    parts = [_party(tx, credit)]
    parts += [(u.text or "").strip() for u in _findall(tx, "RmtInf/Ustrd")] if tx is not None else []
    parts.append(_text(entry, "AddtlNtryInf"))
    text = " | ".join(p for p in parts if p)
    return text or None


def _tx_amount(tx: Element) -> tuple[str | None, str | None, str | None]:
    amt = _find(tx, "AmtDtls/TxAmt/Amt")
    if amt is None:
        amt = _find(tx, "Amt")
    if amt is None or not (amt.text or "").strip():
        return None, None, None
    return amt.text.strip(), amt.get("Ccy"), _text(tx, "CdtDbtInd")


def _lines(entry: Element, number: int, statement_id: str, label: str) -> list[dict[str, Any]]:
    amt = _find(entry, "Amt")
    indicator = _text(entry, "CdtDbtInd")
    amount = _signed(amt.text.strip() if amt is not None and amt.text else None, indicator, label, number)
    currency = amt.get("Ccy") if amt is not None else None
    if not currency:
        raise BadValue(label, f"entry {number}", "Amt/@Ccy", None, "is missing")
    date = _date(entry, label, number)
    entry_id = _text(entry, "AcctSvcrRef") or _text(entry, "NtryRef") or f"{statement_id}/{number}"
    txs = _findall(entry, "NtryDtls/TxDtls")
    credit = indicator == "CRDT"
    if len(txs) > 1:
        split = _split(txs, entry, entry_id, amount, indicator, date, label, number)
        if split:
            return split
    tx = txs[0] if len(txs) == 1 else None
    return [
        {
            "id": entry_id,
            "date": date,
            "amount": amount,
            "currency": currency,
            "reference": _reference(tx) if tx is not None else None,
            "text": _description(tx, entry, credit),
        }
    ]


def _split(
    txs: list[Element],
    entry: Element,
    entry_id: str,
    amount: str,
    indicator: str | None,
    date: str,
    label: str,
    number: int,
) -> list[dict[str, Any]]:
    """One line per transaction of a batch entry, if their amounts add up to the entry's."""
    lines = []
    total = 0
    for k, tx in enumerate(txs, 1):
        tx_amount, currency, tx_indicator = _tx_amount(tx)
        if tx_amount is None:
            return []
        signed = _signed(tx_amount, tx_indicator or indicator, label, number)
        total += to_units(signed)
        lines.append(
            {
                "id": _text(tx, "Refs/AcctSvcrRef") or _text(tx, "Refs/TxId") or f"{entry_id}/{k}",
                "date": date,
                "amount": signed,
                "currency": currency or "",
                "reference": _reference(tx),
                "text": _description(tx, entry, (tx_indicator or indicator) == "CRDT"),
            }
        )
    return lines if total == to_units(amount) else []


def read(path: Path, label: str) -> tuple[pa.Table, int]:
    """The booked entries of a camt.053 file as raw statement columns (and `_line`, the entry
    number), and how many unbooked entries were left out."""
    rows: dict[str, list[Any]] = {c: [] for c in (*COLUMNS, "_line")}
    skipped = 0
    number = 0
    statement_id = "statement"
    seen_root = False
    stack: list[str] = []
    try:
        for event, node in iterparse(str(path), events=("start", "end")):
            name = _local(node.tag)
            if event == "start":
                if not seen_root:
                    seen_root = True
                    if name != "Document":
                        raise UnreadableFile(f"{label} is not a camt.053 statement (root element {name})")
                stack.append(name)
                continue
            stack.pop()
            if name == "Id" and stack and stack[-1] == "Stmt":
                statement_id = (node.text or "").strip() or statement_id
            if name != "Ntry":
                continue
            number += 1
            status = _text(node, "Sts/Cd") or _text(node, "Sts")
            if status and status.upper() != "BOOK":
                skipped += 1
            else:
                for line in _lines(node, number, statement_id, label):
                    for column in COLUMNS:
                        rows[column].append(line[column])
                    rows["_line"].append(number)
            node.clear()
    except DefusedXmlException as exc:
        raise UnreadableFile(f"{label} was refused: {type(exc).__name__} ({exc})") from None
    except ParseError as exc:
        raise UnreadableFile(f"{label} is not well-formed XML: {exc}") from None
    if not seen_root:
        raise UnreadableFile(f"{label} is empty")
    if number == 0 and not _has_statement(path):
        raise UnreadableFile(f"{label} is not a camt.053 statement (no BkToCstmrStmt/Stmt)")
    schema = pa.schema([(c, pa.string()) for c in COLUMNS] + [("_line", pa.int64())])
    return pa.table(rows, schema=schema), skipped


def _has_statement(path: Path) -> bool:
    for _event, node in iterparse(str(path), events=("start",)):
        if _local(node.tag) == "Stmt":
            return True
    return False
