"""Connect functions g(s, d): truth tables, full-spike closure, the ADD baseline, lookup errors."""
from __future__ import annotations

import itertools

import pytest
import torch

from dst.connect import CONNECT_FUNCTIONS, SPIKE_ONLY, get_connect

# (s, d) -> g(s, d), from PAPER.md: IAND d*(1-s), AND s*d, OR s+d-s*d, XOR d*(1-s)+s*(1-d), ADD s+d
TRUTH = {
    "IAND": {(0, 0): 0, (0, 1): 1, (1, 0): 0, (1, 1): 0},
    "AND": {(0, 0): 0, (0, 1): 0, (1, 0): 0, (1, 1): 1},
    "OR": {(0, 0): 0, (0, 1): 1, (1, 0): 1, (1, 1): 1},
    "XOR": {(0, 0): 0, (0, 1): 1, (1, 0): 1, (1, 1): 0},
    "ADD": {(0, 0): 0, (0, 1): 1, (1, 0): 1, (1, 1): 2},
}
PAIRS = list(itertools.product((0, 1), repeat=2))


def test_registry_contents():
    assert set(CONNECT_FUNCTIONS) == set(TRUTH)
    assert SPIKE_ONLY == {"IAND", "AND", "OR", "XOR"}


@pytest.mark.parametrize("name", sorted(TRUTH))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16],
                         ids=["f32", "f64", "bf16", "f16"])
def test_truth_table(name, dtype):
    g = get_connect(name)
    s = torch.tensor([p[0] for p in PAIRS], dtype=dtype)
    d = torch.tensor([p[1] for p in PAIRS], dtype=dtype)
    out = g(s, d)
    assert out.dtype == dtype
    assert out.tolist() == [TRUTH[name][p] for p in PAIRS]


@pytest.mark.parametrize("name", sorted(SPIKE_ONLY))
def test_spike_only_stays_binary(name):
    torch.manual_seed(0)
    s = (torch.rand(4, 2, 8, 5, 5) < 0.5).float()
    d = (torch.rand(4, 2, 8, 5, 5) < 0.5).float()
    out = get_connect(name)(s, d)
    assert out.shape == s.shape
    assert set(out.unique().tolist()) == {0.0, 1.0}


def test_add_is_not_full_spike():
    assert get_connect("ADD")(torch.ones(3), torch.ones(3)).tolist() == [2.0, 2.0, 2.0]
    assert "ADD" not in SPIKE_ONLY


def test_default_is_iand_in_models():
    """The paper's released recipe uses IAND: it is the models' default connect."""
    from dst.models import create_model

    assert create_model("fsnn_resnet18", num_classes=2).connect == "IAND"
    assert create_model("fsnn_7b_net").connect == "IAND"
    assert create_model("sew_resnet18", num_classes=2).connect == "ADD"


@pytest.mark.parametrize("name", ["iand", "Or", "xor", "add", "AND"])
def test_case_insensitive(name):
    assert get_connect(name) is CONNECT_FUNCTIONS[name.upper()]


@pytest.mark.parametrize("bad", ["NAND", "", "sum"])
def test_unknown_connect_raises(bad):
    with pytest.raises(ValueError, match="unknown connect"):
        get_connect(bad)


@pytest.mark.parametrize("name", sorted(TRUTH))
def test_gradients_flow_to_both_inputs(name):
    """Surrogate training needs d g / d s and d g / d d: the polynomial forms give them (e.g. IAND: -d and 1-s)."""
    s = torch.tensor([0.0, 1.0, 0.0, 1.0], requires_grad=True)
    d = torch.tensor([0.0, 0.0, 1.0, 1.0], requires_grad=True)
    gs, gd = torch.autograd.grad(get_connect(name)(s, d).sum(), [s, d])
    expect = {  # (dg/ds, dg/dd) at the four (s, d) pairs (0,0), (1,0), (0,1), (1,1)
        "IAND": ([0, 0, -1, -1], [1, 0, 1, 0]),
        "AND": ([0, 0, 1, 1], [0, 1, 0, 1]),
        "OR": ([1, 1, 0, 0], [1, 0, 1, 0]),
        "XOR": ([1, 1, -1, -1], [1, -1, 1, -1]),
        "ADD": ([1, 1, 1, 1], [1, 1, 1, 1]),
    }[name]
    assert gs.tolist() == expect[0]
    assert gd.tolist() == expect[1]
