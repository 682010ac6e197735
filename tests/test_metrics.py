import numpy as np
import pytest
import torch

from genray import metrics
from genray.data import DataConfig, load_images, resolve


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
