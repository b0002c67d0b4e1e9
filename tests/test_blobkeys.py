"""port.blobkeys: the one spelling of data/diff keys and their net order."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from port.blobkeys import blob_producers, data_key, diff_key, ordered_keys, split_key


def _net():
    layer = SimpleNamespace
    return SimpleNamespace(
        inputs=["data"],
        layers=[
            layer(name="conv1", tops=["conv1"]),
            layer(name="relu1", tops=["conv1"]),  # in place: conv1 still produced by conv1
            layer(name="fc/a", tops=["fc/a"]),
        ],
    )


def test_keys_round_trip_including_slashes_in_blob_names():
    for blob in ("conv1", "fc/a", "inception_3a/1x1"):
        assert split_key(data_key(blob)) == ("data", blob)
        assert split_key(diff_key(blob)) == ("diff", blob)
    assert data_key("x") == "data/x" and diff_key("x") == "diff/x"


@pytest.mark.parametrize("bad", ["conv1", "grad/conv1", "data/", ""])
def test_split_key_refuses_what_is_not_a_blob_key(bad):
    with pytest.raises(ValueError, match="blob key"):
        split_key(bad)


def test_producers_keep_the_first_writer_and_net_order():
    assert blob_producers(_net()) == {"data": "", "conv1": "conv1", "fc/a": "fc/a"}


def test_ordered_keys_forward_in_net_order_then_backward_reversed():
    available = {"diff/conv1", "data/fc/a", "diff/fc/a", "data/data", "data/nowhere", "diff/data"}
    assert ordered_keys(_net(), available) == [
        "data/data",
        "data/fc/a",
        "diff/fc/a",
        "diff/conv1",
        "diff/data",
    ]


def test_kind_predicates_tell_the_two_kinds_and_other_members_apart():
    from port.blobkeys import is_blob_key, is_data, is_diff

    assert is_data(data_key("conv1/7x7_s2")) and not is_diff(data_key("conv1"))
    assert is_diff(diff_key("fc8")) and not is_data(diff_key("fc8"))
    assert is_blob_key(data_key("a")) and is_blob_key(diff_key("a"))
    assert not any(f(k) for f in (is_data, is_diff, is_blob_key) for k in ("input/data", "data"))
