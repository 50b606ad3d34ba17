"""Features: schema, offline store (Parquet + DuckDB), online stores, events, content encoders."""
