"""Generate a month of ledger and statement lines with every kind of discrepancy, and the truth.

    python samples/reconciliation/generate.py                     # the repo's sample month
    python samples/reconciliation/generate.py --units 1000000 --out /tmp/big --format parquet

Writes `ledger.csv`, `statement.csv` (or .parquet), `statement.camt053.xml` (small runs only)
and `truth.json`: how many items of each type a correct reconciliation finds (at the default
tolerances: 3 days, amount 0). Every scenario is built so that exactly one answer is right:
amounts come from a collision-free sequence, so no two unrelated lines ever agree by chance.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from xml.sax.saxutils import escape

LEDGER_HEADER = ("id", "date", "amount", "currency", "reference", "counterparty", "payout_id")
STATEMENT_HEADER = ("id", "date", "amount", "currency", "reference", "description")

#: Scenario weights: a realistic month is mostly clean, with a few of every problem.
MIX = {
    "exact": 780,
    "exact_usd": 40,
    "refund": 30,
    "reference": 40,
    "tolerance": 40,
    "payout_fee_in_batch": 8,
    "payout_fee_line": 6,
    "card_batch": 6,
    "missing_in_statement": 10,
    "missing_in_ledger": 10,
    "amount_mismatch": 10,
    "currency_mismatch": 3,
    "duplicate_in_ledger": 5,
    "duplicate_in_statement": 5,
    "ambiguous": 3,
    "identical_pair": 4,
    "formula_reference": 0,
}
CUSTOMERS = (
    "Acme GmbH",
    "Globex Ltd",
    "Initech",
    "Umbrella plc",
    "Hooli",
    "Stark Industries",
    "Wayne Ent.",
    "Tyrell Corp",
    "Cyberdyne",
    "Soylent SA",
    "Vandelay Imports",
    "Duff Beverages",
    "=cmd|' /C calc'!A0",
)


@dataclass
class Month:
    rng: random.Random
    start: date
    days: int
    ledger: list[tuple[str, ...]] = field(default_factory=list)
    statement: list[tuple[str, ...]] = field(default_factory=list)
    truth: Counter[str] = field(default_factory=Counter)
    n: int = 0
    k: int = 0
    j: int = 0

    def next(self) -> int:
        self.n += 1
        return self.n

    def amount(self, negative: bool = False) -> int:
        """A cent amount no other line of the month shares (a permutation of a counter).

        Every such amount is 1 modulo 16 and every fee 0, so a sum of 2 to 15 of them (a
        payout, a card batch) can never equal a single line's amount by chance."""
        self.k += 1
        cents = 16 * (62 + (self.k * 7_919) % 1_999_993) + 1
        return -cents if negative else cents

    def small(self) -> int:
        """A small negative cent amount (a fee) no other fee of the month shares."""
        self.j += 1
        return -16 * (6 + (self.j * 7_919) % 99_991)

    def day(self) -> date:
        """A day of the month that leaves room for lines booked two days before or three after."""
        return self.start + timedelta(days=2 + self.rng.randrange(self.days - 5))

    def L(
        self,
        d: date,
        cents: int,
        ref: str = "",
        who: str = "",
        payout: str = "",
        cur: str = "EUR",
        lid: str | None = None,
    ) -> tuple[str, ...]:
        row = (lid or f"L{self.next():07d}", d.isoformat(), money(cents), cur, ref, who, payout)
        self.ledger.append(row)
        return row

    def S(
        self, d: date, cents: int, ref: str = "", text: str = "", cur: str = "EUR", sid: str | None = None
    ) -> tuple[str, ...]:
        row = (sid or f"S{self.next():07d}", d.isoformat(), money(cents), cur, ref, text)
        self.statement.append(row)
        return row


def money(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    return f"{sign}{abs(cents) // 100}.{abs(cents) % 100:02d}"


def _scenario(m: Month, kind: str) -> None:
    r = m.rng
    d = m.day()
    later = d + timedelta(days=r.randint(0, 2))
    who = r.choice(CUSTOMERS)
    inv = f"INV-{m.next():06d}"
    if kind in ("exact", "exact_usd", "refund"):
        cents = m.amount(negative=kind == "refund")
        cur = "USD" if kind == "exact_usd" else "EUR"
        ref = inv if kind != "refund" else inv.replace("INV", "RF")
        m.L(d, cents, ref, who, cur=cur)
        m.S(later, cents, r.choice((ref, ref.lower(), f" {ref} ")), f"SEPA credit {who}", cur=cur)
        m.truth["exact"] += 1
    elif kind == "formula_reference":
        # references a spreadsheet would run as formulas: the report must defuse them
        for ref in ('=HYPERLINK("http://example.invalid","click")', "@SUM(A1:A9)", "+1+1", "-2+3"):
            cents = m.amount()
            m.L(d, cents, ref, who)
            m.S(later, cents, ref, "SEPA credit")
            m.truth["exact"] += 1
    elif kind == "reference":
        cents, number = m.amount(), int(inv.split("-")[1])
        m.L(d, cents, inv, who)
        m.S(
            later,
            cents,
            r.choice((f"inv {number}", f"INV{number:06d}", f"Inv.{number}", f"INV/{number}")),
            f"Transfer {who}",
        )
        m.truth["reference"] += 1
    elif kind == "tolerance":
        cents = m.amount()
        m.L(d, cents, r.choice(("", inv)), who)
        m.S(
            d + timedelta(days=r.randint(0, 3)), cents, r.choice(("", f"TRF{m.next():09d}")), f"Payment {who}"
        )
        m.truth["tolerance"] += 1
    elif kind in ("payout_fee_in_batch", "payout_fee_line"):
        payout = f"po_{m.next():06d}"
        sales = [m.amount() for _ in range(r.randint(3, 8))]
        for cents in sales:
            m.L(
                d - timedelta(days=r.randint(0, 2)), cents, f"ORD-{m.next():06d}", r.choice(CUSTOMERS), payout
            )
        fee = m.small()
        if kind == "payout_fee_in_batch":
            m.L(d, fee, "", "Stripe fees", payout)
        else:
            m.L(d, fee, "", f"Stripe fees {d:%b %d}")
        m.S(later, sum(sales) + fee, payout.upper().replace("_", "-"), "STRIPE PAYOUT")
        m.truth["grouped"] += 1
    elif kind == "card_batch":
        terminal = f"Card terminal {m.next()}"
        sales = [m.amount() for _ in range(r.randint(2, 5))]
        for cents in sales:
            m.L(d, cents, "", terminal)
        m.S(d + timedelta(days=1), sum(sales), "", "CARD SETTLEMENT")
        m.truth["grouped"] += 1
    elif kind == "missing_in_statement":
        m.L(d, m.amount(), inv, who)
        m.truth["missing_in_statement"] += 1
    elif kind == "missing_in_ledger":
        if r.random() < 0.5:
            m.S(d, m.small(), "", "Account maintenance fee")
        else:
            m.S(d, m.amount(), f"UNKNOWN-{m.next()}", "Incoming transfer, no remittance info")
        m.truth["missing_in_ledger"] += 1
    elif kind == "amount_mismatch":
        cents = m.amount()
        m.L(d, cents, inv, who)
        m.S(later, cents - r.randint(1, 5000), inv, f"Partial payment {who}")
        m.truth["amount_mismatch"] += 1
    elif kind == "currency_mismatch":
        cents = m.amount()
        m.L(d, cents, inv, who, cur="EUR")
        m.S(later, cents, inv, f"Payment {who}", cur="USD")
        m.truth["currency_mismatch"] += 1
    elif kind == "duplicate_in_ledger":
        cents = m.amount()
        m.L(d, cents, inv, who)
        m.L(d, cents, inv, who)  # booked twice under two ids
        m.S(later, cents, inv, f"SEPA credit {who}")
        m.truth["exact"] += 1
        m.truth["duplicate_in_ledger"] += 1
    elif kind == "duplicate_in_statement":
        cents = m.amount()
        m.L(d, cents, inv, who)
        row = m.S(later, cents, inv, f"SEPA credit {who}")
        m.statement.append(row)  # the bank's export repeats the line, id and all
        m.truth["exact"] += 1
        m.truth["duplicate_in_statement"] += 1
    elif kind == "ambiguous":
        cents = m.amount()
        m.L(d, cents, "", who)
        m.L(d, cents, "", r.choice(CUSTOMERS))
        m.S(later, cents, "", "Cash deposit")
        m.truth["ambiguous"] += 1
    elif kind == "identical_pair":
        cents = m.amount()
        for _ in range(2):  # two identical payments on one day, both on the statement
            m.L(d, cents, inv, who)
            m.S(d, cents, inv, f"SEPA credit {who}")
        m.truth["exact"] += 2
    else:
        raise ValueError(kind)


def generate(units: int = 300, seed: int = 2026, start: date = date(2026, 10, 1), days: int = 31) -> Month:
    """A month of `units` scenarios (about 1.3 ledger lines each)."""
    rng = random.Random(seed)
    month = Month(rng, start, days)
    kinds, weights = zip(*MIX.items(), strict=False)
    for kind in rng.choices(kinds, weights, k=units):
        _scenario(month, kind)
    # every kind at least once, whatever the draw
    for kind in kinds:
        _scenario(month, kind)
    month.ledger.sort(key=lambda row: (row[1], row[0]))
    month.statement.sort(key=lambda row: (row[1], row[0]))
    return month


def write_csv(path: Path, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def write_parquet(path: Path, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = list(zip(*rows, strict=False)) if rows else [[] for _ in header]
    table = pa.table({name: pa.array(col, pa.string()) for name, col in zip(header, columns, strict=False)})
    table = table.set_column(2, "amount", table["amount"].cast(pa.decimal128(18, 2)))
    pq.write_table(table, path)


def write_camt053(path: Path, rows: list[tuple[str, ...]], seed: int = 1) -> None:
    """The statement lines as a camt.053.001.08 document: one booked entry per line, two
    same-day lines booked together as a batch entry with transaction details, plus one
    pending entry (which a reconciliation leaves out)."""
    rng = random.Random(seed)
    entries: list[str] = []
    i = 0
    while i < len(rows):
        row = rows[i]
        nxt = rows[i + 1] if i + 1 < len(rows) else None
        batch = (
            nxt is not None
            and nxt[1] == row[1]
            and nxt[3] == row[3]
            and row[4]
            and nxt[4]
            and not row[2].startswith("-")
            and not nxt[2].startswith("-")
            and row[0] != nxt[0]
            and rng.random() < 0.05
        )
        if batch:
            assert nxt is not None
            total = sum(int(r[2].replace(".", "")) for r in (row, nxt))
            entries.append(_entry(f"B{row[0]}", row[1], money(total), row[3], "", [row, nxt]))
            i += 2
        else:
            entries.append(_entry(row[0], row[1], row[2], row[3], row[5], [row]))
            i += 1
    entries.append(_entry("PENDING-1", rows[-1][1] if rows else "2026-10-31", "99.99", "EUR", "", [], "PDNG"))
    body = "\n".join(entries)
    path.write_text(
        f"""<?xml version="1.0" encoding="UTF-8"?>
<Document xmlns="urn:iso:std:iso:20022:tech:xsd:camt.053.001.08">
  <BkToCstmrStmt>
    <GrpHdr><MsgId>CONVEYOR-SAMPLE</MsgId><CreDtTm>2026-11-01T06:00:00</CreDtTm></GrpHdr>
    <Stmt>
      <Id>STMT-2026-10</Id>
      <Acct><Id><IBAN>DE89370400440532013000</IBAN></Id><Ccy>EUR</Ccy></Acct>
{body}
    </Stmt>
  </BkToCstmrStmt>
</Document>
""",
        encoding="utf-8",
    )


def _entry(
    ref: str, day: str, amount: str, cur: str, info: str, txs: list[tuple[str, ...]], status: str = "BOOK"
) -> str:
    indicator = "DBIT" if amount.startswith("-") else "CRDT"
    details = []
    for tx in txs if len(txs) > 1 or (txs and txs[0][4].strip()) else []:
        amt = tx[2].lstrip("-")
        tx_ind = "DBIT" if tx[2].startswith("-") else "CRDT"
        details.append(f"""          <TxDtls>
            <Refs><AcctSvcrRef>{escape(tx[0])}</AcctSvcrRef><EndToEndId>{escape(tx[4])}</EndToEndId></Refs>
            <Amt Ccy="{tx[3]}">{amt}</Amt><CdtDbtInd>{tx_ind}</CdtDbtInd>
            <RmtInf><Ustrd>{escape(tx[5])}</Ustrd></RmtInf>
          </TxDtls>""")
    dtls = ("\n        <NtryDtls>\n" + "\n".join(details) + "\n        </NtryDtls>") if details else ""
    addtl = f"\n        <AddtlNtryInf>{escape(info)}</AddtlNtryInf>" if info and not details else ""
    return f"""      <Ntry>
        <Amt Ccy="{cur}">{amount.lstrip("-")}</Amt>
        <CdtDbtInd>{indicator}</CdtDbtInd>
        <Sts><Cd>{status}</Cd></Sts>
        <BookgDt><Dt>{day}</Dt></BookgDt>
        <ValDt><Dt>{day}</Dt></ValDt>
        <AcctSvcrRef>{escape(ref)}</AcctSvcrRef>{dtls}{addtl}
      </Ntry>"""


def write(month: Month, out: Path, fmt: str = "csv", camt: bool = True) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"ledger": out / f"ledger.{fmt}", "statement": out / f"statement.{fmt}"}
    writer = write_csv if fmt == "csv" else write_parquet
    writer(paths["ledger"], LEDGER_HEADER, month.ledger)
    writer(paths["statement"], STATEMENT_HEADER, month.statement)
    if camt:
        paths["camt053"] = out / "statement.camt053.xml"
        write_camt053(paths["camt053"], month.statement)
    paths["truth"] = out / "truth.json"
    paths["truth"].write_text(
        json.dumps(
            {
                "ledger_lines": len(month.ledger),
                "statement_lines": len(month.statement),
                "counts": dict(sorted(month.truth.items())),
            },
            indent=2,
        )
        + "\n"
    )
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=300, help="scenarios (about 1.3 ledger lines each)")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--format", choices=("csv", "parquet"), default="csv")
    parser.add_argument("--no-camt", action="store_true", help="skip the camt.053 file")
    args = parser.parse_args()
    month = generate(args.units, args.seed)
    paths = write(month, args.out, args.format, camt=not args.no_camt)
    print(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))


if __name__ == "__main__":
    main()
