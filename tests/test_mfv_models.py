"""The model adapter: layer naming, hooks, conventions, seeded torchvision nets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mfv.models import MODEL_SPECS, load_model, wrap
from mfv.pixels import TORCHVISION
from mfv.testing import tiny_convention, tiny_model, torch_threads


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def test_hooks_see_each_module_output_not_the_inplace_relu():
    m = tiny_model()
    x = torch.rand(2, 3, 32, 32) * 255
    a = m.activations(x, ["0", "1", "output", "prob"])
    assert (a["0"] < 0).any()  # conv output before its (formerly in-place) ReLU
    assert torch.equal(a["1"], a["0"].clamp(min=0))
    torch.testing.assert_close(a["prob"], torch.softmax(a["output"], 1))
    assert not any(p.requires_grad for p in m.module.parameters())


def test_layer_shapes_and_unknown_layer():
    m = tiny_model()
    shapes = m.layer_shapes()
    assert shapes["0"] == (4, 14, 14) and shapes["8"] == (10,) and shapes["prob"] == (10,)
    with pytest.raises(KeyError, match="no layer"):
        m.activations(torch.zeros(1, 3, 32, 32), ["nope"])


def test_activations_apply_the_convention():
    seen = {}

    class Probe(nn.Module):
        def forward(self, x):
            seen["x"] = x
            return x.flatten(1)

    m = wrap(Probe(), tiny_convention(4, caffe=False))
    m.activations(torch.full((1, 3, 4, 4), 255.0), ["output"])
    want = (1 - torch.tensor(TORCHVISION.mean)) / torch.tensor(TORCHVISION.std)
    torch.testing.assert_close(seen["x"][0, :, 0, 0], want)


def test_every_named_model_has_a_schedule_file():
    for spec in MODEL_SPECS.values():
        assert spec.schedule_path.exists(), spec.name


def test_seeded_torchvision_googlenet_depends_on_its_input():
    pytest.importorskip("torchvision")
    m = load_model("torchvision.googlenet", weight_seed=0)
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)) * 255
    with torch.no_grad():
        out = m.activations(x, ["fc"])["fc"]
    # torchvision's own init gave identical outputs for any input (differences ~1e-11)
    assert (out[0] - out[1]).abs().mean() > 1e-2
    m2 = load_model("torchvision.googlenet", weight_seed=0)
    assert all(
        torch.equal(p, q)
        for p, q in zip(m.module.parameters(), m2.module.parameters(), strict=True)
    )
    assert m.info["parity"]["status"] == "not applicable"


def test_model_args_are_load_models_keywords():
    """ModelArgs carries load_model's arguments to sweep workers: one field per keyword (but the
    device, which each worker picks), so that a keyword added to one is not missing in the other."""
    import dataclasses
    import inspect

    from mfv.models import ModelArgs, load_model

    keywords = set(inspect.signature(load_model).parameters) - {"device"}
    assert {f.name for f in dataclasses.fields(ModelArgs)} == keywords
