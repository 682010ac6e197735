import numpy as np
import pytest
import torch

from genray import metrics
from genray.data import DataConfig, load_images


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
