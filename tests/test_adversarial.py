"""The adversarial families (gan, vaegan, aae): losses checked by hand, both players trained,
parameters kept identical across DDP ranks (2 processes, gloo, no Ray), and the deployments'
request models and math without HTTP."""

import math
import os
import socket
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pydantic import ValidationError

from genray import checkpoint
from genray.bench.plain_train import leave_process_group
from genray.families import get_family
from genray.families import gan as gan_module
from genray.families.aae import mixture_means
from genray.families.gan import (
    discriminator_loss,
    generator_loss,
    gradient_penalty,
    interpolates,
    moment_mse,
    noisy_labels,
)
from genray.families.vaegan import scale_grad

# Tiny widths: every step takes milliseconds.
SMALL = {
    "gan": {"latent_dim": 8, "channels": 8},
    "vaegan": {"latent_dim": 8, "channels": 8, "hidden": 32},
    "aae": {"latent_dim": 4, "channels": 8, "hidden": 32, "disc_hidden": 32},
}
LOSSES = ["bce", "hinge", "lsgan", "wgan-gp"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny nets: a second intra-op thread only adds synchronisation on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_family(name: str, **overrides):
    return get_family(name)({**SMALL[name], **overrides})


def batch(n: int = 16, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=gen), torch.randint(10, (n,), generator=gen)


def snapshot(family) -> dict[str, list[torch.Tensor]]:
    return {k: [p.detach().clone() for p in net.parameters()] for k, net in family.nets.items()}


def changed(before, family) -> dict[str, bool]:
    return {k: any(not torch.equal(a, b) for a, b in zip(before[k], net.parameters()))
            for k, net in family.nets.items()}


# --- losses by hand ------------------------------------------------------------------------

def test_gradient_penalty_is_zero_exactly_at_gradient_norm_one():
    # A linear critic s(x) = <w, x> has gradient w everywhere: the penalty is (||w|| - 1)^2.
    x = torch.randn(5, 1, 3, 3, requires_grad=True)
    w = torch.randn(9)
    for norm in (1.0, 3.0, 0.5):
        wn = (w / w.norm() * norm).requires_grad_(True)
        penalty = gradient_penalty(x.flatten(1) @ wn, x)
        assert penalty.item() == pytest.approx((norm - 1.0) ** 2, abs=1e-6)
        # create_graph: the penalty is differentiable in the critic's weights, d/dw = 2 (|w| - 1) w/|w|.
        (grad_w,) = torch.autograd.grad(penalty, wn)
        assert torch.allclose(grad_w, 2 * (norm - 1.0) * wn.detach() / norm, atol=1e-5)


def test_gradient_penalty_takes_the_norm_per_sample():
    # s(x) = |x|^2 / 2 has gradient x: samples with norms 1 and 3 give ((1-1)^2 + (3-1)^2) / 2 = 2,
    # where one norm over the whole batch would give (sqrt(10) - 1)^2 = 4.68.
    x = torch.zeros(2, 1, 2, 2)
    x[0, 0, 0, 0], x[1, 0, 1, 1] = 1.0, 3.0
    x.requires_grad_(True)
    assert gradient_penalty(0.5 * x.pow(2).flatten(1).sum(1), x).item() == pytest.approx(2.0)


def test_interpolates_lie_on_each_samples_segment():
    real, fake = 1.0 + torch.rand(64, 1, 4, 4), -1.0 - torch.rand(64, 1, 4, 4)  # real - fake >= 2
    x_hat = interpolates(real, fake)
    assert x_hat.requires_grad
    alpha = ((x_hat.detach() - fake) / (real - fake)).flatten(1)  # one alpha per sample, in [0, 1]
    assert torch.allclose(alpha, alpha[:, :1].expand_as(alpha), atol=1e-4)
    assert alpha.min() >= -1e-5 and alpha.max() <= 1 + 1e-5 and alpha[:, 0].std() > 0.1


def test_label_smoothing_is_one_sided_and_label_noise_flips():
    labels = noisy_labels(3, 2, flip=0.0)
    assert labels.tolist() == [1, 1, 1, 0, 0]
    torch.manual_seed(0)
    flipped = noisy_labels(20_000, 20_000, flip=0.1)
    assert 0.09 < (flipped[:20_000] == 0).float().mean() < 0.11
    assert 0.09 < (flipped[20_000:] == 1).float().mean() < 0.11

    # bce with smoothing 0.1 asks 0.9 of a real image: a confident logit of 10 costs 1.0 nats
    # (10 - 0.9 * 10 + log(1 + e^-10)), not ~0; a fake's target stays exactly 0.
    s = torch.tensor([10.0, -10.0])
    loss = discriminator_loss("bce", s, torch.tensor([1.0, 0.0]), smoothing=0.1)
    assert loss[0].item() == pytest.approx(1.0 + math.log1p(math.exp(-10)), rel=1e-5)
    assert loss[1].item() == pytest.approx(math.log1p(math.exp(-10)), abs=1e-6)
    lsgan = discriminator_loss("lsgan", torch.tensor([0.9, 0.0]), torch.tensor([1.0, 0.0]), smoothing=0.1)
    assert lsgan.tolist() == pytest.approx([0.0, 0.0], abs=1e-7)
    # hinge: a flipped real (label 0) is pushed below -1 like a fake.
    hinge = discriminator_loss("hinge", torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0]), smoothing=0.1)
    assert hinge.tolist() == pytest.approx([0.5, 1.5])


def test_generator_losses_by_hand():
    zero, one = torch.zeros(4), torch.ones(4)
    assert generator_loss("bce", zero).item() == pytest.approx(math.log(2))  # non-saturating
    assert generator_loss("lsgan", one).item() == pytest.approx(0.0)
    assert generator_loss("hinge", 2 * one).item() == pytest.approx(-2.0)
    assert generator_loss("wgan-gp", 2 * one).item() == pytest.approx(-2.0)


def test_the_d_step_uses_the_configured_smoothing_and_noise(monkeypatch):
    calls = {}

    def spy_labels(n_real, n_fake, flip, device=None):
        calls["flip"] = flip
        return noisy_labels(n_real, n_fake, flip, device)

    def spy_loss(loss, scores, labels, smoothing):
        calls["smoothing"], calls["labels"] = smoothing, labels
        return discriminator_loss(loss, scores, labels, smoothing)

    monkeypatch.setattr(gan_module, "noisy_labels", spy_labels)
    monkeypatch.setattr(gan_module, "discriminator_loss", spy_loss)
    torch.manual_seed(0)
    family = small_family("gan", label_smoothing=0.2, label_noise=0.25)
    family.train_step(batch(64), epoch=0.0)
    assert calls["flip"] == 0.25 and calls["smoothing"] == 0.2
    assert 0 < (calls["labels"][:64] == 0).sum() < 64, "some real labels must have been flipped"


def test_moment_mse_is_zero_for_the_same_batch_and_grows_with_a_shift():
    x = torch.rand(50, 1, 28, 28)
    assert moment_mse(x, x).item() == pytest.approx(0.0, abs=1e-12)
    assert moment_mse(x + 0.1, x).item() == pytest.approx(0.01, rel=1e-6)


def test_scale_grad_keeps_the_value_and_scales_the_gradient():
    x = torch.randn(3, requires_grad=True)
    y = scale_grad(x, 0.25)
    assert torch.equal(y, x)
    y.sum().backward()
    assert torch.allclose(x.grad, torch.full((3,), 0.25))


def test_aae_mixture_prior_puts_ten_clusters_on_a_circle():
    family = small_family("aae", prior="mixture", latent_dim=2, mixture_radius=4.0, mixture_std=0.1)
    z = family.prior_codes(2000, seed=0)
    means = mixture_means(10, 4.0, 2)
    assert torch.allclose(means.norm(dim=1), torch.full((10,), 4.0))
    nearest = torch.cdist(z, means).min(1)
    assert nearest.values.max() < 0.6  # every code lies near one component
    counts = torch.bincount(nearest.indices, minlength=10)
    assert counts.min() > 120  # and all ten are used about equally
    with pytest.raises(ValidationError, match="latent_dim must be >= 2"):
        get_family("aae")({"prior": "mixture", "latent_dim": 1})


# --- training: every loss finite, both players move -------------------------------------------

@pytest.mark.parametrize("loss", LOSSES)
def test_every_gan_loss_is_finite_and_moves_both_players(loss):
    torch.manual_seed(0)
    family = small_family("gan", loss=loss, n_critic=2 if loss == "wgan-gp" else None)
    before = snapshot(family)
    family.train()
    for i in range(3):
        out = family.train_step(batch(16, seed=i), epoch=0.0)
        assert all(math.isfinite(v) for v in out.values()), out
    assert changed(before, family) == {"generator": True, "discriminator": True, "generator_ema": True}
    if loss == "wgan-gp":
        assert out["gp"] >= 0.0 and "wasserstein" in out
    family.eval()
    metrics = family.eval_batch(batch(32))
    assert all(math.isfinite(v) for v in metrics.values()) and metrics["val_moment_mse"] > 0


def test_generator_average_follows_the_generator():
    torch.manual_seed(0)
    family = small_family("gan", ema=0.75)
    start = [p.detach().clone() for p in family.nets["generator_ema"].parameters()]
    family.train_step(batch(16), epoch=0.0)
    for p0, p_avg, p in zip(start, family.nets["generator_ema"].parameters(), family.nets["generator"].parameters()):
        assert torch.allclose(p_avg, 0.75 * p0 + 0.25 * p, atol=1e-6)
    assert "generator_ema" not in small_family("gan", ema=0.0).nets


def test_wgan_gp_defaults_to_five_critic_steps():
    assert small_family("gan", loss="wgan-gp").cfg.critic_steps == 5
    assert small_family("gan").cfg.critic_steps == 1
    assert small_family("gan", loss="wgan-gp", n_critic=2).cfg.critic_steps == 2


@pytest.mark.parametrize("name,nets", [("vaegan", {"encoder", "decoder", "discriminator"}),
                                       ("aae", {"encoder", "decoder", "discriminator"})])
def test_autoencoding_families_move_every_network(name, nets):
    torch.manual_seed(0)
    family = small_family(name)
    assert set(family.nets) == nets
    before = snapshot(family)
    family.train()
    for i in range(3):
        out = family.train_step(batch(16, seed=i), epoch=0.0)
        assert all(math.isfinite(v) for v in out.values()), out
    assert all(changed(before, family).values()), changed(before, family)


@pytest.mark.parametrize("name", ["gan", "vaegan", "aae"])
def test_inference_shapes_ranges_and_seeds(name):
    torch.manual_seed(0)
    family = small_family(name)
    family.train_step(batch(16), epoch=0.0)  # batch-norm running stats move away from their init
    family.eval()
    images = family.sample(6, seed=3)
    assert images.shape == (6, 1, 28, 28) and 0.0 <= images.min() and images.max() <= 1.0
    assert torch.equal(images, family.sample(6, seed=3))
    assert not torch.equal(images, family.sample(6, seed=4))
    # Eval mode: an image does not depend on the rest of its batch (batch norm uses running stats).
    render = family.generate if name == "gan" else family.decode
    z = family.prior_codes(6, seed=3)
    assert torch.allclose(render(z[:2]), images[:2], atol=1e-6)
    x, _ = batch(3)
    if name == "vaegan":
        mu, logvar = family.encode(x)
        assert mu.shape == logvar.shape == (3, 8)
        assert family.decode(mu).shape == (3, 1, 28, 28)
    if name == "aae":
        z = family.encode(x)
        assert z.shape == (3, 4)
        assert torch.allclose(family.reconstruct(x), family.decode(z))


# --- DDP: two processes, gloo, every family and every gan loss ---------------------------------

DDP_CASES = [("gan", {"loss": loss, "n_critic": 2 if loss == "wgan-gp" else None}) for loss in LOSSES] + [
    ("vaegan", {}),
    ("aae", {}),
    ("aae", {"prior": "mixture"}),
]
CONTROL = ("gan", {"loss": "bce"})  # trained without DDP: the ranks must drift apart


def _ddp_worker(rank: int, world: int, port: int, result_file: str) -> None:
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    results = []
    for case, (name, overrides) in enumerate(DDP_CASES + [CONTROL]):
        torch.manual_seed(0)
        family = small_family(name, **overrides)
        if case < len(DDP_CASES):
            family.wrap(DistributedDataParallel)
        before = {k: torch.cat([p.detach().flatten() for p in net.parameters()]) for k, net in family.nets.items()}
        torch.manual_seed(1 + rank)  # each rank its own noise, dropout and data, as in genray.train
        family.train()
        for i in range(3):
            family.train_step(batch(8, seed=100 * rank + i), epoch=0.0)
        for key, net in family.nets.items():
            vec = torch.cat([p.detach().flatten() for p in net.parameters()])
            gathered = [torch.empty_like(vec) for _ in range(world)]
            dist.all_gather(gathered, vec)
            results.append((case, name, overrides.get("loss") or overrides.get("prior", ""), key,
                            (gathered[0] - gathered[1]).abs().max().item(),
                            (vec - before[key]).abs().max().item()))
    del family, net  # the last family's nets; gc collects the earlier DDP-wrapped ones
    if rank == 0:
        torch.save(results, result_file)
    leave_process_group()  # barrier, destroy, and exit past the finalization where gloo can abort


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_keeps_parameters_identical_across_ranks():
    with tempfile.TemporaryDirectory() as tmp:
        result_file = os.path.join(tmp, "results.pt")
        mp.spawn(_ddp_worker, args=(2, free_port(), result_file), nprocs=2, join=True)
        results = torch.load(result_file)
    assert len(results) == sum(len(small_family(n, **o).nets) for n, o in DDP_CASES + [CONTROL])
    for case, name, variant, net, spread, moved in results:
        assert moved > 0.0, f"{name} {variant}: {net} was not trained"
        if case < len(DDP_CASES):
            assert spread == 0.0, f"{name} {variant}: {net} differs across ranks by {spread}"
        else:
            assert spread > 0.0, "the control trained without DDP on different data yet stayed identical"


# --- deployments: request models and the math, without HTTP --------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Each family trained for two steps and reloaded from a checkpoint, as a deployment does."""
    from genray.config import build_config

    out = {}
    for name in ("gan", "vaegan", "aae"):
        torch.manual_seed(0)
        cfg = build_config(name, overrides=[f"model.{k}={v}" for k, v in SMALL[name].items()])
        family = get_family(name)(cfg.model)
        for i in range(2):
            family.train_step(batch(16, seed=i), epoch=0.0)
        path = checkpoint.save(tmp_path_factory.mktemp(name) / "model", family=name, config=cfg.to_dict(),
                               state=family.state_dict(), epoch=0, metrics={})
        out[name] = checkpoint.load_family(path)[0]
    return out


@pytest.mark.parametrize("name", ["gan", "vaegan", "aae"])
def test_batched_sampling_matches_one_by_one(name, trained):
    from genray.deploy.common import sample_many
    family = trained[name]
    together = sample_many(family, [(3, 7), (2, 8), (1, 7)])
    assert [t.shape[0] for t in together] == [3, 2, 1]
    assert torch.allclose(together[0], family.sample(3, seed=7), atol=1e-6)
    assert torch.allclose(together[1], family.sample(2, seed=8), atol=1e-6)
    assert torch.allclose(together[2], family.sample(1, seed=7), atol=1e-6)


@pytest.mark.parametrize("name", ["gan", "vaegan", "aae"])
def test_sample_requests_name_the_bad_field(name):
    from genray.deploy.common import SampleRequest
    assert SampleRequest(n=4, seed=1).n == 4
    for body, field in [({"n": 0}, "n"), ({"n": 10_000}, "n"), ({"seed": -1}, "seed"),
                        ({"format": "jpeg"}, "format"), ({"m": 1}, "m")]:
        with pytest.raises(ValidationError) as err:
            SampleRequest.model_validate(body)
        assert err.value.errors()[0]["loc"][0] == field


@pytest.mark.parametrize("name", ["vaegan", "aae"])
def test_encode_decode_requests_and_math(name, trained):
    import genray.deploy.common as module
    from genray.deploy.common import BadRequest, images_to_tensor
    family = trained[name]
    with pytest.raises(ValidationError, match="finite"):
        module.DecodeRequest.model_validate_json('{"z": [[NaN, 0]]}')
    with pytest.raises(ValidationError, match="less than or equal to 1000"):
        module.DecodeRequest(z=[[1e6]])
    with pytest.raises(ValidationError, match="28x28"):
        module.EncodeRequest(images=[[[0.0] * 28] * 27])
    with pytest.raises(ValidationError, match="at least 1"):
        module.EncodeRequest(images=[])

    latent = family.cfg.latent_dim
    with pytest.raises(BadRequest, match=f"z.1: expected {latent} values"):
        module.codes_to_tensor([[0.0] * latent, [0.0] * (latent + 1)], latent)
    z = module.codes_to_tensor([[0.5] * latent, [-0.5] * latent], latent)
    assert family.decode(z).shape == (2, 1, 28, 28)

    req = module.EncodeRequest(images=[[[0.5] * 28] * 28, [[[0.0] * 28] * 28]])
    x = images_to_tensor(req.images)
    assert x.shape == (2, 1, 28, 28)
    code = family.encode(x)[0] if name == "vaegan" else family.encode(x)
    assert code.shape == (2, latent)
