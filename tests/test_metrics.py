import numpy as np
import pytest
import torch

from genray import metrics
from genray.data import DataConfig, load_images, resolve
from genray.data.images import conform, split
from genray.data.shapes import SHAPE_LABELS, colour_shapes


def test_frechet_distance_of_known_gaussians():
    # Diagonal covariances: the distance is |mu1 - mu2|^2 + sum (s1 - s2)^2 for std devs s.
    mu1, mu2 = np.array([0.0, 1.0]), np.array([3.0, -1.0])
    c1, c2 = np.diag([1.0, 4.0]), np.diag([9.0, 1.0])
    expected = 9.0 + 4.0 + (1.0 - 3.0) ** 2 + (2.0 - 1.0) ** 2
    assert metrics.frechet_distance(mu1, c1, mu2, c2) == pytest.approx(expected)
    assert metrics.frechet_distance(mu1, c1, mu1, c1) == pytest.approx(0.0, abs=1e-9)


@pytest.fixture(scope="module")
def val():
    return load_images(DataConfig())[1].tensors


def test_real_digits_set_the_ceiling(val):
    x, y = val
    real = metrics.sample_quality(x, y)
    noise = metrics.sample_quality(torch.rand(len(x), 1, 28, 28))
    assert real["cond_acc"] >= 0.95, "the metrics classifier must classify held-out digits well"
    assert real["is"] > 8.0 and noise["is"] < 4.0
    assert real["classes_covered"] == 10
    assert real["fid"] * 10 < noise["fid"]


def test_one_class_is_collapse(val):
    x, y = val
    zeros = x[y == 0]
    q = metrics.sample_quality(zeros)
    assert q["classes_covered"] <= 2 and q["max_class_share"] > 0.8 and q["is"] < 2.0


def test_classifier_is_cached_in_the_store(val):
    metrics.get_classifier()
    assert (metrics.classifier_path() / "manifest.json").is_file()


def test_bad_input():
    with pytest.raises(ValueError, match=r"shape \(N, 1, 28, 28\)"):
        metrics.sample_quality(torch.rand(30, 28, 28))
    with pytest.raises(ValueError, match="at least 20"):
        metrics.sample_quality(torch.rand(5, 1, 28, 28))


def test_one_classifier_pass_gives_both_features_and_probabilities(val):
    x, _ = val
    classifier = metrics.get_classifier()
    features, probs = classifier.features_and_proba(x[:64])
    assert torch.equal(features, classifier.features(x[:64]))
    assert torch.equal(probs, classifier.predict_proba(x[:64]))


def test_each_image_set_has_its_own_classifier():
    # What a run picks from a set (classes, per-class budget, limit) and its augmentation keep
    # the set's judge; what the images are (source, side, channels, names, split) changes it.
    digits = metrics.classifier_name()
    assert digits == "digits-classifier" and metrics.classifier_path().name == digits
    same = [DataConfig(), resolve(DataConfig()), DataConfig(limit=100), DataConfig(classes=[0, 1]),
            DataConfig(per_class_limit=5), DataConfig(augment={"enabled": True})]
    assert [metrics.classifier_name(d) for d in same] == [digits] * len(same)
    shapes = DataConfig(source="shapes", image_size=64, channels=3, labels=["circle", "square", "triangle", "cross"])
    others = [DataConfig(split_seed=1), DataConfig(val_fraction=0.3), DataConfig(image_size=32),
              DataConfig(channels=3), DataConfig(labels=list("abcdefghij")), shapes,
              shapes.model_copy(update={"image_size": 32})]
    names = [metrics.classifier_name(d) for d in others]
    assert len(set(names + [digits])) == len(others) + 1, names
    assert names[-2].startswith("shapes-3x64x64-classifier-") and names[-1].startswith("shapes-3x32x32-classifier-")


def test_another_labelled_set_is_judged_by_its_own_classifier():
    data = DataConfig(split_seed=1)  # another train/val split of the digits: another judge
    x, y = load_images(data)[1].tensors
    real = metrics.real_ceiling(data)
    noise = metrics.sample_quality(torch.rand(len(x), 1, 28, 28), data=data)
    assert (metrics.classifier_path(data) / "manifest.json").is_file()
    assert real == metrics.sample_quality(x, y, data)
    assert real["cond_acc"] >= 0.95 and real["classes_covered"] == 10
    assert real["is"] > 8.0 and noise["is"] < 4.0
    assert real["fid"] * 10 < noise["fid"]
    # Its reference is its own training images, not the default split's.
    assert not np.allclose(metrics.reference_stats(data)[0], metrics.reference_stats()[0])


def test_unlabelled_images_have_no_sample_quality():
    for labels in ([], ["only"]):
        data = DataConfig(labels=labels)
        for measure in (lambda: metrics.sample_quality(torch.rand(30, 1, 28, 28), data=data),
                        lambda: metrics.real_ceiling(data), lambda: metrics.get_classifier(data)):
            with pytest.raises(ValueError, match="sample quality needs labelled images of at least 2 classes"):
                measure()


def test_images_must_have_the_shape_of_the_data():
    data = DataConfig(channels=3, image_size=32)
    with pytest.raises(ValueError, match=r"shape \(N, 3, 32, 32\) \(the images of data.source='digits'\), "
                                         r"got \(30, 1, 28, 28\)"):
        metrics.sample_quality(torch.rand(30, 1, 28, 28), data=data)
    with pytest.raises(ValueError, match=r"wanted must hold one label in 0..9 per image \(30\)"):
        metrics.sample_quality(torch.rand(30, 1, 28, 28), torch.full((30,), 10))


def test_coverage_counts_classes_with_a_fifth_of_their_fair_share():
    # 4 classes: a fair share is 25%, a fifth of it 5%; 10 classes: 2%.
    four = torch.tensor([0] * 60 + [1] * 29 + [2] * 6 + [3] * 5)
    assert metrics.coverage(four, 4) == (4.0, 0.6)
    assert metrics.coverage(torch.tensor([0] * 60 + [1] * 36 + [2] * 4), 4) == (2.0, 0.6)
    ten = torch.tensor([0] * 85 + [1] * 2 + [2] * 2 + [3] * 2 + list(range(4, 10)) + [9] * 3)  # 4..8: 1% each
    assert metrics.coverage(ten, 10) == (5.0, 0.85)


# A labelled RGB set: coloured shapes at 32x32, 2400 train and 600 val images, with a split seed
# no run uses, so that its judge is this set's own.
SHAPES = DataConfig(source="shapes", image_size=32, channels=3, labels=list(SHAPE_LABELS), split_seed=7)


@pytest.fixture
def shapes(monkeypatch):
    """metrics reads a set through load_images: here the coloured shapes drawn for this test,
    small enough that its judge trains in seconds."""
    load = metrics.load_images

    def load_shapes(data):
        if data.source != "shapes":
            return load(data)
        images, labels = colour_shapes(3000, data.image_size, seed=0)
        train, val = split(images, labels, data.val_fraction, data.split_seed)
        return conform(train, data.spec()), conform(val, data.spec())

    monkeypatch.setattr(metrics, "load_images", load_shapes)
    return load_shapes(SHAPES)[1].tensors


def test_an_rgb_set_is_judged_by_a_classifier_trained_on_it(shapes):
    """Bars set before measuring: held-out real shapes are classified >= 90% right, cover all 4
    classes with an IS above 3 (at most 4); uniform noise scores an IS below 2 and an FID at
    least 5x the real images'; images of one kind give one class >= 80% of the samples."""
    x, y = shapes
    real = metrics.real_ceiling(SHAPES)
    noise = metrics.sample_quality(torch.rand(len(x), 3, 32, 32), data=SHAPES)
    circles = metrics.sample_quality(x[y == 0], data=SHAPES)
    assert metrics.classifier_path(SHAPES).name.startswith("shapes-3x32x32-classifier-")
    assert real["cond_acc"] >= 0.9 and real["classes_covered"] == 4 and real["is"] > 3.0, real
    assert noise["is"] < 2.0 and noise["fid"] > 5 * real["fid"], (noise, real)
    assert circles["max_class_share"] >= 0.8 and circles["is"] < 1.6, circles
    with pytest.raises(ValueError, match=r"shape \(N, 3, 32, 32\)"):
        metrics.sample_quality(torch.rand(30, 1, 28, 28), data=SHAPES)
