import pytest
import torch

from kinema.conditioning import NULL_LABEL, Conditioning, drop_conditioning


def _cond():
    return Conditioning(
        text_emb=torch.randn(3, 5, 4), text_mask=torch.ones(3, 5, dtype=torch.bool),
        class_labels=torch.tensor([0, 1, 2]),
        context=torch.randn(3, 1, 4, 2, 2), context_mask=torch.tensor([[True, False, False, False]] * 3),
        lowres=torch.randn(3, 1, 4, 1, 1), frame_segments=torch.zeros(3, 4, dtype=torch.long),
    )


def test_drop_all_gives_null_conditioning_and_keeps_structural_fields():
    cond = _cond()
    null = drop_conditioning(cond)
    assert not null.text_mask.any() and (null.text_emb == 0).all()
    assert (null.class_labels == NULL_LABEL).all()
    assert not null.context_mask.any() and (null.context == 0).all()
    assert null.lowres is cond.lowres and null.frame_segments is cond.frame_segments
    assert cond.text_mask.all() and (cond.class_labels == torch.tensor([0, 1, 2])).all(), "input untouched"


def test_drop_per_item_only_touches_selected_items():
    cond = _cond()
    drop = torch.tensor([False, True, False])
    out = drop_conditioning(cond, drop)
    for name in ("text_emb", "text_mask", "class_labels", "context", "context_mask"):
        a, b = getattr(out, name), getattr(cond, name)
        assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2]), name
    assert not out.text_mask[1].any() and out.class_labels[1] == NULL_LABEL and not out.context_mask[1].any()


def test_drop_selected_fields_only():
    cond = _cond()
    out = drop_conditioning(cond, fields=("text",))
    assert not out.text_mask.any()
    assert torch.equal(out.class_labels, cond.class_labels) and torch.equal(out.context_mask, cond.context_mask)
    with pytest.raises(ValueError, match="lowres"):
        drop_conditioning(cond, fields=("lowres",))
    assert drop_conditioning(None) is None
