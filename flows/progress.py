"""Progress of a run: cells and samples done of the total, rate and ETA, logged as chunks finish."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from workers.units import CellSpec, WorkUnit


@dataclass
class RunProgress:
    """Thread-safe counters updated by the chunk tasks of one run."""

    cells: list[CellSpec]
    chunks_per_cell: dict[str, int]
    total_samples: int
    samples_done: int = 0
    chunks_written: Counter = field(default_factory=Counter)
    failed_cells: set[str] = field(default_factory=set)
    started: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def mark_existing(self, done: set[tuple[str, int]]) -> None:
        """Count chunks already in the store (a resumed run)."""
        with self._lock:
            for cell_id, _ in done:
                if cell_id in self.chunks_per_cell:
                    self.chunks_written[cell_id] += 1

    def cells_done(self) -> int:
        return sum(1 for cell_id, count in self.chunks_per_cell.items() if self.chunks_written[cell_id] >= count)

    def record(self, unit: WorkUnit) -> str:
        """Count a finished unit and return the progress line to log."""
        with self._lock:
            self.samples_done += len(unit.sample_indices)
            for cell in unit.cells:
                self.chunks_written[cell.cell_id] += 1
            elapsed = time.monotonic() - self.started
            rate = self.samples_done / elapsed if elapsed > 0 else 0.0
            remaining = self.total_samples - self.samples_done
            eta = remaining / rate if rate > 0 else float("nan")
            return (
                f"cells {self.cells_done()}/{len(self.cells)} complete, samples {self.samples_done}/{self.total_samples} "
                f"({unit.benchmark} chunk {unit.chunk_index} on {unit.model}, {len(unit.cells)} cells), "
                f"{rate:.2f} samples/s, ETA {eta:.0f} s"
            )
