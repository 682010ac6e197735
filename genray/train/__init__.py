"""Training: the plain-PyTorch loop (loop.py, no Ray), the Ray Train worker that runs it
(worker.py) and the driver that starts a run (driver.py)."""

from genray.train.driver import (REPORT_POLL_ENV, TrainSummary, collect_reports_promptly, failure_config_for, fit,
                                 fit_and_let_go, scaling_for, start_local_ray, start_timeout_s, trainer_for)
from genray.train.loop import Hooks, LoopConfig, Session, run_loop
from genray.train.worker import report_with_checkpoint, train_loop_per_worker

__all__ = ["REPORT_POLL_ENV", "Hooks", "LoopConfig", "Session", "TrainSummary", "collect_reports_promptly",
           "failure_config_for", "fit", "fit_and_let_go", "report_with_checkpoint", "run_loop",
           "scaling_for", "start_local_ray", "start_timeout_s", "train_loop_per_worker", "trainer_for"]
