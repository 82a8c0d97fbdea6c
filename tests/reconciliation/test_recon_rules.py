"""Every rule and every discrepancy on hand-built inputs, straight through the matching engine."""

from __future__ import annotations

from decimal import Decimal

from tests.reconciliation import L, S, reconcile


# --- rule 1: exact --------------------------------------------------------------------------------
def test_exact_compares_references_trimmed_and_case_insensitive():
    r = reconcile(
        [L("L1", "2026-10-01", "100.00", "INV-1"), L("L2", "2026-10-01", "-25.50", "RF-7")],
        [S("S1", "2026-10-09", "100.00", "  inv-1 "), S("S2", "2026-10-02", "-25.50", "rf-7")],
    )
    r.only(exact=2)  # dates do not matter to rule 1
    assert r.pairs("exact") == {(("L1",), ("S1",)), (("L2",), ("S2",))}
    assert r.summary["totals"]["unexplained"] == {"EUR": "0.00"}


def test_exact_is_nothing_more_than_trim_and_case():
    # 'INV-42' and 'INV 42' differ as written: that is rule 2's business, not rule 1's
    r = reconcile([L("L1", "2026-10-01", "10.00", "INV-42")], [S("S1", "2026-10-01", "10.00", "INV 42")])
    r.only(reference=1)


def test_a_refund_matches_as_a_negative_amount():
    r = reconcile(
        [L("L1", "2026-10-01", "80.00", "INV-9"), L("L2", "2026-10-05", "-80.00", "INV-9")],
        [S("S1", "2026-10-01", "80.00", "INV-9"), S("S2", "2026-10-06", "-80.00", "INV-9")],
    )
    r.only(exact=2)
    assert {(x["ledger_amount"], x["statement_amount"]) for x in r.of("exact")} == {
        ("80.00", "80.00"),
        ("-80.00", "-80.00"),
    }


def test_two_identical_payments_on_the_same_day_both_match():
    ledger = [L("L1", "2026-10-03", "50.00", "INV-5"), L("L2", "2026-10-03", "50.00", "INV-5")]
    statement = [S("S1", "2026-10-03", "50.00", "INV-5"), S("S2", "2026-10-03", "50.00", "INV-5")]
    r = reconcile(ledger, statement)
    r.only(exact=2)
    assert r.pairs("exact") == {(("L1",), ("S1",)), (("L2",), ("S2",))}


def test_identical_payment_booked_twice_but_paid_once_is_a_ledger_duplicate():
    r = reconcile(
        [L("L1", "2026-10-03", "50.00", "INV-5"), L("L2", "2026-10-03", "50.00", "INV-5")],
        [S("S1", "2026-10-04", "50.00", "INV-5")],
    )
    r.only(exact=1, duplicate_in_ledger=1)
    [dup] = r.of("duplicate_in_ledger")
    assert dup["ledger_ids"] == ["L2"] and "L1" in dup["reason"] and dup["difference"] == "-50.00"


def test_a_statement_line_repeated_by_the_export_is_a_statement_duplicate():
    line = S("S1", "2026-10-04", "50.00", "INV-5")
    r = reconcile([L("L1", "2026-10-03", "50.00", "INV-5")], [line, dict(line)])
    r.only(exact=1, duplicate_in_statement=1)
    assert r.of("duplicate_in_statement")[0]["statement_lines"] == [3]


def test_a_repeated_line_without_reference_is_a_duplicate_not_an_ambiguity():
    line = S("S9", "2026-10-04", "-7.50", None, text="Bank charges")
    r = reconcile([], [line, dict(line)])
    r.only(missing_in_ledger=1, duplicate_in_statement=1)


# --- rule 2: reference -----------------------------------------------------------------------------
def test_reference_after_full_normalization():
    r = reconcile(
        [L("L1", "2026-10-01", "42.00", "INV-00042"), L("L2", "2026-10-02", "7.00", "A/B 007")],
        [S("S1", "2026-10-03", "42.00", "inv 42"), S("S2", "2026-10-02", "7.00", "ab-7")],
    )
    r.only(reference=2)
    assert "agree once normalized" in r.of("reference")[0]["reason"]


def test_reference_needs_the_dates_within_the_tolerance():
    r = reconcile(
        [L("L1", "2026-10-01", "42.00", "INV-00042")], [S("S1", "2026-10-20", "42.00", "inv 42")], days=3
    )
    r.only(missing_in_statement=1, missing_in_ledger=1)
    assert all("19 days apart" in x["reason"] for x in r.rows)
    assert reconcile(
        [L("L1", "2026-10-01", "42.00", "INV-00042")], [S("S1", "2026-10-20", "42.00", "inv 42")], days=30
    ).counts == {"reference": 1}


def test_reference_through_the_payout_column_of_a_single_line():
    r = reconcile(
        [L("L1", "2026-10-01", "99.00", "ORD-1", batch="po_77")],
        [S("S1", "2026-10-02", "99.00", "PO-77", text="STRIPE PAYOUT")],
    )
    r.only(reference=1)
    assert "payout/batch id 'po_77'" in r.rows[0]["reason"]


# --- rule 3: tolerance -------------------------------------------------------------------------------
def test_tolerance_pairs_the_only_candidate_when_a_reference_is_on_one_side_only():
    r = reconcile(
        [L("L1", "2026-10-01", "310.00", "INV-31"), L("L2", "2026-10-01", "55.00")],
        [S("S1", "2026-10-03", "310.00", None, text="transfer"), S("S2", "2026-10-02", "55.00", "TRF123")],
    )
    r.only(tolerance=2)
    assert r.pairs("tolerance") == {(("L1",), ("S1",)), (("L2",), ("S2",))}


def test_tolerance_respects_the_date_window():
    r = reconcile([L("L1", "2026-10-01", "310.00")], [S("S1", "2026-10-05", "310.00")], days=3)
    r.only(missing_in_statement=1, missing_in_ledger=1)
    r = reconcile([L("L1", "2026-10-01", "310.00")], [S("S1", "2026-10-05", "310.00")], days=4)
    r.only(tolerance=1)


def test_amount_tolerance_absolute_and_percent():
    ledger, statement = [L("L1", "2026-10-01", "1000.00")], [S("S1", "2026-10-01", "995.00")]
    assert reconcile(ledger, statement).counts == {"missing_in_statement": 1, "missing_in_ledger": 1}
    assert reconcile(ledger, statement, amount_tolerance="4.99").counts["missing_in_ledger"] == 1
    r = reconcile(ledger, statement, amount_tolerance="5.00")
    r.only(tolerance=1)
    assert r.rows[0]["difference"] == "-5.00"
    assert reconcile(ledger, statement, amount_tolerance="0.5%").counts == {"tolerance": 1}
    assert reconcile(ledger, statement, amount_tolerance="0.49%").counts["missing_in_ledger"] == 1
    # the difference a tolerance accepts is a match, so it is not unexplained
    assert r.summary["totals"]["unexplained"] == {"EUR": "0.00"}


def test_several_candidates_are_ambiguous_and_never_guessed():
    r = reconcile(
        [L("L1", "2026-10-01", "20.00"), L("L2", "2026-10-01", "20.00")], [S("S1", "2026-10-02", "20.00")]
    )
    r.only(ambiguous=1)
    [amb] = r.rows
    assert amb["ledger_ids"] == ["L1", "L2"] and amb["statement_ids"] == ["S1"]
    assert "not guessed" in amb["reason"]


def test_two_identical_payments_without_reference_are_ambiguous():
    r = reconcile(
        [L("L1", "2026-10-01", "20.00"), L("L2", "2026-10-01", "20.00")],
        [S("S1", "2026-10-01", "20.00"), S("S2", "2026-10-01", "20.00")],
    )
    r.only(ambiguous=1)
    assert len(r.rows[0]["ledger_ids"]) == 2 and len(r.rows[0]["statement_ids"]) == 2


# --- rule 4: grouped -----------------------------------------------------------------------------------
def test_payout_settles_the_ledger_lines_that_carry_its_id():
    ledger = [
        L("L1", "2026-10-01", "60.00", "ORD-1", batch="po_1"),
        L("L2", "2026-10-02", "40.00", "ORD-2", batch="po_1"),
        L("L3", "2026-10-02", "-2.90", None, text="Stripe fees", batch="po_1"),
    ]
    r = reconcile(ledger, [S("S1", "2026-10-03", "97.10", "PO-1", text="STRIPE PAYOUT")])
    r.only(grouped=1)
    assert r.rows[0]["ledger_ids"] == ["L1", "L2", "L3"] and "fee line L3" in r.rows[0]["reason"]


def test_payout_net_of_a_fee_line_without_reference():
    ledger = [
        L("L1", "2026-10-01", "60.00", "ORD-1", batch="po_1"),
        L("L2", "2026-10-02", "40.00", "ORD-2", batch="po_1"),
        L("L3", "2026-10-03", "-3.00", None, text="Stripe fees October"),
    ]
    r = reconcile(ledger, [S("S1", "2026-10-03", "97.00", "PO-1")])
    r.only(grouped=1)
    assert r.rows[0]["ledger_ids"] == ["L1", "L2", "L3"]
    assert "net of fee line L3" in r.rows[0]["reason"]


def test_several_ledger_lines_sharing_the_reference_and_summing_are_a_group_not_a_mismatch():
    r = reconcile(
        [L("L1", "2026-10-01", "70.00", "INV-8"), L("L2", "2026-10-08", "30.00", "INV-8")],
        [S("S1", "2026-10-09", "100.00", "INV-8")],
    )
    r.only(grouped=1)


def test_an_invoice_paid_in_two_parts_is_a_group_too():
    r = reconcile(
        [L("L1", "2026-10-01", "100.00", "INV-8")],
        [S("S1", "2026-10-02", "70.00", "INV-8"), S("S2", "2026-10-05", "30.00", "INV-8")],
    )
    r.only(grouped=1)


def test_group_without_reference_found_in_the_date_window():
    ledger = [
        L("L1", "2026-10-05", "12.10", text="Card terminal 2"),
        L("L2", "2026-10-05", "7.90", text="Card terminal 2"),
        L("L3", "2026-10-05", "30.00", text="Card terminal 2"),
        L("L9", "2026-10-20", "30.00", "INV-X"),
    ]
    r = reconcile(ledger, [S("S1", "2026-10-06", "50.00", text="CARD SETTLEMENT")])
    r.only(grouped=1, missing_in_statement=1)
    assert r.of("grouped")[0]["ledger_ids"] == ["L1", "L2", "L3"]


def test_subset_search_finds_the_one_set_that_adds_up():
    # no natural set (each line has its own day and counterparty): only the search finds it
    ledger = [
        L("L1", "2026-10-04", "12.10", text="a"),
        L("L2", "2026-10-06", "7.95", text="b"),
        L("L3", "2026-10-05", "30.00", text="c"),
    ]
    r = reconcile(ledger, [S("S1", "2026-10-06", "42.10")])
    r.only(grouped=1, missing_in_statement=1)
    assert r.of("grouped")[0]["ledger_ids"] == ["L1", "L3"]
    # with the subset search off, nothing is guessed
    r = reconcile(ledger, [S("S1", "2026-10-06", "42.10")], group_max_candidates=0)
    r.only(missing_in_statement=3, missing_in_ledger=1)


def test_two_sets_that_add_up_are_ambiguous():
    ledger = [
        L("L1", "2026-10-05", "10.00", text="a"),
        L("L2", "2026-10-05", "20.00", text="b"),
        L("L3", "2026-10-05", "30.00", text="c"),
    ]
    r = reconcile(ledger, [S("S1", "2026-10-05", "30.00")])
    # L3 alone is a tolerance candidate, but {L1, L2} is too: L3 pairs first (rule 3 runs first)
    r.only(tolerance=1, missing_in_statement=2)
    ledger = [
        L("L1", "2026-10-05", "10.00", text="a"),
        L("L2", "2026-10-05", "20.00", text="b"),
        L("L3", "2026-10-05", "5.00", text="c"),
        L("L4", "2026-10-05", "25.00", text="d"),
    ]
    r = reconcile(ledger, [S("S1", "2026-10-05", "30.00")])
    r.only(ambiguous=1)


# --- mismatches -----------------------------------------------------------------------------------------
def test_amount_mismatch_gives_both_amounts_and_the_difference():
    r = reconcile([L("L1", "2026-10-01", "120.00", "INV-3")], [S("S1", "2026-10-02", "119.95", "INV-3")])
    r.only(amount_mismatch=1)
    row = r.rows[0]
    assert (row["ledger_amount"], row["statement_amount"], row["difference"]) == ("120.00", "119.95", "-0.05")
    assert r.summary["totals"]["unexplained"] == {"EUR": "-0.05"}


def test_currency_mismatch():
    r = reconcile(
        [L("L1", "2026-10-01", "120.00", "INV-3", currency="EUR")],
        [S("S1", "2026-10-02", "120.00", "INV-3", currency="USD")],
    )
    r.only(currency_mismatch=1)
    assert r.rows[0]["currency"] == "EUR/USD" and r.rows[0]["difference"] is None
    assert r.summary["totals"]["unexplained"] == {"EUR": "-120.00", "USD": "120.00"}


def test_missing_on_either_side():
    r = reconcile([L("L1", "2026-10-01", "12.00", "INV-1")], [S("S1", "2026-10-01", "-4.00", text="fee")])
    r.only(missing_in_statement=1, missing_in_ledger=1)
    assert r.summary["totals"]["difference"] == {"EUR": "-16.00"}


# --- money ---------------------------------------------------------------------------------------------
def test_amounts_are_exact_decimals():
    # 0.1 + 0.2 == 0.3 exactly, in the group sum and in every total
    ledger = [L("L1", "2026-10-01", "0.1", "INV-1"), L("L2", "2026-10-01", "0.2", "INV-1")]
    r = reconcile(ledger, [S("S1", "2026-10-01", "0.3", "INV-1")])
    r.only(grouped=1)
    ledger = [L(f"L{i}", "2026-10-01", "0.10", f"R{i}") for i in range(1000)]
    statement = [S(f"S{i}", "2026-10-01", "0.10", f"R{i}") for i in range(999)]
    r = reconcile(ledger, statement)
    assert r.summary["totals"]["ledger"] == {"EUR": "100.00"}
    assert r.summary["totals"]["statement"] == {"EUR": "99.90"}
    assert r.summary["totals"]["unexplained"] == {"EUR": "-0.10"}
    r = reconcile([L("L1", "2026-10-01", "0.0001", "X")], [S("S1", "2026-10-01", "0.0002", "X")])
    assert r.rows[0]["difference"] == "0.0001" and Decimal(r.rows[0]["ledger_amount"]) == Decimal("0.0001")


def test_every_line_lands_in_exactly_one_item():
    ledger = [
        L("L1", "2026-10-01", "1.00", "A"),
        L("L2", "2026-10-01", "1.00", "A"),
        L("L3", "2026-10-02", "5.00"),
        L("L4", "2026-10-02", "5.00"),
        L("L5", "2026-10-03", "9.00", "B"),
    ]
    statement = [
        S("S1", "2026-10-01", "1.00", "a"),
        S("S2", "2026-10-02", "5.00"),
        S("S3", "2026-10-03", "8.00", "b"),
    ]
    r = reconcile(ledger, statement)
    lines = r.summary["lines"]
    assert sum(lines["ledger"].values()) == 5 and sum(lines["statement"].values()) == 3
    seen = sorted(i for row in r.rows for i in row["ledger_ids"])
    assert seen == ["L1", "L2", "L3", "L4", "L5"]
