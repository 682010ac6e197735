"""The pieces of multi-node training that need no cluster: elastic worker ranges, placement and
the learning-rate rule in the run config, the optimizer hooks that apply that rule, and which
places a run on several nodes may use. tests/test_multinode.py runs them on a real cluster."""

import pytest
import torch

from genray.config import ConfigError, build_config
from genray.train.driver import SHARED_ENV, check_reachable_from_every_node, scaling_for, start_timeout_s
from genray.train.loop import scale_learning_rates


def test_workers_take_a_number_or_an_elastic_range_and_bad_ones_are_named():
    fixed = build_config("vae", overrides=["train.workers=3"]).train
    assert (fixed.elastic, fixed.max_workers, fixed.lr_factor(3)) == (False, 3, 1.0)
    elastic = build_config("vae", overrides=["train.workers=[1, 4]"]).train
    assert (elastic.elastic, elastic.max_workers, elastic.workers) == (True, 4, (1, 4))
    # The stored config (checkpoints, Ray workers) gives the range back.
    assert build_config("vae", base={"train": elastic.model_dump(mode="json")}).train.workers == (1, 4)
    for bad, message in (("[3, 1]", "1 <= MIN <= MAX"), ("[0, 2]", "1 <= MIN <= MAX"), ("-1", "0 to 4096"),
                         ("[1, 2, 3]", "train.workers"), ("many", "train.workers")):
        with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
            build_config("vae", overrides=[f"train.workers={bad}"])
    with pytest.raises(ConfigError, match="train.placement"):
        build_config("vae", overrides=["train.placement=strict"])


def test_the_learning_rate_follows_the_world_size_linearly_or_not_at_all():
    linear = build_config("vae", overrides=["train.workers=[1, 4]"]).train
    assert [linear.lr_factor(w) for w in (1, 2, 4)] == [0.25, 0.5, 1.0]
    none = build_config("vae", overrides=["train.workers=[1, 4]", "train.scale_lr=none"]).train
    assert [none.lr_factor(w) for w in (1, 2, 4)] == [1.0, 1.0, 1.0]


def test_scaling_follows_the_config():
    cfg = build_config("vae", overrides=["train.workers=[2, 3]", "train.placement=spread", "train.use_gpu=false",
                                         "train.elastic_resize_s=5"])
    scaling = scaling_for(cfg)
    assert (scaling.min_workers, scaling.max_workers, scaling.placement_strategy) == (2, 3, "SPREAD")
    assert scaling.elastic_resize_monitor_interval_s == 5
    assert scaling_for(build_config("vae", overrides=["train.use_gpu=false"])).placement_strategy == "PACK"
    # An elastic run does not wait Ray's minute for workers that may be gone (a lost node).
    assert start_timeout_s(cfg) < 60 and start_timeout_s(build_config("vae", overrides=["train.workers=[2, 3]",
                                                            "train.worker_start_timeout_s=90"])) == 90


def test_scaled_steps_use_the_scaled_rate_and_leave_the_configured_one():
    def trained(factor):
        torch.manual_seed(0)
        net = torch.nn.Linear(3, 1)

        class Family:
            optimizers = {"net": torch.optim.SGD(net.parameters(), lr=0.1)}

        if factor != 1.0:
            scale_learning_rates(Family, factor)
        before = net.weight.detach().clone()
        net(torch.ones(1, 3)).sum().backward()
        Family.optimizers["net"].step()
        return (net.weight.detach() - before), Family.optimizers["net"].param_groups[0]["lr"]

    full, lr_full = trained(1.0)
    half, lr_half = trained(0.5)
    assert torch.allclose(half, full * 0.5) and lr_full == lr_half == 0.1


def test_places_on_this_machine_are_refused_only_on_a_cluster_of_several_nodes(monkeypatch, tmp_path):
    import ray

    alive = [{"Alive": True}, {"Alive": False}]
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "nodes", lambda: alive)
    check_reachable_from_every_node(str(tmp_path))  # one live node: this machine's disk is the cluster's
    alive.append({"Alive": True})
    with pytest.raises(ConfigError, match="is a path on this machine, and this Ray cluster has 2 nodes"):
        check_reachable_from_every_node("runs")
    check_reachable_from_every_node("s3://runs/x")
    data = build_config("vae", overrides=[f"data.source={tmp_path}"]).data
    with pytest.raises(ConfigError, match="data.source"):
        check_reachable_from_every_node("s3://runs/x", data)
    check_reachable_from_every_node("s3://runs/x", build_config("vae").data)  # a built-in set: every node makes it
    # A filesystem every node mounts, declared by the cluster's setup.
    monkeypatch.setenv(SHARED_ENV, f"/elsewhere:{tmp_path}")
    check_reachable_from_every_node(str(tmp_path / "runs"), data)
    with pytest.raises(ConfigError, match="storage"):
        check_reachable_from_every_node("/var/runs")
    # What Serve's replicas load: an exported model (genray.deploy.build_app checks it).
    with pytest.raises(ConfigError, match="model '/var/models/vae' is a path on this machine"):
        check_reachable_from_every_node(model="/var/models/vae")
    check_reachable_from_every_node(model="s3://models/vae")


@pytest.mark.ray
def test_a_run_whose_workers_never_fit_fails_after_its_tries_with_what_it_waited_for(ray_session, tmp_path):
    from genray.train import fit
    from genray.train.driver import WorkersDidNotStart

    # Three 1-CPU workers on the 2-CPU session: as after a node loss that no new node replaces.
    cfg = build_config("vae", overrides=[f"storage={tmp_path}", "name=never", "train.workers=3", "train.epochs=1",
                                         "train.worker_start_tries=2", "train.worker_start_timeout_s=2",
                                         "train.use_gpu=false", "data.limit=64"])
    with pytest.raises(WorkersDidNotStart) as failed:
        fit(cfg, verbose=False)
    message = str(failed.value)
    assert message.startswith("run never: its 3 Ray Train worker(s), {'CPU': 1.0} each, did not start in 2 tries of 2 s")
    assert "'CPU': 2.0" in message and "add nodes" in message
