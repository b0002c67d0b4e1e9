"""Schedule arithmetic: the published table, and the Python 2 quirks computed independently."""

from __future__ import annotations

import json
from fractions import Fraction
from math import floor

import pytest

from mfv.models import MODEL_SPECS
from mfv.octaves import FIXES, load_schedule, parse_schedule, py2_div, step_size, tv_weight

PUBLISHED = MODEL_SPECS["caffenet"].schedule_path

# The spec's table (../shared/spec/original-mfv.md), typed as written.
TABLE = [
    (190, None, 0, 0.3, (1, 2), (0.4, 0.4)),
    (150, 1.2, 0, 0.3, (1.0, 1.0), (0.01, 2)),
    (20, 1.0, 50, 0.2, (2.0, 2.0), (0.1, 2)),
    (10, None, 0, 0.3, (2.0, 2.0), (0.4, 2)),
]


def _py2_int_div(a: int, b: int) -> int:
    # Python 2 `/` on ints floors; computed via exact rationals, independent of `//`.
    return floor(Fraction(a, b))


def test_published_schedule_matches_spec_table_including_types():
    s = load_schedule(PUBLISHED)
    assert len(s.octaves) == 4
    for o, (n, zoom, margin, window, step, tv) in zip(s.octaves, TABLE, strict=True):
        assert (o.iter_n, o.zoom, o.margin, o.window) == (n, zoom, margin, window)
        assert o.step_size == step and o.tv_weight == tv
        assert [type(v) for v in o.step_size] == [type(v) for v in step]
        assert [type(v) for v in o.tv_weight] == [type(v) for v in tv]
    assert s.total_steps == 370


def test_py2_division():
    assert py2_div(7, 2) == 3 and isinstance(py2_div(7, 2), int)
    assert py2_div(-7, 2) == -4  # Python 2 floored toward minus infinity
    assert py2_div(7.0, 2) == 3.5 and py2_div(7, 2.0) == 3.5


def test_faithful_step_size_octave1_frozen_at_one():
    o = load_schedule(PUBLISHED).octaves[0]
    steps = [step_size(o, i, faithful=True) for i in range(o.iter_n)]
    expected = [1 + _py2_int_div((2 - 1) * i, 190) for i in range(190)]
    assert steps == expected
    assert set(steps) == {1.0}  # (1 * i) / 190 is 0 for every i < 190


def test_default_step_size_ramps():
    o = load_schedule(PUBLISHED).octaves[0]
    steps = [step_size(o, i, faithful=False) for i in range(o.iter_n)]
    assert steps[0] == 1.0
    assert steps[95] == pytest.approx(1.5)
    assert steps[-1] == pytest.approx(1 + 189 / 190)


@pytest.mark.parametrize("k", range(4))
def test_faithful_tv_weight_formula_as_written(k):
    o = load_schedule(PUBLISHED).octaves[k]
    start, end = TABLE[k][5]
    n = TABLE[k][0]
    for i in range(n):
        expected = start - (start - end * i) / n  # all floats here: Python 3 division is Python 2's
        assert tv_weight(o, i, faithful=True) == pytest.approx(expected, rel=1e-15)
    # "ramps from about start to start + end"
    assert tv_weight(o, n - 1, faithful=True) == pytest.approx(
        start + end * (n - 1) / n - start / n
    )


def test_octave1_tv_weight_values():
    o = load_schedule(PUBLISHED).octaves[0]
    assert tv_weight(o, 0, faithful=True) == pytest.approx(0.4 - 0.4 / 190)
    assert tv_weight(o, 189, faithful=True) == pytest.approx(0.4 - (0.4 - 0.4 * 189) / 190)
    assert tv_weight(o, 0, faithful=False) == tv_weight(o, 189, faithful=False) == 0.4


def test_all_int_tv_ramp_uses_floor_division():
    o = parse_schedule(
        {
            "octaves": [
                {
                    "iter_n": 4,
                    "zoom": None,
                    "margin": 0,
                    "window": 0.3,
                    "step_size": [1, 3],
                    "tv_weight": [3, 1],
                }
            ]
        }
    ).octaves[0]
    for i in range(4):
        assert tv_weight(o, i, faithful=True) == 3 - _py2_int_div(3 - 1 * i, 4)
        assert step_size(o, i, faithful=True) == 1 + _py2_int_div(2 * i, 4)


def test_bad_schedules_rejected(tmp_path):
    with pytest.raises(ValueError):
        parse_schedule({"octaves": []})
    with pytest.raises(ValueError):
        parse_schedule({"octaves": [{"iter_n": 1, "step_size": [1], "tv_weight": [1, 1]}]})
    with pytest.raises(ValueError):
        parse_schedule(
            {"octaves": [{"iter_n": 1, "zoom": -1, "step_size": [1, 1], "tv_weight": [1, 1]}]}
        )


@pytest.mark.parametrize(
    "name",
    [
        "vgg16.json",
        "googlenet.json",
        "squeezenet.json",
        "squeezenet224.json",
        "alexnet224.json",
        "caffenet_center_bias.json",
    ],
)
def test_shipped_schedules_load_and_are_documented(name):
    path = PUBLISHED.parent / name
    s = load_schedule(path)
    assert s.description and s.total_steps > 0
    assert json.loads(path.read_text())["name"] == s.name


def test_fixes_are_listed():
    assert len(FIXES) >= 4 and all(isinstance(f, str) and f for f in FIXES)
