"""Metric loggers for the :class:`~recsys_mt.train.Trainer`.

The trainer calls :meth:`Logger.log_hyperparams` once per fit, :meth:`Logger.log_metrics`
every ``log_every_n_steps`` optimiser steps (``train/loss_step``, ``lr``) and at every epoch
end (``epoch``, ``train/*``, ``val/*``, ``lr``, ``time/epoch_s``), and :meth:`Logger.finalize`
when fit ends (also on errors). Under ``torchrun`` only rank 0 calls them.
"""

from __future__ import annotations

import csv
import json
import os
from typing import Any

__all__ = ["CSVLogger", "Logger", "TensorBoardLogger"]


class Logger:
    """Base class of metric loggers."""

    def log_hyperparams(self, params: dict[str, Any]) -> None:
        """Record the run's configuration (plain values). Default: ignore."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Record scalar ``metrics`` at optimiser step ``step``."""
        raise NotImplementedError

    def finalize(self) -> None:
        """Flush and close. Default: nothing."""


def _fmt(value: Any) -> str:
    """A CSV cell: integers as such, floats with full precision, ``None`` as empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # shortest round-tripping form; nan / inf as such
    return str(value)


class CSVLogger(Logger):
    """Append rows to ``<dirpath>/metrics.csv``: ``epoch``, ``step`` and one column per metric.

    Rows logged with different keys share one file: when a row brings keys not yet in the
    header, the file is rewritten with the extended header (earlier rows get empty cells).
    An existing file (e.g. from the run being resumed) is appended to. Hyperparameters go to
    ``<dirpath>/hparams.json``.
    """

    def __init__(self, dirpath: str | os.PathLike, filename: str = "metrics.csv"):
        self.dirpath = os.fspath(dirpath)
        self.path = os.path.join(self.dirpath, filename)
        self._columns: list[str] | None = None

    def log_hyperparams(self, params: dict[str, Any]) -> None:
        os.makedirs(self.dirpath, exist_ok=True)
        with open(os.path.join(self.dirpath, "hparams.json"), "w", encoding="utf-8") as f:
            json.dump(params, f, indent=2, sort_keys=True, default=str)

    def _load_columns(self) -> list[str]:
        if os.path.exists(self.path) and os.path.getsize(self.path) > 0:
            with open(self.path, newline="", encoding="utf-8") as f:
                header = next(csv.reader(f), None)
            if header:
                return list(header)
        return []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        os.makedirs(self.dirpath, exist_ok=True)
        if self._columns is None:
            self._columns = self._load_columns()
        row = {"step": step, **metrics}
        columns = self._columns or ["epoch", "step"]
        new = [k for k in row if k not in columns]
        if new or not self._columns:
            if self._columns:  # rewrite existing rows under the extended header
                with open(self.path, newline="", encoding="utf-8") as f:
                    old_rows = list(csv.DictReader(f))
            else:
                old_rows = []
            columns = columns + new
            tmp = self.path + ".tmp"
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=columns)
                writer.writeheader()
                writer.writerows(old_rows)
            os.replace(tmp, self.path)
            self._columns = columns
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=self._columns)
            writer.writerow({k: _fmt(row.get(k)) for k in self._columns})


class TensorBoardLogger(Logger):
    """Write scalars to TensorBoard event files under ``dirpath``.

    ``torch.utils.tensorboard`` (which needs the ``tensorboard`` package) is imported on first
    use; install it with ``pip install recsys-mt[tensorboard]``.
    """

    def __init__(self, dirpath: str | os.PathLike):
        self.dirpath = os.fspath(dirpath)
        self._writer: Any = None

    @property
    def writer(self) -> Any:
        """The :class:`~torch.utils.tensorboard.SummaryWriter` (created on first access)."""
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError(
                    "TensorBoardLogger needs the 'tensorboard' package: "
                    "pip install recsys-mt[tensorboard]  (or: pip install tensorboard)"
                ) from e
            self._writer = SummaryWriter(log_dir=self.dirpath)
        return self._writer

    def log_hyperparams(self, params: dict[str, Any]) -> None:
        text = json.dumps(params, indent=2, sort_keys=True, default=str)
        self.writer.add_text("hparams", f"```\n{text}\n```")

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, global_step=step)

    def finalize(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None
