# ruff: noqa: E501  (the XML samples keep one element per line, as banks write them)
"""camt.053 statements: entries, signs, dates, references, batches, pending entries, hostile XML."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.reconciliation import camt053, duck, items, normalize, readers
from tasks.reconciliation.errors import BadValue, UnreadableFile
from tasks.reconciliation.mapping import resolve
from tasks.reconciliation.matching import Params, match

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "reconciliation"

V02 = """<?xml version="1.0" encoding="UTF-8"?>
<Document xmlns="urn:iso:std:iso:20022:tech:xsd:camt.053.001.02">
 <BkToCstmrStmt><GrpHdr><MsgId>M1</MsgId></GrpHdr>
  <Stmt><Id>ST-1</Id>
   <Ntry><NtryRef>E1</NtryRef><Amt Ccy="EUR">100.50</Amt><CdtDbtInd>CRDT</CdtDbtInd><Sts>BOOK</Sts>
    <BookgDt><Dt>2026-10-01</Dt></BookgDt>
    <NtryDtls><TxDtls><Refs><EndToEndId>INV-1</EndToEndId></Refs>
      <RltdPties><Dbtr><Nm>Acme GmbH</Nm></Dbtr></RltdPties>
      <RmtInf><Ustrd>Invoice 1</Ustrd></RmtInf></TxDtls></NtryDtls></Ntry>
   <Ntry><Amt Ccy="EUR">12.00</Amt><CdtDbtInd>DBIT</CdtDbtInd><Sts>BOOK</Sts>
    <BookgDt><DtTm>2026-10-02T10:11:12+02:00</DtTm></BookgDt>
    <NtryDtls><TxDtls><Refs><EndToEndId>NOTPROVIDED</EndToEndId></Refs>
      <RmtInf><Strd><CdtrRefInf><Ref>RF18539007547034</Ref></CdtrRefInf></Strd></RmtInf></TxDtls></NtryDtls></Ntry>
   <Ntry><Amt Ccy="EUR">5.00</Amt><CdtDbtInd>CRDT</CdtDbtInd><Sts>PDNG</Sts><BookgDt><Dt>2026-10-03</Dt></BookgDt></Ntry>
   <Ntry><AcctSvcrRef>BATCH-9</AcctSvcrRef><Amt Ccy="EUR">30.00</Amt><CdtDbtInd>CRDT</CdtDbtInd><Sts>BOOK</Sts>
    <ValDt><Dt>2026-10-04</Dt></ValDt>
    <NtryDtls>
     <TxDtls><Refs><TxId>T1</TxId><EndToEndId>A-1</EndToEndId></Refs><AmtDtls><TxAmt><Amt Ccy="EUR">10.00</Amt></TxAmt></AmtDtls></TxDtls>
     <TxDtls><Refs><TxId>T2</TxId><EndToEndId>A-2</EndToEndId></Refs><AmtDtls><TxAmt><Amt Ccy="EUR">20.00</Amt></TxAmt></AmtDtls></TxDtls>
    </NtryDtls></Ntry>
   <Ntry><AcctSvcrRef>BATCH-10</AcctSvcrRef><Amt Ccy="EUR">7.00</Amt><CdtDbtInd>CRDT</CdtDbtInd><Sts>BOOK</Sts>
    <BookgDt><Dt>2026-10-05</Dt></BookgDt><AddtlNtryInf>Card settlement</AddtlNtryInf>
    <NtryDtls><TxDtls><Refs><TxId>U1</TxId></Refs></TxDtls><TxDtls><Refs><TxId>U2</TxId></Refs></TxDtls></NtryDtls></Ntry>
  </Stmt></BkToCstmrStmt></Document>
"""


def parse(tmp_path: Path, text: str) -> list[dict]:
    path = tmp_path / "s.xml"
    path.write_text(text)
    table, skipped = camt053.read(path, "s.xml")
    rows = table.to_pylist()
    return [dict(r, skipped=skipped) for r in rows]


def test_entries_signs_dates_references(tmp_path):
    rows = parse(tmp_path, V02)
    assert [(r["id"], r["date"], r["amount"], r["reference"]) for r in rows] == [
        ("E1", "2026-10-01", "100.50", "INV-1"),
        ("ST-1/2", "2026-10-02", "-12.00", "RF18539007547034"),  # DBIT is negative; DtTm's date
        ("T1", "2026-10-04", "10.00", "A-1"),  # a batch whose details add up: split
        ("T2", "2026-10-04", "20.00", "A-2"),
        ("BATCH-10", "2026-10-05", "7.00", None),  # details without amounts: one line
    ]
    assert rows[0]["text"] == "Acme GmbH | Invoice 1" and rows[4]["text"] == "Card settlement"
    assert rows[0]["skipped"] == 1  # the pending entry
    assert [r["_line"] for r in rows] == [1, 2, 4, 4, 5]


def test_hostile_and_broken_xml_is_refused(tmp_path):
    bomb = (
        '<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
        "<Document><BkToCstmrStmt>&b;</BkToCstmrStmt></Document>"
    )
    with pytest.raises(UnreadableFile, match="refused"):
        parse(tmp_path, bomb)
    with pytest.raises(UnreadableFile, match="not well-formed"):
        parse(tmp_path, "<Document><Stmt>")
    with pytest.raises(UnreadableFile, match="root element html"):
        parse(tmp_path, "<html></html>")
    with pytest.raises(UnreadableFile, match="no BkToCstmrStmt"):
        parse(tmp_path, "<Document><Other/></Document>")


def test_an_entry_without_amount_or_indicator_is_a_bad_value(tmp_path):
    text = V02.replace('<Amt Ccy="EUR">100.50</Amt>', '<Amt Ccy="EUR">1O0.50</Amt>')
    with pytest.raises(BadValue, match=r"s.xml entry 1: Amt '1O0.50'"):
        parse(tmp_path, text)
    text = V02.replace(
        "<CdtDbtInd>CRDT</CdtDbtInd><Sts>BOOK</Sts>\n    <BookgDt><Dt>2026-10-01",
        "<CdtDbtInd>CR</CdtDbtInd><Sts>BOOK</Sts>\n    <BookgDt><Dt>2026-10-01",
    )
    with pytest.raises(BadValue, match="is not CRDT or DBIT"):
        parse(tmp_path, text)


def test_sample_statement_reconciles_like_its_csv_twin():
    """The sample camt.053 holds the same lines as statement.csv (a few booked as batches,
    one pending entry more): reconciling it gives exactly the ground truth."""
    truth = json.loads((SAMPLES / "truth.json").read_text())["counts"]
    mapping = resolve("default")
    con = duck.connect(threads=1, memory_limit="256MB")
    lt = normalize.normalize(
        con,
        readers.read(con, SAMPLES / "ledger.csv", "ledger.csv", mapping.ledger),
        mapping.ledger,
        ledger=True,
        fee_pattern=r"(?i)\bfees?\b",
    )
    raw = readers.read(con, SAMPLES / "statement.camt053.xml", "statement.camt053.xml", mapping.statement)
    assert raw.format == "camt053" and raw.skipped == 1
    st = normalize.normalize(con, raw, mapping.statement, ledger=False)
    outcome = match(con, lt, st, Params())
    summary = items.summarize(con, outcome, items.build(outcome, lt, st), lt, st)
    assert {k: v for k, v in summary["counts"].items() if v} == truth
