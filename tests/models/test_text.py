"""Text encoders: the hashed tokenizer, the built-in encoder, the transformers adapter round trip
(a tiny random T5 / CLIP and a locally built tokenizer, saved and loaded back; nothing downloaded)."""

import pytest
import torch

from kinema.models.text import (BuiltinTextEncoder, HashTokenizer, TextConditioned, TextConfig,
                                TransformersTextEncoder)
from kinema.models.unet import UNet3D, UNetConfig


def test_tokenizer_is_deterministic_and_handles_any_caption():
    tok = HashTokenizer(vocab_size=64, max_length=5)
    captions = ["A red circle moving LEFT", "a red circle moving left", "", "ünïcödé, émoji 🎬!", "one two three four five six"]
    ids, mask = tok(captions)
    assert ids.shape == mask.shape == (5, 5) and ids.dtype == torch.long
    assert torch.equal(ids[0], ids[1]), "lower-cased"
    assert not mask[2].any() and (ids[2] == 0).all(), "empty caption = all padding"
    assert mask[4].all(), "truncated to max_length"
    assert ((ids > 0) == mask).all() and (ids <= 64).all()
    assert torch.equal(HashTokenizer(64, 5)(captions)[0], ids), "stable across instances (crc32, not hash())"


def test_builtin_encoder_shapes_mask_and_gradients():
    enc = BuiltinTextEncoder(TextConfig(encoder="builtin", dim=8, heads=2, depth=1, max_length=6, vocab_size=32))
    emb, mask = enc(["a blue square moving up", ""])
    assert emb.shape == (2, 6, 8) and mask.tolist()[0] == [True] * 5 + [False]
    assert not mask[1].any() and torch.isfinite(emb).all(), "the null (empty) caption stays finite"
    (emb[0, mask[0]] * torch.randn(5, 8)).sum().backward()  # (a plain sum of LayerNorm outputs is constant)
    assert enc.token_embedding.weight.grad.abs().sum() > 0


def test_padding_does_not_change_real_tokens():
    cfg = TextConfig(encoder="builtin", dim=8, heads=2, depth=2, max_length=8, vocab_size=32)
    enc = BuiltinTextEncoder(cfg)
    short = BuiltinTextEncoder(TextConfig(**{**cfg.__dict__, "max_length": 4}))
    short.load_state_dict({k: (v[:4] if k == "position_embedding" else v) for k, v in enc.state_dict().items()})
    a, _ = enc(["red circle"])
    b, _ = short(["red circle"])
    torch.testing.assert_close(a[:, :2], b[:, :2])


def test_text_conditioned_saves_builtin_encoder_with_the_backbone():
    net = UNet3D(UNetConfig(dim=8, dim_mults=(1, 2), num_res_blocks=1, attn_levels=(1,), head_dim=4,
                            norm_groups=4, text_dim=8))
    model = TextConditioned(net, BuiltinTextEncoder(TextConfig(encoder="builtin", dim=8, heads=2, depth=1)))
    keys = model.state_dict().keys()
    assert any(k.startswith("text_encoder.") for k in keys) and any(k.startswith("net.") for k in keys)
    assert {id(p) for p in model.text_encoder.parameters()} <= {id(p) for p in model.parameters()}


# ---- transformers adapter ---------------------------------------------------------------------------

WORDS = ["a", "red", "green", "blue", "circle", "square", "moving", "left", "right"]


def _save_tokenizer(path):
    """A word-level fast tokenizer built locally (no download), saved with save_pretrained."""
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "</s>", *WORDS])}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                                eos_token="</s>")
    fast.save_pretrained(path)
    return len(vocab)


def _tiny_t5(path, vocab):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.T5Config(vocab_size=vocab, d_model=16, d_kv=4, num_heads=2, num_layers=1, d_ff=32,
                                pad_token_id=0, eos_token_id=2, decoder_start_token_id=0)
    torch.manual_seed(0)
    transformers.T5EncoderModel(cfg).save_pretrained(path)
    return 16


def _tiny_clip(path, vocab):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.CLIPTextConfig(vocab_size=vocab, hidden_size=12, intermediate_size=24, num_hidden_layers=1,
                                      num_attention_heads=2, max_position_embeddings=16, pad_token_id=0,
                                      bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    transformers.CLIPTextModel(cfg).save_pretrained(path)
    return 12


@pytest.mark.parametrize("make", [_tiny_t5, _tiny_clip], ids=["t5", "clip"])
def test_transformers_adapter_round_trip(tmp_path, make):
    vocab = _save_tokenizer(tmp_path)
    dim = make(tmp_path, vocab)
    enc = TransformersTextEncoder(tmp_path, max_length=6)
    assert enc.dim == dim
    assert not any(p.requires_grad for p in enc.model.parameters()), "frozen"
    captions = ["a red circle moving left", "a blue square", ""]
    emb, mask = enc(captions)
    assert emb.shape == (3, 6, dim) and emb.grad_fn is None and torch.isfinite(emb).all()
    assert mask.sum(1).tolist() == [5, 3, 0]
    calls = []
    handle = enc.model.register_forward_hook(lambda *a: calls.append(1))
    again, mask2 = enc(["a blue square", "a red circle moving left"])  # cached: no forward
    handle.remove()
    assert calls == [] and enc.cache_info()["hits"] == 2
    torch.testing.assert_close(again[1], emb[0])
    assert torch.equal(mask2[0], mask[1])
    # the embeddings really are the saved model's
    import transformers

    kind = transformers.T5EncoderModel if make is _tiny_t5 else transformers.CLIPTextModel
    ref = kind.from_pretrained(tmp_path, local_files_only=True).eval()
    ids = enc.tokenizer(["a blue square"], padding="max_length", max_length=6, return_tensors="pt")
    with torch.no_grad():
        want = ref(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).last_hidden_state
    torch.testing.assert_close(again[0], want[0])


def test_transformers_adapter_rejects_a_missing_directory(tmp_path):
    pytest.importorskip("transformers")
    with pytest.raises(FileNotFoundError, match="not a local directory"):
        TransformersTextEncoder(tmp_path / "nope")
