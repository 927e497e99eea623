"""train.py with faults injected, for the tests of what a failure does to a run (under torchrun).

    CLEANMETTA_FAULT=nan:RANK:EPOCH   rank RANK's PPO loss turns NaN in the update of epoch EPOCH
    CLEANMETTA_FAULT=log:RANK:EPOCH   rank RANK's logger raises after the update of epoch EPOCH
    CLEANMETTA_FAULT=eval:RANK        rank RANK's evaluation raises
    CLEANMETTA_FAULT=sleep-eval:RANK  rank RANK's evaluation takes two minutes
    CLEANMETTA_FAULT=kill:RANK:EPOCH  rank RANK kills itself (SIGKILL) at the update of epoch EPOCH,
                                      in torchrun's first attempt only (a restarted group runs clean)

Several faults: separated by commas. Epochs count the updates this process ran (1 = its first),
so a resumed process counts from 1 too.
"""

import os
import runpy
import signal
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cleanmetta import evaluate, log, ppo  # noqa: E402

here = os.environ.get("RANK", "0")
faults = {}  # kind -> epoch, for the faults of this rank
for spec in os.environ["CLEANMETTA_FAULT"].split(","):
    kind, rank, *epoch = spec.split(":")
    if rank == here:
        faults[kind] = int(epoch[0]) if epoch else 0
updates = [0]
update, loss_and_outputs = ppo.PPOOptimizer.update, ppo.PPOOptimizer.loss_and_outputs
log_epoch = log.StatsLogger.log_epoch


def counted_update(self, *args, **kwargs):
    updates[0] += 1
    if updates[0] == faults.get("kill") and os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0":
        os.kill(os.getpid(), signal.SIGKILL)
    return update(self, *args, **kwargs)


def nan_loss(self, *args, **kwargs):
    losses, outputs = loss_and_outputs(self, *args, **kwargs)
    if "nan" in faults and updates[0] >= faults["nan"]:
        losses = losses._replace(total_loss=losses.total_loss * float("nan"))
    return losses, outputs


def broken_log_epoch(self, *args, **kwargs):
    if updates[0] >= faults["log"]:
        raise RuntimeError("injected logging failure")
    return log_epoch(self, *args, **kwargs)


def broken_evaluation(self, *args, **kwargs):
    raise RuntimeError("injected evaluation failure")


def slow_evaluation(self, *args, **kwargs):
    time.sleep(120)
    return {}


ppo.PPOOptimizer.update = counted_update
ppo.PPOOptimizer.loss_and_outputs = nan_loss
if "log" in faults:
    log.StatsLogger.log_epoch = broken_log_epoch
if "eval" in faults:
    evaluate.PolicyEvaluator.evaluate = broken_evaluation
if "sleep-eval" in faults:
    evaluate.PolicyEvaluator.evaluate = slow_evaluation
sys.argv[0] = os.path.join(ROOT, "train.py")
runpy.run_path(sys.argv[0], run_name="__main__")
