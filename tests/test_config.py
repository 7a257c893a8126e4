from dataclasses import dataclass, field
from typing import Optional

import pytest

from kinema.config import (
    ConfigError,
    KinemaConfig,
    apply_overrides,
    config_from_yaml,
    from_dict,
    load_config,
    presets,
    to_yaml,
)


@dataclass
class Inner:
    width: int = 8
    mults: tuple[int, ...] = (1, 2)
    rate: float = 0.1
    flag: bool = False
    note: Optional[str] = None


@dataclass
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)


def test_defaults_and_typed_overrides():
    data = apply_overrides(Outer, {}, ["inner.width=16", "inner.mults=[1,2,4]", "inner.rate=1", "inner.flag=true",
                                      "inner.note=hello", "name=run"])
    cfg = from_dict(Outer, data)
    assert cfg == Outer("run", Inner(16, (1, 2, 4), 1.0, True, "hello"))
    assert isinstance(cfg.inner.rate, float) and isinstance(cfg.inner.mults, tuple)
    cfg = from_dict(Outer, apply_overrides(Outer, {}, ["inner.mults=3", "inner.note=null"]))
    assert cfg.inner.mults == (3,) and cfg.inner.note is None


def test_unknown_key_names_key_and_suggests():
    with pytest.raises(ConfigError, match=r"'inner\.widht'.*did you mean 'width'"):
        apply_overrides(Outer, {}, ["inner.widht=3"])
    with pytest.raises(ConfigError, match=r"'innr'.*did you mean 'inner'"):
        from_dict(Outer, {"innr": {"width": 3}})
    with pytest.raises(ConfigError, match=r"'train\.batchsize'.*did you mean 'batch_size'"):
        load_config(None, ["train.batchsize=4"])


def test_wrong_type_names_key_and_value():
    with pytest.raises(ConfigError, match=r"'inner\.width' expects int, got 'abc'"):
        from_dict(Outer, apply_overrides(Outer, {}, ["inner.width=abc"]))
    with pytest.raises(ConfigError, match=r"'inner\.width' expects int, got 1\.5"):
        from_dict(Outer, {"inner": {"width": 1.5}})
    with pytest.raises(ConfigError, match=r"'inner\.flag' expects bool"):
        from_dict(Outer, {"inner": {"flag": "maybe"}})
    with pytest.raises(ConfigError, match="section"):
        from_dict(Outer, {"inner": 3})
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_overrides(Outer, {}, ["inner.width"])


def test_kinema_config_yaml_round_trip(tmp_path):
    cfg = load_config(None, ["train.batch_size=3", "model.unet.dim_mults=[1,2]", "model.unet.attn_levels=[1]", "data.fps=12.5", "name=t"])
    text = to_yaml(cfg)
    back = config_from_yaml(text)
    assert back == cfg
    assert back.model.unet.dim_mults == (1, 2)
    p = tmp_path / "c.yaml"
    p.write_text(text)
    assert load_config(str(p)) == cfg


def test_presets_load_and_override():
    registry = presets()
    assert registry, "kinema ships presets"
    for name in registry:
        cfg = load_config(name)
        assert isinstance(cfg, KinemaConfig)
    name = next(iter(registry))
    assert load_config(name, ["train.steps=7"]).train.steps == 7
    with pytest.raises(ConfigError, match="no config file or preset"):
        load_config("no_such_preset")


def test_guidance_interval_parses_open_ends_and_names_a_bad_interval():
    assert load_config(None, ["sample.guidance_interval=[null,0]"]).sample.guidance_interval == (None, 0.0)
    assert load_config(None, ["sample.guidance_interval=[-3,2.5]"]).sample.guidance_interval == (-3.0, 2.5)
    assert load_config(None, []).sample.guidance_interval is None
    with pytest.raises(ConfigError, match=r"sample\.guidance_interval must have lo < hi, got \[1\.0, 0\.0\]"):
        load_config(None, ["sample.guidance_interval=[1,0]"])
    with pytest.raises(ConfigError, match=r"'sample\.guidance_interval' expects 2 values"):
        load_config(None, ["sample.guidance_interval=[1]"])
