"""genray.data.augment: Keras' ImageDataGenerator knobs as batched affine grids."""

from __future__ import annotations

import math

import pytest
import torch

from genray.config import build_config
from genray.data.augment import AugmentConfig, apply_matrices, augment, generator, random_matrices

OFF = dict(rotation_range=0, width_shift_range=0, height_shift_range=0, shear_range=0, zoom_range=0)


def square(size: int = 28) -> torch.Tensor:
    """(1, 1, size, size): a bright 8x4 bar left of and above the centre, on black."""
    x = torch.zeros(1, 1, size, size)
    x[..., 6:14, 8:12] = 1.0
    return x


def centroid(x: torch.Tensor) -> tuple[float, float]:
    """(row, col) centre of mass of a (1, 1, H, W) image."""
    img = x[0, 0]
    rows, cols = torch.meshgrid(torch.arange(img.shape[0], dtype=img.dtype),
                                torch.arange(img.shape[1], dtype=img.dtype), indexing="ij")
    return float((img * rows).sum() / img.sum()), float((img * cols).sum() / img.sum())


def one(**knobs) -> AugmentConfig:
    return AugmentConfig(enabled=True, **{**OFF, **knobs})


def test_course_defaults_are_the_keras_example():
    cfg = build_config("classifier", overrides=["data.augment.enabled=true"]).data.augment
    assert (cfg.rotation_range, cfg.width_shift_range, cfg.height_shift_range, cfg.shear_range, cfg.zoom_range,
            cfg.horizontal_flip, cfg.fill_mode) == (10, 0.15, 0.15, 0.15, 0.1, False, "nearest")
    assert build_config("vae").data.augment.enabled is False  # off unless asked for


def test_same_seed_same_batch_other_seed_other_batch():
    x = torch.rand(16, 1, 28, 28)
    cfg = AugmentConfig(enabled=True, horizontal_flip=True)
    a = augment(x, cfg, generator(0, 0, 3))
    assert torch.equal(a, augment(x, cfg, generator(0, 0, 3)))
    for other in (generator(1, 0, 3), generator(0, 1, 3), generator(0, 0, 4)):  # seed, rank, epoch
        assert not torch.allclose(a, augment(x, cfg, other))
    # Each image gets its own transform.
    same = augment(x[:1].expand(4, -1, -1, -1), cfg, generator(0, 0, 0))
    assert not torch.allclose(same[0], same[1])


def test_all_knobs_off_is_the_identity():
    x = torch.rand(5, 3, 20, 28)
    cfg = one()
    assert cfg.is_identity()
    assert torch.equal(augment(x, cfg, generator(0, 0, 0)), x)
    # The sampler itself is exact at the identity too (the grid hits pixel centres).
    eye = torch.eye(3, dtype=torch.float64).expand(5, 3, 3)
    for mode in ("nearest", "constant", "reflect", "wrap"):
        assert torch.allclose(apply_matrices(x, eye, mode), x, atol=1e-5)


def test_shifts_move_by_the_fraction_of_the_size_and_pixels_from_one():
    x = square()
    r0, c0 = centroid(x)
    for _ in range(3):
        gen = generator(0, 0, _)
        r, c = centroid(augment(x, one(width_shift_range=0.15), gen))
        assert abs(r - r0) < 1e-4 and 0 < abs(c - c0) <= 0.15 * 28 + 1e-4
        r, c = centroid(augment(x, one(height_shift_range=0.15), gen))
        assert abs(c - c0) < 1e-4 and 0 < abs(r - r0) <= 0.15 * 28 + 1e-4
    # A matrix shifting the read point by +3 columns moves the content 3 columns left.
    m = torch.eye(3, dtype=torch.float64)[None].clone()
    m[0, 1, 2] = 3.0
    r, c = centroid(apply_matrices(x, m))
    assert (r, c) == pytest.approx((r0, c0 - 3), abs=1e-4)
    # >= 1 means pixels, as in Keras: the largest shift is 2 pixels.
    shifts = [abs(centroid(augment(x, one(width_shift_range=2.0), generator(0, 0, e)))[1] - c0) for e in range(20)]
    assert max(shifts) <= 2 + 1e-4 and max(shifts) > 1.0


def test_rotation_is_in_degrees_about_the_centre():
    m = random_matrices(200, 29, 29, one(rotation_range=10), generator(0, 0, 0))
    angles = torch.rad2deg(torch.atan2(m[:, 1, 0], m[:, 0, 0]))
    assert float(angles.abs().max()) <= 10 and float(angles.abs().max()) > 9  # uniform in [-10, 10] degrees
    # Keras' matrix for 90 degrees: the dot 6 pixels right of the centre goes 6 pixels below it.
    x = torch.zeros(1, 1, 29, 29)
    x[..., 14, 20] = 1.0
    quarter = torch.tensor([[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]], dtype=torch.float64)
    out = apply_matrices(x, quarter)
    assert float(out[0, 0, 20, 14]) == pytest.approx(1.0, abs=1e-5) and float(out.sum()) == pytest.approx(1.0, abs=1e-4)


def test_shear_is_in_degrees_and_slants_a_line():
    m = random_matrices(500, 28, 28, one(shear_range=0.15), generator(0, 0, 0))
    shear = torch.rad2deg(torch.asin(-m[:, 0, 1]))  # Keras: [[1, -sin s, 0], [0, cos s, 0]] in (row, col)
    assert float(shear.abs().max()) <= 0.15 + 1e-9 and float(shear.abs().max()) > 0.14
    # A horizontal line through the centre, sheared by 30 degrees: its row moves sin(30 deg) = 0.5
    # rows per column.
    x = torch.zeros(1, 1, 28, 28)
    x[..., 13:15, :] = 1.0
    s = math.radians(30)
    out = apply_matrices(x, torch.tensor([[[1.0, -math.sin(s), 0.0], [0.0, math.cos(s), 0.0], [0.0, 0.0, 1.0]]],
                                         dtype=torch.float64), fill_mode="constant")
    cols = torch.arange(8, 20)
    rows = torch.arange(28, dtype=torch.float32)
    centre = torch.stack([(out[0, 0, :, c] * rows).sum() / out[0, 0, :, c].sum() for c in cols])
    slope = float(torch.diff(centre).mean())
    assert slope == pytest.approx(0.5, abs=0.02)


def test_zoom_scales_about_the_centre():
    m = random_matrices(500, 28, 28, one(zoom_range=0.1), generator(0, 0, 0))
    assert float(m[:, 0, 0].min()) >= 0.9 and float(m[:, 0, 0].max()) <= 1.1
    assert not torch.allclose(m[:, 0, 0], m[:, 1, 1])  # rows and columns drawn independently
    x = torch.zeros(1, 1, 28, 28)
    x[..., 10:18, 10:18] = 1.0  # a centred 8x8 square
    zoomed = apply_matrices(x, torch.diag(torch.tensor([0.5, 0.5, 1.0], dtype=torch.float64))[None])
    assert float(zoomed.sum()) == pytest.approx(4 * float(x.sum()), rel=0.02)  # factor 0.5 enlarges twofold
    assert centroid(zoomed) == pytest.approx(centroid(x), abs=1e-3)


def test_horizontal_flip_mirrors_half_the_images():
    x = square().expand(64, -1, -1, -1)
    out = augment(x, one(horizontal_flip=True), generator(0, 0, 0))
    flipped = torch.tensor([torch.allclose(o, x[0].flip(-1), atol=1e-5) for o in out])
    kept = torch.tensor([torch.allclose(o, x[0], atol=1e-5) for o in out])
    assert bool((flipped ^ kept).all()) and 16 < int(flipped.sum()) < 48


@pytest.mark.parametrize("mode, expected", [
    ("nearest", [5, 6, 7, 7, 7, 7, 7, 7]),
    ("constant", [5, 6, 7, -1, -1, -1, -1, -1]),
    ("reflect", [5, 6, 7, 7, 6, 5, 4, 3]),
    ("wrap", [5, 6, 7, 0, 1, 2, 3, 4]),
])
def test_fill_modes_as_scipy(mode, expected):
    row = torch.arange(8.0).expand(1, 1, 2, 8).contiguous()  # columns hold 0..7
    shift = torch.eye(3, dtype=torch.float64)[None].clone()
    shift[0, 1, 2] = 5.0  # read 5 columns to the right: 3 columns fall outside
    out = apply_matrices(row, shift, mode, cval=-1.0)
    assert out[0, 0, 0].tolist() == pytest.approx(expected, abs=1e-5)


def test_runs_on_the_batch_device_and_dtype():
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    cfg = AugmentConfig(enabled=True)
    for device in devices:
        x = torch.rand(8, 1, 28, 28, device=device, dtype=torch.float64)
        out = augment(x, cfg, generator(0, 0, 0))
        assert out.device == x.device and out.dtype == x.dtype and out.shape == x.shape
        # The same draws on any device: the CPU generator decides them.
        assert torch.allclose(out.cpu(), augment(x.cpu(), cfg, generator(0, 0, 0)), atol=1e-6)


def test_bad_knobs_name_the_key():
    from genray.config import ConfigError

    with pytest.raises(ConfigError, match="data.augment.fill_mode"):
        build_config("classifier", overrides=["data.augment.fill_mode=mirror"])
    with pytest.raises(ConfigError, match="zoom_range"):
        build_config("classifier", overrides=["data.augment.zoom_range=1.5"])
