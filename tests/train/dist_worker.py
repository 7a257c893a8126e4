"""Run by ``torchrun`` in tests/train/test_distributed.py (not a test module itself).

``python -m torch.distributed.run --nproc_per_node N dist_worker.py CONFIG.yaml REPORT_DIR`` runs
``kinema train CONFIG.yaml train.steps=2`` (the CLI, as a user would under torchrun), then resumes
from its checkpoint in a fresh Trainer and trains to ``train.steps``, and writes, per rank, what the
test checks: ``rank{r}.json`` (the step it resumed at, world size, whether the weights were
sharded) and ``rank{r}.safetensors`` (the whole weights and EMA as this rank sees them at the end).
One launch for both phases keeps the test quick (each launch pays for importing torch).
With a third argument ``skewed-clock`` it trains once with a clock that runs faster on rank 1
(``train.lr_decay_over=minutes`` must still give every rank the same learning rates).
"""

import json
import sys
from pathlib import Path

from safetensors.torch import save_file

from kinema import cli
from kinema.config import load_config
from kinema.train.distributed import full_tensor, rank, world_size
from kinema.train.loop import Trainer


def main(config: str, report_dir: str) -> None:
    assert cli.main(["train", config, "train.steps=2"]) == 0
    trainer = Trainer(load_config(config), resume=True)
    resumed_at = trainer.step
    trainer.fit()
    params = dict(trainer.model.named_parameters())
    sharded = any(full_tensor(p).numel() > getattr(p, "to_local", lambda: p)().numel() for p in params.values())
    weights = {f"model.{k}": full_tensor(p.detach()).cpu().contiguous() for k, p in params.items()}
    weights.update({f"ema.{k}": v.cpu().contiguous() for k, v in trainer.ema.state_dict(full=True).items()})
    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out / f"rank{rank()}.safetensors"))
    report = {"rank": rank(), "world_size": world_size(), "resumed_at": resumed_at, "final_step": trainer.step,
              "parallel": trainer.parallel, "sharded": sharded}
    (out / f"rank{rank()}.json").write_text(json.dumps(report))


class SkewedClock:
    """A ``time`` module whose clock runs (1 + rank) times as fast: ranks disagree on elapsed time."""

    def __init__(self):
        import time

        self.real, self.start = time.time, time.time()

    def time(self):
        return self.start + (self.real() - self.start) * (1 + rank())


def skewed(config: str, report_dir: str) -> None:
    """Train CONFIG once with a per-rank clock skew; write the weights and the learning rates seen."""
    from kinema.train import loop

    loop.time = SkewedClock()
    trainer = Trainer(load_config(config))
    trainer.fit()
    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: full_tensor(p.detach()).cpu().contiguous() for k, p in trainer.model.named_parameters()},
              str(out / f"rank{rank()}.safetensors"))
    (out / f"rank{rank()}.json").write_text(json.dumps({"lr": [r["lr"] for r in trainer.history]}))


if __name__ == "__main__":
    (skewed if sys.argv[3:] == ["skewed-clock"] else main)(sys.argv[1], sys.argv[2])
