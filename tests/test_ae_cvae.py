"""The autoencoder and the conditional VAE: what is particular to them, and their deployments'
request models and math without HTTP (the generic family test covers build/step/checkpoint)."""

import pytest
import torch
from pydantic import ValidationError
from torch import nn
from torch.utils.data import DataLoader

from genray.data import DataConfig, load_images
from genray.deploy.common import BadRequest
from genray.families import get_family
from genray.families.ae import corrupt, reconstruction_loss


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These nets are small: one intra-op thread is as fast, and does not fight other processes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    return load_images(DataConfig())


def train(family, train_set, epochs: int, batch_size: int = 32, seed: int = 0) -> None:
    """The train loop's shape (genray.train), in-process: shuffled batches, fractional epochs."""
    loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    family.train()
    for epoch in range(epochs):
        for i, batch in enumerate(loader):
            family.train_step(batch, epoch + i / len(loader))
    family.eval()


def val_means(family, val_set) -> dict[str, float]:
    return {k: v / len(val_set) for k, v in family.eval_batch(val_set.tensors).items()}


def pca_val_mse(train_set, val_set, k: int) -> float:
    """Per-pixel val MSE of PCA with k components fitted on the train images: the linear baseline."""
    xt, xv = train_set.tensors[0].flatten(1).double(), val_set.tensors[0].flatten(1).double()
    mean = xt.mean(0)
    basis = torch.linalg.svd(xt - mean, full_matrices=False)[2][:k].T  # (784, k)
    return ((xv - mean) @ basis @ basis.T + mean - xv).pow(2).mean().item()


# --- ae --------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["dense", "conv"])
def test_ae_shapes_and_inference(arch):
    torch.manual_seed(0)
    family = get_family("ae")({"arch": arch, "latent_dim": 5, "noise": "masking", "noise_level": 0.5})
    family.eval()
    x = torch.rand(3, 1, 28, 28)
    z = family.encode(x)
    assert z.shape == (3, 5)
    out = family.decode(z)
    assert out.shape == x.shape and 0.0 <= out.min() and out.max() <= 1.0
    assert torch.equal(family.reconstruct(x), out)
    noisy, clean = family.denoise(x, add_noise=True, seed=3)
    assert noisy.shape == clean.shape == x.shape and not torch.equal(noisy, x)
    again, _ = family.denoise(x, add_noise=True, seed=3)
    assert torch.equal(noisy, again), "a seeded corruption must be reproducible"
    given, cleaned = family.denoise(noisy)  # an image that is already noisy is cleaned as given
    assert torch.equal(given, noisy) and torch.equal(cleaned, clean)


def test_corruptions():
    x = torch.full((4, 1, 28, 28), 0.5)
    masked = corrupt(x, "masking", 0.25, torch.Generator().manual_seed(0))
    # Exactly round(0.25 * 784) = 196 pixels zeroed in every image, the rest untouched.
    assert ((masked == 0).flatten(1).sum(1) == 196).all() and set(masked.unique().tolist()) == {0.0, 0.5}
    noisy = corrupt(x, "gaussian", 0.1, torch.Generator().manual_seed(0))
    assert 0.0 <= noisy.min() and noisy.max() <= 1.0
    assert (noisy - x).std().item() == pytest.approx(0.1, rel=0.05)
    assert torch.equal(noisy, corrupt(x, "gaussian", 0.1, torch.Generator().manual_seed(0)))
    assert corrupt(x, "none", 0.5) is x and corrupt(x, "gaussian", 0.0) is x
    with pytest.raises(ValueError, match="noise must be"):
        corrupt(x, "salt", 0.1)


class Recorder(nn.Module):
    """Wraps a network and keeps what it was last given and what it answered."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        self.seen, self.answer = x.detach().clone(), self.net(x)
        return self.answer


@pytest.mark.parametrize("loss", ["bce", "mse"])
def test_denoising_ae_trains_on_noisy_inputs_with_clean_targets(digits, loss):
    torch.manual_seed(0)
    family = get_family("ae")({"arch": "dense", "noise": "masking", "noise_level": 0.5, "loss": loss})
    # Decoder biased towards dark pixels, so the loss tells a clean target from a noisy one
    # (at logits near 0 every pixel costs ln 2 whatever its target).
    nn.init.constant_(family.nets["ae"].decoder[2].bias, -3.0)
    recorder = Recorder(family.nets["ae"])
    family.train_nets["ae"] = recorder  # as DDP would wrap it
    x, y = next(iter(DataLoader(digits[0], batch_size=16)))
    step = family.train_step((x, y), epoch=0.0)
    seen = recorder.seen
    assert ((seen == 0) & (x != 0)).any(), "the network must see the masked image"
    assert ((seen == 0).flatten(1).sum(1) >= 392).all()
    assert torch.equal(seen[seen != 0], x[seen != 0])
    logits = recorder.answer.detach()
    assert float(step["loss"]) == pytest.approx(reconstruction_loss(logits, x, loss).mean().item(), rel=1e-5)
    assert float(step["loss"]) != pytest.approx(reconstruction_loss(logits, seen, loss).mean().item(), rel=1e-3)
    # Validation scores clean reconstructions (the family metric) and the denoising itself.
    metrics = family.eval_batch((x, y))
    assert {"val_mse", "val_denoise_mse", "val_noisy_mse"} <= set(metrics)


def test_ae_reconstruction_error_falls_and_beats_pca(digits):
    """A nonlinear code beats the best linear one of the same size (PCA), on held-out digits.
    At the bench budget (30 epochs, default conv AE, 16 numbers) it is about half PCA's error;
    here a dense AE with a 4-number code gets there in a few seconds."""
    train_set, val_set = digits
    torch.manual_seed(0)
    family = get_family("ae")({"arch": "dense", "latent_dim": 4, "lr": 3e-3})
    family.eval()
    before = val_means(family, val_set)["val_mse"]
    train(family, train_set, epochs=8)
    after = val_means(family, val_set)["val_mse"]
    pca = pca_val_mse(train_set, val_set, 4)
    assert after < 0.5 * before
    assert after < pca, f"AE val MSE {after:.5f} vs PCA {pca:.5f} with 4 components"


# --- cvae ------------------------------------------------------------------------------------

def test_cvae_shapes_sampling_and_style_transfer():
    torch.manual_seed(0)
    family = get_family("cvae")({"latent_dim": 3})
    family.eval()
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    logits, mu, logvar = family.nets["cvae"](x, y)
    assert logits.shape == x.shape and mu.shape == logvar.shape == (4, 3)
    assert not torch.equal(family.encode(x, y)[0], family.encode(x, (y + 1) % 10)[0]), "the encoder reads the label"

    one = family.sample(7, 5, seed=1)
    assert one.shape == (5, 1, 28, 28) and 0.0 <= one.min() and one.max() <= 1.0
    assert torch.equal(one, family.sample(7, 5, seed=1))
    assert not torch.equal(one, family.sample(7, 5, seed=2))
    assert not torch.equal(one, family.sample(3, 5, seed=1)), "the decoder reads the label"
    with pytest.raises(ValueError, match=r"label must be in 0..9 \(the data's 10 classes\)"):
        family.sample(10, 1)

    as_five = family.style_transfer(x, y, 5)
    per_image = family.style_transfer(x, y, torch.tensor([5, 5, 6, 6]))
    assert as_five.shape == per_image.shape == x.shape
    assert torch.equal(as_five[:2], per_image[:2]) and not torch.equal(as_five[2:], per_image[2:])
    # Drawn as its own digit, an image comes back as its reconstruction.
    assert torch.allclose(family.style_transfer(x, y, y), family.reconstruct(x, y), atol=1e-6)

    images, wanted = family.quality_samples(25, seed=0)
    assert images.shape == (25, 1, 28, 28) and wanted.tolist() == [i % 10 for i in range(25)]


def test_cvae_elbo_is_recon_plus_analytic_kl_and_warms_up(digits):
    torch.manual_seed(0)
    family = get_family("cvae")({"kl_warmup_epochs": 2.0})
    assert [family.kl_weight(e) for e in (0.0, 1.0, 2.0, 5.0)] == [0.0, 0.5, 1.0, 1.0]
    family.eval()
    x, y = next(iter(DataLoader(digits[1], batch_size=8)))
    torch.manual_seed(1)
    metrics = family.eval_batch((x, y))
    # By hand, with the same posterior noise: Bernoulli NLL summed over pixels + closed-form KL.
    torch.manual_seed(1)
    with torch.no_grad():
        net = family.nets["cvae"]
        mu, logvar = net.encode(x, y)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        p = torch.sigmoid(net.decode_logits(z, y)).double().clamp(1e-12, 1 - 1e-12)
        nll = -(x * p.log() + (1 - x) * (1 - p).log()).sum()
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum()
    assert metrics["val_recon"] == pytest.approx(nll.item(), rel=1e-4)
    assert metrics["val_kl"] == pytest.approx(kl.item(), rel=1e-4)
    assert metrics["val_neg_elbo"] == pytest.approx(metrics["val_recon"] + metrics["val_kl"], rel=1e-6)
    # The train loss weighs the KL by the warm-up factor.
    step = family.train_step((x, y), epoch=1.0)
    assert step["kl_weight"] == 0.5
    assert float(step["loss"]) == pytest.approx(float(step["recon"] + 0.5 * step["kl"]), rel=1e-5)


def test_cvae_samples_show_the_requested_digit(digits):
    """Measured with genray.metrics' classifier. At the bench budget (30 epochs, defaults)
    99% of samples are classified as the digit asked for; here a dense CVAE trained for a few
    seconds must reach 90%."""
    from genray.metrics import get_classifier

    train_set, val_set = digits
    torch.manual_seed(0)
    family = get_family("cvae")({"arch": "dense", "lr": 3e-3})
    train(family, train_set, epochs=4)
    classifier = get_classifier()
    images, wanted = family.quality_samples(300, seed=0)
    predicted = classifier.predict_proba(images).argmax(1)
    accuracy = (predicted == wanted).float().mean().item()
    assert accuracy >= 0.9, f"only {accuracy:.0%} of samples show the digit asked for"
    assert all((predicted[wanted == d] == d).float().mean() >= 0.6 for d in range(10))
    # Style transfer moves an image to the class asked for, too.
    x, y = val_set.tensors[0][:50], val_set.tensors[1][:50]
    target = (y + 1) % 10
    moved = classifier.predict_proba(family.style_transfer(x, y, target)).argmax(1)
    assert (moved == target).float().mean() >= 0.8


# --- deployments, without HTTP ---------------------------------------------------------------

def test_ae_request_models_and_math():
    from genray.deploy.common import DecodeRequest, EncodeRequest
    from genray.deploy.images import DenoiseRequest, ReconstructRequest, denoise_images

    digit = [[0.0] * 28 for _ in range(28)]
    for model, body, field in [
        (DenoiseRequest, {"images": [digit], "noise_level": 2.0}, "noise_level"),
        (DenoiseRequest, {"images": [digit], "noise": "salt"}, "noise"),
        (DenoiseRequest, {"images": [digit], "seed": -1}, "seed"),
        (DenoiseRequest, {"images": []}, "images"),
        (ReconstructRequest, {"images": [digit], "format": "jpeg"}, "format"),
        (EncodeRequest, {"images": [digit], "extra": 1}, "extra"),
    ]:
        with pytest.raises(ValidationError) as err:
            model.model_validate(body)
        assert err.value.errors()[0]["loc"][0] == field, body
    with pytest.raises(ValidationError, match="finite"):
        DecodeRequest.model_validate_json('{"z": [[NaN, 0]]}')
    with pytest.raises(ValidationError, match="28x28"):
        EncodeRequest(images=[[[0.0] * 28] * 27])

    torch.manual_seed(0)
    plain = get_family("ae")({"latent_dim": 4})
    plain.eval()
    x = torch.rand(2, 1, 28, 28)
    req = DenoiseRequest(images=x.squeeze(1).tolist(), add_noise=True, seed=4)
    with pytest.raises(BadRequest, match="trained without noise"):
        denoise_images(plain, req)
    named = DenoiseRequest(images=x.squeeze(1).tolist(), add_noise=True, seed=4, noise="gaussian", noise_level=0.2)
    noisy, clean = denoise_images(plain, named)
    assert noisy.shape == clean.shape == (2, 1, 28, 28) and not torch.allclose(noisy, x)
    assert torch.equal(noisy, denoise_images(plain, named)[0])
    given, _ = denoise_images(plain, DenoiseRequest(images=x.squeeze(1).tolist()))
    assert torch.allclose(given, x)


def test_cvae_request_models_and_math():
    from genray.deploy.images import DigitSampleRequest as SampleRequest
    from genray.deploy.images import StyleTransferRequest, style_transfer_images
    from genray.deploy.images import sample_digits_many as sample_many

    assert SampleRequest(digit=3).n == 16
    for body, field in [({}, "digit"), ({"digit": 10}, "digit"), ({"digit": -1}, "digit"),
                        ({"digit": 1, "n": 0}, "n"), ({"digit": 1, "n": 10_000}, "n"),
                        ({"digit": 1, "seed": "abc"}, "seed"), ({"digit": 1, "m": 1}, "m")]:
        with pytest.raises(ValidationError) as err:
            SampleRequest.model_validate(body)
        assert err.value.errors()[0]["loc"][0] == field, body

    digit = [[0.0] * 28 for _ in range(28)]
    for body, loc in [
        ({"images": [digit, digit], "labels": [1], "digit": 3}, ("labels",)),
        ({"images": [digit], "labels": [12], "digit": 3}, ("labels", 0)),
        ({"images": [digit], "labels": [1], "digit": 10}, ("digit",)),
        ({"images": [digit], "labels": [1], "digit": True}, ("digit",)),
        ({"images": [digit, digit], "labels": [1, 2], "digits": [3]}, ("digits",)),
        ({"images": [digit], "labels": [1], "digits": [3.5]}, ("digits", 0)),
        ({"images": [digit], "labels": [1]}, ("digits",)),
        ({"images": [digit], "labels": [1], "digit": 3, "digits": [3]}, ("digits",)),
    ]:
        with pytest.raises(ValidationError) as err:
            StyleTransferRequest.model_validate(body)
        assert err.value.errors()[0]["loc"][: len(loc)] == loc, body

    torch.manual_seed(0)
    family = get_family("cvae")({"latent_dim": 3})
    family.eval()
    together = sample_many(family, [(2, 3, 7), (5, 2, 8), (2, 1, 7)])
    assert [t.shape[0] for t in together] == [3, 2, 1]
    assert torch.allclose(together[0], family.sample(2, 3, seed=7), atol=1e-6)
    assert torch.allclose(together[1], family.sample(5, 2, seed=8), atol=1e-6)
    assert torch.allclose(together[2], together[0][:1], atol=1e-6)

    x = torch.rand(2, 28, 28).tolist()
    one_target = style_transfer_images(family, StyleTransferRequest(images=x, labels=[1, 2], digit=4))
    per_image = style_transfer_images(family, StyleTransferRequest(images=x, labels=[1, 2], digits=[4, 9]))
    assert one_target.shape == per_image.shape == (2, 1, 28, 28)
    assert torch.equal(one_target[0], per_image[0]) and not torch.equal(one_target[1], per_image[1])
