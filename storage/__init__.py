"""The Parquet result store of evaluation results, its schema and its DuckDB views."""
