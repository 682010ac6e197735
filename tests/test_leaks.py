"""The suite's own leak check (tests/leaks.py) sees what a test leaves in the shared Ray session."""

import pytest

import leaks


@pytest.mark.ray
def test_the_leak_check_names_an_actor_and_a_placement_group_left_alive(ray_session):
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    @ray.remote(num_cpus=0)
    class Lingering:
        def ping(self):
            return 1

    before = leaks.snapshot()
    actor = Lingering.remote()
    ray.get(actor.ping.remote())
    group = placement_group([{"CPU": 0.01}])
    ray.get(group.ready())
    left = leaks.leftovers(before, grace_s=0)
    assert any(line.startswith("actor") and "Lingering" in line for line in left), left
    assert any(line.startswith("placement group") for line in left), left

    ray.kill(actor)
    remove_placement_group(group)
    assert leaks.leftovers(before, grace_s=10) == []


def test_the_process_check_sees_only_this_sessions_ray_processes():
    import os

    # This pytest process is no Ray process, and another session's mark matches nothing.
    assert os.getpid() not in leaks.ray_processes(os.environ[leaks.SESSION_ENV])
    assert leaks.ray_processes("no-such-session") == {}


def test_a_fit_on_the_main_thread_lets_go_of_its_controller():
    """Ray Train's Ctrl-C handler holds the run's controller; after the fit ours comes back."""
    import signal

    from genray.train import fit_and_let_go

    class Trainer:  # installs a handler as TorchTrainer.fit does on the main thread
        def fit(self):
            signal.signal(signal.SIGINT, lambda signum, frame: None)
            return "result"

    ours = signal.getsignal(signal.SIGINT)
    assert fit_and_let_go(Trainer()) == "result"
    assert signal.getsignal(signal.SIGINT) is ours


@pytest.mark.ray
def test_the_sessions_own_processes_find_its_dashboard_whatever_ray_started_last(ray_session):
    """Ray Train's placement-group cleaner asks the state API whether a run's controller is
    dead. Left to find it through /tmp/ray/ray_current_cluster, it asks whichever `ray start`
    head on the machine was newest, perhaps one long stopped; it fails there and the placement
    group of a killed driver's run is never freed (start_local_ray's dashboard_port)."""
    import os

    import ray

    @ray.remote(num_cpus=0)
    def resolve() -> tuple[str, bool]:
        from ray.dashboard.utils import get_address_for_submission_client
        from ray.train.v2._internal.state.util import is_actor_alive

        return get_address_for_submission_client(None), bool(is_actor_alive("f" * 24 + "01000000", timeout=10))

    url, alive = ray.get(resolve.remote())
    assert url == f"http://{ray._private.worker.global_worker.node.address_info['webui_url']}"
    assert not alive
    assert "RAY_API_SERVER_ADDRESS" not in os.environ  # this process still takes addresses as given
