"""A launch's results, and which of them a table row reads: the finished runs of its trial, its inference variant
and its grid values. Tables, claims and plots all select a row's results here."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd

from .study import Row

Replicates = dict[str, dict[str, dict[str, np.ndarray]]]
"""Each finished run's bootstrap replicates over the val images: run id -> variant -> metric -> (R,)."""


@dataclass(frozen=True)
class ResultSet:
    """``frame``: one row per trial run x inference variant, as ``ablab.results`` gives it (or
    ``query.trial_files``); ``replicates``: its runs' bootstrap replicates, None where no interval over the val
    images is wanted (a table of means)."""

    frame: pd.DataFrame
    replicates: Optional[Replicates] = None

    @property
    def empty(self) -> bool:
        return self.frame.empty

    def finished(self) -> "ResultSet":
        """The results of finished runs (a failed or interrupted trial's partial metrics are never shown)."""
        frame = self.frame
        return ResultSet(frame[frame["status"] == "FINISHED"] if "status" in frame else frame, self.replicates)

    def variant_of(self, row: Row) -> Optional[str]:
        """The variant a row reads: its own, else the first its trial evaluated (the rule the study check uses)."""
        if row.variant or self.frame.empty:
            return row.variant
        evaluated = self.frame.loc[self.frame["trial"] == row.trial, "variant"]
        return evaluated.iloc[0] if len(evaluated) else None

    def of_row(self, row: Row) -> pd.DataFrame:
        """The results a measured row reads: its trial, its variant, and the grid values of its ``where``."""
        frame = self.frame
        if not row.measured or frame.empty:
            return frame[:0]
        sel = (frame["trial"] == row.trial) & (frame["variant"] == self.variant_of(row))
        for key, value in row.where.items():  # compared as JSON: a grid value may be a list (train.steps)
            sel &= frame[key].map(json.dumps) == json.dumps(value) if key in frame else False
        return frame[sel]
