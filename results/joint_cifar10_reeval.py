"""Re-evaluate the selected joint runs' best checkpoints on test with the metrics the joint
experiment logs since this session (accuracy, mistake severity, path consistency)."""
from pathlib import Path

from hpsearch.tasks.runner import experiment_from_checkpoint
from hpsearch.tracking import Tracker

uri = "sqlite:////tmp/evidence/cifar10/mlflow.db"
for exp_name, prefix in [("joint_cifar10_order_embedding_r2", "3fc28b9a"),
                         ("joint_cifar10_hyperbolic_cone_r2", "8351d9d1"),
                         ("joint_cifar10_euclidean_cone_r2", "fb48e4e0")]:
    t = Tracker(uri, exp_name)
    runs = [r for r in t.client.search_runs([t.existing_experiment_id()], max_results=500)
            if r.info.run_id.startswith(prefix)]
    r = runs[0]
    ck = Path(r.data.tags["hpsearch.checkpoint"])
    exp = experiment_from_checkpoint(ck)
    m = exp.evaluate("test")
    logged = r.data.metrics.get("test_micro_f1")
    print(f"{exp_name} {r.info.run_id[:8]} ckpt={ck.name}: test micro_f1 {m['micro_f1']:.4f} "
          f"(logged {logged:.4f}) accuracy {m['accuracy']:.4f} mistake_severity "
          f"{m['mistake_severity']:.3f} ({int(m['num_mistakes'])} mistakes) path_consistency "
          f"{m['path_consistency']:.3f}")
