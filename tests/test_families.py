"""Every registered family, without Ray: build -> a few steps -> checkpoint round trip -> inference."""

import pytest
import torch
from torch.utils.data import DataLoader

from genray import checkpoint
from genray.config import build_config
from genray.families import FAMILIES, get_family

@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_steps_and_checkpoint_round_trip(name, tmp_path):
    torch.manual_seed(0)
    cfg = build_config(name)  # defaults are small enough to train in seconds on a CPU
    family_cls = get_family(name)
    family = family_cls(cfg.model)
    train, val = family_cls.load_data(cfg.data)
    batch = next(iter(DataLoader(train, batch_size=64, collate_fn=family_cls.collate_fn)))
    val_batch = next(iter(DataLoader(val, batch_size=32, collate_fn=family_cls.collate_fn)))
    before = {k: [p.detach().clone() for p in net.parameters()] for k, net in family.nets.items()}
    family.eval()
    untrained = family.eval_batch(val_batch)

    family.train()
    losses = [family.train_step(batch, epoch=1.0)["loss"] for _ in range(15)]
    assert all(torch.isfinite(torch.tensor(losses)))
    if not family.adversarial:
        assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, f"loss did not decrease: {losses}"
    for k, net in family.nets.items():
        changed = any(not torch.equal(a, b) for a, b in zip(before[k], net.parameters()))
        assert changed, f"network {k!r} was not trained"

    family.eval()
    metrics = family.eval_batch(val_batch)
    check_metrics(family, untrained, metrics, batch_size=32)
    if family.metric.startswith("sample_"):  # measured by the loop from quality_samples
        images, _ = family.quality_samples(20, seed=0)
        assert images.shape == (20, *family.spec.shape)  # (20, 1, 28, 28): the default digits
    else:
        assert family.metric in metrics

    path = checkpoint.save(tmp_path / "ckpt", family=name, config=cfg.to_dict(),
                           state=family.state_dict(), epoch=3, metrics=metrics)
    restored, ckpt = checkpoint.load_family(path)
    assert ckpt.epoch == 3 and ckpt.family == name
    for key, net in family.nets.items():
        for (pname, a), b in zip(net.state_dict().items(), restored.nets[key].state_dict().values()):
            assert torch.equal(a, b), f"{key}.{pname} changed in the round trip"
    for tag, images in restored.preview(batch).items():
        assert images.dim() == 4 and 0.0 <= images.min() and images.max() <= 1.0, tag


def check_metrics(family, untrained: dict[str, float], trained: dict[str, float], batch_size: int) -> None:
    """Validation sums on one val batch, before and after the 15 steps: finite, in their range,
    consistent, and the family's own metric better for the training."""
    assert set(trained) == set(untrained) and all(torch.isfinite(torch.tensor(list(trained.values()))))
    for key, value in trained.items():
        if "_acc" in key:  # a count of right answers over the batch (a share for one graph)
            assert 0 <= value <= batch_size, (key, value)
        elif not key.startswith("val_d_"):  # errors, losses, KL, bits, shares; a critic's scores are any sign
            assert value >= 0, (key, value)
    for metrics in (untrained, trained):  # -ELBO = reconstruction NLL + KL, image by image, so in the sums
        if "val_neg_elbo" in metrics:
            nll = metrics.get("val_recon", metrics.get("val_nll"))
            assert metrics["val_neg_elbo"] == pytest.approx(nll + metrics["val_kl"], rel=1e-5)
    if "val_blur_fill_mse" in trained:
        # The inpainting UNet starts as blur fill (a zero residual over it) and 15 steps do not
        # move it past that baseline: its untrained fill *is* the baseline's.
        assert untrained["val_masked_mse"] == pytest.approx(untrained["val_blur_fill_mse"], rel=1e-6)
    elif not family.adversarial and family.metric in trained:
        better = trained[family.metric] < untrained[family.metric] if family.mode == "min" \
            else trained[family.metric] > untrained[family.metric]
        assert better, f"{family.metric}: {untrained[family.metric]} untrained, {trained[family.metric]} after 15 steps"


def test_vae_shapes_and_inference():
    family = get_family("vae")({"latent_dim": 5})
    x = torch.rand(3, 1, 28, 28)
    logits, mu, logvar = family.nets["vae"](x)
    assert logits.shape == x.shape and mu.shape == logvar.shape == (3, 5)
    family.eval()
    assert family.sample(4, seed=1).shape == (4, 1, 28, 28)
    assert torch.equal(family.sample(4, seed=1), family.sample(4, seed=1))
    assert not torch.equal(family.sample(4, seed=1), family.sample(4, seed=2))
    strip = family.interpolate(x[0], x[1], steps=6)
    assert strip.shape == (6, 1, 28, 28)
    # The ends of the strip are the reconstructions of the two images.
    assert torch.allclose(strip[0], family.reconstruct(x[:1])[0], atol=1e-6)


def test_vae_elbo_terms_are_exact():
    """KL of N(mu, sigma^2) from N(0, 1) in closed form, and the Bernoulli NLL in nats."""
    from genray.families.vae import neg_elbo_terms

    x = torch.tensor([[1.0, 0.0]])
    logits = torch.tensor([[0.0, 0.0]])  # p = 0.5 for both pixels -> NLL = 2 ln 2
    mu, logvar = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    recon, kl = neg_elbo_terms(x, logits, mu, logvar)
    assert recon.item() == pytest.approx(2 * torch.log(torch.tensor(2.0)).item())
    expected_kl = 0.5 * (1.0 + 0.0) + 0.5 * (torch.exp(torch.tensor(2.0)).item() - 1.0 - 2.0)
    assert kl.item() == pytest.approx(expected_kl)


def test_kl_warmup_is_linear_then_one():
    family = get_family("vae")({"kl_warmup_epochs": 2.0})
    assert [family.kl_weight(e) for e in (0.0, 1.0, 2.0, 5.0)] == [0.0, 0.5, 1.0, 1.0]
