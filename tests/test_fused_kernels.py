"""The fused CPU dropout kernels: the generator, each kernel against its torch formula, the fallback."""
import logging
import math

import pytest
import torch

from models.reconstructions import attention_core, dropout as dropout_mod, fused_kernels
from models.reconstructions.attention_core import attention_with_dropout
from models.reconstructions.dropout import dropout, dropout_add, keep_mask
from models.reconstructions.transformer import build_neighbor_mask

pytestmark = pytest.mark.skipif(fused_kernels.library() is None, reason="no C compiler with OpenMP here")

M0, M1, W0, W1 = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85
MASK32 = 0xFFFFFFFF


def _philox_reference(counter, key):
    """Philox4x32-10 in plain Python (Salmon et al. 2011): four 32-bit counter words, two key words."""
    x0, x1, x2, x3 = counter
    k0, k1 = key
    for _ in range(10):
        p0, p1 = M0 * x0, M1 * x2
        x0, x1, x2, x3 = (p1 >> 32) ^ x1 ^ k0, p1 & MASK32, (p0 >> 32) ^ x3 ^ k1, p0 & MASK32
        k0, k1 = (k0 + W0) & MASK32, (k1 + W1) & MASK32
    return x0, x1, x2, x3


def _reference_word(seed, e):
    """Word of flat element e: word (e % 64) // 16 of Philox at counter e // 64 * 16 + e % 16."""
    counter = e // 64 * 16 + e % 16
    words = _philox_reference((counter & MASK32, counter >> 32, 0, 0), (seed & MASK32, seed >> 32))
    return words[(e % 64) // 16]


def test_philox_known_answer_and_element_layout():
    # Random123's known-answer vector for counter 0, key 0.
    assert _philox_reference((0, 0, 0, 0), (0, 0)) == (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)
    words = fused_kernels.philox_words(200, 0)
    assert [int(words[i]) for i in (0, 16, 32, 48)] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    seed = 0x1234_5678_9ABC_DEF1
    words = fused_kernels.philox_words(300, seed)
    for e in (0, 1, 15, 16, 17, 63, 64, 100, 199, 299):
        assert int(words[e]) == _reference_word(seed, e), e


def test_keep_mask_is_the_threshold_rule_on_the_words():
    seed, p = 77, 0.3
    threshold = round(p * 2**32)
    keep = fused_kernels.keep_mask((5000,), seed, threshold)
    words = fused_kernels.philox_words(5000, seed)
    assert torch.equal(keep.bool(), words >= threshold)
    rate = keep.float().mean().item()
    assert abs(rate - 0.7) < 5 * math.sqrt(0.21 / 5000)


def test_masks_do_not_depend_on_the_thread_count():
    threads = torch.get_num_threads()
    scores = torch.randn(40 * 49, 49)
    try:
        torch.set_num_threads(1)
        one = fused_kernels.keep_mask((300_000,), 5, 2**31), fused_kernels.softmax_dropout_(scores.clone(), None, 0, 5, 2**31)
        torch.set_num_threads(2)
        two = fused_kernels.keep_mask((300_000,), 5, 2**31), fused_kernels.softmax_dropout_(scores.clone(), None, 0, 5, 2**31)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


@pytest.mark.parametrize("masked", [False, True])
def test_softmax_dropout_forward_matches_torch_and_splits_exactly(masked):
    heads, length = 3, 49
    scores = torch.randn(2 * heads, length, length) * 4
    mask = build_neighbor_mask((7, 7), (3, 3)) if masked else None
    seed, threshold = 99, round(0.2 * 2**32)
    prob = scores.clone().view(-1, length)
    dropped = fused_kernels.softmax_dropout_(prob, mask, 0, seed, threshold)
    want = torch.softmax(scores + (0 if mask is None else mask), dim=-1).view(-1, length)
    torch.testing.assert_close(prob, want, atol=1e-6, rtol=1e-5)
    keep = fused_kernels.keep_mask(prob.shape, seed, threshold).float()
    assert torch.equal(dropped, prob * keep)
    # The second image's rows alone, at their flat offset, draw what the whole call drew.
    half = scores[heads:].clone().view(-1, length)
    dropped_half = fused_kernels.softmax_dropout_(half, mask, heads * length * length, seed, threshold)
    assert torch.equal(dropped_half, dropped[heads * length:])


def test_softmax_dropout_backward_matches_formula():
    prob = torch.softmax(torch.randn(30, 20), dim=-1)
    dropped = prob * (torch.rand(30, 20) > 0.25)
    grad = torch.randn(30, 20)
    want = dropped * grad - prob * (dropped * grad).sum(-1, keepdim=True)
    got = fused_kernels.softmax_dropout_backward_(grad.clone(), prob, dropped)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("shared_query", [False, True])
def test_float32_attention_core_matches_float64_formula(shared_query, monkeypatch):
    """The kernel path of the attention core (float32), in blocks of one and two images, against the
    plain formula in float64 with the same keep mask, forward and gradients."""
    heads, length, d, batch, p = 2, 16, 8, 3, 0.3
    monkeypatch.setattr(attention_core, "CHUNK_BYTES", 2 * heads * length * length * 4)
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(1 if shared_query else batch, length, heads, d, generator=gen, requires_grad=True)
    k, v = (torch.randn(batch, length, heads, d, generator=gen, requires_grad=True) for _ in range(2))
    mask = build_neighbor_mask((4, 4), (3, 3))
    torch.manual_seed(21)
    out = attention_with_dropout(q, k, v, mask, p)
    torch.manual_seed(21)
    keep = keep_mask((batch, heads, length, length), p).double()
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    weights = torch.softmax(torch.einsum("blhd,bshd->bhls", q64.expand(batch, -1, -1, -1), k64) + mask.double(), -1)
    ref = torch.einsum("bhls,bshd->blhd", weights * keep / (1 - p), v64)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    grad = torch.randn(out.shape, generator=gen)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(ref, (q64, k64, v64), grad.double())
    for name, a, b in zip("qkv", got, want):
        torch.testing.assert_close(a.double(), b, atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("residual_shape", [(4, 10, 6), (10, 6)])
def test_dropout_add_forward_and_gradients(residual_shape):
    residual = torch.randn(residual_shape, requires_grad=True)
    x = torch.randn(4, 10, 6, requires_grad=True)
    torch.manual_seed(8)
    out = dropout_add(residual, x, 0.4, True)
    torch.manual_seed(8)
    keep = keep_mask(x.shape, 0.4).float()
    torch.testing.assert_close(out, residual + x * keep / 0.6, atol=1e-6, rtol=1e-6)
    grad = torch.randn(out.shape)
    out.backward(grad)
    torch.testing.assert_close(x.grad, grad * keep / 0.6, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(residual.grad, grad.sum_to_size(residual_shape), atol=1e-5, rtol=1e-5)


def test_dropout_gradient_recomputes_the_forward_mask():
    x = torch.randn(3, 70, requires_grad=True)
    torch.manual_seed(2)
    y = dropout(x, 0.5, True)
    torch.manual_seed(2)
    keep = keep_mask(x.shape, 0.5).float()
    torch.testing.assert_close(y, x * keep * 2.0, atol=0, rtol=0)
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(x.grad, keep * 2.0, atol=0, rtol=0)


def test_non_contiguous_tensors_are_refused():
    with pytest.raises(ValueError, match="contiguous CPU"):
        fused_kernels.dropout_scale(torch.randn(4, 6).t(), 1.0, 0, 0)
    with pytest.raises(ValueError, match="contiguous CPU"):
        fused_kernels.dropout_scale(torch.randn(4, 6, dtype=torch.float64), 1.0, 0, 0)


def _check_numpy_fallback():
    assert fused_kernels.library() is None
    x = torch.ones(200, 300)
    torch.manual_seed(0)
    y = dropout(x, 0.1, True)
    kept = (y != 0).float().mean().item()
    assert abs(kept - 0.9) < 0.005 and y.max().item() == pytest.approx(1 / 0.9)
    torch.manual_seed(0)
    assert torch.equal(dropout_add(torch.zeros_like(x), x, 0.1, True), y)


def test_kernels_switched_off_by_environment_fall_back_to_numpy_masks(monkeypatch):
    monkeypatch.setenv("UNIAD_FUSED_KERNELS", "0")
    fused_kernels.forget()
    try:
        _check_numpy_fallback()
    finally:
        fused_kernels.forget()


def test_kernels_switched_off_in_a_block_fall_back_and_come_back():
    with fused_kernels.disabled():
        _check_numpy_fallback()
    assert fused_kernels.library() is not None


def test_failed_build_warns_once_and_falls_back(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("UNIAD_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    fused_kernels.forget()
    try:
        with caplog.at_level(logging.WARNING, logger="global_logger"):
            assert fused_kernels.library() is None
            assert fused_kernels.library() is None
        warnings = [r.message for r in caplog.records if "fused CPU dropout kernels unavailable" in r.message]
        assert len(warnings) == 1 and "failed" in warnings[0]
        assert not list(tmp_path.iterdir())  # no half-written library left behind
        assert dropout_mod.uses_kernels(0.1, torch.zeros(1)) is False
    finally:
        fused_kernels.forget()


def test_build_goes_to_the_cache_and_is_reused(monkeypatch, tmp_path):
    monkeypatch.setenv("UNIAD_KERNEL_CACHE", str(tmp_path))
    fused_kernels.forget()
    try:
        assert fused_kernels.library() is not None
        built = list(tmp_path.glob("fused_dropout-*.so"))
        assert len(built) == 1 and built[0] == fused_kernels.library_path("gcc")
        stamp = built[0].stat().st_mtime_ns
        fused_kernels.forget()
        assert fused_kernels.library() is not None and built[0].stat().st_mtime_ns == stamp
    finally:
        fused_kernels.forget()


@pytest.mark.parametrize("residual_shape", [(3, 12, 16), (12, 16)])
def test_add_dropout_norm_matches_layernorm_of_dropout_add(residual_shape):
    from models.reconstructions.add_norm import add_dropout_norm

    norm = torch.nn.LayerNorm(16)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    residual = torch.randn(residual_shape, requires_grad=True)
    x = torch.randn(3, 12, 16, requires_grad=True)
    torch.manual_seed(6)
    out = add_dropout_norm(residual, x, 0.3, True, norm)
    torch.manual_seed(6)
    keep = keep_mask(x.shape, 0.3).float()
    ref_inputs = [t.detach().clone().requires_grad_() for t in (residual, x)]
    want = norm(ref_inputs[0] + ref_inputs[1] * keep / 0.7)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    grad = torch.randn(out.shape)
    got = torch.autograd.grad(out, (residual, x, norm.weight, norm.bias), grad)
    ref = torch.autograd.grad(want, (*ref_inputs, norm.weight, norm.bias), grad)
    for name, a, b in zip(("residual", "x", "weight", "bias"), got, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=name)


def test_add_dropout_norm_outside_training_is_the_plain_layernorm():
    from models.reconstructions.add_norm import add_dropout_norm

    norm = torch.nn.LayerNorm(8)
    residual, x = torch.randn(4, 8), torch.randn(4, 8)
    assert torch.equal(add_dropout_norm(residual, x, 0.3, False, norm), norm(residual + x))


def test_kernels_are_not_used_where_the_threshold_or_dtype_does_not_fit():
    x = torch.ones(4, 5)
    assert dropout_mod.uses_kernels(0.1, x)
    assert not dropout_mod.uses_kernels(1 - 1e-12, x)  # round(p * 2**32) == 2**32: all dropped
    assert not dropout_mod.uses_kernels(0.1, x.double())
    torch.testing.assert_close(dropout(x, 1 - 1e-12, True), torch.zeros_like(x))
