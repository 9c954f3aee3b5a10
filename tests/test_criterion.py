"""Losses and the criterion built from config entries."""
import pytest
import torch
from torch import nn

from utils.criterion_helper import (Criterion, FeatureL1Loss, FeatureMSELoss, ImageMSELoss,
                                    build_criterion, total_loss)


def _outputs(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"feature_rec": torch.randn(2, 5, 3, 3, generator=g),
            "feature_align": torch.randn(2, 5, 3, 3, generator=g),
            "image_rec": torch.randn(2, 3, 8, 8, generator=g),
            "image": torch.randn(2, 3, 8, 8, generator=g)}


def test_feature_mse_equals_nn_mseloss_times_weight():
    out = _outputs()
    expected = nn.MSELoss()(out["feature_rec"], out["feature_align"])
    torch.testing.assert_close(FeatureMSELoss()(out), expected, rtol=0, atol=0)
    torch.testing.assert_close(FeatureMSELoss(weight=2.5)(out), 2.5 * expected)


def test_l1_and_image_losses_compare_the_documented_keys():
    out = _outputs(1)
    manual_l1 = (out["feature_rec"] - out["feature_align"]).abs().mean()
    torch.testing.assert_close(FeatureL1Loss(weight=0.5)(out), 0.5 * manual_l1)
    manual_img = ((out["image_rec"] - out["image"]) ** 2).mean()
    torch.testing.assert_close(ImageMSELoss()(out), manual_img)


def test_build_criterion_keeps_config_order_names_and_weights():
    cfg = [{"name": "l1", "type": "FeatureL1Loss", "kwargs": {"weight": 0.5}},
           {"name": "mse", "type": "utils.criterion_helper.FeatureMSELoss", "kwargs": {"weight": 2.0}}]
    criterion = build_criterion(cfg)
    assert isinstance(criterion, Criterion)
    out = _outputs(2)
    losses = criterion(out)
    assert list(losses) == ["l1", "mse"]
    torch.testing.assert_close(losses["mse"], 2.0 * FeatureMSELoss()(out))
    torch.testing.assert_close(total_loss(losses), losses["l1"] + losses["mse"])


def test_loss_gradient_flows_to_reconstruction_only_input():
    out = _outputs(3)
    out["feature_rec"].requires_grad_(True)
    total_loss(build_criterion([{"name": "m", "type": "FeatureMSELoss"}])(out)).backward()
    expected = 2 * (out["feature_rec"] - out["feature_align"]) / out["feature_rec"].numel()
    torch.testing.assert_close(out["feature_rec"].grad, expected.detach())


def test_unknown_type_and_bad_kwargs_name_the_problem():
    with pytest.raises(ValueError, match="L1Loss"):
        build_criterion([{"name": "x", "type": "L1Loss"}])  # no alias: explicit names only
    with pytest.raises(ValueError, match="weigth"):
        build_criterion([{"name": "x", "type": "FeatureMSELoss", "kwargs": {"weigth": 1.0}}])
    with pytest.raises(ValueError, match="twice"):
        build_criterion([{"name": "a", "type": "FeatureMSELoss"}, {"name": "a", "type": "FeatureL1Loss"}])
    with pytest.raises(ValueError, match="empty"):
        build_criterion([])


def test_missing_key_and_shape_mismatch_are_clear_errors():
    out = _outputs()
    del out["feature_rec"]
    with pytest.raises(KeyError, match="feature_rec"):
        FeatureMSELoss()(out)
    out = _outputs()
    out["feature_rec"] = out["feature_rec"][:, :, :1]
    with pytest.raises(ValueError, match="differ in shape"):
        FeatureMSELoss()(out)
