"""Text / class conditioning end to end on tiny models: conditioning dropout in training, the built-in
encoder trained and saved with the U-Net, guided sampling (w = 0 equals plain conditional sampling,
through the batched 2B path too), and the `kinema sample --prompt / --class` command."""

import pytest
import torch

from kinema.cli import main
from kinema.conditioning import NULL_LABEL, Conditioning
from kinema.models.text import TextConditioned
from kinema.diffusion.guidance import drop_for_guidance
from kinema.pipelines.sample import make_conditioning, sample_videos
from kinema.system import load_system
from kinema.train.loop import Trainer

TEXT = {"model.unet.text_dim": 8, "model.text.encoder": "builtin", "model.text.dim": 8, "model.text.heads": 2,
        "model.text.depth": 1, "model.text.max_length": 8}
PROMPTS = ["a red circle moving left", "a blue square moving up"]


def test_cond_dropout_drops_text_and_class_together_at_the_rate():
    g = torch.Generator().manual_seed(0)
    n = 4000
    cond = Conditioning(text_emb=torch.ones(n, 2, 3), text_mask=torch.ones(n, 2, dtype=torch.bool),
                        class_labels=torch.zeros(n, dtype=torch.long))
    out = drop_for_guidance(cond, 0.25, g)
    dropped = ~out.text_mask.any(1)
    assert abs(dropped.float().mean().item() - 0.25) < 0.03
    assert torch.equal(dropped, out.class_labels == NULL_LABEL) and (out.text_emb[dropped] == 0).all()
    state = g.get_state()
    plain = Conditioning(frame_segments=torch.zeros(2, 3, dtype=torch.long))
    assert drop_for_guidance(plain, 0.25, g) is plain and torch.equal(g.get_state(), state), "no RNG drawn"


def test_builtin_encoder_trains_and_is_saved_with_the_unet(tiny):
    # 3 steps: with zero-initialized residual outputs, gradients reach the text from the third step on
    cfg = tiny(**TEXT, **{"train.steps": 3, "train.ckpt_every": 3, "train.ema_decay": 0.5})
    trainer = Trainer(cfg)
    assert isinstance(trainer.model, TextConditioned)
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert {id(p) for p in trainer.model.text_encoder.parameters()} <= optimized
    before = trainer.model.text_encoder.token_embedding.weight.detach().clone()
    trainer.fit()
    assert not torch.equal(before, trainer.model.text_encoder.token_embedding.weight), "the encoder learns"
    system, _ = load_system(cfg.train.out_dir, device="cpu")
    want, _ = trainer.ema_model().encode_text(PROMPTS)
    got, mask = system.encode_text(PROMPTS)
    torch.testing.assert_close(got, want)  # the EMA of the encoder came back from the checkpoint alone
    assert mask.sum(1).tolist() == [5, 5]


@pytest.fixture
def text_run(tiny):
    cfg = tiny(**TEXT, **{"train.steps": 2, "train.ckpt_every": 2})
    Trainer(cfg).fit()
    return cfg


def test_guidance_zero_equals_conditional_sampling(text_run):
    system, _ = load_system(text_run.train.out_dir, device="cpu")
    with torch.no_grad():  # make the text matter: a fresh model's zero-initialized outputs ignore it
        for p in system.model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)
    cond = make_conditioning(system, 3, prompts=PROMPTS)
    kw = dict(steps=4, sampler="ddpm", seed=1, cond=cond, progress=False)
    plain = sample_videos(system, 3, guidance=0.0, guidance_low=None, **kw)
    batched = sample_videos(system, 3, guidance=0.0, guidance_low=0.0, **kw)  # 2B forward, weight 0
    torch.testing.assert_close(batched, plain, atol=1e-5, rtol=0)
    guided = sample_videos(system, 3, guidance=3.0, guidance_low=None, **kw)
    assert (guided - plain).abs().max() > 1e-3
    null = sample_videos(system, 3, guidance=0.0, guidance_low=None, **{**kw, "cond": None})
    assert (null - plain).abs().max() > 1e-3, "the prompt changes the samples"
    # a guidance interval that holds no step of the grid is plain conditional sampling; one holding them all
    # is guidance at every step
    kw["guidance_low"] = None
    torch.testing.assert_close(sample_videos(system, 3, guidance=3.0, guidance_interval=(100.0, None), **kw), plain)
    torch.testing.assert_close(sample_videos(system, 3, guidance=3.0, guidance_interval=(None, 100.0), **kw), guided)
    partly = sample_videos(system, 3, guidance=3.0, guidance_interval=(None, 0.0), **kw)
    assert (partly - plain).abs().max() > 1e-4 and (partly - guided).abs().max() > 1e-4
    system.cfg.sample.guidance_interval = (100.0, None)  # the config's interval is the default
    torch.testing.assert_close(sample_videos(system, 3, guidance=3.0, **kw), plain)


def test_sample_command_with_prompt_and_errors(text_run, tmp_path, capsys):
    run = text_run.train.out_dir
    out = tmp_path / "grid.png"
    assert main(["sample", run, "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--guidance", "2",
                 "--guidance-low", "0", "--guidance-interval", "none", "0", "--num", "2", "--steps", "3",
                 "--out", str(out)]) == 0
    assert out.exists() and "for prompts" in capsys.readouterr().out
    assert main(["sample", run, "--class", "1", "--num", "1", "--steps", "2", "--out", str(out)]) == 2
    assert "num_classes=0" in capsys.readouterr().err
    assert main(["sample", run, "--guidance", "2", "--num", "1", "--out", str(out)]) == 2
    assert "--prompt or --class" in capsys.readouterr().err


def test_class_conditional_training_and_sampling(tiny, tmp_path, capsys):
    cfg = tiny(**{"data.class_key": "color_id", "model.unet.num_classes": 7, "train.steps": 2})
    trainer = Trainer(cfg)
    batch = next(trainer.batches())
    _, cond = trainer.inputs(batch)
    assert torch.equal(cond.class_labels, batch["color_id"])
    trainer.fit()
    out = tmp_path / "c.gif"
    assert main(["sample", cfg.train.out_dir, "--class", "3", "--guidance", "1", "--num", "1", "--steps", "2",
                 "--out", str(out)]) == 0
    assert main(["sample", cfg.train.out_dir, "--prompt", "a red circle", "--num", "1", "--out", str(out)]) == 2
    assert "not text-conditional" in capsys.readouterr().err


def test_conditioning_config_errors_are_plain(tiny):
    with pytest.raises(ValueError, match="num_classes"):
        Trainer(tiny(**{"data.class_key": "color_id"}))
    with pytest.raises(ValueError, match="'colour_id' is not a key"):
        Trainer(tiny(**{"data.class_key": "colour_id", "model.unet.num_classes": 7}))
    with pytest.raises(ValueError, match="model.unet.text_dim=8"):
        Trainer(tiny(**{**TEXT, "model.text.dim": 16}))
