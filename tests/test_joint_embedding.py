"""Joint image + label embeddings (task ``joint_embedding``) on the tiny synthetic dataset."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from hpsearch.data import load_dataset
from hpsearch.data.labels import LabelGraph
from hpsearch.data.negatives import JointNegativeSampler
from hpsearch.errors import ConfigError
from hpsearch.models import FAMILIES
from hpsearch.models.joint_embedding import JointEmbedding, build_joint_embedding
from hpsearch.tasks import TASKS
from hpsearch.tasks.config import TrialConfig
from hpsearch.tasks.joint_embedding import JointEmbeddingExperiment, classify_levels, joint_model
from hpsearch.tasks.joint_embedding import features as feat
from hpsearch.tasks.label_embedding.experiment import LabelEmbeddingExperiment

DATA = {"level_sizes": [2, 4, 8], "max_per_leaf": 24, "min_per_leaf": 8,
        "amplitudes": [0.6, 0.4, 0.3], "grids": [2, 4, 8]}
JOINT = TASKS.get("joint_embedding").families()  # every registered joint family


def config(family="joint_euclidean_cone", params=None, **flat) -> TrialConfig:
    base = {"model.family": family, "model.backbone": "small_cnn", "model.width": 8,
            "data.params": DATA, "optim.batch_size": 64, "optim.epochs": 2,
            "optim.schedule": "none", "model.params": {"dim": 4, **(params or {})}}
    base.update(flat)
    return TrialConfig.from_flat(base)


@pytest.fixture(scope="module")
def data():
    return load_dataset(config().data)


def test_families_and_experiment_registered():
    assert sorted(n for n in FAMILIES.names() if FAMILIES.get(n).task == "joint_embedding") \
        == sorted(JOINT)
    assert JOINT  # the parametrized tests below do not run over nothing
    assert TASKS.get("joint_embedding").experiment is JointEmbeddingExperiment
    spec = FAMILIES.get("joint_hyperbolic_cone")
    p = spec.parse_params({})
    assert (p.optimizer, p.label_lr, p.image_lr, p.K) == ("adam_expmap0", 1e-4, 1e-3, 0.1)
    with pytest.raises(ConfigError, match="feature_checkpoint"):
        spec.parse_params({"features": "checkpoint"})
    with pytest.raises(ConfigError, match="init_from"):
        spec.parse_params({"init": "from_run"})
    with pytest.raises(ConfigError, match="negative_strategy"):
        spec.parse_params({"negative_strategy": "bogus"})


def test_joint_model_resolves_the_feature_dim(data):
    m = joint_model(config("joint_hyperbolic_cone"), data.hierarchy)
    assert isinstance(m, JointEmbedding) and m.feature_dim == 32  # small_cnn: 4 × width
    assert m.labels.weight.shape == (data.hierarchy.num_nodes, 4)
    with pytest.raises(ConfigError, match="joint-embedding experiment needs"):
        JointEmbeddingExperiment(config("euclidean_cone"), dataset=data)


def test_features_cached_once_in_eval_mode(data, tmp_path):
    cfg = config()
    src = feat.FeatureSource.from_model_config(cfg.model)
    before = feat.STATS.extracted
    a = feat.cached_features(src, cfg.data, data, cache=tmp_path, batch_size=7)
    assert feat.STATS.extracted == before + 3
    entry = feat.feature_entry(src, cfg.data, data, tmp_path)
    mtimes = {s: (entry / f"{s}.npy").stat().st_mtime_ns for s in feat.SPLITS}
    b = feat.cached_features(src, cfg.data, data, cache=tmp_path, batch_size=64)
    assert feat.STATS.extracted == before + 3  # nothing recomputed
    assert mtimes == {s: (entry / f"{s}.npy").stat().st_mtime_ns for s in feat.SPLITS}
    for s in feat.SPLITS:
        assert a[s].shape == (len(data.split(s)), 32) and a[s].dtype == np.float32
        np.testing.assert_array_equal(a[s], b[s])
    # eval-mode BN: a sample's features do not depend on its batch (batch 7 vs 1)
    ext = feat.build_extractor(src, data, cfg.data)
    one = ext(data.train.images[:5], batch_size=1)
    np.testing.assert_allclose(one, a["train"][:5], rtol=1e-4, atol=1e-5)
    # another seed of a random backbone is another entry
    other = feat.FeatureSource.from_model_config(cfg.model, seed=1)
    assert feat.feature_entry(other, cfg.data, data, tmp_path) != entry
    assert json.loads((entry / "source.json").read_text())["dim"] == 32
    # trials of a search share the entry: a second experiment extracts nothing
    JointEmbeddingExperiment(config(), dataset=data)
    n = feat.STATS.extracted
    JointEmbeddingExperiment(config("joint_order_embedding", {"dim": 3}), dataset=data)
    assert feat.STATS.extracted == n


def _train_graph(exp):
    n = exp.hierarchy.num_nodes
    edges = {tuple(e) for e in exp.train_pos.tolist()}
    return n, edges


@pytest.mark.parametrize("strategy", ["per_level", "same_level", "uniform"])
def test_negatives_never_image_image_nor_true_edges(data, strategy):
    exp = JointEmbeddingExperiment(config(params={"negative_strategy": strategy}),
                                   dataset=data)
    n, edges = _train_graph(exp)
    m = len(data.train)
    assert len(edges) == len(exp.hierarchy.closure_edges) + 3 * m
    s = exp.sampler
    s.max_rounds = 64  # same_level falls back to any label after half the rounds: make it rare
    neg, ok = s.sample(exp.train_pos, generator=torch.Generator().manual_seed(3))
    k = s.k
    assert neg.shape == (len(exp.train_pos), 2 * k, 2)
    par, chi = neg[..., 0], neg[..., 1]
    assert (par < n).all()  # parents are labels: no image-image, no image -> label
    assert ((par >= n) & (chi >= n)).sum() == 0
    assert ok.float().mean() > 0.95
    for (u, v), o in zip(neg.reshape(-1, 2).tolist(), ok.reshape(-1).tolist(), strict=True):
        if o:
            assert (u, v) not in edges and u != v
    pos = exp.train_pos
    img_edge = pos[:, 1] >= n
    # an image endpoint is replaced by an image, a label endpoint by a label
    assert (chi[img_edge, :k] >= n).all() and (chi[~img_edge, :k] < n).all()
    assert (par[:, k:] < n).all() and torch.equal(chi[:, k:], pos[:, 1:].expand(-1, k))
    depth = torch.as_tensor(exp.hierarchy.depth)
    if strategy == "same_level":
        lab = ~img_edge[:, None] & ok[:, :k]
        assert torch.equal(depth[chi[:, :k][lab]], depth[pos[:, 1:].expand(-1, k)[lab]])
        okp = ok[:, k:]
        assert torch.equal(depth[par[:, k:][okp]], depth[pos[:, :1].expand(-1, k)[okp]])


def test_sampler_positive_lookup_by_hand():
    # labels 0 (root) -> 1, 2; images 3 (path 0, 1) and 4 (path 0, 2)
    s = JointNegativeSampler(3, np.array([[0, 1], [0, 2]]), np.array([0, 1, 1]),
                             np.array([[0, 1], [0, 2]]))
    u = torch.tensor([0, 0, 1, 2, 1, 2, 1, 0])
    v = torch.tensor([1, 3, 3, 4, 4, 3, 2, 0])
    assert s.is_positive(u, v).tolist() == [True, True, True, True, False, False, False, False]


@pytest.mark.parametrize("family", JOINT)
def test_every_family_trains_with_finite_loss_and_metrics(data, family):
    exp = JointEmbeddingExperiment(config(family), dataset=data)
    losses = [exp.train_one_epoch(e)["loss"] for e in range(3)]
    assert all(np.isfinite(losses))
    val, test = exp.evaluate("val"), exp.evaluate("test")
    for m in ("micro_f1", "macro_f1", "micro_f1_level_0", "micro_f1_level_2", "hit_at_3",
              "hit_at_5", "full_f1", "recon_tpr", "recon_tnr"):
        assert np.isfinite(val[m]) and np.isfinite(test[m]), m
    assert val["hit_at_5"] >= val["hit_at_3"] >= val["micro_f1"] - 1e-12
    pred, hits = exp.predict("val")
    y = exp.level_labels["val"]
    assert val["micro_f1"] == pytest.approx(float((pred == y).double().mean()))
    assert val["micro_f1_level_1"] == pytest.approx(float((pred[:, 1] == y[:, 1]).double()
                                                          .mean()))
    assert val["hit_at_3"] == pytest.approx(float(hits[3].double().mean()))
    # the classifiers' hierarchy-aware metrics of the same prediction
    assert val["accuracy"] == pytest.approx(float((pred[:, -1] == y[:, -1]).double().mean()))
    wrong = pred[:, -1] != y[:, -1]
    assert val["num_mistakes"] == float(wrong.sum())
    h = exp.hierarchy
    consistent = [all(h.parent_local(lvl)[int(r[lvl])] == int(r[lvl - 1])
                      for lvl in range(1, h.num_levels)) for r in pred]
    assert val["path_consistency"] == pytest.approx(float(np.mean(consistent)))
    assert 0 <= val["mistake_severity"] <= h.num_levels
    f = exp.image_embeddings("val")
    if family == "joint_hyperbolic_cone":
        assert (f.norm(dim=-1) < 1).all()
    if family == "joint_euclidean_cone":
        assert (f.norm(dim=-1) >= 3.0 - 1e-4).all()


def test_least_violating_label_per_level_by_hand():
    # levels: [a, b] and [a1, a2, b1]; 2-d order embeddings, E = ||max(0, x - y)||^2
    p = FAMILIES.get("joint_order_embedding").parse_params({"dim": 2})
    m = build_joint_embedding("joint_order_embedding", p, 5, feature_dim=2)
    lab = torch.tensor([[0.0, 0.0], [-1.0, 5.0], [0.0, 0.9], [0.5, 0.0], [-0.5, 6.0]])
    m.labels.set_embeddings(lab)
    img = torch.tensor([[1.0, 1.0], [0.2, 7.0], [3.0, -1.0]])
    true = torch.tensor([[0, 0], [1, 2], [0, 1]])
    pred, hits = classify_levels(m, m.label_embeddings(), img, (0, 2), (2, 3), true, ks=(1, 2))
    # image 0: E(a)=0, E(b)=16 -> a; level 1: a1, a2 both 0, a2 deeper (max(x-y) -0.5 < -0.1)
    # image 1: a, b both 0, b deeper (-1.2 < -0.2); level 1: a1, b1 at 0, b1 deeper
    # image 2: E(a)=1, E(b)=36 -> a; level 1: a1 3.61, a2 1, b1 49 -> a2
    assert pred.tolist() == [[0, 1], [1, 2], [0, 1]]
    assert hits[1].tolist() == [[True, False], [True, True], [True, True]]
    assert hits[2].tolist() == [[True, True], [True, True], [True, True]]
    e = m.energy(lab[None, 2:], img[:, None])
    assert torch.allclose(e[2], torch.tensor([3.61, 1.0, 49.0]))


def test_staged_init_from_label_run(data, tmp_path):
    h = data.hierarchy
    n = h.num_nodes
    c = h.closure_edges
    graph = LabelGraph(hierarchy=h, nodes=tuple(h.names), closure=c, train=h.basic_edges,
                       valid=c[:3], valid_neg=np.array([[1, 0], [2, 0]]), test=c[3:6],
                       test_neg=np.array([[1, 0], [2, 0]]))
    lcfg = TrialConfig.from_flat({"model.family": "euclidean_cone", "optim.epochs": 1,
                                  "model.params": {"dim": 4}, "optim.batch_size": 8})
    label_run = LabelEmbeddingExperiment(lcfg, graph=graph)
    label_run.train_one_epoch(0)
    label_run.export(tmp_path / "le")
    emb = torch.load(tmp_path / "le" / "label_embeddings.pt")
    exp = JointEmbeddingExperiment(config(params={"init": "from_run",
                                                  "init_from": str(tmp_path / "le")}),
                                   dataset=data)
    assert torch.allclose(exp.embeddings(), emb, atol=1e-5)
    # rows are matched by label name, not by position
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    (tmp_path / "perm").mkdir()
    torch.save(emb[perm], tmp_path / "perm" / "label_embeddings.pt")
    names = json.loads((tmp_path / "le" / "label_nodes.json").read_text())
    (tmp_path / "perm" / "label_nodes.json").write_text(json.dumps([names[i] for i in perm]))
    exp2 = JointEmbeddingExperiment(config(params={
        "init": "from_run", "init_from": str(tmp_path / "perm" / "label_embeddings.pt")}),
        dataset=data)
    assert torch.allclose(exp2.embeddings(), emb, atol=1e-5)
    with pytest.raises(ConfigError, match="dim=6"):
        JointEmbeddingExperiment(config(params={"dim": 6, "init": "from_run",
                                                "init_from": str(tmp_path / "le")}),
                                 dataset=data)
    with pytest.raises(ConfigError, match="euclidean_cone embeddings"):
        JointEmbeddingExperiment(config("joint_order_embedding", {
            "init": "from_run", "init_from": str(tmp_path / "le")}), dataset=data)
    with pytest.raises(ConfigError, match="no label_embeddings.pt"):
        JointEmbeddingExperiment(config(params={"init": "from_run",
                                                "init_from": str(tmp_path / "nope")}),
                                 dataset=data)


@pytest.mark.parametrize("family,params", [
    ("joint_euclidean_cone", {}),
    ("joint_hyperbolic_cone", {"optimizer": "riemannian_adam"}),
])
def test_resume_is_exact(data, family, params):
    cfg = config(family, params, **{"optim.schedule": "cosine", "optim.epochs": 3})
    a = JointEmbeddingExperiment(cfg, dataset=data)
    a.train_one_epoch(0)
    state = copy.deepcopy(a.state_dict())
    a.train_one_epoch(1)
    b = JointEmbeddingExperiment(cfg, dataset=data)
    b.load_state_dict(state)
    b.train_one_epoch(1)
    for (k, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values(),
                         strict=True):
        assert torch.equal(x, y), k
    assert a.evaluate("val") == b.evaluate("val")


def test_run_trial_end_to_end_export_and_checkpoint_features(data, tmp_path):
    from hpsearch.tasks import DirectoryReporter, run_trial

    # a briefly trained CNN as the feature source (features=checkpoint)
    cnn_dir = tmp_path / "cnn"
    ccfg = TrialConfig.from_flat({"model.family": "per_level", "model.width": 8,
                                  "data.params": DATA, "optim.epochs": 1,
                                  "optim.batch_size": 32})
    run_trial(ccfg, DirectoryReporter(cnn_dir))
    cfg = config(params={"features": "checkpoint", "feature_checkpoint": str(cnn_dir)},
                 **{"optim.epochs": 2})
    rep = DirectoryReporter(tmp_path / "joint")
    best = run_trial(cfg, rep)
    assert [r["epoch"] for r in rep.history] == [1.0, 2.0]
    last = rep.history[-1]
    for key in ("train_loss", "val_micro_f1", "test_micro_f1", "val_hit_at_3", "val_full_f1",
                "best_val_micro_f1"):
        assert np.isfinite(last[key]), key
    assert best.value == max(r["val_micro_f1"] for r in rep.history)
    assert (tmp_path / "joint" / "checkpoint.pt").is_file()

    from hpsearch.tasks import experiment_from_checkpoint

    exp = experiment_from_checkpoint(tmp_path / "joint")
    assert isinstance(exp, JointEmbeddingExperiment)
    # the features are the checkpointed CNN's forward_features in eval mode
    cnn = experiment_from_checkpoint(cnn_dir)
    cnn.model.eval()
    with torch.no_grad():
        x = cnn.pre_eval(torch.from_numpy(np.ascontiguousarray(data.val.images[:4])))
        ref = cnn.model.forward_features(x)
    assert torch.allclose(exp.features["val"][:4], ref, atol=1e-5)
    # the cache key follows the checkpoint's bytes, not its path (MLflow downloads copies)
    import shutil

    shutil.copytree(cnn_dir, tmp_path / "cnn_copy")
    src = [feat.FeatureSource(kind="checkpoint", checkpoint=str(d))
           for d in (cnn_dir, tmp_path / "cnn_copy")]
    assert feat.feature_entry(src[0], cfg.data, data) == feat.feature_entry(src[1], cfg.data,
                                                                            data)
    manifest = exp.export(tmp_path / "out")
    assert manifest["task"] == "joint_embedding"
    assert manifest["feature_source"] == {"kind": "checkpoint", "checkpoint": str(cnn_dir)}
    w = torch.load(tmp_path / "out" / "image_map.pt")
    assert w["weight"].shape == (4, 32) and w["feature_mean"].shape == (32,)
    meta = json.loads((tmp_path / "out" / "joint_embedding.json").read_text())
    assert meta["geometry"] == "euclidean_cone" and meta["feature_dim"] == 32
    assert torch.equal(torch.load(tmp_path / "out" / "label_embeddings.pt"), exp.embeddings())
    # a checkpoint directory also seeds the label table of another run
    warm = JointEmbeddingExperiment(config(params={
        "init": "from_run", "init_from": str(tmp_path / "joint")}), dataset=data)
    assert torch.allclose(warm.embeddings(), exp.embeddings(), atol=1e-5)
