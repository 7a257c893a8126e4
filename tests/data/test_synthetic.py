"""Built-in synthetic datasets: shapes, ranges, determinism, motion and caption consistency."""

import gzip

import numpy as np
import pytest
import torch

from kinema.data.synthetic import BouncingShapes, MovingDigits, load_mnist, reflect


def centroids(video):
    """[C, F, H, W] with a shape on black -> (y, x) centroid per frame [F, 2] and area [F]."""
    mask = (video > -1).any(0).float()  # [F, H, W]
    h, w = mask.shape[1:]
    area = mask.sum((1, 2))
    ys = torch.arange(h).float()[None, :, None]
    xs = torch.arange(w).float()[None, None, :]
    return torch.stack([(mask * ys).sum((1, 2)) / area, (mask * xs).sum((1, 2)) / area], -1), area


def test_reflect_stays_inside_and_preserves_speed():
    p = np.linspace(-25, 40, 651)  # a free straight line, several bounces
    q = reflect(p, 2.0, 12.0)
    assert q.min() >= 2.0 and q.max() <= 12.0
    steps = np.abs(np.diff(q))
    assert steps.max() <= 0.1 + 1e-9  # never jumps more than the free motion's step
    assert np.mean(np.isclose(steps, 0.1)) > 0.95  # and moves a full step except at a wall
    assert np.allclose(reflect(np.array([3.0, 7.5, 11.0]), 2.0, 12.0), [3.0, 7.5, 11.0])  # identity inside
    assert np.isclose(reflect(np.array([13.0]), 2.0, 12.0)[0], 11.0)  # 1 past the wall -> 1 back inside


@pytest.mark.parametrize("size,frames", [(16, 8), (32, 16)])
def test_bouncing_shapes_shape_range_and_caption(size, frames):
    ds = BouncingShapes(num_frames=frames, size=size, length=50, seed=1)
    assert len(ds) == 50
    for i in range(20):
        item = ds[i]
        v = item["video"]
        assert v.shape == (3, frames, size, size) and v.dtype == torch.float32
        assert v.min() == -1 and v.max() == 1
        c, s, d = item["color_id"], item["shape_id"], item["direction_id"]
        assert item["caption"] == f"a {ds.COLORS[c]} {ds.SHAPES[s]} moving {ds.DIRECTIONS[d]}"
        # the lit pixels have exactly the palette color
        lit = v[:, (v > -1).any(0)]
        assert torch.equal(lit, torch.from_numpy(ds.RGB[c] * 2 - 1)[:, None].expand_as(lit))
        # clearly visible in every frame, and never cut by the border (constant area up to rasterization)
        _, area = centroids(v)
        assert area.min() >= 6
        assert area.max() <= 1.5 * area.min()
    assert len(set(BouncingShapes.all_captions())) == 7 * 3 * 4


def test_bouncing_shapes_is_deterministic_per_index_and_seed():
    a = BouncingShapes(num_frames=8, size=16, length=100, seed=0)
    b = BouncingShapes(num_frames=8, size=16, length=100, seed=0)
    c = BouncingShapes(num_frames=8, size=16, length=100, seed=1)
    assert torch.equal(a[7]["video"], a[7]["video"]) and torch.equal(a[7]["video"], b[7]["video"])
    assert a[7]["caption"] == b[7]["caption"]
    assert torch.equal(a[-1]["video"], a[99]["video"])
    assert sum(not torch.equal(a[i]["video"], c[i]["video"]) for i in range(10)) >= 9
    assert sum(not torch.equal(a[i]["video"], a[i + 1]["video"]) for i in range(10)) >= 9
    with pytest.raises(IndexError, match="100"):
        a[100]


def test_bouncing_shapes_move_in_the_captioned_direction():
    ds = BouncingShapes(num_frames=16, size=32, length=200, seed=0)
    agree, moved = 0, 0
    for i in range(60):
        item = ds[i]
        cen, _ = centroids(item["video"])
        step = ds.DIRECTION_VECTORS[item["direction_id"]]  # unit (dy, dx)
        early = float(((cen[4] - cen[0]) * torch.tensor(step, dtype=torch.float32)).sum())
        agree += early > 0
        moved += float((cen[1:] - cen[:-1]).abs().sum()) > 3.0
    assert moved == 60  # every clip moves visibly
    assert agree >= 54  # the initial motion follows the caption (a few bounce in the first frames)


def test_bouncing_shapes_bounce_at_most_once_and_usually_not():
    ds = BouncingShapes(num_frames=16, size=32, length=400, seed=3)
    bounces = []
    for i in range(400):
        p = ds.params(i)
        axis = 1 if ds.DIRECTIONS[p["direction_id"]] in ("left", "right") else 0
        d = np.diff(p["centers"][:, axis])
        bounces.append(int((np.sign(d[1:]) != np.sign(d[:-1])).sum()))
        perp = np.abs(np.diff(p["centers"][:, 1 - axis]))
        assert perp.max() <= 0.15 * np.abs(d).max() + 1e-9  # only a small perpendicular drift
    assert max(bounces) <= 1
    assert np.mean(np.array(bounces) == 0) > 0.5


def test_moving_digits_default_protocol():
    ds = MovingDigits(length=20, seed=0)  # 16 frames of 64x64, two 28x28 digits
    item = ds[3]
    v = item["video"]
    assert v.shape == (1, 16, 64, 64) and v.dtype == torch.float32
    assert v.min() == -1 and v.max() <= 1 and v.max() > 0.5
    assert len(item["digits"]) == 2 and all(0 <= d <= 9 for d in item["digits"])
    assert item["caption"] == f"digits {item['digits'][0]} and {item['digits'][1]}"
    assert not torch.equal(v[:, 0], v[:, -1])  # they move
    assert torch.equal(ds[3]["video"], v)
    assert not torch.equal(MovingDigits(length=20, seed=1)[3]["video"], v)
    assert MovingDigits.caption_for([4]) == "digit 4"
    assert MovingDigits.caption_for([1, 2, 3]) == "digits 1, 2 and 3"


def test_moving_digits_one_digit_keeps_its_mass_inside_the_canvas():
    ds = MovingDigits(num_frames=12, size=32, num_digits=1, length=10, seed=2)
    assert ds.digit_size == 14  # 28 * 32 / 64
    for i in range(5):
        mass = (ds[i]["video"] + 1).sum((0, 2, 3))  # per frame
        assert torch.allclose(mass, mass[0].expand_as(mass), rtol=1e-5)
        assert mass[0] > 0


def write_idx(path, array, magic_dims):
    header = bytes([0, 0, 0x08, magic_dims]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if str(path).endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def fake_mnist(n=6):
    images = np.zeros((n, 28, 28), np.uint8)
    for k in range(n):
        images[k, 4:24, 10 + k:14 + k] = 255  # a bar, position depends on k
    return images, np.arange(n, dtype=np.uint8) % 10


@pytest.mark.parametrize("gz", [False, True])
def test_moving_digits_from_idx_files(tmp_path, gz):
    images, labels = fake_mnist()
    suffix = ".gz" if gz else ""
    write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images, 3)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", labels, 1)
    x, y = load_mnist(tmp_path / f"train-images-idx3-ubyte{suffix}")
    assert x.shape == (6, 28, 28) and x.max() == 1.0 and list(y) == list(labels)
    ds = MovingDigits(num_frames=4, size=64, num_digits=2, length=5, mnist_path=tmp_path, digit_size=28)
    item = ds[0]
    assert item["video"].shape == (1, 4, 64, 64)
    assert item["video"].max() == 1.0  # the bars are full white
    assert all(0 <= d < 6 for d in item["digits"])
    assert item["caption"] == MovingDigits.caption_for(item["digits"])
    # each digit's bar: 20 rows x 4 columns, two of them composited by max -> at most 160 lit pixels
    lit = (item["video"][0, 0] > 0).sum()
    assert 80 <= lit <= 160


def test_moving_digits_from_npz_and_bad_files(tmp_path):
    images, labels = fake_mnist(4)
    np.savez(tmp_path / "mnist.npz", x_train=images, y_train=labels)
    ds = MovingDigits(num_frames=3, size=28, num_digits=1, length=3, mnist_path=tmp_path / "mnist.npz",
                      digit_size=14)
    assert ds[1]["video"].shape == (1, 3, 28, 28)
    assert ds[1]["digits"][0] in range(4)
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(b"\x01\x02\x03\x04garbage")
    with pytest.raises(ValueError, match="idx"):
        load_mnist(bad)
    with pytest.raises(ValueError, match="digit_size=40"):
        MovingDigits(size=32, digit_size=40)


def test_render_scale_draws_large_and_shrinks_like_an_sr_stage_input():
    """data.render_scale=k: the clip a base model of a cascade sees is exactly what degrade() gives its
    SSR stage from the k-times larger clip (soft edges), with the same caption and metadata."""
    from kinema.config import load_config
    from kinema.data.factory import build_dataset
    from kinema.diffusion.superres import degrade

    big = build_dataset(load_config("demo_text", ["data.size=32"]).data)
    small = build_dataset(load_config("demo_text", ["data.size=16", "data.render_scale=2"]).data)
    for i in (0, 5):
        a, b = big[i], small[i]
        assert b["video"].shape == (3, 8, 16, 16)
        torch.testing.assert_close(b["video"], degrade(a["video"][None], spatial_factor=2)[0])
        assert b["caption"] == a["caption"] and small.metadata(i)["caption"] == a["caption"]
        edge = b["video"][(b["video"] > -1) & (b["video"] < 1)]
        assert edge.numel() > 0  # partially covered pixels, which a native 16x16 drawing never has
    native = build_dataset(load_config("demo_text", ["data.size=16"]).data)[0]["video"]
    assert ((native > -1) & (native < 1)).sum() == 0


def test_render_scale_is_refused_for_folders(tmp_path):
    from kinema.config import load_config
    from kinema.data.factory import build_dataset

    cfg = load_config("demo_text", ["data.dataset=folder", f"data.path={tmp_path}", "data.render_scale=2"])
    with pytest.raises(ValueError, match="render_scale=2 applies to the synthetic datasets only"):
        build_dataset(cfg.data)


def test_wall_margin_keeps_every_shape_that_far_from_the_edges():
    """data.wall_margin: the shapes bounce (and start) wall_margin * size pixels inside the frame, with the same
    captions, sizes and speeds; without it they reach the edges."""
    from kinema.config import load_config
    from kinema.data.factory import build_dataset

    def gap_to_edge(ds, i):  # the smallest distance (px) between a lit pixel and the frame's edge, over the clip
        lit = (ds[i]["video"] > -1).any(0)  # [F, H, W]
        ys, xs = torch.nonzero(lit.any(0), as_tuple=True)
        size = lit.shape[-1]
        return int(min(ys.min(), xs.min(), size - 1 - ys.max(), size - 1 - xs.max()))

    plain = BouncingShapes(num_frames=8, size=32, length=300, seed=2)
    inset = build_dataset(load_config("demo_text", ["data.wall_margin=0.1", "data.seed=2", "data.length=300"]).data)
    gaps = [gap_to_edge(inset, i) for i in range(300)]
    assert min(gaps) >= 2 and np.median(gaps) >= 3  # 0.1 * 32 = 3.2 px, less up to a pixel of rasterization
    assert min(gap_to_edge(plain, i) for i in range(300)) == 0  # without it some shape touches an edge
    for i in range(20):
        a, b = plain.params(i), inset.params(i)
        assert plain[i]["caption"] == inset[i]["caption"] and a["radius"] == b["radius"]
        # the same free speed: the median step (at most one of the 7 is shortened by a bounce)
        steps = [np.median(np.linalg.norm(np.diff(p["centers"], axis=0), axis=1)) for p in (a, b)]
        assert np.isclose(*steps)
    with pytest.raises(ValueError, match="wall_margin must be in"):
        BouncingShapes(wall_margin=0.3)
    with pytest.raises(ValueError, match="wall_margin=0.1 applies to data.dataset=bouncing_shapes only"):
        build_dataset(load_config("demo_text", ["data.dataset=moving_digits", "data.wall_margin=0.1"]).data)
