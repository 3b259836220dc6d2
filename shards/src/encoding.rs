//! Parquet encoding choices for record files (filled in by the schemas work).
