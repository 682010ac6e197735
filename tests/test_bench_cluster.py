"""`genray bench cluster`'s claims and table on fixed figures (the runs themselves go through the
same genray.bench.cluster.node_loss_run that tests/test_multinode.py drives on a real cluster)."""

from genray.bench import cluster
from genray.bench.claims import verdict

MACHINE = {"date": "2026-12-07", "cpu": "test", "cores": 2, "memory_gib": 8.0, "gpu": None,
           "python": "3.11", "torch": "2", "ray": "2"}


def row(kind, r, trained, restarts, loss_s, back_s):
    epochs = len(set(trained))
    return {"round": r, "elastic": kind == "elastic", "epochs": epochs, "trained": trained, "restarts": restarts,
            "epochs_repeated": len(trained) - epochs,
            "workers": [2] * epochs, "loss_to_step_s": loss_s, "return_to_full_size_s": back_s}


def served(r, failed=0):
    return {"round": r, "sent": 900, "failed": failed, "retried": 3, "recovery_s": 24.5}


def result(fixed, elastic, quick=False, serve=None, **budget):
    return {"machine": MACHINE, "quick": quick, "budget": {**cluster.BUDGET, **budget, "rounds": [0, 1, 2]},
            "fixed": fixed, "elastic": elastic, "serve": serve or [served(r) for r in range(3)]}


def decided(res):
    return {d["claim"]["key"]: d for d in cluster.decisions(res)}


GOOD_FIXED = [row("fixed", r, [0, 1, 2, 3, 4, 5], 1, 30.0, 25.0) for r in range(3)]
GOOD_ELASTIC = [row("elastic", r, [0, 1, 2, 3, 4, 5, 6], 2, 40.0, 30.0) for r in range(3)]


def test_every_claim_holds_when_no_finished_epoch_is_trained_twice_and_steps_resume_in_time():
    for d in decided(result(GOOD_FIXED, GOOD_ELASTIC)).values():
        assert d["decided"] and d["holds"] is True, d
    table = cluster.markdown_table(result(GOOD_FIXED, GOOD_ELASTIC))
    assert "| fixed | 0 | 0 1 2 3 4 5 | 2 2 2 2 2 2 | 1 | 30.0 s | 25.0 s |" in table
    assert table.count("| yes |") == 5 and "| 1 | 900 | 0 | 3 | 24.5 s |" in table


def test_a_lost_checkpointed_epoch_or_a_slow_return_is_a_named_miss():
    # Round 1 trained epoch 1 again (its checkpoint should have held it), round 2 took 75 s.
    fixed = [GOOD_FIXED[0], row("fixed", 1, [0, 1, 1, 2, 3, 4, 5], 1, 30.0, 25.0),
             row("fixed", 2, [0, 1, 2, 3, 4, 5], 1, 80.0, 75.0)]
    d = decided(result(fixed, GOOD_ELASTIC))
    assert d["cluster_fixed_epochs_repeated"]["holds"] is False and d["cluster_fixed_epochs_repeated"]["seeds_missing"] == [1]
    assert d["cluster_fixed_back_s"]["seeds_missing"] == [2] and d["cluster_fixed_back_s"]["holds"] is False
    # A run that never got back to full size has no value: a miss, not a pass.
    elastic = GOOD_ELASTIC[:2] + [row("elastic", 2, [0, 1, 2], 1, None, None)]
    assert decided(result(GOOD_FIXED, elastic))["cluster_elastic_back_s"]["seeds_missing"] == [2]
    # One request lost in one round is a miss that names the round.
    lost_one = decided(result(GOOD_FIXED, GOOD_ELASTIC, serve=[served(0), served(1, failed=1), served(2)]))
    assert lost_one["cluster_serve_failed"]["holds"] is False and lost_one["cluster_serve_failed"]["seeds_missing"] == [1]


def test_a_quick_run_or_another_budget_decides_nothing():
    for res in (result(GOOD_FIXED, GOOD_ELASTIC, quick=True), result(GOOD_FIXED, GOOD_ELASTIC, away_s=1.0)):
        assert all(verdict(d) == "not decided: 0 of 3 seeds measured" for d in cluster.decisions(res))
