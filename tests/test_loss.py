"""DSTLoss: L = w_F * CE(z_F, y) + w_A * CE(z_A, y), with the unweighted parts returned for logging."""
from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from dst.loss import DSTLoss, DSTLossOutput
from dst.models import StreamLogits


def ce_by_hand(z, y, eps=0.0):
    """Cross entropy with label smoothing written out: (1-eps) * NLL + eps * mean_k(-log p_k)."""
    logp = z.double().log_softmax(dim=1)
    nll = -logp.gather(1, y[:, None]).squeeze(1)
    uniform = -logp.mean(dim=1)
    return ((1 - eps) * nll + eps * uniform).mean()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    z_f = torch.randn(6, 5, generator=g)
    z_a = torch.randn(6, 5, generator=g) * 2
    y = torch.randint(0, 5, (6,), generator=g)
    return z_f, z_a, y


def test_default_is_unweighted_sum(batch):
    z_f, z_a, y = batch
    out = DSTLoss()(StreamLogits(z_f, z_a), y)
    assert isinstance(out, DSTLossOutput)
    expect_f, expect_a = ce_by_hand(z_f, y), ce_by_hand(z_a, y)
    assert out.fsnn.item() == pytest.approx(expect_f.item(), rel=1e-6)
    assert out.dsnn.item() == pytest.approx(expect_a.item(), rel=1e-6)
    assert out.total.item() == pytest.approx((expect_f + expect_a).item(), rel=1e-6)
    assert out.total.dim() == 0


@pytest.mark.parametrize("w_f,w_a", [(1.0, 0.5), (0.3, 2.0), (0.0, 1.0), (1.0, 0.0)])
def test_weights(batch, w_f, w_a):
    z_f, z_a, y = batch
    out = DSTLoss(fsnn_weight=w_f, dsnn_weight=w_a)(StreamLogits(z_f, z_a), y)
    expect_f, expect_a = ce_by_hand(z_f, y), ce_by_hand(z_a, y)
    # parts are the unweighted CEs (for logging); only the total is weighted
    assert out.fsnn.item() == pytest.approx(expect_f.item(), rel=1e-6)
    assert out.dsnn.item() == pytest.approx(expect_a.item(), rel=1e-6)
    assert out.total.item() == pytest.approx((w_f * expect_f + w_a * expect_a).item(), rel=1e-6)


def test_gradient_reaches_the_weighted_streams(batch):
    z_f, z_a, y = (t.clone() for t in batch)
    z_f.requires_grad_(True)
    z_a.requires_grad_(True)
    DSTLoss(fsnn_weight=1.0, dsnn_weight=0.0)(StreamLogits(z_f, z_a), y).total.backward()
    assert z_f.grad.abs().sum() > 0
    assert z_a.grad is None or z_a.grad.abs().sum() == 0
    # the CE gradient (softmax - onehot) / N, scaled by the weight
    z_f.grad = None
    DSTLoss(fsnn_weight=2.0)(StreamLogits(z_f, z_a), y).total.backward()
    expect = 2.0 * (z_f.detach().softmax(1) - F.one_hot(y, 5)) / len(y)
    torch.testing.assert_close(z_f.grad, expect, rtol=1e-5, atol=1e-6)
    assert z_a.grad.abs().sum() > 0


@pytest.mark.parametrize("eps", [0.1, 0.4])
def test_label_smoothing(batch, eps):
    z_f, z_a, y = batch
    out = DSTLoss(label_smoothing=eps)(StreamLogits(z_f, z_a), y)
    assert out.fsnn.item() == pytest.approx(ce_by_hand(z_f, y, eps).item(), rel=1e-6)
    assert out.dsnn.item() == pytest.approx(ce_by_hand(z_a, y, eps).item(), rel=1e-6)
    plain = DSTLoss()(StreamLogits(z_f, z_a), y)
    assert not math.isclose(out.total.item(), plain.total.item(), rel_tol=1e-4)


def test_tensor_input_for_a_model_without_aap(batch):
    z_f, _, y = batch
    out = DSTLoss(fsnn_weight=0.7, dsnn_weight=3.0)(z_f, y)
    assert out.dsnn is None
    assert out.fsnn.item() == pytest.approx(ce_by_hand(z_f, y).item(), rel=1e-6)
    assert out.total.item() == pytest.approx(0.7 * ce_by_hand(z_f, y).item(), rel=1e-6)


def test_low_precision_logits_give_float32_loss(batch):
    z_f, z_a, y = batch
    out = DSTLoss()(StreamLogits(z_f.bfloat16(), z_a.half()), y)
    assert out.total.dtype == torch.float32
    expect = ce_by_hand(z_f.bfloat16().float(), y) + ce_by_hand(z_a.half().float(), y)
    assert out.total.item() == pytest.approx(expect.item(), rel=1e-5)


def test_perfect_prediction_gives_near_zero_loss():
    y = torch.tensor([0, 2, 1])
    z = F.one_hot(y, 3).float() * 50
    assert DSTLoss()(StreamLogits(z, z), y).total.item() < 1e-6


@pytest.mark.parametrize("kwargs,match", [
    (dict(fsnn_weight=-1.0), "fsnn_weight"), (dict(dsnn_weight=-0.1), "dsnn_weight"),
    (dict(fsnn_weight=float("nan")), "fsnn_weight"), (dict(dsnn_weight=float("inf")), "dsnn_weight"),
    (dict(label_smoothing=1.0), "label_smoothing"), (dict(label_smoothing=-0.1), "label_smoothing"),
    (dict(label_smoothing=float("nan")), "label_smoothing")])
def test_bad_args_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DSTLoss(**kwargs)


def test_plain_tuple_is_not_mistaken_for_stream_logits(batch):
    """A bare tuple is neither a tensor nor StreamLogits: it must fail with a clear message, not be half-read."""
    z_f, z_a, y = batch
    with pytest.raises(TypeError, match="StreamLogits"):
        DSTLoss()((z_f, z_a), y)
    with pytest.raises(TypeError, match="StreamLogits"):
        DSTLoss()([z_f], y)
