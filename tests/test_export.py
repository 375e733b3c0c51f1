"""AAP stripping, the DSNN view, the full-spike verifier, BN folding, TorchScript and the export file format."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from dst.export import (dsnn_view, fold_bn, load_dsnn, load_exported, load_fsnn, save_exported, save_torchscript,
                        strip_aap, to_torchscript, unfolded_batchnorms)
from dst.models import create_model, list_models
from dst.monitor import FiringRateMonitor
from dst.verify import spike_agreement, verify_full_spike

REPO = Path(__file__).resolve().parents[1]


def small_model(name: str, seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    if "7b" not in name:
        kw.setdefault("T", 2)
    return create_model(name, num_classes=10, **kw).eval()


def small_input(name: str, n: int = 1, size: int = 16, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if "7b" in name:  # event frames [N, T, 2, H, W]: binary events
        return (torch.rand(n, 2, 2, size, size, generator=g) < 0.3).float()
    return torch.randn(n, 3, size, size, generator=g)


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Trained-looking BN statistics, so that folding BN is not the identity."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.75)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.2)
    return model


def tensor_storages(model: nn.Module) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers()) if t.numel()}


def python_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def run_fresh(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run code in a fresh interpreter; it must not import pipeline/ (blocked) to prove torch + dst suffice."""
    prelude = "import sys\nsys.modules['pipeline'] = None\n"
    proc = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], cwd=cwd, env=python_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc


# ------------------------------------------------------------------------------------------------ strip_aap
@pytest.mark.parametrize("name", list_models())
def test_stripped_fsnn_is_bit_identical_to_the_spike_stream(name):
    model = small_model(name)
    x = small_input(name)
    fsnn = strip_aap(model)
    assert not fsnn.has_aap and all(getattr(parent, attr) is None for parent, attr in fsnn.aap_modules())
    assert not any("aap" in k for k in fsnn.state_dict())
    assert set(fsnn.state_dict()) == {k for k in model.state_dict() if "aap" not in k}
    assert fsnn.model_kwargs["aap"] is False
    # A copy, never a view of the training model: exporting must not alias the weights training goes on updating.
    assert not tensor_storages(fsnn) & tensor_storages(model)
    with torch.no_grad():
        z = fsnn(x)
        if model.has_aap:
            both = model(x)
            assert torch.equal(z, both.fsnn)
            assert torch.equal(z, model(x, stream="fsnn"))
        else:
            # The baselines have no AAP (aap_modules() is empty), so stripping must delete nothing: the copy computes
            # what the model does. With the storage check above, this is what strip_aap promises them.
            assert not model.aap_modules()
            assert torch.equal(z, model(x))


def test_strip_leaves_the_training_model_alone_and_matches_in_train_mode():
    model = small_model("fsnn_resnet18").train()
    aap_params = sum(p.numel() for parent, attr in model.aap_modules() for p in getattr(parent, attr).parameters())
    fsnn = strip_aap(model)
    assert model.has_aap and model.aap_modules()
    assert sum(p.numel() for p in fsnn.parameters()) == sum(p.numel() for p in model.parameters()) - aap_params > 0
    x = small_input("fsnn_resnet18", n=2)
    with torch.no_grad():
        assert torch.equal(fsnn(x), model(x).fsnn)  # BN on batch statistics: still the same computation


def test_dsnn_view_predicts_from_the_accumulation_stream():
    model = small_model("fsnn_resnet18")
    x = small_input("fsnn_resnet18")
    view = dsnn_view(model)
    with torch.no_grad():
        assert torch.equal(view(x), model(x).dsnn)
    assert view.model is model
    with pytest.raises(ValueError, match="no AAP"):
        dsnn_view(small_model("sew_resnet18"))
    with pytest.raises(TypeError):
        strip_aap(nn.Linear(2, 2))


# ------------------------------------------------------------------------------------------------ verifier
@pytest.mark.parametrize("connect", ["IAND", "AND", "OR", "XOR"])
def test_stripped_fsnn_passes_the_full_spike_check(connect):
    model = strip_aap(small_model("fsnn_resnet18", connect=connect))
    x = small_input("fsnn_resnet18", n=2, size=32)
    with FiringRateMonitor(model) as mon:
        report = verify_full_spike(model, x)
    assert mon.mean_rate > 0  # spikes flow: the check is not vacuous
    assert report.ok, report.summary()
    assert report.offenders == []
    assert set(report.exempt) == {"stem_conv", "fc"}
    n_synaptic = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
    assert len(report.checked) == n_synaptic - 2
    assert report.to_dict()["ok"] is True


@pytest.mark.parametrize("name", ["fsnn_7b_net", "fsnn_wide_7b_net"])
def test_dvs_fsnn_passes_with_its_encoding_conv_exempt(name):
    model = strip_aap(small_model(name))
    frames = small_input(name, n=2) * 3  # raw event counts (0 or 3): only the encoding conv may read them
    report = verify_full_spike(model, frames)
    assert report.ok, report.summary()
    assert set(report.exempt) == {"stages.0.0.0", "fc"}


def test_sew_add_fails_and_names_the_layers_after_an_add():
    model = small_model("sew_resnet18")
    report = verify_full_spike(model, small_input("sew_resnet18", n=2, size=32))
    assert not report.ok
    # Exactly the convs that read a block output o = s + D(o) (ADD gives 0, 1, 2, ...): the first conv of the next
    # residual branch and the next downsample; convs inside a branch read neuron spikes and pass.
    readers_of_add = {f"blocks.{i}.residual.0.0" for i in range(1, 8)} | {f"blocks.{i}.downsample.0.0"
                                                                           for i in (2, 4, 6)}
    assert report.offending_layers and set(report.offending_layers) <= readers_of_add
    assert "blocks.1.residual.0.0" in report.offending_layers
    first = report.offenders[0]
    assert first.max >= 2 and any(v >= 2 for v in first.examples) and 0 < first.non_binary_fraction < 1
    assert "blocks.1.residual.0.0" in report.summary()


def test_add_fails_structurally_even_when_no_spike_reaches_it():
    x = torch.zeros(1, 3, 16, 16)  # BN(conv(0)) = 0 with fresh statistics: no neuron ever fires
    sew = verify_full_spike(small_model("sew_resnet18"), x)
    assert sew.offenders == [] and len(sew.silent) == len(sew.checked) > 0  # the hooks alone would pass vacuously
    assert not sew.ok and sew.connect_violations[0] == "blocks.0: connect ADD" and len(sew.connect_violations) == 8
    assert "not spike-only" in sew.summary()
    fsnn = verify_full_spike(strip_aap(small_model("fsnn_resnet18")), x)
    assert fsnn.ok and fsnn.silent and fsnn.connect_violations == []


def test_a_model_with_its_aap_attached_is_not_full_spike():
    model = small_model("fsnn_resnet18")
    report = verify_full_spike(model, small_input("fsnn_resnet18", n=2, size=32))
    assert not report.ok
    assert report.offending_layers and all(".aap_transition." in n for n in report.offending_layers)


def test_verifier_on_a_plain_module():
    net = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    report = verify_full_spike(net, torch.randn(5, 4))
    assert report.exempt.keys() == {"0"} and report.offending_layers == ["1"]
    spiking = nn.Sequential(nn.Linear(4, 3), nn.Hardtanh(0, 1), nn.Flatten(), nn.Linear(3, 2))
    with torch.no_grad():
        spiking[0].weight.fill_(100.0), spiking[0].bias.fill_(0.0)
    assert verify_full_spike(spiking, torch.randn(5, 4)).ok  # hardtanh of +-big is 0 or 1


# ------------------------------------------------------------------------------------------------ BN folding
@pytest.mark.parametrize("name", ["fsnn_resnet18", "fsnn_7b_net"])
def test_fold_bn_float64_is_exact_up_to_rounding(name):
    model = randomize_bn(small_model(name)).double()
    x = small_input(name, n=2).double()
    folded = fold_bn(model)
    assert unfolded_batchnorms(folded) == []
    assert unfolded_batchnorms(model)  # the original is untouched
    with torch.no_grad():
        a, b = model(x), folded(x)  # both streams when the AAP is present (its BN is folded too)
    for za, zb in zip(a, b) if model.has_aap else [(a, b)]:
        torch.testing.assert_close(zb, za, atol=1e-9, rtol=1e-9)
    assert spike_agreement(model, folded, x) == 1.0


def test_fold_bn_float32_within_tolerance():
    model = randomize_bn(strip_aap(small_model("fsnn_resnet18")))
    x = small_input("fsnn_resnet18", n=4, size=32)
    folded = fold_bn(model)
    assert spike_agreement(model, folded, x) > 0.999
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-2, rtol=1e-3)


# ------------------------------------------------------------------------------------------------ TorchScript
def test_torchscript_of_folded_fsnn_loads_with_torch_alone(tmp_path):
    model = randomize_bn(strip_aap(small_model("fsnn_resnet18")))
    folded = fold_bn(model)
    ts = to_torchscript(folded, small_input("fsnn_resnet18", n=1))
    save_torchscript(ts, tmp_path / "fsnn.ts")
    x = small_input("fsnn_resnet18", n=3, seed=5)  # another batch size than the trace
    with torch.no_grad():
        expected = folded(x)
    torch.save({"x": x, "expected": expected}, tmp_path / "io.pt")
    run_fresh("""
        sys.modules['dst'] = None   # torch only
        import torch
        m = torch.jit.load('fsnn.ts')
        io = torch.load('io.pt')
        with torch.no_grad():
            y = m(io['x'])
        torch.testing.assert_close(y, io['expected'], atol=1e-5, rtol=1e-5)
    """, tmp_path)


# ------------------------------------------------------------------------------------------------ files
def test_exported_files_round_trip_in_a_fresh_process(tmp_path):
    model = randomize_bn(small_model("fsnn_7b_net", neuron_kwargs={"init_tau": 3.0}))
    with torch.no_grad():  # a trained PLIF tau, so that learned neuron parameters travel too
        for m in model.modules():
            if hasattr(m, "w") and isinstance(m.w, nn.Parameter):
                m.w.fill_(0.3)
    x = small_input("fsnn_7b_net", n=2)
    save_exported(strip_aap(model), tmp_path / "fsnn.pt")
    save_exported(dsnn_view(model), tmp_path / "dsnn.pt")
    with torch.no_grad():
        z = model(x)
    torch.save({"x": x, "fsnn": z.fsnn, "dsnn": z.dsnn}, tmp_path / "io.pt")
    run_fresh("""
        import torch
        from dst.export import load_fsnn, load_dsnn
        io = torch.load('io.pt')
        fsnn, dsnn = load_fsnn('fsnn.pt'), load_dsnn('dsnn.pt')
        assert not fsnn.has_aap and not any('aap' in k for k in fsnn.state_dict())
        with torch.no_grad():
            assert torch.equal(fsnn(io['x']), io['fsnn'])
            assert torch.equal(dsnn(io['x']), io['dsnn'])
        assert 'pipeline' not in sys.modules or sys.modules['pipeline'] is None
    """, tmp_path)


def test_export_file_errors(tmp_path):
    model = small_model("fsnn_resnet18")
    with pytest.raises(ValueError, match="strip_aap"):
        save_exported(model, tmp_path / "bad.pt")
    save_exported(dsnn_view(model), tmp_path / "dsnn.pt")
    with pytest.raises(ValueError, match="DSNN, not an FSNN"):
        load_fsnn(tmp_path / "dsnn.pt")
    save_exported(strip_aap(model), tmp_path / "fsnn.pt")
    with pytest.raises(ValueError, match="FSNN, not a DSNN"):
        load_dsnn(tmp_path / "fsnn.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a dst export"):
        load_exported(tmp_path / "other.pt")
    plain = nn.Linear(2, 2)
    with pytest.raises(TypeError):
        save_exported(plain, tmp_path / "x.pt")


def test_load_fsnn_folded(tmp_path):
    model = randomize_bn(strip_aap(small_model("fsnn_resnet18")))
    save_exported(model, tmp_path / "fsnn.pt")
    folded = load_fsnn(tmp_path / "fsnn.pt", fold=True)
    assert unfolded_batchnorms(folded) == []
    x = small_input("fsnn_resnet18", n=2)
    with torch.no_grad():
        assert torch.equal(folded(x), fold_bn(model)(x))
