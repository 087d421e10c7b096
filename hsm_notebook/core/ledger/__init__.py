"""The sweep folder and its ledger: files, the SQLite store, steps, frames and read-only views,
events, and how a sweep is recorded and rebuilt.  Over base, spec and model."""
