"""The per-facet work between steps runs on torch's threads (``mfv.loop.facet.each_facet``): the
same images as one facet after another, and a facet's error reaches the caller."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mfv.loop.facet import FacetState, each_facet, zoom_image, zoom_running


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _facets(n: int, status: str = "running") -> list[FacetState]:
    rng = np.random.default_rng(3)
    return [
        FacetState(
            index=i,
            init="x",
            image=rng.normal(128, 60, (3, 41, 37)).astype(np.float32),
            rng=np.random.RandomState(i),
            status=status,
        )  # fmt: skip
        for i in range(n)
    ]


@pytest.mark.parametrize("faithful", [False, True])
def test_threaded_zoom_is_the_sequential_zoom(two_threads, faithful):
    mean = np.array([104.0, 117.0, 123.0])
    facets = _facets(5)
    facets[2].status = "failed"  # frozen facets keep their image
    expect = []
    for s in facets:
        if s.status != "running":
            expect.append(s.image.copy())
            continue
        z = zoom_image(s.image, 1.2, mean).astype(np.float32)
        expect.append(z if faithful else np.clip(z, 0, 255))
    zoom_running(facets, 1.2, mean, faithful=faithful)
    for s, e in zip(facets, expect, strict=True):
        assert s.image.dtype == np.float32 and s.image.shape == e.shape
        assert np.array_equal(s.image, e)
    if not faithful:
        assert facets[0].image.max() <= 255 and facets[0].image.min() >= 0


def test_each_facet_visits_every_facet_once_and_reraises(two_threads):
    seen: list[int] = []
    each_facet(lambda s: seen.append(s.index), _facets(7))
    assert sorted(seen) == list(range(7))

    def boom(s: FacetState) -> None:
        if s.index == 4:
            raise ValueError("facet 4 broke")

    with pytest.raises(ValueError, match="facet 4 broke"):
        each_facet(boom, _facets(6))
