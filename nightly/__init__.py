"""Nightly dubbing: catalog of portraits and dubbed tracks, tonight's manifest by content hash, the ledger,
MLflow tags and dashboards for nightly runs, and the HTML run report. `jobs/nightly_dubbing.py` is the entry."""
