"""Which results a table row reads: the finished runs of its trial, its inference variant and its grid values.
Tables, claims and plots all select a row's results here."""
from __future__ import annotations

import json
from typing import Optional

import pandas as pd

from .study import Row


def finished(results: pd.DataFrame) -> pd.DataFrame:
    """The rows of finished runs (a failed or interrupted trial's partial metrics are never shown)."""
    return results[results["status"] == "FINISHED"] if "status" in results else results


def row_variant(row: Row, results: pd.DataFrame) -> Optional[str]:
    """The variant a row reads: its own, else the first its trial evaluated (the same rule the study check uses)."""
    if row.variant or results.empty:
        return row.variant
    evaluated = results.loc[results["trial"] == row.trial, "variant"]
    return evaluated.iloc[0] if len(evaluated) else None


def row_results(row: Row, results: pd.DataFrame) -> pd.DataFrame:
    """The results a measured row reads: its trial, its variant, and the grid values of its ``where``."""
    if not row.measured or results.empty:
        return results[:0]
    sel = (results["trial"] == row.trial) & (results["variant"] == row_variant(row, results))
    for key, value in row.where.items():  # compared as JSON: a grid value may be a list (train.steps)
        sel &= results[key].map(json.dumps) == json.dumps(value) if key in results else False
    return results[sel]
