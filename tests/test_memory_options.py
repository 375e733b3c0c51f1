"""Training-memory options (dst/memory_options.py): activation checkpointing per block changes how a model runs in
training and nothing else: outputs, gradients, BN statistics, state_dict names; eval, no_grad and tracing run
plainly; less is saved for backward; the config key validates, reaches the model built for training, and stays out
of the checkpoint's model identity, so a run resumes with it flipped."""
from __future__ import annotations

import copy
import pickle

import pytest
import torch
from support import experiment, shared_demo
from support import dst as run_dst

import dst.memory_options as memory_options
from dst.loss import DSTLoss
from dst.memory_options import MemoryOptions, apply_memory_options, checkpointed_blocks, residual_blocks
from dst.models import create_model

# fsnn_resnet18 with the AAP (SEWBlock returns (o, a)), without it ((o, None)), the Spiking ResNet block (no AAP
# ever) and the DVS 7B-Net (its stages: Conv-BN-PLIF and SEW blocks). (model kwargs, input shape)
CASES = {
    "fsnn_resnet18": (dict(T=2, aap=True), (2, 3, 32, 32)),
    "fsnn_resnet18_noaap": (dict(T=2, aap=False), (2, 3, 16, 16)),
    "spiking_resnet18": (dict(T=2, aap=False), (2, 3, 16, 16)),
    "fsnn_7b_net": (dict(aap=True), (2, 2, 2, 16, 16)),
}


def build(case: str, checkpointing: str = "none"):
    kwargs, _ = CASES[case]
    torch.manual_seed(0)
    model = create_model(case.removesuffix("_noaap"), num_classes=5, **kwargs)
    return apply_memory_options(model, MemoryOptions(activation_checkpointing=checkpointing))


def sample(case: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    shape = CASES[case][1]
    x = torch.poisson(torch.full(shape, 0.4), generator=g) if len(shape) == 5 else torch.randn(shape, generator=g)
    return x, torch.tensor([1, 3])


def train_step(model, x, y):
    """One training forward + backward: (outputs, {name: grad}, state_dict after the step)."""
    model.train()
    out = model(x)
    DSTLoss()(out, y).total.backward()
    outputs = tuple(out) if isinstance(out, tuple) else (out,)
    grads = {name: p.grad for name, p in model.named_parameters()}
    return outputs, grads, model.state_dict()


@pytest.mark.parametrize("case", list(CASES))
def test_outputs_gradients_and_bn_statistics_are_bit_identical(case):
    """Exact equality, no tolerance: the recomputation runs the same deterministic CPU kernels (conv, BN, the fused
    neuron and IAND autograd Functions) on the same inputs, so every tensor backward reads is bit for bit the one the
    plain forward would have saved."""
    x, y = sample(case)
    plain, ckpt = build(case), build(case, "blocks")
    assert checkpointed_blocks(ckpt) == [name for name, _ in residual_blocks(ckpt)] and not checkpointed_blocks(plain)
    out_p, grads_p, state_p = train_step(plain, x, y)
    out_c, grads_c, state_c = train_step(ckpt, x, y)
    assert len(out_p) == len(out_c) and all(torch.equal(a, b) for a, b in zip(out_p, out_c))
    assert grads_p.keys() == grads_c.keys()
    for name in grads_p:
        assert grads_p[name] is not None and grads_c[name] is not None, name
        assert torch.equal(grads_p[name], grads_c[name]), name
    # BatchNorm's running statistics (and num_batches_tracked): updated once, not again by the recomputation.
    for name in state_p:
        assert torch.equal(state_p[name], state_c[name]), name


def test_state_dict_keys_and_module_names_are_unchanged():
    plain, ckpt = build("fsnn_resnet18"), build("fsnn_resnet18", "blocks")
    assert list(ckpt.state_dict()) == list(plain.state_dict())
    assert [n for n, _ in ckpt.named_modules()] == [n for n, _ in plain.named_modules()]
    assert [n for n, _ in ckpt.named_parameters()] == [n for n, _ in plain.named_parameters()]
    assert not any("checkpoint" in key for key in ckpt.state_dict())
    # Checkpoints load either way, strictly.
    build("fsnn_resnet18", "blocks").load_state_dict(plain.state_dict())
    build("fsnn_resnet18").load_state_dict(ckpt.state_dict())


def test_options_can_be_switched_off_and_survive_copies():
    model = build("fsnn_7b_net", "blocks")
    for copied in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        # each copy checkpoints its own blocks, not the original's
        assert checkpointed_blocks(copied) == checkpointed_blocks(model)
        assert all(block.forward.block is block for _, block in residual_blocks(copied))
    apply_memory_options(model, MemoryOptions())
    assert checkpointed_blocks(model) == []
    assert all("forward" not in block.__dict__ for _, block in residual_blocks(model))


def test_bad_option_and_model_without_blocks_are_errors():
    with pytest.raises(ValueError, match="activation_checkpointing"):
        MemoryOptions(activation_checkpointing="all")
    with pytest.raises(ValueError, match="no residual blocks"):
        apply_memory_options(torch.nn.Linear(2, 2), MemoryOptions(activation_checkpointing="blocks"))


@pytest.fixture
def checkpoint_calls(monkeypatch):
    """How many times a block went through torch.utils.checkpoint."""
    calls = []
    real = memory_options.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr(memory_options, "checkpoint", counting)
    return calls


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")  # torch.jit.trace
def test_eval_no_grad_and_tracing_run_plainly(checkpoint_calls):
    model = build("fsnn_7b_net", "blocks")
    x, y = sample("fsnn_7b_net")
    n_blocks = len(residual_blocks(model))
    train_step(model, x, y)
    assert len(checkpoint_calls) == n_blocks  # the spy sees the training path
    checkpoint_calls.clear()
    with torch.no_grad():
        model.train()(x)
    with torch.inference_mode():
        model.train()(x)
    model.eval()(x).fsnn.sum().backward()  # eval with grad (e.g. attribution): nothing to save memory for
    torch.jit.trace(model.train(), x, check_trace=False, strict=False)
    assert checkpoint_calls == []


def saved_for_backward_bytes(model, x, y) -> int:
    """Bytes of the unique storages autograd keeps for backward after the forward (parameters excluded)."""
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = DSTLoss()(model(x), y).total
    loss.backward()
    return sum(n for ptr, n in seen.items() if ptr not in params)


@pytest.mark.parametrize("case", ["fsnn_resnet18", "fsnn_7b_net"])
def test_less_is_saved_for_backward(case):
    x, y = sample(case)
    plain = saved_for_backward_bytes(build(case), x, y)
    ckpt = saved_for_backward_bytes(build(case, "blocks"), x, y)
    # Only each block's inputs are kept (o, and a with the AAP) instead of every activation inside the block.
    assert ckpt < 0.5 * plain, (ckpt, plain)


# ------------------------------------------------------------------------------------------------ the pipeline
MINIMAL = {"name": "x", "output_dir": "runs/x", "model": {"name": "fsnn_resnet18", "T": 2},
           "data": {"dataset": "demo_images", "root": "datasets/prepared/demo/images"}}


def test_config_key_validates_and_reaches_the_training_model():
    from pipeline.config import config_from_dict, flatten
    from pipeline.engine import _check_same_model, build_model
    from pipeline.errors import UsageError

    default = config_from_dict(MINIMAL)
    assert default.trainer.activation_checkpointing == "none"
    assert checkpointed_blocks(build_model(default, 10)) == []
    on = config_from_dict({**MINIMAL, "trainer": {"activation_checkpointing": "blocks"}})
    model = build_model(on, 10)
    assert checkpointed_blocks(model) == [name for name, _ in residual_blocks(model)]
    assert flatten(on.model_dump(mode="json"))["trainer.activation_checkpointing"] == "blocks"  # an MLflow param
    # Not part of the model's identity: the checkpoint of either resumes into the other.
    assert not any("checkpointing" in key for key in model.model_kwargs)
    plain = build_model(default, 10)
    assert model.model_kwargs == plain.model_kwargs
    _check_same_model({"model_name": plain.model_name, "model_kwargs": plain.model_kwargs}, model, "here")
    with pytest.raises(UsageError) as err:
        config_from_dict({**MINIMAL, "trainer": {"activation_checkpointing": "all"}}, "exp.yaml")
    message = str(err.value)
    assert message.count("\n") == 0 and "trainer.activation_checkpointing" in message and "'all'" in message


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_run_resumes_with_checkpointing_switched_on(tmp_path_factory, tmp_path):
    """dst train for 1 epoch without activation checkpointing, then resumed for the 2nd with it (what a run that ran
    out of memory does): the checkpoint's model identity is the same, and the checkpointed model trains under
    DeepSpeed."""
    images = shared_demo(tmp_path_factory) / "images"
    cfg = experiment(tmp_path, images, trainer={"epochs": 1, "max_steps_per_epoch": 2},
                     model={"name": "fsnn_resnet18", "T": 2, "aap": True})
    proc = run_dst("train", "--config", cfg)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_dst("train", "--config", cfg, "trainer.epochs=2", "trainer.activation_checkpointing=blocks")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming" in proc.stderr, proc.stderr[-3000:]
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "epoch0002"
