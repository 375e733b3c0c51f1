"""Synaptic op counts and energy: hand-computed counts on a small net, the ResNet-18 figures, SEW ADD accounting."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from dst.energy import EnergyModel, count_ops
from dst.export import dsnn_view, strip_aap
from dst.layers import MultiStep, repeat_time
from dst.models import create_model
from dst.models.base import DualStreamNet
from dst.neuron import MultiStepIF
from dst.verify import verify_full_spike

T, N = 3, 2


class TinyNet(DualStreamNet):
    """image [N,3,8,8] -> enc Conv3x3(3->4, pad 1), run once -> repeat T -> IF -> conv Conv1x1(4->8) on spikes
    -> dw Conv3x3/s2(8->8, groups 8, pad 1) on the analog conv output -> head fc(8->5) on the mean over T, H, W.
    enc has zero weights and bias (+1, -1, +1, -1): IF fires at every step in channels 0 and 2, never in 1 and 3,
    so the spike rate into `conv` is exactly 1/2."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Conv2d(3, 4, 3, padding=1)
        self.neuron = MultiStepIF()
        self.conv = MultiStep(nn.Conv2d(4, 8, 1))
        self.dw = MultiStep(nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8))
        self.fc = nn.Linear(8, 5)
        with torch.no_grad():
            self.enc.weight.zero_()
            self.enc.bias.copy_(torch.tensor([1.0, -1.0, 1.0, -1.0]))
        self.aap = False

    def forward_streams(self, x, with_aap):
        return self.dw(self.conv(self.neuron(repeat_time(self.enc(x), T)))), None


# Per sample (one image, all T steps):
ENC = 4 * 8 * 8 * (3 * 3 * 3)           # 6912 MACs: analog image, run once
CONV = T * (8 * 8 * 8) * 4 * 0.5         # dense T*2048 = 6144, x rate 1/2 -> 3072 ACs
DW = T * (8 * 4 * 4) * (1 * 3 * 3)       # 3456 MACs: reads the analog conv output
FC = 8 * 5                               # 40 MACs: once per sample, on rates
MACS, ACS = ENC + DW + FC, CONV


def test_hand_computed_counts():
    x = torch.randn(N, 3, 8, 8)
    report = count_ops(TinyNet(), x)
    assert report.samples == N
    assert (report.macs, report.acs) == (MACS, ACS) == (10408, 3072)
    assert report.energy_mj == pytest.approx((4.6 * MACS + 0.9 * ACS) * 1e-9)
    rows = {r.layer: r for r in report.rows}
    assert list(rows) == ["enc", "conv.0", "dw.0", "fc"]  # in execution order
    assert (rows["enc"].op, rows["enc"].macs, rows["enc"].acs) == ("MAC", ENC, 0)
    assert (rows["conv.0"].op, rows["conv.0"].binary_input, rows["conv.0"].input_firing_rate) == ("AC", True, 0.5)
    assert (rows["conv.0"].dense_ops, rows["conv.0"].acs, rows["conv.0"].macs) == (2 * CONV, CONV, 0)
    assert (rows["dw.0"].op, rows["dw.0"].macs) == ("MAC", DW)
    assert (rows["fc"].kind, rows["fc"].op, rows["fc"].macs, rows["fc"].calls) == ("linear", "MAC", FC, 1)
    d = report.to_dict()
    assert d["macs"] == MACS and len(d["layers"]) == 4 and d["energy_model"] == {"mac_pj": 4.6, "ac_pj": 0.9}


def test_counts_are_per_sample_and_chunking_does_not_change_them():
    x = torch.randn(4, 3, 8, 8)
    whole, chunked = count_ops(TinyNet(), x), count_ops(TinyNet(), x, batch_size=1)
    assert (chunked.macs, chunked.acs, chunked.samples) == (whole.macs, whole.acs, 4) == (MACS, ACS, 4)
    assert [r.calls for r in chunked.rows] == [1, 1, 1, 1]


def test_energy_constants_are_a_parameter():
    report = count_ops(TinyNet(), torch.randn(1, 3, 8, 8), energy=EnergyModel(mac_pj=1.0, ac_pj=10.0))
    assert report.energy_mj == pytest.approx((MACS + 10 * ACS) * 1e-9)


def test_head_counts_as_macs_even_when_every_rate_is_binary():
    net = TinyNet()
    with torch.no_grad():
        net.enc.bias.fill_(-1.0)       # no spikes at all
        net.conv[0].bias.zero_()
        net.dw[0].bias.zero_()         # so the head reads rates that are all exactly 0
    report = count_ops(net, torch.randn(1, 3, 8, 8))
    rows = {r.layer: r for r in report.rows}
    assert rows["conv.0"].acs == 0 and rows["dw.0"].acs == 0  # silent binary input costs nothing
    assert rows["fc"].op == "MAC" and rows["fc"].macs == FC


# ------------------------------------------------------------------------------------------------ ResNet-18
def _resnet18_analytic(T: int = 4) -> tuple[int, int, int]:
    """(stem, AAP transitions, one head) MACs per image at 224x224."""
    stem = 64 * 112 * 112 * 3 * 7 * 7                                       # 118,013,952
    aap = T * sum(cin * h * h * 9 + cout * h * h * cin                       # dw 3x3/s2 + 1x1, at every step
                  for cin, cout, h in ((64, 128, 28), (128, 256, 14), (256, 512, 7)))
    return stem, aap, 512 * 1000


def test_fsnn_resnet18_macs_at_224():
    torch.manual_seed(0)
    model = create_model("fsnn_resnet18", T=4).eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    stem, aap, head = _resnet18_analytic()
    assert (stem, aap, head) == (118_013_952, 80_231_424, 512_000)

    with_aap = count_ops(model, x)          # the training model: both heads, the shared fc counted twice
    assert with_aap.macs == stem + aap + 2 * head == 199_269_376
    assert with_aap.macs == pytest.approx(0.20e9, abs=0.005e9)   # the authors' 0.20 G MACs for DSNN-18
    aap_rows = [r for r in with_aap.rows if "aap_transition" in r.layer]
    assert len(aap_rows) == 6 and all(r.op == "MAC" for r in aap_rows)

    fsnn = count_ops(strip_aap(model), x)
    assert fsnn.macs == stem + head == 118_525_952
    assert fsnn.acs > 0 and fsnn.acs == pytest.approx(with_aap.acs)  # the spike stream is the same
    assert {r.layer for r in fsnn.rows if r.op == "MAC"} == {"stem_conv", "fc"}

    dsnn = count_ops(dsnn_view(model), x)   # predicting z_A only: one head
    assert dsnn.macs == stem + aap + head


def test_sew_add_layers_count_as_macs_exactly_where_the_verifier_fails():
    torch.manual_seed(0)
    model = create_model("sew_resnet18", T=2, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    check, ops = verify_full_spike(model, x), count_ops(model, x)
    assert not check.ok
    mac_layers = {r.layer for r in ops.rows if r.op == "MAC"}
    assert mac_layers == set(check.offending_layers) | {"stem_conv", "fc"}
    for r in ops.rows:
        assert r.macs + r.acs <= r.dense_ops + 1e-6
        assert (r.acs == 0) if r.op == "MAC" else (r.macs == 0)
