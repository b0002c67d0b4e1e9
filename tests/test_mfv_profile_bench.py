"""mfv.profile's arithmetic on planted figures (the profile itself is a measurement: tox -e bench)."""

from __future__ import annotations

import pytest

from mfv import profile


def test_step_only_ops_are_counted_calls_at_the_steps_own_time_per_call():
    # 3 steps: 3 x (2 stacks + 4 adds of which 1 is the pass's, 1 isfinite); pass: conv + 1 add
    step = {"aten::stack": (0.6, 6), "aten::add": (1.2, 12), "aten::conv2d": (3.0, 3),
            "aten::isfinite": (0.3, 3)}  # fmt: skip
    passes = {"aten::conv2d": (9.9, 1), "aten::add": (9.9, 1)}  # its times do not matter
    tv = {"aten::empty": (0.1, 2)}
    own = profile._step_only(step, 3, passes, tv)
    assert list(own) == ["aten::add", "aten::stack", "aten::isfinite"]  # largest first
    assert own["aten::stack"] == pytest.approx(0.2)  # 0.6 s / 3 steps
    assert own["aten::add"] == pytest.approx(0.1 * 9 / 3)  # 9 of 12 calls are the step's own
    assert own["aten::isfinite"] == pytest.approx(0.1)


def test_rows_name_the_limit_they_are_measured_against():
    peaks = {"sgemm_gflops": 100.0, "bandwidth_gbs": 10.0}
    conv = profile._row("conv", 0.01, 0.5e9, 1e6, peaks)  # 50 GFLOP/s, 0.1 GB/s
    assert conv["bound_by"] == "flops" and conv["of_peak"] == pytest.approx(0.5)
    fc = profile._row("fc6", 0.01, 0.02e9, 80e6, peaks)  # 2 GFLOP/s, 8 GB/s: reading weights
    assert fc["bound_by"] == "bytes" and fc["of_peak"] == pytest.approx(0.8)
    glue = profile._row("glue", 0.003, None, None, peaks)
    assert "of_peak" not in glue and glue["ms"] == pytest.approx(3.0)


def _table(glue_ms: float) -> str:
    peaks = {"sgemm_gflops": 100.0, "bandwidth_gbs": 10.0}
    rows = [profile._row("conv1 forward", 0.01, 0.5e9, 1e6, peaks),
            {**profile._row("step's Python and glue", glue_ms / 1e3, None, None, peaks),
             "residual": True}]  # fmt: skip
    prof = {"model": "caffenet", "facets": 10, "threads": 2, **peaks, "parts": rows,
            "bound_ms": 10.0, "step_ms": 12.0, "call_setup_ms": 30.0,
            "bound_over_sgemm": 0.5}  # fmt: skip
    return profile.render(prof)


def test_a_negative_residual_row_is_called_noise_in_the_table():
    noisy = _table(-1.5)
    assert "step's Python and glue: negative" in noisy and "-1.50" in noisy
    assert "negative" not in _table(1.5)


def test_a_calls_set_up_is_a_line_of_its_own_not_part_of_the_step():
    lines = _table(1.5).splitlines()
    setup = next(line for line in lines if line.startswith("set-up, once per call"))
    assert "30.00" in setup and "not in the step" in setup
    assert "12.00" in next(line for line in lines if line.startswith("whole step"))


def test_the_tv_row_records_the_calls_a_default_step_makes():
    """The TV row times the step's own calls (its images, its weights), and the step's TV is
    itself again after the block."""
    import numpy as np
    import torch

    from mfv import tv_bregman
    from mfv.objectives import unit
    from mfv.octaves import parse_schedule
    from mfv.testing import tiny_model
    from mfv.visualize import visualize

    model = tiny_model(size=32)
    sched = parse_schedule({"name": "t", "octaves": [
        {"iter_n": 3, "zoom": 1.0, "margin": 0, "window": 0.3, "step_size": [2.0, 2.0],
         "tv_weight": [0.5, 0.5]}]})  # fmt: skip
    init = np.random.default_rng(0).integers(40, 215, (32, 32, 3)).astype(np.uint8)
    before = tv_bregman.denoise_tv_bregman
    calls: list[dict] = []
    with profile._tv_calls(calls):
        visualize(model, unit("output", 1), [init, init], schedule=sched, seed=1, progress=False)
    assert tv_bregman.denoise_tv_bregman is before
    assert len(calls) == 3  # one per step, the whole batch in each
    first = calls[0]
    assert first["images"].shape == (2, 3, 32, 32) and first["sweeps"] >= 2 and first["seconds"] > 0
    again = tv_bregman.denoise_tv_bregman(first["images"], **first["kw"])
    assert again.shape == first["images"].shape and torch.isfinite(again).all()
