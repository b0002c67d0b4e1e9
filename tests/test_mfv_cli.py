"""The command line end to end on a small torchvision net (seeded, no downloads)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torchvision")

from mfv.cli import build_parser, main  # noqa: E402
from mfv.testing import torch_threads

from ._helpers import TINY_SCHEDULE


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


MODEL = "torchvision.squeezenet1_1"


def test_every_option_has_help():
    p = build_parser()
    sub = next(a for a in p._actions if a.dest == "command")
    for name, sp in sub.choices.items():
        for a in sp._actions:
            if a.dest != "help":
                assert a.help, f"{name} {a.option_strings or a.dest} has no help"


def test_means_visualize_evaluate(tmp_path, capsys):
    rng = np.random.default_rng(0)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for j in range(8):
        base = np.array([200, 40, 40]) if j < 4 else np.array([40, 180, 60])
        img = np.clip(base + rng.normal(0, 20, (240, 260, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(imgs / f"{j}.jpg")
    (imgs / "notes.png").write_bytes(b"garbage")
    means = tmp_path / "means"
    assert (
        main(
            [
                "means",
                "--model",
                MODEL,
                "--images",
                str(imgs),
                "--k",
                "2",
                "--m",
                "3",
                "--out",
                str(means),
                "--quiet",
            ]
        )
        == 0
    )
    data = json.loads((means / "clusters.json").read_text())
    assert len(data["images"]) == 8 and len(data["skipped"]) == 1
    assert Image.open(means / "mean_0.png").size == (224, 224)
    sched = tmp_path / "s.json"
    sched.write_text(json.dumps(TINY_SCHEDULE))
    run = tmp_path / "run"
    visualize = [
        "visualize",
        "--model",
        MODEL,
        "--unit",
        "945",
        "--means",
        str(means),
        "--schedule",
        str(sched),
        "--out",
        str(run),
        "--quiet",
    ]
    assert main(visualize) == 0
    trace = json.loads((run / "trace.json").read_text())
    assert [f["cluster"] for f in trace["facets"]] == [0, 1]
    assert trace["parity"]["status"] == "not applicable"
    assert main(["evaluate", str(run)]) == 0
    ev = json.loads((run / "evaluation.json").read_text())
    assert all(f["cluster_size"] >= 1 for f in ev["facets"])
    # a rerun resumes: nothing left to do, same result
    before = (run / "facet_0.png").read_bytes()
    assert main(visualize) == 0
    assert (run / "facet_0.png").read_bytes() == before


def test_unknown_layer_and_model_are_one_line_errors(tmp_path, capsys):
    out = tmp_path / "o"
    with pytest.raises(SystemExit) as exc:  # a usage error: argparse's usage, then the error line
        main(
            [
                "visualize",
                "--model",
                MODEL,
                "--layer",
                "nope",
                "--unit",
                "1",
                "--init",
                "noise",
                "--out",
                str(out),
            ]
        )
    assert exc.value.code == 2 and "no layer 'nope'" in capsys.readouterr().err and not out.exists()
    assert main(["layers", "--model", "no.such.model"]) == 2
    assert "unknown model" in capsys.readouterr().err
