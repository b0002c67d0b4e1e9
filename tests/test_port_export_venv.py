"""The artefacts where users put them: a fresh virtualenv with only torch, torchvision, safetensors
and onnxruntime, outside the project (which it cannot import), runs CaffeNet's generated module,
its ``.pt2`` and its ``.onnx`` and gets the port's ``prob`` and ``fc7``.

The virtualenv is a plain one (no system site-packages), cached under ``cache/export-venv``; torch
comes from the machine's wheel store (about 90 s the first time).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import port
from port.paths import cache_root

VENV = cache_root() / "export-venv"
PACKAGES = ["torch==2.14.1", "torchvision==0.29.1", "safetensors", "onnxruntime", "numpy"]

SCRIPT = textwrap.dedent(
    """
    import importlib.util

    import numpy as np
    import onnxruntime as ort
    import torch
    from safetensors.torch import load_file
    from torchvision.models.feature_extraction import create_feature_extractor

    assert importlib.util.find_spec("port") is None, "the project is visible"
    from caffenet import CaffeNet

    net = CaffeNet()
    net.load_state_dict(load_file("caffenet.safetensors"))
    net.eval()
    x = torch.from_numpy(np.load("x.npy"))
    with torch.no_grad():
        prob = net(x)
        blobs = net(x, blobs=("fc7", "conv1"))
        fc7 = create_feature_extractor(net, {"relu7": "fc7"})(x)["fc7"]
        pt2 = torch.export.load("caffenet.pt2").module()(x)
    sess = ort.InferenceSession("caffenet.onnx", providers=["CPUExecutionProvider"])
    (onnx_prob,) = sess.run(["prob"], {"data": x.numpy()})
    np.savez(
        "got.npz", prob=prob.numpy(), fc7=blobs["fc7"].numpy(), fe_fc7=fc7.numpy(),
        pt2_prob=pt2["prob"].numpy(), pt2_fc7=pt2["fc7"].numpy(), onnx_prob=onnx_prob,
    )
    """
)


def _fresh_venv() -> str:
    python = VENV / "bin" / "python"
    marker = VENV / "packages.txt"
    if not (python.exists() and marker.is_file() and marker.read_text().split() == PACKAGES):
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet", *PACKAGES]
        subprocess.run(pip, check=True, timeout=1800)
        marker.write_text("\n".join(PACKAGES) + "\n")
    return str(python)


@pytest.mark.slow
def test_caffenet_artefacts_run_in_a_fresh_virtualenv(tmp_path):
    python = _fresh_venv()
    for fmt, suffix in (("python", ".py"), ("pt2", ".pt2"), ("onnx", ".onnx")):
        out = tmp_path / f"caffenet{suffix}"
        assert (
            port.cli.main(["export", "--model", "caffenet", "--format", fmt, "--out", str(out)])
            == 0
        )
    x = np.random.default_rng(3).uniform(-120, 135, (3, 3, 227, 227)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "run.py").write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(
        [python, "run.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = dict(np.load(tmp_path / "got.npz"))
    from port.zoo import zoo_model

    netdef = port.load_prototxt(zoo_model("caffenet").prototxt)
    net = port.CaffeNet(netdef)
    net.load_blobs(port.seed_weights(netdef, 1))
    with torch.no_grad():
        want = {k: v.numpy() for k, v in net.eval()(torch.from_numpy(x), blobs=["fc7"]).items()}
    # The same torch build on the same input: the port's float32 values up to the rounding of a
    # differently threaded sum, far inside the parity policy's 4x Caffe-spread allowance.
    for key, ref in (("prob", "prob"), ("pt2_prob", "prob"), ("onnx_prob", "prob"),
                     ("fc7", "fc7"), ("fe_fc7", "fc7"), ("pt2_fc7", "fc7")):  # fmt: skip
        scale = float(np.abs(want[ref]).max())
        err = float(np.abs(got[key] - want[ref]).max()) / scale
        assert err <= 1e-5, (key, err)
