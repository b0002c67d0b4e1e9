"""Shared fixtures: the shared reference folder, tiny nets, seeded CaffeNet."""

from __future__ import annotations

from pathlib import Path

import pytest

from port.zoo import shared_root

TINY_NET = """
name: "tiny"
input: "data"
input_shape { dim: 2 dim: 3 dim: 13 dim: 11 }
force_backward: true
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1"
  lrn_param { local_size: 3 alpha: 0.1 beta: 0.75 } }
layer { name: "fc" type: "InnerProduct" bottom: "norm1" top: "fc"
  inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


@pytest.fixture(scope="session")
def shared() -> Path:
    root = shared_root()
    if not (root / "reference").is_dir():
        pytest.skip(f"shared reference folder not found at {root}")
    return root


@pytest.fixture()
def tiny_prototxt(tmp_path: Path) -> Path:
    p = tmp_path / "tiny.prototxt"
    p.write_text(TINY_NET)
    return p


def pytest_benchmark_update_machine_info(config, machine_info: dict) -> None:
    """Every saved benchmark says which CPU, instruction sets and libraries it ran on."""
    from mfv.machine import machine_info as project_machine_info

    machine_info["caffe_mfv"] = project_machine_info()
