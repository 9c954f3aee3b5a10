"""UniAD reconstruction: state_dict table, seeded init, mask, embeddings, jitter, pred, fast == torch path."""
import copy
import math
import random

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from easydict import EasyDict

from models.initializer import initialize_from_cfg
from models.reconstructions import UniAD
from models.reconstructions.position_embedding import PositionEmbeddingSine
from models.reconstructions.transformer import build_neighbor_mask

MVTEC = dict(
    inplanes=[272], instrides=[16], feature_size=[14, 14], feature_jitter={"scale": 20.0, "prob": 1.0},
    neighbor_mask={"neighbor_size": [7, 7], "mask": [True, True, True]}, hidden_dim=256, pos_embed_type="learned",
    save_recon=False, initializer={"method": "xavier_uniform"}, nhead=8, num_encoder_layers=4, num_decoder_layers=4,
    dim_feedforward=1024, dropout=0.1, activation="relu", normalize_before=False,
)
TINY = dict(
    MVTEC, inplanes=[12], instrides=[4], feature_size=[4, 4], neighbor_mask={"neighbor_size": [3, 3], "mask": [True] * 3},
    hidden_dim=32, nhead=2, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=64,
)


def tiny(seed=0, **overrides):
    torch.manual_seed(seed)
    return UniAD(**{**TINY, **overrides})


def features(batch=3, seed=1, cfg=TINY):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, cfg["inplanes"][0], *cfg["feature_size"], generator=gen)


def expected_state_dict_table(c=272, hw=196, e=256, f=1024, fs=(14, 14), n_enc=4, n_dec=4):
    """The table of uniad_official.md 4.10, in state_dict order."""
    attn = lambda p: [(f"{p}.in_proj_weight", [3 * e, e]), (f"{p}.in_proj_bias", [3 * e]),
                      (f"{p}.out_proj.weight", [e, e]), (f"{p}.out_proj.bias", [e])]
    ffn = lambda p: [(f"{p}.linear1.weight", [f, e]), (f"{p}.linear1.bias", [f]),
                     (f"{p}.linear2.weight", [e, f]), (f"{p}.linear2.bias", [e])]
    norms = lambda p, n: [(f"{p}.norm{i}.{w}", [e]) for i in range(1, n + 1) for w in ("weight", "bias")]
    table = [("pos_embed.row_embed.weight", [fs[0], e // 2]), ("pos_embed.col_embed.weight", [fs[1], e // 2])]
    for i in range(n_enc):
        p = f"transformer.encoder.layers.{i}"
        table += attn(f"{p}.self_attn") + ffn(p) + norms(p, 2)
    for i in range(n_dec):
        p = f"transformer.decoder.layers.{i}"
        table += [(f"{p}.learned_embed.weight", [hw, e])] + attn(f"{p}.self_attn") + attn(f"{p}.multihead_attn")
        table += ffn(p) + norms(p, 3)
    table += [("transformer.decoder.norm.weight", [e]), ("transformer.decoder.norm.bias", [e])]
    return table + [("input_proj.weight", [e, c]), ("input_proj.bias", [e]),
                    ("output_proj.weight", [c, e]), ("output_proj.bias", [c])]


def test_mvtec_state_dict_table():
    model = UniAD(**MVTEC)  # the "torch" path has the same names: see test_fast_equals_torch_* (strict load)
    state = model.state_dict()
    assert [(k, list(v.shape)) for k, v in state.items()] == expected_state_dict_table()
    assert len(state) == 132
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 7_717_392
    assert model.get_outplanes() == [272] and model.get_outstrides() == [16]


def reference_construction(cfg, seed):
    """The original constructor's RNG draw order, rebuilt from torch.nn primitives (4.9), as a name->tensor dict."""
    torch.manual_seed(seed)
    e, hw, (h, w) = cfg["hidden_dim"], math.prod(cfg["feature_size"]), cfg["feature_size"]
    row, col = nn.Embedding(h, e // 2), nn.Embedding(w, e // 2)
    nn.init.uniform_(row.weight), nn.init.uniform_(col.weight)
    mha = lambda: nn.MultiheadAttention(e, cfg["nhead"])
    ffn = lambda: [nn.Linear(e, cfg["dim_feedforward"]), nn.Linear(cfg["dim_feedforward"], e)]
    enc_proto = nn.ModuleDict(dict(zip(["self_attn", "linear1", "linear2"], [mha()] + ffn())))
    encoder = [copy.deepcopy(enc_proto) for _ in range(cfg["num_encoder_layers"])]
    dec_proto = nn.ModuleDict(dict(zip(["learned_embed", "self_attn", "multihead_attn", "linear1", "linear2"],
                                       [nn.Embedding(hw, e), mha(), mha()] + ffn())))
    decoder = [copy.deepcopy(dec_proto) for _ in range(cfg["num_decoder_layers"])]
    tree = nn.ModuleDict({"encoder": nn.ModuleList(encoder), "decoder": nn.ModuleList(decoder),
                          "input_proj": nn.Linear(cfg["inplanes"][0], e), "output_proj": nn.Linear(e, cfg["inplanes"][0])})
    for m in tree.modules():  # the init walk visits the Linears in this same order in the original
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight), nn.init.zeros_(m.bias)
    named = {"pos_embed.row_embed.weight": row.weight, "pos_embed.col_embed.weight": col.weight}
    for name, tensor in tree.state_dict().items():
        prefix = "transformer." if name.startswith(("encoder", "decoder")) else ""
        named[prefix + name.replace("encoder.", "encoder.layers.", 1).replace("decoder.", "decoder.layers.", 1)] = tensor
    return named


@pytest.mark.parametrize("attn_impl", ["fast", "torch"])
def test_seeded_construction_reproduces_the_original_draw_order(attn_impl):
    state = tiny(seed=17689, attn_impl=attn_impl).state_dict()
    reference = reference_construction(TINY, 17689)
    for name, tensor in reference.items():
        assert torch.equal(state[name], tensor), name
    assert all(".norm" in name for name in set(state) - set(reference))  # LayerNorms draw nothing


def test_init_properties():
    model = tiny(seed=3)
    enc, dec = model.transformer.encoder.layers, model.transformer.decoder.layers
    assert all(torch.equal(layer.self_attn.in_proj_weight, enc[0].self_attn.in_proj_weight) for layer in enc)
    assert all(torch.equal(layer.learned_embed.weight, dec[0].learned_embed.weight) for layer in dec)
    assert all(torch.equal(layer.multihead_attn.in_proj_weight, dec[0].multihead_attn.in_proj_weight) for layer in dec)
    assert not torch.equal(enc[0].linear1.weight, enc[1].linear1.weight)
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            bound = math.sqrt(6 / (m.in_features + m.out_features))
            assert m.weight.abs().max() <= bound and m.weight.abs().max() > 0.9 * bound, name
            assert not m.bias.any(), name
    assert enc[0].self_attn.in_proj_weight.abs().max() <= math.sqrt(6 / (32 + 96)) and not enc[0].self_attn.in_proj_bias.any()
    pos = model.pos_embed
    assert 0 <= pos.row_embed.weight.min() and pos.row_embed.weight.max() < 1 and 0 <= pos.col_embed.weight.min()


@pytest.mark.parametrize("method,check", [
    (None, lambda w: abs(w.std().item() - 0.01) < 1e-3),
    ({"method": "normal", "std": 0.1}, lambda w: abs(w.std().item() - 0.1) < 1e-2),
    ({"method": "msra_uniform"}, lambda w: w.abs().max() <= math.sqrt(3 / 200) and w.abs().max() > 0.9 * math.sqrt(3 / 200)),
    ({"method": "msra_normal"}, lambda w: abs(w.std().item() - math.sqrt(1 / 200)) < 5e-3),
    ({"method": "xavier_normal"}, lambda w: abs(w.std().item() - math.sqrt(2 / 300)) < 5e-3),
])
def test_initializer_methods(method, check):
    layer = nn.Sequential(nn.Linear(200, 100), nn.BatchNorm2d(4))
    nn.init.constant_(layer[1].weight, 5.0)
    initialize_from_cfg(layer, method)
    assert check(layer[0].weight) and not layer[0].bias.any() and (layer[1].weight == 1).all()


def test_initializer_errors():
    with pytest.raises(ValueError, match="not supported"):
        initialize_from_cfg(nn.Linear(2, 2), {"method": "kaiming"})
    with pytest.raises(ValueError, match="needs a 'method' key"):
        initialize_from_cfg(nn.Linear(2, 2), {"std": 0.1})
    with pytest.raises(ValueError, match="only applies to method 'normal'"):
        initialize_from_cfg(nn.Linear(2, 2), {"method": "xavier_uniform", "std": 0.1})


def brute_force_mask(h, w, nh, nw):
    """The original's loop: -inf on the clipped window [i - n//2, i + n//2 + 1) around each query."""
    mask = torch.zeros(h, w, h, w)
    for h1 in range(h):
        for w1 in range(w):
            mask[h1, w1, max(h1 - nh // 2, 0):min(h1 + nh // 2 + 1, h), max(w1 - nw // 2, 0):min(w1 + nw // 2 + 1, w)] = -math.inf
    return mask.view(h * w, h * w)


@pytest.mark.parametrize("size,neighbor", [((14, 14), (7, 7)), ((5, 7), (3, 3)), ((6, 5), (4, 2)), ((4, 4), (1, 1))])
def test_neighbor_mask_matches_brute_force(size, neighbor):
    assert torch.equal(build_neighbor_mask(size, neighbor), brute_force_mask(*size, *neighbor))


def test_neighbor_mask_values_and_errors():
    mask = build_neighbor_mask((14, 14), (7, 7))
    assert torch.isinf(mask[0]).sum() == 16 and torch.isinf(mask[7 * 14 + 7]).sum() == 49  # corner clipped to 4x4
    assert (~torch.isinf(mask)).sum(1).min() == 147
    with pytest.raises(ValueError, match="hides every key"):
        build_neighbor_mask((4, 4), (7, 7))


def test_mask_is_a_non_persistent_buffer():
    model = tiny()
    assert "transformer.mask" not in model.state_dict()
    assert model.to(torch.float64).transformer.mask.dtype == torch.float64
    assert tiny(neighbor_mask=False).transformer.mask is None


def test_learned_embedding_layout_column_half_first():
    model = tiny(seed=4)
    pos, emb = model.pos_embed(), model.pos_embed
    for h, w in [(0, 0), (1, 3), (3, 2)]:
        assert torch.equal(pos[h * 4 + w], torch.cat([emb.col_embed.weight[w], emb.row_embed.weight[h]]))


def test_sine_embedding_formula_row_half_first():
    height, width, feats = 3, 5, 8
    pos = PositionEmbeddingSine((height, width), feats, normalize=True).pos
    for h in range(height):
        for w in range(width):
            y, x = (h + 1) / (height + 1e-6) * 2 * math.pi, (w + 1) / (width + 1e-6) * 2 * math.pi
            dims = [10000 ** (2 * (i // 2) / feats) for i in range(feats)]
            ref = [f(v / d) for v in (y, x) for i, d in enumerate(dims) for f in [(math.sin, math.cos)[i % 2]]]
            torch.testing.assert_close(pos[h * width + w], torch.tensor(ref), atol=1e-5, rtol=0)
    model = tiny(pos_embed_type="sine")
    assert "pos_embed.pos" not in model.state_dict() and model.pos_embed().shape == (16, 32)


def test_jitter_exact_formula_and_seeded_noise():
    model = tiny().train()
    tokens = model._to_tokens(features())  # [B, HW, C] in the fast path
    random.seed(5), torch.manual_seed(9)
    jittered = model._add_jitter(tokens)
    random.seed(5), torch.manual_seed(9)
    assert random.uniform(0, 1) <= 1.0
    noise = torch.randn(16, 3, 12).transpose(0, 1)  # drawn sequence-first as the original
    expected = tokens + noise * (tokens.norm(dim=2, keepdim=True) / 12) * 20.0
    torch.testing.assert_close(jittered, expected, atol=1e-6, rtol=1e-6)


def test_jitter_statistics_and_probability():
    model = tiny(feature_jitter={"scale": 3.0, "prob": 1.0}).train()
    tokens = model._to_tokens(features(batch=64))
    z = (model._add_jitter(tokens) - tokens) / (tokens.norm(dim=2, keepdim=True) / 12 * 3.0)
    assert abs(z.mean().item()) < 0.05 and abs(z.std().item() - 1) < 0.05
    never = tiny(feature_jitter={"scale": 3.0, "prob": 0.0}).train()
    assert never._add_jitter(tokens) is tokens


def test_jitter_is_training_only_and_target_stays_clean():
    model = tiny(dropout=0.0)
    x = features()
    eval_out = model.eval()({"feature_align": x})
    train_out = model.train()({"feature_align": x})
    assert train_out["feature_align"] is x
    assert not torch.allclose(train_out["feature_rec"], eval_out["feature_rec"])
    assert torch.equal(tiny(dropout=0.0, feature_jitter=None).train()({"feature_align": x})["feature_rec"],
                       eval_out["feature_rec"])


def test_pred_definition():
    out = tiny().eval()({"feature_align": features()})
    err = torch.sqrt(((out["feature_rec"] - out["feature_align"]) ** 2).sum(1, keepdim=True))
    assert out["pred"].shape == (3, 1, 16, 16) and out["feature_rec"].shape == (3, 12, 4, 4)
    assert torch.equal(out["pred"], F.interpolate(err, size=(16, 16), mode="bilinear", align_corners=True))


@pytest.mark.parametrize("attn_impl", ["fast", "torch"])
def test_batched_equals_per_sample(attn_impl):
    model = tiny(attn_impl=attn_impl).eval()
    x = features(batch=4)
    batched = model({"feature_align": x})["feature_rec"]
    single = torch.cat([model({"feature_align": x[i:i + 1]})["feature_rec"] for i in range(4)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


VARIANTS = [
    {},
    {"normalize_before": True, "pos_embed_type": "sine"},
    {"neighbor_mask": {"neighbor_size": [3, 3], "mask": [False, True, False]}, "activation": "gelu"},
    {"neighbor_mask": None, "activation": "glu"},
]


@pytest.mark.parametrize("variant", VARIANTS)
def test_fast_equals_torch_eval_and_train_without_dropout(variant):
    fast, ref = tiny(seed=2, attn_impl="fast", dropout=0.0, **variant), tiny(seed=3, attn_impl="torch", dropout=0.0, **variant)
    ref.load_state_dict(fast.state_dict())  # interchangeable state_dicts
    x = features()
    for mode in ("eval", "train"):
        getattr(fast, mode)(), getattr(ref, mode)()
        random.seed(0), torch.manual_seed(0)
        out_fast = fast({"feature_align": x})
        random.seed(0), torch.manual_seed(0)
        out_ref = ref({"feature_align": x})
        for key in ("feature_rec", "pred"):
            torch.testing.assert_close(out_fast[key], out_ref[key], atol=1e-5, rtol=1e-5, msg=f"{mode} {key}")


@pytest.mark.parametrize("normalize_before", [False, True])
def test_fast_and_torch_gradients_agree(normalize_before):
    """GELU (smooth): with ReLU, a unit sitting at its kink may flip between two float32 orders of summation."""
    variant = dict(dropout=0.0, activation="gelu", normalize_before=normalize_before)
    fast, ref = tiny(seed=2, attn_impl="fast", **variant), tiny(seed=2, attn_impl="torch", **variant)
    x = features()
    for model in (fast, ref):
        random.seed(0), torch.manual_seed(0)
        out = model.train()({"feature_align": x})
        F.mse_loss(out["feature_rec"], out["feature_align"]).backward()
    for (name, a), b in zip(fast.named_parameters(), ref.parameters()):
        assert (a.grad - b.grad).norm() <= 1e-4 * b.grad.norm() + 1e-7, name


def test_train_without_dropout_and_jitter_equals_eval():
    model = tiny(dropout=0.0, feature_jitter=False)
    x = features()
    assert torch.equal(model.train()({"feature_align": x})["pred"], model.eval()({"feature_align": x})["pred"])


@pytest.mark.parametrize("attn_impl", ["fast", "torch"])
def test_training_with_dropout_runs_and_is_seeded(attn_impl):
    model = tiny(attn_impl=attn_impl).train()
    outs = []
    for _ in range(2):
        random.seed(1), torch.manual_seed(1)
        outs.append(model({"feature_align": features()})["feature_rec"])
    assert torch.equal(outs[0], outs[1])
    outs[0].sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_save_recon_writes_one_npy_per_sample(tmp_path):
    model = tiny(save_recon=EasyDict(save_dir=str(tmp_path / "recon"))).eval()
    batch = {"feature_align": features(batch=2), "clsname": ["bottle", "screw"],
             "filename": ["bottle/test/broken_large/000.png", "screw/test/good/011.png"]}
    rec = model(batch)["feature_rec"]
    saved = np.load(tmp_path / "recon" / "screw" / "good" / "011.npy")
    assert saved.dtype == np.float32 and saved.shape == (12, 4, 4)
    np.testing.assert_array_equal(saved, rec[1].detach().numpy())
    assert (tmp_path / "recon" / "bottle" / "broken_large" / "000.npy").is_file()
    with pytest.raises(KeyError, match="clsname"):
        model({"feature_align": features(batch=2)})
    model.train()({"feature_align": features(batch=2)})  # training never saves


def test_accepts_easydict_and_false_options():
    cfg = EasyDict({**TINY, "feature_jitter": {"scale": 20.0, "prob": 1.0}})
    model = UniAD(**cfg)
    assert model.feature_jitter == {"scale": 20.0, "prob": 1.0}
    assert tiny(feature_jitter=False, save_recon=None, initializer=None).feature_jitter is None


@pytest.mark.parametrize("overrides,match", [
    ({"feature_size": [5, 4]}, r"expected \[B, 12, 5, 4\]"),
    ({"feature_jitter": {"scale": 20.0, "probb": 1.0}}, "feature_jitter must be"),
    ({"neighbor_mask": {"neighbor_size": [3, 3], "mask": [True, True]}}, "three bools"),
    ({"attn_impl": "flash"}, "attn_impl 'flash'"),
    ({"activation": "tanh"}, "activation 'tanh'"),
    ({"pos_embed_type": "rope"}, "pos_embed_type 'rope'"),
    ({"inplanes": [12, 12]}, "one feature level"),
    ({"nhead": 3}, "divisible by nhead"),
])
def test_bad_arguments_are_clear_errors(overrides, match):
    with pytest.raises(ValueError, match=match):
        model = tiny(**overrides)
        model({"feature_align": features()})


def test_unknown_keyword_is_a_signature_error():
    with pytest.raises(TypeError, match="dim_feedfoward"):
        UniAD(**{**TINY, "dim_feedfoward": 64})
