"""The training loop: a small step function, and a loop that calls hooks around it.

``Trainer(cfg).fit()`` trains the trainable parts of the system ``cfg`` describes
(:mod:`kinema.system`) on ``cfg.data`` by running its objective (``objective(parts, batch, rng) ->
(loss, logs)``, :mod:`kinema.diffusion.objective`; the trainer itself knows no diffusion) with AdamW, linear warmup, gradient
clipping and accumulation, an EMA of the weights, bf16 autocast on CUDA (fp32 on CPU), atomic
checkpoints and exact resume, JSONL / TensorBoard logs, a progress bar, preview GIFs and a
loss-curve PNG. A NaN/inf loss stops the run with a message naming the step.

Several trainable parts (an objective's ``discriminator`` next to ``model``; see
:func:`kinema.system.objective_parts`): each has its own AdamW (at its ``Part.lr``, or ``train.lr``) and
gradient clipping. The objective then returns ``{part: loss}`` and each loss is back-propagated into its
own part's parameters only (``backward(inputs=...)``), so the generator's loss never moves the
discriminator and the other way round; a part without a loss in a step is not stepped. The EMA follows
``model`` only; the other parts' gradients are averaged over processes by hand (they are not wrapped in
DDP / FSDP). Checkpoints hold every trainable part and its optimizer state. An objective that returns one
tensor trains ``model`` exactly as before.

Under ``torchrun`` the same code trains data-parallel (``train.parallel``: DDP, or FSDP2 sharding);
``train.batch_size`` is the global batch, and N processes produce the weights one process would
(noise and times are drawn for the global batch, see :meth:`Trainer.draw_global`). Checkpoints are
written by rank 0 in one format for every world size, so runs resume on more or fewer GPUs.
"""

from __future__ import annotations

import copy
import json
import math
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
from tqdm.auto import tqdm

from kinema import checkpoint as ckpt_io
from kinema.conditioning import Conditioning
from kinema.config import KinemaConfig, save_config, to_dict, to_yaml
from kinema.diffusion.objective import TrainBatch
from kinema.diffusion.superres import degrade
from kinema.data.factory import build_dataset
from kinema.data.io import write_video
from kinema.data.joint import check_joint_conditioning
from kinema.data.latents import LATENTS
from kinema.data.loader import collate, infinite_batches
from kinema.models.text import TextConditioned
from kinema.pipelines.sample import lowres_conditioning, make_conditioning, sample_videos
from kinema.system import (AUTOENCODER, MODEL, System, autocast, autocast_dtype, build_model, build_objective,
                           build_system, config_section, named_trainable_parameters, resolve_device)
from kinema.train.distributed import (PARALLEL_MODES, all_reduce_max, all_reduce_mean, average_gradients, barrier,
                                     full_tensor, gather_objects, init_from_env, is_main, local_slice, print0, rank,
                                     wrap_for_parallel, world_size)
from kinema.train.ema import EMA
from kinema.train.optim import Muon
from kinema.train.progress import BudgetBar
from kinema.train.rundir import config_changes, locked_fit, prepare_run_dir
from kinema.validate import check_train_config


class NonFiniteLossError(RuntimeError):
    """Raised when the training loss becomes NaN or infinite."""


def lr_factor(step: int, warmup_steps: int, schedule: str = "constant", total_steps: int = 0,
              min_ratio: float = 0.0) -> float:
    """Learning-rate multiplier: linear warmup from ~0 to 1 over ``warmup_steps`` optimizer steps,
    then ``constant``, or ``cosine`` decay to ``min_ratio`` at ``total_steps`` (Loshchilov & Hutter
    2017, SGDR eq. 5 without restarts)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown train.lr_schedule {schedule!r}; choose constant or cosine")


def budget_steps(step: int, start_step: int, elapsed: float, minutes: float, max_steps: int) -> int:
    """The step at which a ``minutes`` budget will end, extrapolated from the rate since
    ``start_step`` (``elapsed`` seconds ago), capped at ``max_steps``: where
    ``train.lr_decay_over=minutes`` ends its cosine. Before any step is timed: ``max_steps``."""
    done = step - start_step
    if done <= 0 or elapsed <= 0:
        return max_steps
    left = max(0.0, 60.0 * minutes - elapsed)
    return min(max_steps, step + int(done / elapsed * left))


def batch_to_inputs(batch: dict, device: torch.device, *, encode_text: Optional[Callable] = None,
                    class_key: Optional[str] = None) -> tuple[torch.Tensor, Conditioning]:
    """Video ``[B, C, F, H, W]`` (or cached latents, ``batch["latents"]``) and its Conditioning from a collated
    data batch: frame segments;
    with ``encode_text`` (captions -> ``(text_emb, text_mask)``) the embeddings of ``batch["caption"]``;
    with ``class_key`` the class labels ``batch[class_key]`` ``[B]``."""
    x = batch[LATENTS if LATENTS in batch else "video"].to(device, non_blocking=True)
    segments = batch.get("frame_segments")
    cond = Conditioning(frame_segments=segments.to(device) if segments is not None else None)
    if encode_text is not None:
        if "caption" not in batch:
            raise ValueError(f"a text-conditional model needs captions, but the data items have keys {sorted(batch)}")
        cond.text_emb, cond.text_mask = encode_text(batch["caption"])
    if class_key is not None:
        labels = batch.get(class_key)
        if not isinstance(labels, torch.Tensor) or labels.dtype != torch.long or labels.ndim != 1:
            raise ValueError(f"data.class_key={class_key!r} must name an integer id per item; the batch has "
                             f"{type(labels).__name__ if not isinstance(labels, torch.Tensor) else tuple(labels.shape)}"
                             f" (item keys: {sorted(batch)})")
        cond.class_labels = labels.to(device)
    return x, cond


class GlobalRandom:
    """The objective's randomness (:class:`~kinema.diffusion.objective.BatchRandom`) for a trainer:
    draws for the global micro-batch (all ranks) from the trainer's generator, this rank's rows
    returned (:meth:`Trainer.draw_global`)."""

    def __init__(self, trainer: "Trainer") -> None:
        self.trainer = trainer
        self.generator = trainer.generator

    def draw(self, fn) -> torch.Tensor:
        return self.trainer.draw_global(fn)

    def uniform(self, n: int) -> torch.Tensor:
        return self.trainer.uniform_global(n)


@dataclass
class StepOutput:
    loss: torch.Tensor  # scalar on device, detached (no host sync)
    grad_norm: torch.Tensor
    part_losses: Optional[dict] = None  # other trainable parts' losses this step (name -> detached scalar)


class Trainer:
    """Owns the model, optimizer, EMA, data stream and run directory of one training run."""

    def __init__(self, cfg: KinemaConfig, *, resume: bool = False, overwrite: bool = False, dataset=None) -> None:
        check_train_config(cfg)  # ranges and choices, before the run directory is touched
        self.cfg = cfg
        t = cfg.train
        if t.parallel not in PARALLEL_MODES:
            raise ValueError(f"unknown train.parallel {t.parallel!r}; choose one of {', '.join(PARALLEL_MODES)}")
        self.device = resolve_device(t.device)
        init_from_env(self.device.type)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())  # this rank's GPU
        self.world = world_size()
        self.parallel = t.parallel if self.world > 1 else "none"
        per_step = t.batch_size // (self.world * t.grad_accum)
        if per_step * self.world * t.grad_accum != t.batch_size or per_step < 1:
            raise ValueError(f"train.batch_size={t.batch_size} must be a multiple of world_size ({self.world}) "
                             f"x train.grad_accum ({t.grad_accum})")
        self.micro_batch = per_step
        self.amp = autocast_dtype(t.precision, self.device)
        self.out_dir = prepare_run_dir(Path(t.out_dir).expanduser(), resume=resume, overwrite=overwrite,
                                       main=is_main(), report=print0)  # refuses an existing run / a live lock
        torch.manual_seed(t.seed)  # the same initial weights on every rank
        self.system = build_system(cfg).to(self.device)  # every part, frozen ones too
        self.model = self.system.model
        self.frozen = {name: part.module for name, part in self.system.frozen().items()}
        self.parts = {name: part for name, part in self.system.trainable().items() if name != MODEL}  # e.g. a discriminator
        if rank() > 0:
            torch.manual_seed(t.seed + rank())  # but each rank its own dropout stream
        if t.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last_3d)
        self.objective = build_objective(cfg, self.system.spec)
        # One stream of t and noise for the global batch, identical on every rank (see draw_global).
        self.generator = torch.Generator(self.device).manual_seed(t.seed * 1000003)
        self.random = GlobalRandom(self)  # the objective's draws, all through draw_global
        self.dataset = dataset if dataset is not None else build_dataset(cfg.data)
        item = self.dataset[0]  # one item (decoding a file for folder datasets), for the checks below
        self._check_channels(item)
        self._check_conditioning(item)
        self.step = 0
        self.schedule_steps = t.steps  # where the cosine ends; re-estimated at log steps with lr_decay_over=minutes
        last = self._last_checkpoint() if resume else None
        self._manifest = None
        if last is not None:  # whole weights go in before the model is sharded
            self._manifest = ckpt_io.load_manifest(last)
            ckpt_io.check_frozen_parts(self._manifest, self.system.manifest(), last)
            for name, module in {MODEL: self.model, **{k: p.module for k, p in self.parts.items()}}.items():
                state = ckpt_io.load_part_state(last, name, ema=False, manifest=self._manifest)
                ckpt_io.load_model_state(module, state, last)
        self.net = self._wrap_model()
        self.ema = EMA(self.model, t.ema_decay, t.ema_warmup)  # trainable parameters only
        self.optimizer = self._optimizer(self.model, t.lr)
        self.optimizers = {MODEL: self.optimizer,  # one per trainable part, each at its own base lr
                           **{k: self._optimizer(p.module, t.lr if p.lr is None else p.lr)
                              for k, p in self.parts.items()}}
        self.base_lr = {name: opt.param_groups[0]["lr"] for name, opt in self.optimizers.items()}
        if last is not None:
            self._resume(last)
        self.history: list[dict] = []

    # ---- setup helpers -----------------------------------------------------------------------------

    def _optimizer(self, module: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
        """``train.optimizer`` over ``module``'s trainable parameters: AdamW, or Muon (:mod:`kinema.train.optim`)."""
        t = self.cfg.train
        if t.optimizer == "muon":
            if self.parallel == "fsdp":
                raise ValueError("train.optimizer=muon orthogonalizes whole weight matrices, which train.parallel=fsdp "
                                 "shards across ranks; use train.parallel=ddp or train.optimizer=adamw")
            return Muon.for_module(module, lr, betas=(t.beta1, t.beta2), weight_decay=t.weight_decay)
        # The fused kernel on CUDA and on CPU (there 303 vs 326 ms per demo step in one process); FSDP's sharded
        # parameters keep the default on CPU
        fused = self.device.type == "cuda" or (self.device.type == "cpu" and self.parallel != "fsdp")
        return torch.optim.AdamW([p for _, p in named_trainable_parameters(module)], lr=lr, betas=(t.beta1, t.beta2),
                                 weight_decay=t.weight_decay, fused=fused)

    def _check_channels(self, item: dict) -> None:
        if LATENTS in item:  # a latent cache: written by the model's autoencoder, in its latent shape
            if self.system.is_sr_stage:  # its low-res input is derived from the pixel clip, which a cache lacks
                raise ValueError("data.dataset=latents holds no pixel clips, but this model is a super-resolution "
                                 "stage (sr.spatial_factor / sr.temporal_factor > 1) whose low-res input is derived "
                                 "from them; train it on videos (encoded on the fly)")
            part = self.system.parts.get(AUTOENCODER)
            self.dataset.check_fits(None if part is None else (part.source, part.sha256), self.system.space.shape())
            return
        spec, channels = self.system.spec, item["video"].shape[0]
        if self.cfg.model.space != "pixel":  # the space knows what its encoder takes
            self.system.space.check_channels(channels, f"dataset '{self.cfg.data.dataset}'")
        elif channels != spec.in_channels:
            section = f"model.{config_section(self.cfg)}"
            raise ValueError(f"{section}.in_channels={spec.in_channels} but dataset '{self.cfg.data.dataset}' yields "
                             f"{channels}-channel videos; set {section}.in_channels={channels}")

    def _check_conditioning(self, item: dict) -> None:
        d, spec = self.cfg.data, self.system.spec
        if d.class_key is not None:
            if spec.num_classes < 1:
                raise ValueError(f"data.class_key={d.class_key!r} needs a class-conditional model: set "
                                 f"model.{config_section(self.cfg)}.num_classes to the number of classes")
            if d.class_key not in item:
                raise ValueError(f"data.class_key={d.class_key!r} is not a key of the '{d.dataset}' items "
                                 f"(keys: {sorted(item)})")
        if self.parallel == "fsdp" and isinstance(self.model, TextConditioned) and "text_encoder" in self.model._modules:
            raise ValueError("train.parallel=fsdp does not support the trainable built-in text encoder yet (it runs "
                             "outside the sharded forward); use train.parallel=ddp or a frozen model.text.encoder")
        if isinstance(self.model, TextConditioned) and "caption" not in item:
            raise ValueError(f"model.text.encoder={self.cfg.model.text.encoder} needs captions, but the "
                             f"'{d.dataset}' items have keys {sorted(item)}")
        check_joint_conditioning(self.dataset, ["caption" if isinstance(self.model, TextConditioned) else None,
                                                d.class_key])
        if d.image_fraction > 0 and "frame_segments" not in spec.reads:
            raise ValueError(f"the {self.cfg.model.name} backbone mixes every frame of an item (its spec does not read "
                             f"frame_segments, e.g. with model.unet.norm_stats=clip), so it cannot keep apart the "
                             f"independent images that data.image_fraction={d.image_fraction} appends; use a backbone "
                             f"that honours frame segments (model.unet.norm_stats=frame) for joint image-video training")

    def inputs(self, batch: dict) -> tuple[torch.Tensor, Conditioning]:
        """``batch_to_inputs`` with this run's text encoder (the trained one) and class key."""
        encode = self.model.encode_text if isinstance(self.model, TextConditioned) else None
        return batch_to_inputs(batch, self.device, encode_text=encode, class_key=self.cfg.data.class_key)

    def _wrap_model(self):
        """The module the step calls: DDP / FSDP2 under torchrun (``train.parallel``), then
        ``torch.compile`` (compiling the wrapper lets DDP split graphs at its gradient buckets).
        ``self.model`` stays the plain module (FSDP shards it in place)."""
        net = self.model
        if self.parallel != "none":
            net = wrap_for_parallel(net, self.parallel, self.device, param_dtype=self.amp)
        if self.cfg.train.compile:
            net = torch.compile(net)
        return net

    def _last_checkpoint(self) -> Optional[Path]:
        found = ckpt_io.list_checkpoints(self.out_dir)
        if not found:
            print0(f"no checkpoint in {self.out_dir}/ckpt; starting from scratch")
            return None
        last = ckpt_io.newest_intact(self.out_dir, report=print0, set_aside=is_main())
        if last is None:
            raise ckpt_io.CheckpointError(f"no intact checkpoint left in {self.out_dir}/ckpt (all were corrupt and "
                                          f"moved aside as corrupt-step-*); train into a new train.out_dir")
        self._report_config_changes(last)
        return last

    def _report_config_changes(self, last: Path) -> None:
        """Say what differs between checkpoint ``last``'s config and this run's (the resumed run is no
        longer an exact continuation; model changes fail when the weights load)."""
        changes = config_changes(to_dict(ckpt_io.load_checkpoint_config(last)), to_dict(self.cfg))
        if changes:
            warnings.warn(f"resuming {last} with a changed config ({'; '.join(changes)}): the run continues, "
                          f"but not as an exact continuation of the original", stacklevel=3)

    def _resume(self, last: Path) -> None:
        """Optimizer, EMA, step and RNG state from checkpoint ``last`` (the weights are already in).
        Every rank reads the same files, so the world size may differ from the run that wrote them:
        data order and noise depend only on the step and the global batch."""
        self.ema.load_state_dict(ckpt_io.load_part_state(last, MODEL, ema=True, manifest=self._manifest))
        state = ckpt_io.load_trainer_state(last)
        load_optimizer_state(self.model, self.optimizer, state["optimizer"])
        for name, part in self.parts.items():
            load_optimizer_state(part.module, self.optimizers[name], state["part_optimizers"][name])
        self.step = int(state["step"])
        self.generator.set_state(state["generators"][0])
        rngs = state.get("torch_rngs", [state["torch_rng"]])
        if rank() < len(rngs):  # dropout streams continue where this rank left off
            torch.set_rng_state(rngs[rank()])
        cuda_rngs = state.get("cuda_rngs", [state["cuda_rng"]] if "cuda_rng" in state else [])
        if self.device.type == "cuda" and rank() < len(cuda_rngs):
            torch.cuda.set_rng_state(cuda_rngs[rank()])
        print0(f"resumed from {last} at step {self.step} (world size {self.world}, written by "
               f"{state.get('world_size', 1)})")

    def batches(self) -> Iterator[dict]:
        d = self.cfg.data
        return infinite_batches(self.dataset, self.micro_batch, num_workers=d.num_workers, seed=d.seed,
                                rank=rank(), world_size=self.world, start_step=self.step * self.cfg.train.grad_accum)

    # ---- the step ------------------------------------------------------------------------------------

    def draw_global(self, draw) -> torch.Tensor:
        """``draw(n)`` -> ``[n, ...]`` random values for the n items of the global micro-batch (all
        ranks), made with ``self.generator``; returns this rank's rows. Every random choice per item
        goes through here, so N processes train like one with the same global batch."""
        return local_slice(draw(self.micro_batch * self.world), rank(), self.world)

    def uniform_global(self, n: int) -> torch.Tensor:
        """``[n]`` draws from U(0, 1) for this rank's ``n = micro_batch`` items, via :meth:`draw_global`."""
        if n != self.micro_batch:
            raise ValueError(f"uniform_global draws one value per item of the micro-batch ({self.micro_batch}), "
                             f"asked for {n}")
        return self.draw_global(lambda m: torch.rand(m, generator=self.generator, device=self.device))

    def loss(self, batch: dict) -> torch.Tensor:
        """The objective's loss of ``model`` on one micro-batch (under bf16 autocast on CUDA)."""
        return self.part_losses(batch)[MODEL]

    def part_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """The objective's loss per trainable part on one micro-batch (``{"model": loss}`` for an objective
        that returns one tensor), under bf16 autocast on CUDA."""
        with autocast(self.device, self.amp):
            x, cond = self.inputs(batch)  # the built-in text encoder runs here, inside the graph
            pixels = None  # cached latents (data.dataset=latents) have no pixel clip
            if LATENTS not in batch:  # cached latents are already in the model's space
                pixels = x
                x = self.system.space.encode(pixels, cond.frame_segments)  # a joint item: each segment on its own
                cond.frame_segments = self.system.space.latent_segments(cond.frame_segments)
            if self.cfg.train.channels_last:
                x = x.contiguous(memory_format=torch.channels_last_3d)
            parts = {**self.frozen, **{k: p.module for k, p in self.parts.items()}, MODEL: self.net}
            loss, _ = self.objective(parts, TrainBatch(x, cond, batch, step=self.step, pixels=pixels), self.random)
        losses = loss if isinstance(loss, dict) else {MODEL: loss}
        unknown = sorted(set(losses) - set(self.optimizers))
        if unknown or MODEL not in losses:
            raise ValueError(f"the objective returned losses for {sorted(losses)}; the trainable parts are "
                             f"{sorted(self.optimizers)} and '{MODEL}' needs one")
        return losses

    def _backward(self, losses: dict[str, torch.Tensor]) -> None:
        """Back-propagate each part's loss into that part's parameters only (one loss: plain backward)."""
        if len(losses) == 1:
            losses[MODEL].backward()
            return
        names = list(losses)
        for i, name in enumerate(names):
            torch.autograd.backward(losses[name], inputs=self._part_params(name), retain_graph=i < len(names) - 1)

    def _part_params(self, name: str) -> list[torch.nn.Parameter]:
        """The parameters the optimizer of trainable part ``name`` steps."""
        return [p for group in self.optimizers[name].param_groups for p in group["params"]]

    def train_step(self, micro_batches: list[dict]) -> StepOutput:
        """One optimizer step of every trainable part over ``grad_accum`` micro-batches. No host
        synchronization."""
        t = self.cfg.train
        self.model.train()
        for part in self.parts.values():
            part.module.train()
        factor = lr_factor(self.step, t.warmup_steps, t.lr_schedule, self.schedule_steps, t.lr_min_ratio)
        for name, optimizer in self.optimizers.items():
            for group in optimizer.param_groups:
                group["lr"] = self.base_lr[name] * factor
        totals: dict[str, torch.Tensor] = {}
        for i, batch in enumerate(micro_batches):
            sync = i == len(micro_batches) - 1 or self.world == 1
            ctx = _no_gradient_sync(self.net, self.model) if not sync else nullcontext()
            with ctx:
                losses = {k: v / len(micro_batches) for k, v in self.part_losses(batch).items()}
                self._backward(losses)
            for name, loss in losses.items():
                totals[name] = totals.get(name, torch.zeros((), device=self.device)) + loss.detach()
        clip = t.grad_clip if t.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.optimizer.step()
        for name in totals.keys() - {MODEL}:  # the other parts that had a loss this step
            params = self._part_params(name)
            average_gradients(params)
            torch.nn.utils.clip_grad_norm_(params, clip)
            self.optimizers[name].step()
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.model, self.step)
        self.step += 1
        return StepOutput(totals[MODEL], grad_norm, {k: v for k, v in totals.items() if k != MODEL})

    # ---- the loop ------------------------------------------------------------------------------------

    @locked_fit
    def fit(self) -> dict:
        """Train until ``train.steps`` (or the ``train.minutes`` budget); returns a summary."""
        t = self.cfg.train
        if is_main():
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.out_dir / "config.yaml")
        logger = RunLogger(self.out_dir, tensorboard=t.tensorboard, enabled=is_main())
        stream = self.batches()
        start_step, start = self.step, time.time()
        bar = tqdm(total=t.steps, initial=self.step, desc="train", unit="step", disable=not (t.progress and is_main()),
                   dynamic_ncols=True)
        bar = BudgetBar(bar, t.steps, t.minutes)  # total and ETA against whichever of steps / minutes ends first
        loss_sum = torch.zeros((), device=self.device)
        part_sums: dict[str, torch.Tensor] = {}  # other parts' losses (steps without one count as 0)
        first_bad = torch.full((), -1, device=self.device, dtype=torch.long)
        window_start, window_steps = time.time(), 0
        stopped_early = False
        try:
            while self.step < t.steps:
                out = self.train_step([next(stream) for _ in range(t.grad_accum)])
                bad = ~torch.isfinite(out.loss)
                for name, value in (out.part_losses or {}).items():
                    bad = bad | ~torch.isfinite(value)
                    part_sums[name] = part_sums.get(name, torch.zeros((), device=self.device)) + value
                first_bad = torch.where((first_bad < 0) & bad, torch.full_like(first_bad, self.step), first_bad)
                loss_sum = loss_sum + out.loss
                window_steps += 1
                bar.update(1)
                last = self.step == t.steps
                elapsed = self._budget_clock(start)
                over_budget = elapsed is not None and elapsed > 60 * t.minutes
                if elapsed is not None and t.lr_decay_over == "minutes" and self.step % t.log_every == 0:
                    # the cosine ends where the budget will, at the step rate measured so far
                    self.schedule_steps = budget_steps(self.step, start_step, elapsed, t.minutes, t.steps)
                if self.step % t.log_every == 0 or last or over_budget or self._due(t.ckpt_every) or self._due(t.sample_every):
                    self._check_finite(all_reduce_max(first_bad))
                    mean_loss = all_reduce_mean(loss_sum / window_steps).item()
                    elapsed = time.time() - window_start
                    record = {"step": self.step, "loss": mean_loss, "lr": self.optimizer.param_groups[0]["lr"],
                              "grad_norm": float(full_tensor(out.grad_norm)),
                              "steps_per_s": window_steps / max(elapsed, 1e-9),
                              "videos_per_s": window_steps * t.batch_size / max(elapsed, 1e-9),
                              "time": time.time() - start}
                    record.update({f"loss_{k}": all_reduce_mean(v / window_steps).item() for k, v in part_sums.items()})
                    part_sums.clear()
                    self.history.append(record)
                    logger.log(record)
                    bar.set_postfix(loss=f"{mean_loss:.4f}")
                    loss_sum.zero_()
                    window_start, window_steps = time.time(), 0
                if self._due(t.ckpt_every) or last or over_budget:
                    self.save()
                if t.sample_every > 0 and self._due(t.sample_every):
                    self.preview(self.out_dir / "samples" / f"step-{self.step:08d}.gif")
                if over_budget and not last:
                    print0(f"time budget of {t.minutes} min reached at step {self.step}; checkpoint saved")
                    stopped_early = True
                    break
        finally:
            bar.close()
            logger.close()
        if is_main():
            plot_loss_curve(self.out_dir / "log.jsonl", self.out_dir / "loss.png")
        return {"steps": self.step - start_step, "final_step": self.step, "stopped_early": stopped_early,
                "seconds": time.time() - start, "out_dir": str(self.out_dir)}

    def _due(self, every: int) -> bool:
        return every > 0 and self.step % every == 0

    def _budget_clock(self, start: float) -> Optional[float]:
        """Seconds since ``start`` for the ``train.minutes`` budget (None without one). Ranks must agree on
        it (or one would stop while the others wait for it, or decay its learning rate differently), so
        with several it is read at log steps only, where the loop synchronizes anyway, as the slowest
        rank's time (None between log steps): the first rank to run out stops them all."""
        t = self.cfg.train
        if t.minutes is None:
            return None
        elapsed = time.time() - start
        if self.world == 1:
            return elapsed
        if self.step % t.log_every:
            return None
        return float(all_reduce_max(torch.tensor(elapsed, device=self.device)).item())

    def _check_finite(self, first_bad: torch.Tensor) -> None:
        step = int(first_bad.item())
        if step >= 0:
            kept = ckpt_io.list_checkpoints(self.out_dir)
            where = f"; the last good checkpoint is {kept[-1]}" if kept else "; no checkpoint was written"
            raise NonFiniteLossError(
                f"training loss became NaN/inf at step {step}{where}. Lower train.lr, check the data "
                f"(values must be finite, in [-1, 1]) or use train.precision=fp32.")

    def save(self) -> Optional[Path]:
        """Write a checkpoint with everything exact resume needs. Every rank calls this (under
        FSDP the whole weights, EMA and optimizer state are gathered from the shards); rank 0
        writes the same single-file format whatever the world size, and returns its path."""
        model_state = self._model_state()
        ema_state = self.ema.state_dict(full=True)
        optim_state = optimizer_state(self.model, self.optimizer)
        part_optim = {k: optimizer_state(p.module, self.optimizers[k]) for k, p in self.parts.items()}
        rngs = gather_objects(torch.get_rng_state())
        cuda_rngs = gather_objects(torch.cuda.get_rng_state()) if self.device.type == "cuda" else []
        path = None
        if is_main():
            state = {"step": self.step, "optimizer": optim_state, "generators": [self.generator.get_state()],
                     "torch_rng": rngs[0], "torch_rngs": rngs, "world_size": self.world}
            if part_optim:
                state["part_optimizers"] = part_optim
            if cuda_rngs:
                state["cuda_rng"], state["cuda_rngs"] = cuda_rngs[0], cuda_rngs
            path = ckpt_io.save_checkpoint(self.out_dir, self.step, model_state=model_state, ema_state=ema_state,
                                           trainer_state=state, config_yaml=to_yaml(self.cfg),
                                           meta={"model": self.cfg.model.name, "world_size": self.world,
                                                 "parallel": self.parallel},
                                           parts=self.system.manifest(), keep_last=self.cfg.train.keep_last,
                                           part_states={k: p.module.state_dict() for k, p in self.parts.items()})
        barrier()
        return path

    def _model_state(self) -> dict[str, torch.Tensor]:
        if self.parallel != "fsdp":
            return self.model.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def ema_system(self) -> System:
        """The system with :meth:`ema_model` as its model (what sampling uses)."""
        return self.system.with_model(self.ema_model())

    def ema_model(self) -> torch.nn.Module:
        """A plain (unsharded) copy of the model holding the EMA weights, in eval mode. Under FSDP
        every rank must call it (the EMA shards are gathered)."""
        if self.parallel == "fsdp":
            state = {**self._model_state(), **self.ema.state_dict(full=True)}
            with torch.device("meta"):  # no initialization, no draw from the global RNG
                model = build_model(self.cfg)
            model.load_state_dict(state, assign=True)
            return model.to(self.device).eval()
        model = copy.deepcopy(self.model)  # no re-initialization: the global RNG stays untouched
        self.ema.copy_to(model)
        return model.eval()

    def preview(self, path: Path, num: Optional[int] = None) -> Path:
        """Sample a few videos with the EMA weights and write them (GIF/MP4/PNG by extension).
        Rank 0 samples and writes; the other ranks return None (under FSDP after helping to gather
        the EMA weights)."""
        if self.parallel != "fsdp" and not is_main():
            return None
        t, d = self.cfg.train, self.cfg.data
        num = num or t.sample_num
        model = self.ema_model()
        if not is_main():
            return None
        items = [self.dataset[i % len(self.dataset)] for i in range(num)]  # preview the first items' labels
        if hasattr(self.objective, "preview"):  # e.g. an autoencoder: its reconstructions, not samples
            video, cond = self.inputs(collate(items))
            return self._write_preview(path, self.objective.preview(model, video, cond.frame_segments).cpu())
        system = self.system.with_model(model)
        prompts = [it["caption"] for it in items] if isinstance(model, TextConditioned) else None
        labels = [int(it[d.class_key]) for it in items] if d.class_key else None
        cond = make_conditioning(system, num, prompts=prompts, class_labels=labels)
        if system.is_sr_stage:  # an SR stage previews the upsampling of the first items' degraded clips
            sr = self.cfg.sr
            clips = torch.stack([it["video"][:, :d.num_frames] for it in items]).to(self.device)
            cond = lowres_conditioning(system, degrade(clips, sr.spatial_factor, sr.temporal_factor), cond)
        videos = sample_videos(system, num, steps=t.sample_steps, seed=t.seed, cond=cond, progress=False)
        return self._write_preview(path, videos)

    def _write_preview(self, path: Path, videos: torch.Tensor) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_video(path, videos, fps=self.cfg.sample.fps)
        return path


def optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer state keyed by parameter name (``torch.distributed.checkpoint.state_dict``),
    whole tensors on CPU: one format for one process, DDP and FSDP (gathered from the shards), so a
    run can resume with another world size or parallel mode. A collective under FSDP."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Inverse of :func:`optimizer_state` (every rank passes the whole state; FSDP keeps its shard)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


@contextmanager
def _no_gradient_sync(net: torch.nn.Module, model: torch.nn.Module):
    """Context for a gradient-accumulation micro-batch whose gradients need not be averaged yet:
    DDP's ``no_sync``, FSDP2's ``set_requires_gradient_sync(False)``, nothing otherwise."""
    if hasattr(net, "no_sync"):
        with net.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


class RunLogger:
    """JSONL log (always) and TensorBoard scalars (when installed and enabled); rank 0 only."""

    def __init__(self, out_dir: Path, tensorboard: bool = True, enabled: bool = True) -> None:
        self.enabled = enabled
        self.file = open(out_dir / "log.jsonl", "a") if enabled else None
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tb"))
            except ImportError:
                self.tb = None

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(f"train/{k}", v, record["step"])

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


def plot_loss_curve(log_path: Path, out_path: Path) -> Optional[Path]:
    """Loss against step from a run's log.jsonl, as a PNG (log-scale y)."""
    if not log_path.exists():
        return None
    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "loss" in r and math.isfinite(r["loss"])]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.set_title("training loss")
    fig.tight_layout()
    fig.savefig(out_path)
    plt.close(fig)
    return out_path
