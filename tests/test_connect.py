"""Connect functions g(s, d): truth tables, full-spike closure, the ADD baseline, lookup errors; the SEW block's
junction (join): IAND's single graph node against the expressions."""
from __future__ import annotations

import io
import itertools

import pytest
import torch

from dst.connect import CONNECT_FUNCTIONS, SPIKE_ONLY, IANDJunction, get_connect, join

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


def _spikes(shape, p, seed, dtype, channels_last=False):
    """Binary spikes; [T, N, C, H, W] channels-last per step (as the ResNets make them) if asked."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(shape, generator=g) < p).to(dtype)
    if channels_last:
        x = x.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, shape[:2])
    return x


def _junction_and_grads(fn, s, d, a, g_o, g_a):
    leaves = [t.detach().clone().requires_grad_(True) for t in (s, d) + (() if a is None else (a,))]
    o, a_out = fn(*leaves)
    outputs, grads = [o], [g_o]
    if a_out is not None:
        outputs.append(a_out)
        grads.append(g_a)
    return (o, a_out), torch.autograd.grad(outputs, leaves, grads), o.grad_fn


@pytest.mark.parametrize("with_aap", [False, True], ids=["fsnn", "aap"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=["f32", "f64", "bf16"])
def test_iand_junction_equals_the_expressions(with_aap, dtype):
    """join(iand, ...) runs IANDJunction: bit-identical outputs and gradients to d * (1 - s) and a + s run by autograd
    (spikes are binary, so d - d * s and the folded gradient sums are exact), layouts kept."""
    shape = (4, 2, 6, 5, 3)
    s, d = _spikes(shape, 0.4, 0, dtype), _spikes(shape, 0.6, 1, dtype, channels_last=True)   # layouts mixed
    g = torch.Generator().manual_seed(2)
    a = torch.randn(shape, generator=g).to(dtype) if with_aap else None
    g_o, g_a = torch.randn(shape, generator=g).to(dtype), torch.randn(shape, generator=g).to(dtype)

    got, grads, node = _junction_and_grads(lambda *t: join(CONNECT_FUNCTIONS["IAND"], *t), s, d, a, g_o, g_a)
    want, grads_ref, _ = _junction_and_grads(lambda s, d, a=None: (d * (1.0 - s), None if a is None else a + s),
                                             s, d, a, g_o, g_a)
    assert type(node).__name__ == "IANDJunctionBackward"
    assert torch.equal(got[0], want[0]) and got[0].dtype == dtype and got[0].stride() == (d * (1.0 - s)).stride()
    assert (got[1] is None) == (a is None) and (a is None or torch.equal(got[1], want[1]))
    for x, y in zip(grads, grads_ref):
        assert x.dtype == y.dtype and torch.equal(x, y)


def test_iand_junction_gradients_where_one_output_is_unused():
    """Only a_out reaches the loss (or only o): the other output's gradient is zero, not an error."""
    s, d = _spikes((3, 4), 0.5, 3, torch.float32), _spikes((3, 4), 0.5, 4, torch.float32)
    a = torch.randn(3, 4, requires_grad=True)
    s.requires_grad_(True)
    d.requires_grad_(True)
    o, a_out = IANDJunction.apply(s, d, a)
    gs, gd, ga = torch.autograd.grad(a_out.sum(), [s, d, a])
    assert torch.equal(gs, torch.ones_like(s)) and torch.equal(gd, torch.zeros_like(d)) and torch.equal(ga, gs)
    o, _ = IANDJunction.apply(s, d, a)
    gs, gd = torch.autograd.grad(o.sum(), [s, d])
    assert torch.equal(gs, -d.detach()) and torch.equal(gd, 1 - s.detach())


@pytest.mark.parametrize("name", ["AND", "OR", "XOR", "ADD"])
def test_other_connects_join_as_expressions(name):
    s, d, a = torch.tensor([0.0, 1.0, 0.0, 1.0]), torch.tensor([0.0, 0.0, 1.0, 1.0]), torch.arange(4.0)
    o, a_out = join(get_connect(name), s, d, a)
    assert o.tolist() == [TRUTH[name][p] for p in [(0, 0), (1, 0), (0, 1), (1, 1)]]
    assert a_out.tolist() == [0.0, 2.0, 2.0, 4.0] and join(get_connect(name), s, d)[1] is None


@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # torch.jit, which the TorchScript export uses
def test_iand_junction_traces_as_plain_ops():
    """Under tracing (the TorchScript export) IAND runs as the expression: the trace saves and loads (a Python
    autograd node in it could not be saved) and computes the same."""
    class Junction(torch.nn.Module):
        def forward(self, s, d):
            return join(CONNECT_FUNCTIONS["IAND"], s, d)[0]

    s, d = _spikes((2, 3), 0.5, 5, torch.float32), _spikes((2, 3), 0.5, 6, torch.float32)
    traced = torch.jit.trace(Junction(), (s, d))
    assert "IANDJunction" not in str(traced.graph)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    buffer.seek(0)
    assert torch.equal(torch.jit.load(buffer)(s, d), d * (1 - s))


@pytest.mark.parametrize("model_name, aap, node", [("fsnn_resnet18", True, "IANDJunctionBackward"),
                                                   ("fsnn_resnet18", False, "IANDJunctionBackward"),
                                                   ("fsnn_7b_net", True, "IANDJunctionBackward"),
                                                   ("sew_resnet18", False, "AddBackward0")])
def test_sew_blocks_join_through_one_node(model_name, aap, node):
    """The models' SEW blocks go through join: IAND blocks (with or without the AAP) as one IANDJunction node."""
    from dst.models import create_model
    model = create_model(model_name, num_classes=3, aap=aap)
    seen = []
    block = next(m for m in model.modules() if type(m).__name__ == "SEWBlock")
    block.register_forward_hook(lambda m, args, out: seen.append((type(out[0].grad_fn).__name__, out[1] is None)))
    x = torch.rand(1, 2, 2, 16, 16) if model_name == "fsnn_7b_net" else torch.rand(1, 3, 32, 32)
    model(x)
    assert seen[0] == (node, not aap)
