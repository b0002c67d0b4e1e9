"""The machine matrix: settings, targets, the table, and (slow) the verdict under every setting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from parity import machines
from parity.__main__ import main

DATA = Path(__file__).parent / "data"


def test_settings_are_named_once_and_cover_every_isa_with_one_and_two_threads():
    names = [s.name for s in machines.SETTINGS]
    assert len(names) == len(set(names))
    for isa in ("default", "avx2", "avx", "sse41"):
        assert {f"{isa}-t1", f"{isa}-t2"} <= set(names)
    capped = {s.name: s.env for s in machines.SETTINGS}
    # An emulated CPU caps every library together, not only oneDNN.
    assert capped["avx2-t1"]["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert capped["avx2-t1"]["MKL_ENABLE_INSTRUCTIONS"] == "AVX2"
    assert capped["avx2-t1"]["CAFFE_MFV_NATIVE_ISA"] == "avx2"  # the port's compiled kernel too
    assert capped["no-native"] == {"CAFFE_MFV_NATIVE": "0"}
    assert not next(s for s in machines.SETTINGS if s.name == "no-mkldnn").mkldnn


def test_default_targets_are_the_zoo_and_the_test_cases():
    names = [t.name for t in machines.default_targets()]
    assert "caffenet" in names and "vgg16" in names and "mini_resnet" in names
    case = machines.Target.parse(str(DATA / "mini_resnet"))
    assert case.folder and case.model is None
    assert machines.Target.parse("googlenet").model == "googlenet"


def test_markdown_table_shows_verdict_worst_and_flips_per_cell():
    rows = [
        {"setting": "default-t2", "target": "caffenet", "passed": True, "worst_vs_caffe": 1.91,
         "flips": {"pool1": 1}, "seconds": 1},
        {"setting": "avx2-t2", "target": "caffenet", "passed": False, "worst_vs_caffe": 6e4,
         "flips": {"relu4 (OUT OF BAND)": 1}, "seconds": 1, "why": "x"},
    ]  # fmt: skip
    table = machines.markdown(rows).splitlines()
    assert table[0] == "| model | default-t2 | avx2-t2 |"
    assert (
        table[2] == "| caffenet | pass 1.91x (pool1 1) | FAIL 60000.00x (relu4 (OUT OF BAND) 1) |"
    )


def test_unknown_setting_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["machines", "--settings", "avx9"])
    assert exc.value.code == 2
    assert "parity: error: unknown setting" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("setting", [s.name for s in machines.SETTINGS])
def test_the_verdict_holds_under_every_setting(setting, tmp_path):
    # Every target whose goldens are committed (CaffeNet, the mini ResNet, the layer-family nets);
    # `tox -e machines` runs every built-in model too.
    cases = sorted(t.folder for t in machines.default_targets() if t.folder)
    out = tmp_path / "rows.json"
    rc = main(["machines", "--settings", setting, "--model", ",".join(["caffenet", *cases]),
               "--json", str(out)])  # fmt: skip
    rows = json.loads(out.read_text())
    assert rc == 0, [machines.format_row(r) for r in rows]
    assert {"caffenet", "mini_resnet", "activations", "recurrent"} <= {r["target"] for r in rows}
    # Issue 26 under every setting: the accurate port is as close to float64 as Caffe.
    (near,) = [r["closeness"] for r in rows if r["target"] == "caffenet"]
    assert near["subject"] == "port32-accurate" and near["met"], near
