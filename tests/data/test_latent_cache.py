"""The latent cache (`kinema encode`, `data.dataset=latents`) with a tiny random diffusers AutoencoderKL: it
reads back exactly what the latent space encodes, resumes after an interruption to the bitwise same cache,
trains a latent model without running the encoder (the same loss as encoding on the fly), and refuses a
cache of another autoencoder, a pixel model, another clip shape and a folder that is no autoencoder."""

import json
import shutil

import pytest
import torch
from safetensors import safe_open

from kinema.cli import main
from kinema.config import load_config
from kinema.data.factory import build_dataset
from kinema.data.latents import LATENTS, LatentDataset, read_index
from kinema.system import load_autoencoder
from kinema.train.loop import Trainer
from vae_helpers import latent_unet_overrides, save_diffusers_vae

pytest.importorskip("diffusers")

DATA = ["data.num_frames=2", "data.size=8", "data.length=5"]  # bouncing shapes: 5 clips of 2 x 8^2


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    return save_diffusers_vae(tmp_path_factory.mktemp("sd") / "vae")


def encode(vae, out, *extra) -> int:
    return main(["encode", "--autoencoder", str(vae), "--out", str(out), "--shard-size", "2", "--batch-size", "2",
                 "--no-progress", "--data.num_frames", "2", *DATA[1:], *extra])


@pytest.fixture(scope="module")
def cache(vae_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "latents"
    assert encode(vae_dir, out) == 0
    return out


def shard_contents(root):
    index = read_index(root)
    out = []
    for s in index["shards"]:
        with safe_open(str(root / s["file"]), "pt") as f:
            out.append((f.get_tensor(LATENTS), f.metadata()))
    return index, out


def test_the_cache_reads_back_what_the_latent_space_encodes(vae_dir, cache, capsys):
    index = read_index(cache)
    part = load_autoencoder(str(vae_dir))
    assert index["autoencoder"] == {"source": part.source, "sha256": part.sha256}
    assert (index["num_clips"], index["shard_size"], [s["clips"] for s in index["shards"]]) == (5, 2, [2, 2, 1])
    assert index["scaled"] and index["scale_factor"] == 0.5
    assert index["latent_shape"] == [4, 2, 4, 4] and index["pixel_shape"] == [3, 2, 8, 8]
    assert index["keys"] == {"caption": "str", "color_id": "int", "shape_id": "int", "direction_id": "int"}
    cfg = load_config(None, DATA)
    data, cached = build_dataset(cfg.data), LatentDataset(cache)
    assert len(cached) == 5
    space_encode = lambda x: part.module.encode(x) * part.module.scale_factor  # noqa: E731  (LatentSpace.encode)
    everything = []
    for start in (0, 2, 4):  # the cache's batches: 2 clips, starting at each shard's first clip
        items = [data[i] for i in range(start, min(start + 2, 5))]
        want = space_encode(torch.stack([it["video"] for it in items]))
        for k, item in enumerate(items):
            got = cached[start + k]
            assert torch.equal(got[LATENTS], want[k]), "exactly space.encode of the same clip"
            assert {k: v for k, v in got.items() if k != LATENTS} == {k: v for k, v in item.items() if k != "video"}
        everything.append(want)
    z = torch.cat(everything).double()
    assert index["stats"]["mean"] == pytest.approx(z.mean().item(), abs=1e-9)
    assert index["stats"]["std"] == pytest.approx(z.std(unbiased=False).item(), rel=1e-9)
    assert torch.equal(cached[-1][LATENTS], cached[4][LATENTS])
    with pytest.raises(IndexError, match="out of range"):
        cached[5]
    assert encode(vae_dir, cache) == 0  # a complete cache: nothing to do
    assert "already holds this latent cache (5 clips); nothing to do" in capsys.readouterr().out


def test_an_interrupted_encode_resumes_to_the_same_cache(vae_dir, cache, tmp_path, monkeypatch, capsys):
    import kinema.pipelines.encode as enc

    out = tmp_path / "latents"
    written = []
    real = enc.write_shard

    def write_then_die(root, i, *args):
        if written:  # killed while the second shard is being written: its temporary file is left behind
            (root / f".tmp-shard-{i:05d}.safetensors-4242").write_bytes(b"half a shard")
            raise KeyboardInterrupt
        written.append(i)
        return real(root, i, *args)

    monkeypatch.setattr(enc, "write_shard", write_then_die)
    assert encode(vae_dir, out) == 130
    monkeypatch.setattr(enc, "write_shard", real)
    assert sorted(p.name for p in out.iterdir()) == [".tmp-shard-00001.safetensors-4242", "shard-00000.safetensors"]
    with pytest.raises(ValueError, match="the latent cache in .* is incomplete .*run the same kinema encode command"):
        LatentDataset(out)
    capsys.readouterr()
    assert encode(vae_dir, out) == 0
    assert "1 of 3 shards complete, removed 1 incomplete temporary file(s)" in capsys.readouterr().out
    (out / "shard-00002.safetensors").unlink()  # a lost shard of a complete cache: encoded again (a worker reads)
    assert encode(vae_dir, out, "data.num_workers=1") == 0
    (index, shards), (want_index, want_shards) = shard_contents(out), shard_contents(cache)
    assert index == want_index
    for (z, meta), (want_z, want_meta) in zip(shards, want_shards):
        assert torch.equal(z, want_z) and meta == want_meta  # bitwise the uninterrupted cache
    assert sorted(p.name for p in out.iterdir()) == ["index.json", *[s["file"] for s in index["shards"]]]
    capsys.readouterr()
    assert encode(vae_dir, out, "data.length=4") == 2  # another plan into the same directory
    assert "already holds another latent cache (5 clips" in capsys.readouterr().err


def train_overrides(run, vae, cache=None, **extra):
    data = {"data.dataset": "latents", "data.path": str(cache)} if cache else {"data.length": 5}
    return latent_unet_overrides(run, vae, **data, **extra)


def test_a_latent_model_trains_from_the_cache_without_the_encoder(vae_dir, cache, tmp_path):
    def first_losses(trainer):
        trainer.fit()
        return [json.loads(line)["loss"] for line in (trainer.out_dir / "log.jsonl").read_text().splitlines()]

    cached = Trainer(load_config(None, train_overrides(tmp_path / "cached", vae_dir, cache, **{
        "train.sample_every": 2, "train.sample_num": 1, "train.sample_steps": 2})))
    assert isinstance(cached.dataset, LatentDataset)

    def no_encoder(*args, **kwargs):
        raise AssertionError("the encoder ran")

    cached.system.parts["autoencoder"].module.encode = no_encoder
    from_cache = first_losses(cached)
    assert (tmp_path / "cached" / "samples" / "step-00000002.gif").stat().st_size > 0  # previews decode
    on_the_fly = first_losses(Trainer(load_config(None, train_overrides(tmp_path / "fly", vae_dir))))
    assert from_cache == pytest.approx(on_the_fly, rel=1e-4), "the same clips, latents, noise: the same losses"


def test_a_cache_of_another_autoencoder_or_shape_is_refused(vae_dir, cache, tmp_path):
    other = save_diffusers_vae(tmp_path / "other", seed=1)
    with pytest.raises(ValueError, match=r"was written by the autoencoder .*/vae \(sha256 [0-9a-f]{12}\.\.\.\), but "
                                         r"the model's autoencoder .*/other has sha256 [0-9a-f]{12}"):
        Trainer(load_config(None, train_overrides(tmp_path / "a", other, cache)))
    with pytest.raises(ValueError, match=r"holds clips of 2 frames of 8x8 pixels \(latents \[4, 2, 4, 4\]\), but the "
                                         r"model is configured for latents \[4, 3, 8, 8\]; set data.num_frames=2 "
                                         r"data.size=8"):
        Trainer(load_config(None, train_overrides(tmp_path / "b", vae_dir, cache, **{"data.num_frames": 3,
                                                                                      "data.size": 16})))
    pixel = [o for o in train_overrides(tmp_path / "c", vae_dir, cache) if not o.startswith("model.")]
    with pytest.raises(ValueError, match="holds latents of the autoencoder .*; train a latent model on them: "
                                         "model.space=latent model.autoencoder="):
        Trainer(load_config(None, pixel + ["model.unet.dim=8", "model.unet.dim_mults=[1,2]", "model.unet.norm_groups=4",
                                           "model.unet.attn_levels=[]"]))
    with pytest.raises(ValueError, match="not a latent cache .*write one with kinema encode"):
        Trainer(load_config(None, train_overrides(tmp_path / "d", vae_dir, tmp_path)))


def test_encode_refuses_a_folder_that_is_not_an_autoencoder(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    assert encode(tmp_path / "notes", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "kinema encode: error: model.autoencoder=" in err and "is not a diffusers model folder" in err
    assert not (tmp_path / "out").exists()
    assert main(["encode", "--autoencoder", str(tmp_path / "notes"), "--out", str(tmp_path / "o"),
                 "model.unet.dim=8"]) == 2
    assert "takes data.* overrides only, got 'model.unet.dim=8'" in capsys.readouterr().err


def test_data_path_alone_means_a_video_folder(vae_dir, tmp_path, capsys):
    from kinema.data.io import write_video

    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(2):
        write_video(videos / f"clip{i}.gif", torch.rand(1, 3, 4, 8, 8) * 2 - 1, fps=4)
        (videos / f"clip{i}.txt").write_text(f"clip number {i}")
    out = tmp_path / "latents"
    assert main(["encode", "--autoencoder", str(vae_dir), "--data.path", str(videos), "--out", str(out),
                 "data.num_frames=2", "data.size=8", "--no-progress"]) == 0
    index = read_index(out)
    assert index["data"]["dataset"] == "folder" and index["num_clips"] == 2 and index["keys"]["caption"] == "str"
    assert sorted(item["caption"] for item in LatentDataset(out)) == ["clip number 0", "clip number 1"]
    shutil.rmtree(out)
