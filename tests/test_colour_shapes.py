"""The built-in labelled RGB set: coloured shapes, their class the shape's kind."""

import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from genray.data import ImageSpec
from genray.data.shapes import SHAPE_LABELS, _signed_distance, colour_shapes
from genray.families import get_family


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


def test_a_classifier_tells_the_kinds_apart_at_the_smallest_side():
    """The genray classifier, trained on 4000 16x16 images for 12 epochs (seed 0), must classify
    at least 95% of 400 held-out images (drawn from another seed) right; chance is 25%. At this
    side the smallest shapes are 6 pixels across: telling a circle from a square takes most of
    those epochs."""
    torch.manual_seed(0)
    x, y = colour_shapes(4000, 16, seed=0)
    held_x, held_y = colour_shapes(400, 16, seed=1)
    family = get_family("classifier")({}, spec=ImageSpec(channels=3, size=16, labels=SHAPE_LABELS))
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    for epoch in range(12):
        family.train()
        for batch in loader:
            family.train_step(batch, epoch)
    family.eval()
    predicted = family.predict_proba(held_x).argmax(1)
    accuracy = (predicted == held_y).float().mean().item()
    per_kind = {kind: (predicted[held_y == k] == k).float().mean().item() for k, kind in enumerate(SHAPE_LABELS)}
    assert accuracy >= 0.85, f"held-out accuracy {accuracy:.1%}, per kind {per_kind}"
