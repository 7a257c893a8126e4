"""Systems of parts: trainable vs frozen parts in the optimizer, EMA and checkpoint manifest; frozen
parts pinned by hash; old (format 1) checkpoints; a second backbone through the whole CLI with no
change outside its own file; the config's variant section; the flags of extend / upsample."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import toy_backbone  # noqa: F401  (registers the "toy" backbone)
from kinema import checkpoint as ckpt_io
from kinema.cli import main
from kinema.config import ConfigError, load_config, to_yaml, config_from_yaml
from kinema.pipelines.sample import make_conditioning, sample_videos
from kinema.system import build_system, load_system
from kinema.train.loop import Trainer

FIXTURES = Path(__file__).parent / "fixtures"


def toy_overrides(out_dir, **extra):
    base = {"model.name": "toy", "model.toy.width": 8, "data.num_frames": 4, "data.size": 8,
            "train.out_dir": str(out_dir), "train.batch_size": 2, "train.steps": 3, "train.warmup_steps": 1,
            "train.log_every": 1, "train.ckpt_every": 3, "train.sample_every": 0, "train.progress": False,
            "train.tensorboard": False, "sample.steps": 3}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def test_a_second_backbone_trains_resumes_and_samples_through_the_cli(tmp_path, capsys):
    run = tmp_path / "toy"
    assert main(["train", "demo", *toy_overrides(run)]) == 0
    ckpt = ckpt_io.resolve_checkpoint(run)
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["model"] == "toy" and meta["format"] == ckpt_io.FORMAT and meta["parts"]["model"]["trainable"]
    assert "model:\n  name: toy\n  toy:\n    in_channels: 3" in (run / "config.yaml").read_text()
    assert main(["train", "demo", *toy_overrides(run, **{"train.steps": 6}), "--resume"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert ckpt_io.resolve_checkpoint(run).name == "step-00000006"
    out = tmp_path / "toy.gif"
    assert main(["sample", str(run), "--num", "2", "--steps", "2", "--out", str(out)]) == 0
    assert out.stat().st_size > 0
    assert main(["extend", str(run), "--input", str(out), "--frames", "6", "--steps", "2",
                 "--out", str(tmp_path / "long.gif")]) == 0


def test_optimizer_and_ema_hold_only_trainable_parameters(tmp_path):
    cfg = load_config("demo", toy_overrides(tmp_path / "run", **{"model.toy.freeze_input": True}))
    trainer = Trainer(cfg)
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and not any(n.startswith("conv_in.") for n in trainable)
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for n, p in trainer.model.named_parameters() if n in trainable}
    assert set(trainer.ema.shadow) == trainable
    frozen_before = trainer.model.conv_in.weight.detach().clone()
    trainer.fit()
    assert torch.equal(trainer.model.conv_in.weight, frozen_before), "a frozen layer never changes"
    ckpt = ckpt_io.resolve_checkpoint(tmp_path / "run")
    assert "conv_in.weight" in load_file(str(ckpt / "model.safetensors"))  # saved with its part ...
    assert "conv_in.weight" not in load_file(str(ckpt / "ema.safetensors"))  # ... but not averaged
    system, _ = load_system(ckpt, device="cpu")  # EMA laid over the part's weights
    assert torch.equal(system.model.conv_in.weight, frozen_before)
    torch.testing.assert_close(system.model.conv_out.weight, trainer.ema.shadow["conv_out.weight"])


def _tiny_text_encoder(path: Path, seed: int) -> None:
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "</s>", "a", "red", "blue", "circle", "square"])}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                         eos_token="</s>").save_pretrained(path)
    torch.manual_seed(seed)
    cfg = transformers.T5Config(vocab_size=len(vocab), d_model=8, d_kv=4, num_heads=2, num_layers=1, d_ff=16,
                                pad_token_id=0, eos_token_id=2, decoder_start_token_id=0)
    transformers.T5EncoderModel(cfg).save_pretrained(path)


def test_a_checkpoint_refuses_a_different_frozen_part(tiny, tmp_path):
    encoder = tmp_path / "t5"
    _tiny_text_encoder(encoder, seed=0)
    cfg = tiny(**{"model.text.encoder": "transformers", "model.text.path": str(encoder), "model.unet.text_dim": 8,
                  "train.steps": 2, "train.ckpt_every": 2})
    Trainer(cfg).fit()
    ckpt = ckpt_io.resolve_checkpoint(cfg.train.out_dir)
    part = json.loads((ckpt / "meta.json").read_text())["parts"]["text_encoder"]
    assert part == {"trainable": False, "source": str(encoder.resolve()), "sha256": ckpt_io.hash_path(encoder)}
    assert not (ckpt / "text_encoder.safetensors").exists(), "frozen parts are recorded, not saved"
    system, _ = load_system(ckpt, device="cpu")  # the same encoder: fine
    assert make_conditioning(system, 1, prompts=["a red circle"]).text_emb.shape[-1] == 8
    _tiny_text_encoder(encoder, seed=1)  # other weights behind the same path
    with pytest.raises(ValueError, match="frozen part 'text_encoder'.*different text_encoder"):
        load_system(ckpt, device="cpu")
    with pytest.raises(ValueError, match="different text_encoder"):
        Trainer(cfg, resume=True)


def test_format1_checkpoint_loads_and_samples_as_before(tmp_path):
    """A checkpoint written by kinema 0.1 (before the manifest and the shared embedders), with the
    samples that version drew from it (class-guided DDIM): same samples today."""
    system, ckpt = load_system(FIXTURES / "ckpt-format1", device="cpu")
    assert ckpt_io.load_manifest(ckpt)["format"] == 1
    cond = make_conditioning(system, 2, class_labels=[0, 2])
    videos = sample_videos(system, 2, steps=3, sampler="ddim", seed=0, cond=cond, guidance=1.5, progress=False)
    want = torch.from_numpy(np.load(FIXTURES / "ckpt-format1-samples.npy"))
    torch.testing.assert_close(videos, want, rtol=0, atol=1e-5)
    meta = json.loads((FIXTURES / "ckpt-format1" / "meta.json").read_text())
    (tmp_path / "meta.json").write_text(json.dumps({**meta, "format": 99}))
    with pytest.raises(ValueError, match="format 99, newer"):
        ckpt_io.load_manifest(tmp_path)


def test_model_name_selects_the_section_and_options_are_checked(tmp_path):
    cfg = load_config("demo", ["model.toy.width=4", "model.name=toy"])  # the name may come after its section
    assert cfg.model.backbone.width == 4 and cfg.model.toy is cfg.model.backbone
    assert config_from_yaml(to_yaml(cfg)) == cfg
    assert load_config("demo", ["model.name=toy"]).model.backbone.width == 8  # the preset's unet section is dropped
    with pytest.raises(ConfigError, match="'model.unet' belongs to model.name=unet3d, but model.name is 'toy'"):
        load_config("demo", ["model.name=toy", "model.unet.dim=8"])
    with pytest.raises(ConfigError, match="unknown model.name 'unet'; did you mean 'unet3d'"):
        load_config(None, ["model.name=unet"])
    with pytest.raises(ConfigError, match=r"diffusion.parameterization' must be one of eps, x, v, got 'vv'; did you "
                                          r"mean 'v'"):
        load_config(None, ["diffusion.parameterization=vv"])
    with pytest.raises(ConfigError, match="sample.thresholding' must be one of static, dynamic.*or null"):
        load_config(None, ["sample.thresholding=clip"])
    assert load_config(None, ["sample.thresholding=null"]).sample.thresholding is None
    with pytest.raises(ConfigError, match="model.unet.dimm'; did you mean 'dim'"):
        load_config(None, ["model.unet.dimm=3"])


def test_build_system_names_its_parts(tiny):
    system = build_system(tiny())
    assert list(system.parts) == ["model"] and system.parts["model"].trainable
    assert system.space.shape() == (3, 4, 16, 16) and system.spec.size_multiple == 2
    with pytest.raises(ValueError, match="divisible by 2"):
        system.space.shape(size=15)


def test_extend_and_upsample_take_conditioning_and_a_separate_recon_weight(tiny, tmp_path, capsys):
    from kinema.data.io import write_video

    cfg = tiny(**{"data.class_key": "color_id", "model.unet.num_classes": 7, "train.steps": 2,
                  "train.ckpt_every": 2})
    Trainer(cfg).fit()
    run, clip, low = cfg.train.out_dir, tmp_path / "clip.mp4", tmp_path / "low.mp4"
    write_video(clip, torch.rand(3, 4, 16, 16) * 2 - 1)
    write_video(low, torch.rand(3, 4, 8, 8) * 2 - 1)
    assert main(["extend", run, "--input", str(clip), "--frames", "6", "--class", "2", "--guidance", "2",
                 "--recon-weight", "3", "--steps", "2", "--out", str(tmp_path / "a.mp4")]) == 0
    assert "for classes [2]" in capsys.readouterr().out
    assert main(["upsample", run, "--input", str(low), "--class", "1", "--guidance", "1", "--steps", "2",
                 "--out", str(tmp_path / "b.mp4")]) == 0
    assert main(["upsample", run, "--input", str(low), "--guidance", "4", "--steps", "2",
                 "--out", str(tmp_path / "c.mp4")]) == 0  # the old spelling of w_r, with a warning
    assert "--recon-weight 4" in capsys.readouterr().err
    assert main(["extend", run, "--input", str(clip), "--frames", "6", "--class", "9", "--steps", "2",
                 "--out", str(tmp_path / "d.mp4")]) == 2
    assert "class label 9" in capsys.readouterr().err
