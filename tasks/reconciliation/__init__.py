"""Reconciliation jobs: match a payments ledger against bank and processor statements."""
