"""Feature drift of the CTR inputs: a reference fitted on training rows (quantile bins for the
integer columns, the most frequent categories for the categorical ones) and the PSI of recent
labelled rows against it (`strata.monitoring.drift.psi`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from strata.ctr.preprocess import CAT_COLUMNS, INT_COLUMNS, CtrBatch
from strata.errors import ValidationError
from strata.monitoring.drift import psi


@dataclass(frozen=True)
class FeatureDriftReport:
    """PSI per feature and the features above the alert level."""

    psi: dict[str, float]
    alerts: list[str]
    rows: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict of the report."""
        return asdict(self)


@dataclass
class FeatureDriftReference:
    """Reference bins and proportions per feature, fitted on training rows; JSON-serialisable."""

    edges: dict[str, list[float]] = field(default_factory=dict)  # integer features
    top: dict[str, list[int]] = field(default_factory=dict)  # categorical features
    props: dict[str, list[float]] = field(default_factory=dict)
    psi_alert: float = 0.2

    @classmethod
    def fit(
        cls,
        batch: CtrBatch,
        features: Sequence[str] | None = None,
        bins: int = 10,
        top_k: int = 20,
        psi_alert: float = 0.2,
    ) -> FeatureDriftReference:
        """Quantile bins for integer features, top-k categories for categorical ones."""
        ref = cls(psi_alert=psi_alert)
        for name in features or (*INT_COLUMNS, *CAT_COLUMNS):
            if name in INT_COLUMNS:
                values, missing = _int_feature(batch, name)
                present = values[~missing]
                qs = np.quantile(present, np.linspace(0, 1, bins + 1)[1:-1]) if present.size else []
                ref.edges[name] = [float(x) for x in np.unique(qs)]
            elif name in CAT_COLUMNS:
                ids = batch.cats[:, CAT_COLUMNS.index(name)]
                uniq, counts = np.unique(ids, return_counts=True)
                ref.top[name] = [int(x) for x in uniq[np.argsort(-counts, kind="stable")][:top_k]]
            else:
                raise ValidationError("features", f"unknown feature {name!r}")
            ref.props[name] = (ref._hist(batch, name) / len(batch)).tolist()
        return ref

    def _hist(self, batch: CtrBatch, name: str) -> np.ndarray:
        if name in self.edges:
            values, missing = _int_feature(batch, name)
            b = np.searchsorted(np.asarray(self.edges[name]), values, side="right")
            b = np.where(missing, len(self.edges[name]) + 1, b)  # last bin: missing
            return np.bincount(b, minlength=len(self.edges[name]) + 2).astype(np.float64)
        ids = batch.cats[:, CAT_COLUMNS.index(name)]
        top = np.asarray(self.top[name], dtype=np.int64)
        order = np.argsort(top)
        pos = np.searchsorted(top[order], ids)
        pos = np.clip(pos, 0, max(len(top) - 1, 0))
        hit = top[order][pos] == ids if len(top) else np.zeros(len(ids), dtype=bool)
        b = np.where(hit, order[pos] if len(top) else 0, len(top))  # last bin: other
        return np.bincount(b, minlength=len(top) + 1).astype(np.float64)

    def compare(self, batch: CtrBatch) -> FeatureDriftReport:
        """PSI of `batch` against the reference for every fitted feature."""
        if len(batch) == 0:
            raise ValidationError("batch", "no rows to compare")
        out = {name: psi(np.asarray(p), self._hist(batch, name)) for name, p in self.props.items()}
        alerts = sorted(k for k, v in out.items() if v > self.psi_alert)
        return FeatureDriftReport(psi=out, alerts=alerts, rows=len(batch))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureDriftReference:
        """Inverse of `to_dict`."""
        return cls(
            edges={k: list(v) for k, v in d["edges"].items()},
            top={k: list(v) for k, v in d["top"].items()},
            props={k: list(v) for k, v in d["props"].items()},
            psi_alert=float(d["psi_alert"]),
        )


def _int_feature(batch: CtrBatch, name: str) -> tuple[np.ndarray, np.ndarray]:
    j = INT_COLUMNS.index(name)
    return batch.dense[:, j].astype(np.float64), batch.dense[:, len(INT_COLUMNS) + j] > 0.5
