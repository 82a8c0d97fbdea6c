"""Analysis jobs: profiles, aggregates, anomalies and reports over CSV/Parquet/JSON-lines data."""
