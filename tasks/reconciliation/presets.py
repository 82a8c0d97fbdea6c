"""Named column mappings for common layouts. `conveyor recon presets` lists them."""

from __future__ import annotations

from typing import Any

_LEDGER_DEFAULT: dict[str, Any] = {
    "columns": {
        "id": "id",
        "date": "date",
        "amount": "amount",
        "currency": "currency",
        "reference": "reference",
        "text": "counterparty",
        "batch": "payout_id",
    },
    "optional": ["text", "batch"],
}
_STATEMENT_DEFAULT: dict[str, Any] = {
    "columns": {
        "id": "id",
        "date": "date",
        "amount": "amount",
        "currency": "currency",
        "reference": "reference",
        "text": "description",
    },
    "optional": ["text"],
}

PRESETS: dict[str, dict[str, Any]] = {
    # ledger: id,date,amount,currency,reference,counterparty[,payout_id]
    # statement: id,date,amount,currency,reference,description
    "default": {"ledger": _LEDGER_DEFAULT, "statement": _STATEMENT_DEFAULT},
    # A statement as ISO 20022 camt.053 XML (entries with amount, credit/debit indicator,
    # booking date, end-to-end id or remittance information).
    "camt053": {"ledger": _LEDGER_DEFAULT, "statement": {"format": "camt053", "columns": {}}},
    # A bank's CSV export with separate debit and credit columns and day-first dates:
    # "Transaction ID,Booking Date,Debit,Credit,Currency,Reference,Description".
    "bank_debit_credit": {
        "ledger": _LEDGER_DEFAULT,
        "statement": {
            "columns": {
                "id": "Transaction ID",
                "date": "Booking Date",
                "debit": "Debit",
                "credit": "Credit",
                "currency": "Currency",
                "reference": "Reference",
                "text": "Description",
            },
            "optional": ["text"],
            "date_format": "%d/%m/%Y",
            "thousands_separator": ",",
        },
    },
    # A continental European export: semicolons, decimal commas, dd.mm.yyyy dates, one currency.
    "bank_eu_semicolon": {
        "ledger": _LEDGER_DEFAULT,
        "statement": {
            "columns": {
                "id": "Transaktions-ID",
                "date": "Buchungstag",
                "amount": "Betrag",
                "reference": "Referenz",
                "text": "Verwendungszweck",
            },
            "optional": ["text"],
            "delimiter": ";",
            "date_format": "%d.%m.%Y",
            "decimal_separator": ",",
            "thousands_separator": ".",
            "currency": "EUR",
            "encoding": "utf-8",
        },
    },
}
