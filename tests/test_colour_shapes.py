"""The built-in labelled RGB set: coloured shapes, their class the shape's kind."""

import math

import pytest
import torch

from genray.data.shapes import SHAPE_LABELS, _signed_distance, colour_shapes


@pytest.mark.parametrize("size", [16, 64, 100, 256])  # 256: 42 images take three chunks of 16
def test_images_have_the_asked_shape_range_and_balanced_labels(size):
    images, labels = colour_shapes(42, size, seed=3)
    assert images.shape == (42, 3, size, size) and images.dtype == torch.float32
    assert labels.shape == (42,) and labels.dtype == torch.int64
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert (images.flatten(1).std(1) > 0.05).all(), "every image shows a shape on its background"
    counts = torch.bincount(labels, minlength=len(SHAPE_LABELS))
    assert len(counts) == len(SHAPE_LABELS) and counts.max() - counts.min() <= 1


def test_the_same_seed_draws_the_same_images():
    images, labels = colour_shapes(20, 32, seed=7)
    again, labels_again = colour_shapes(20, 32, seed=7)
    other, _ = colour_shapes(20, 32, seed=8)
    assert torch.equal(images, again) and torch.equal(labels, labels_again)
    assert not torch.equal(images, other)


def test_every_kind_covers_its_exact_area():
    # Coverage summed over a fine grid is the shape's area; for bounding radius r the exact
    # areas are: circle pi r^2, square (diagonal 2r) 2 r^2, equilateral triangle (3 sqrt 3 / 4) r^2,
    # cross of two bars of half-length a = sqrt(0.91) r and half-width b = 0.3 r: 8ab - 4b^2.
    r, side = 200.0, 512
    grid = torch.arange(side, dtype=torch.float64) - side / 2 + 0.5
    v, u = torch.meshgrid(grid, grid, indexing="ij")
    a, b = math.sqrt(0.91) * r, 0.3 * r
    exact = {"circle": math.pi * r * r, "square": 2 * r * r, "triangle": 3 * math.sqrt(3) / 4 * r * r,
             "cross": 8 * a * b - 4 * b * b}
    assert set(exact) == set(SHAPE_LABELS)
    for kind, area in exact.items():
        distance = _signed_distance(kind, u[None], v[None], torch.tensor(r, dtype=torch.float64).view(1, 1, 1))
        covered = (0.5 - distance).clamp(0.0, 1.0).sum().item()
        assert covered == pytest.approx(area, rel=0.005), kind
        assert distance[0, 0, 0] > 0 and distance[0, side // 2, side // 2] < 0, "outside at the corner, inside at the centre"


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="size must be 16..256, got 8"):
        colour_shapes(4, 8, seed=0)
    with pytest.raises(ValueError, match="n must be >= 0, got -1"):
        colour_shapes(-1, 32, seed=0)
