"""FastMultiheadAttention = nn.MultiheadAttention (parameters, seeded init, outputs); the fast CPU dropout."""
import math

import pytest
import torch
import torch.nn as nn

from models.reconstructions.attention import FastMultiheadAttention
from models.reconstructions import attention_core
from models.reconstructions.attention_core import attention_with_dropout
from models.reconstructions.dropout import dropout, keep_mask as _keep_mask, relu_keep
from models.reconstructions.transformer import TransformerEncoderLayer, build_neighbor_mask

E, HEADS, L, B = 32, 4, 16, 3


def _pair(p=0.0, seed=0):
    torch.manual_seed(seed)
    fast = FastMultiheadAttention(E, HEADS, dropout=p)
    torch.manual_seed(seed)
    ref = nn.MultiheadAttention(E, HEADS, dropout=p, batch_first=True)
    return fast, ref


def _inputs(seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=gen) for shape in ((B, L, E), (B, L, E), (L, E))]


def test_same_state_dict_and_same_seeded_draws_as_nn_multiheadattention():
    fast, ref = _pair(seed=5)
    fast_sd, ref_sd = fast.state_dict(), ref.state_dict()
    assert list(fast_sd) == list(ref_sd) == ["in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"]
    assert all(torch.equal(fast_sd[k], ref_sd[k]) for k in ref_sd)
    assert isinstance(fast.out_proj, nn.Linear)
    # Both consumed the global RNG identically: the next draw is the same.
    torch.manual_seed(5)
    FastMultiheadAttention(E, HEADS)
    after_fast = torch.rand(3)
    torch.manual_seed(5)
    nn.MultiheadAttention(E, HEADS)
    assert torch.equal(after_fast, torch.rand(3))


def test_state_dicts_load_both_ways():
    fast, ref = _pair(seed=1)
    other_fast, other_ref = _pair(seed=2)
    other_fast.load_state_dict(ref.state_dict())
    other_ref.load_state_dict(fast.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(other_fast.state_dict().values(), ref.state_dict().values()))


@pytest.mark.parametrize("masked", [False, True])
def test_forward_matches_torch(masked):
    fast, ref = _pair(seed=3)
    q, kv, _ = _inputs()
    mask = build_neighbor_mask((4, 4), (3, 3)) if masked else None
    expected = ref(q, kv, kv, attn_mask=mask, need_weights=False)[0]
    torch.testing.assert_close(fast(q, kv, kv, attn_mask=mask), expected, atol=1e-5, rtol=1e-5)


def test_forward_with_pos_self_and_shared_query_match_torch():
    fast, ref = _pair(seed=4)
    x, mem, pos = _inputs(seed=2)
    mask = build_neighbor_mask((4, 4), (3, 3))
    self_expected = ref(x + pos, x + pos, x, attn_mask=mask)[0]
    torch.testing.assert_close(fast.forward_with_pos(x, x, pos, mask), self_expected, atol=1e-5, rtol=1e-5)
    query = torch.randn(L, E)  # one query set shared by the whole batch
    cross_expected = ref((query + pos).expand(B, -1, -1), mem + pos, mem, attn_mask=mask)[0]
    torch.testing.assert_close(fast.forward_with_pos(query, mem, pos, mask), cross_expected, atol=1e-5, rtol=1e-5)


def test_gradients_match_torch_in_train_mode_without_dropout():
    fast, ref = _pair(seed=6)
    fast.train(), ref.train()
    x, mem, pos = _inputs(seed=3)
    mask = build_neighbor_mask((4, 4), (3, 3))
    fast.forward_with_pos(x, mem, pos, mask).square().sum().backward()
    ref(x + pos, mem + pos, mem, attn_mask=mask)[0].square().sum().backward()
    for (name, a), b in zip(fast.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-4, rtol=1e-5, msg=name)


def _reference_core(q, k, v, mask, keep, p):
    """softmax(q k^T + mask) * keep / (1 - p) @ v in plain autograd ops; [B, L, h, d] layout."""
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    weights = (q @ k.transpose(-1, -2) + mask).softmax(-1) * keep / (1 - p)
    return (weights @ v).transpose(1, 2)


@pytest.mark.parametrize("images_per_chunk", [1, 2, 3])
@pytest.mark.parametrize("shared_query", [False, True])
def test_dropout_core_forward_and_gradients_equal_the_plain_formula(shared_query, images_per_chunk, monkeypatch):
    """The blocked core equals softmax(q k^T + mask) * keep/(1-p) @ v for the keep it draws, and so
    do its gradients (float64, q shared by the batch as the decoder's learned queries, or not), for
    blocks of one image (views), of two (a ragged last block) and of the whole batch."""
    monkeypatch.setattr(attention_core, "CHUNK_BYTES", images_per_chunk * HEADS * L * L * 8)
    p, d = 0.3, E // HEADS
    gen = torch.Generator().manual_seed(12)
    q = torch.randn(1 if shared_query else B, L, HEADS, d, generator=gen, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(B, L, HEADS, d, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(2))
    mask = build_neighbor_mask((4, 4), (3, 3)).double()
    torch.manual_seed(11)
    out = attention_with_dropout(q, k, v, mask, p)
    torch.manual_seed(11)
    keep = _keep_mask((B, HEADS, L, L), p).double()
    assert 0 < keep.mean() < 1
    ref = _reference_core(q, k, v, mask, keep, p)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)
    grad = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(ref, (q, k, v), grad)
    for name, a, b in zip("qkv", got, want):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12, msg=name)


def test_relu_keep_forward_and_gradient():
    x = torch.randn(6, 50, requires_grad=True)
    torch.manual_seed(4)
    y = relu_keep(x, 0.25)
    torch.manual_seed(4)
    keep = _keep_mask(x.shape, 0.25).float()
    torch.testing.assert_close(y, x.relu() * keep, atol=0, rtol=0)
    y.backward(torch.full_like(y, 2.0))
    torch.testing.assert_close(x.grad, 2.0 * keep * (x > 0).float(), atol=0, rtol=0)


def test_fast_ffn_in_training_is_linear2_of_dropped_relu():
    """The fused FFN (mask without scale, 1/(1-p) folded into linear2's weight) equals the textbook one."""
    layer = TransformerEncoderLayer(E, HEADS, 64, 0.2, "relu", False, "fast").train()
    x = torch.randn(B, L, E)
    torch.manual_seed(9)
    got = layer._ffn(x)
    torch.manual_seed(9)
    keep = _keep_mask((B, L, 64), 0.2).float()
    want = layer.linear2(layer.linear1(x).relu() * keep / 0.8)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_eval_and_zero_dropout_use_no_randomness():
    fast, _ = _pair(p=0.5, seed=8)
    x, _, pos = _inputs(seed=4)
    fast.eval()
    assert torch.equal(fast.forward_with_pos(x, x, pos), fast.forward_with_pos(x, x, pos))


def test_dropout_statistics_scale_and_reproducibility():
    x = torch.ones(400, 500)
    torch.manual_seed(0)
    y = dropout(x, 0.1, True)
    torch.manual_seed(0)
    assert torch.equal(y, dropout(x, 0.1, True))
    values = y.unique()
    assert len(values) == 2 and values[0] == 0 and values[1] == pytest.approx(1 / 0.9)
    # Even / odd elements come from the low / high 32-bit halves of the 64-bit words: both must be fair.
    for half in (y[:, 0::2], y[:, 1::2]):
        kept = (half != 0).float().mean().item()
        assert abs(kept - 0.9) < 5 * math.sqrt(0.09 / half.numel())
    assert dropout(x, 0.1, False) is x and dropout(x, 0.0, True) is x
    assert torch.equal(dropout(x, 1.0, True), torch.zeros_like(x))


def test_dropout_gradient_is_the_same_mask():
    x = torch.randn(50, 60, requires_grad=True)
    y = dropout(x, 0.25, True)
    y.sum().backward()
    torch.testing.assert_close(x.grad, (y != 0).float() / 0.75)


def test_keep_mask_threshold_extremes_and_odd_sizes():
    assert _keep_mask((7, 3), 1e-12).all()  # p rounds to 0 words: everything kept
    assert not _keep_mask((5, 5), 1 - 1e-12).any()
    assert _keep_mask((3, 5, 7), 0.5).shape == (3, 5, 7)


def test_bad_head_count():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        FastMultiheadAttention(30, 4)
