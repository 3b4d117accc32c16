"""What the checks share: one main training run, the extra seeds, the trivial baseline.

Each run is made once, on first use, so a subset of checks trains only what it needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from training.config import TrainConfig
from training.metrics import Baseline, baseline
from training.runner import Prepared, TrainResult, prepare, train

REPEAT_STEPS = 100  # a differing curve shows itself early; the whole run twice would double the cost


@dataclass
class CheckContext:
    config: TrainConfig
    n_seeds: int = 3
    _main: TrainResult | None = None
    _repeat: TrainResult | None = None
    _seeds: dict[int, TrainResult] = field(default_factory=dict)
    _baseline: Baseline | None = None
    _prepared: Prepared | None = None

    def __post_init__(self) -> None:
        self.config = self.config.resolved()

    def fresh(self, **override: object) -> Prepared:
        """A newly seeded, newly built model on the (cached) data."""
        cfg = replace(self.config, **override)  # type: ignore[arg-type]
        data = (self._prepared.train, self._prepared.val) if self._prepared else None
        p = prepare(cfg, data)
        if self._prepared is None:
            self._prepared = p
        return p

    @property
    def prepared(self) -> Prepared:
        return self._prepared or self.fresh()

    @property
    def main(self) -> TrainResult:
        if self._main is None:
            self._main = train(self.fresh())
            self._seeds[self.config.seed] = self._main
        return self._main

    @property
    def repeat(self) -> TrainResult:
        """The main run's first REPEAT_STEPS steps again, same seed: reproducibility compares them."""
        if self._repeat is None:
            self._repeat = train(
                self.fresh(), record_updates=False, keep_params=False, stop_after_steps=REPEAT_STEPS
            )
        return self._repeat

    def seed_runs(self) -> dict[int, TrainResult]:
        _ = self.main
        for s in range(self.config.seed, self.config.seed + self.n_seeds):
            if s not in self._seeds:
                self._seeds[s] = train(self.fresh(seed=s), record_updates=False, keep_params=False)
        return dict(self._seeds)

    @property
    def baseline(self) -> Baseline:
        if self._baseline is None:
            p = self.prepared
            self._baseline = baseline(p.task, p.loss_name, p.train, p.val)
        return self._baseline
