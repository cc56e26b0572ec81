"""Cosine embeddings with one image projection per level (thesis §5.1, ``projection``) and the
label vectors a cosine_embedding bundle carries (``label_vectors.pt``)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hpsearch.bundle import (
    LABEL_VECTORS_FILE,
    Bundle,
    Predictor,
    load_bundle,
    load_label_vectors,
    write_bundle,
)
from hpsearch.config import ModelConfig
from hpsearch.errors import ConfigError, ExportError
from hpsearch.models import FAMILIES, build_model
from hpsearch.models.base import split_levels
from hpsearch.models.cosine import CosineEmbeddingHead
from hpsearch.tasks import DirectoryReporter, experiment_from_checkpoint, run_trial
from hpsearch.tasks.classifier import PredictProgram
from hpsearch.tasks.config import TrialConfig

from .conftest import TINY_DATA


def t(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


# ----------------------------------------------------------------------------- the head
def test_per_level_projection_shapes_and_parameter_count(tiny_hierarchy):
    h = tiny_hierarchy  # levels of 2, 3, 5 labels
    f, n = 7, 3
    shared = CosineEmbeddingHead(f, h, dim=n)
    per = CosineEmbeddingHead(f, h, dim=n, projection="per_level")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(shared) == f * n + h.num_nodes * n
    assert count(per) == h.num_levels * f * n + h.num_nodes * n
    assert not hasattr(per, "proj") and not hasattr(shared, "level_proj")
    assert [p.weight.shape for p in per.level_proj] == [(n, f)] * 3
    x = torch.randn(4, f)
    assert per(x).shape == (4, h.num_nodes)
    assert per.image_embeddings(x).shape == (4, 3, n)
    assert shared.image_embeddings(x).shape == (4, n)
    assert [e.shape for e in per.label_embeddings().values()] == [(2, n), (3, n), (5, n)]
    # the default stays the thesis' shared projection, with the old state-dict keys
    assert FAMILIES.get("cosine_embedding").parse_params({}).projection == "shared"
    assert set(shared.state_dict()) == {"proj.weight", "labels.weight", "scale"}
    with pytest.raises(ConfigError, match="projection"):
        FAMILIES.get("cosine_embedding").parse_params({"projection": "per_label"})
    with pytest.raises(ValueError, match="'shared' or 'per_level', got 'x'"):
        CosineEmbeddingHead(f, h, projection="x")  # type: ignore[arg-type]


def test_family_builds_per_level(tiny_hierarchy):
    params = FAMILIES.get("cosine_embedding").parse_params({"projection": "per_level",
                                                             "dim": 4})
    cfg = ModelConfig(family="cosine_embedding", width=8, params=params)
    model = build_model(cfg, tiny_hierarchy, 3)
    assert model.head.projection == "per_level" and len(model.head.level_proj) == 3
    x = torch.randn(4, 3, 16, 16)
    y = torch.from_numpy(tiny_hierarchy.leaf_paths)[torch.tensor([0, 1, 3, 4])]
    loss = model.head.loss(model(x), y)
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("cosine", [False, True])
def test_level_loss_moves_only_its_own_projection_and_labels(tiny_hierarchy, cosine):
    h = tiny_hierarchy
    torch.manual_seed(0)
    head = CosineEmbeddingHead(6, h, dim=2, cosine=cosine, projection="per_level")
    x = torch.randn(8, 6)
    y = torch.from_numpy(h.leaf_paths)[torch.arange(8) % 5]  # [8, 3] valid paths
    rows = torch.arange(h.num_nodes)
    for lvl in range(h.num_levels):
        head.zero_grad(set_to_none=True)
        z = split_levels(head(x), h)[lvl]
        F.cross_entropy(z, y[:, lvl]).backward()
        for k, p in enumerate(head.level_proj):
            g = p.weight.grad
            if k == lvl:
                assert g is not None and g.abs().sum() > 0
            else:
                assert g is None or g.abs().max() == 0, f"level {lvl} moved projection {k}"
        g = head.labels.weight.grad
        own = (rows >= h.offsets[lvl]) & (rows < h.offsets[lvl] + h.level_sizes[lvl])
        assert g[own].abs().sum() > 0 and g[~own].abs().max() == 0
    # the shared projection, by contrast, is moved by every level
    shared = CosineEmbeddingHead(6, h, dim=2, cosine=cosine)
    for lvl in range(h.num_levels):
        shared.zero_grad(set_to_none=True)
        F.cross_entropy(split_levels(shared(x), h)[lvl], y[:, lvl]).backward()
        assert shared.proj.weight.grad.abs().sum() > 0


def _hand_head(h, cosine: bool) -> CosineEmbeddingHead:
    head = CosineEmbeddingHead(2, h, dim=2, cosine=cosine, scale=5.0, projection="per_level")
    with torch.no_grad():
        head.level_proj[0].weight.copy_(t([1.0, 0.0], [0.0, 1.0]))  # f -> f
        head.level_proj[1].weight.copy_(t([0.0, 1.0], [1.0, 0.0]))  # f -> swapped
        head.level_proj[2].weight.copy_(t([2.0, 0.0], [0.0, 2.0]))  # f -> 2f
        head.labels.weight.copy_(t([1, 0], [0, 1],                 # level 0
                                   [1, 0], [0, 2], [-1, 0],        # level 1
                                   [1, 1], [3, 4], [0, -1], [-4, 3], [2, 0]))  # level 2
    return head


def test_scores_equal_a_hand_computation(tiny_hierarchy):
    f = t([3.0, 4.0])  # level images (3, 4), (4, 3), (6, 8); directions (.6, .8), (.8, .6)
    cos = _hand_head(tiny_hierarchy, cosine=True)(f)[0]
    want = 5.0 * t(0.6, 0.8, 0.8, 0.6, -0.8, 1.4 / math.sqrt(2), 1.0, -0.8, 0.0, 0.6)
    torch.testing.assert_close(cos, want)
    dot = _hand_head(tiny_hierarchy, cosine=False)(f)[0]
    torch.testing.assert_close(dot, t(3, 4, 4, 6, -4, 14, 50, -8, 0, 12))
    # probabilities are a softmax within each level
    probs = _hand_head(tiny_hierarchy, cosine=True).level_probs(cos[None])
    torch.testing.assert_close(probs[1][0], torch.softmax(want[2:5], -1))


def test_per_level_learns_separable_synthetic_data(tiny_hierarchy):
    h = tiny_hierarchy
    g = torch.Generator().manual_seed(0)
    means = 3.0 * torch.randn(5, 8, generator=g)  # one cluster per leaf in feature space
    leaves = torch.arange(400) % 5
    x = means[leaves] + 0.3 * torch.randn(400, 8, generator=g)
    y = torch.from_numpy(h.leaf_paths)[leaves]
    torch.manual_seed(0)
    head = CosineEmbeddingHead(8, h, dim=2, projection="per_level")
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    tr, te = slice(0, 300), slice(300, 400)
    first = None
    for _ in range(150):
        opt.zero_grad()
        loss = head.loss(head(x[tr]), y[tr])
        first = loss.item() if first is None else first
        loss.backward()
        opt.step()
    assert loss.item() < 0.25 * first
    with torch.no_grad():
        acc = (head.predict_levels(head(x[te])) == y[te]).float().mean(0)
    chance = torch.tensor([1 / n for n in h.level_sizes])
    assert (acc > 0.9).all() and (acc > chance + 0.3).all(), acc


# ----------------------------------------------------------------------------- bundles
_RAN: list[str] = []


def _mark() -> None:
    _RAN.append("ran")


class _Planted:
    def __reduce__(self):
        return (_mark, ())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cosine_bundle")
    cfg = TrialConfig.from_flat({"data.params": TINY_DATA, "model.width": 8,
                                 "model.family": "cosine_embedding",
                                 "model.params": {"projection": "per_level", "dim": 3,
                                                  "cosine": True},
                                 "data.image_size": 16, "optim.epochs": 1,
                                 "optim.batch_size": 32})
    run_trial(cfg, DirectoryReporter(tmp / "ck"))
    exp = experiment_from_checkpoint(tmp / "ck")
    return exp, write_bundle(exp, tmp / "b")


def test_bundle_round_trips_label_vectors(trained):
    exp, path = trained
    b = load_bundle(path)
    head = exp.model.head
    assert b.manifest["label_vectors"] == LABEL_VECTORS_FILE
    assert LABEL_VECTORS_FILE in b.manifest["files"]
    assert LABEL_VECTORS_FILE in (path / "SHA256SUMS").read_text()
    lv = load_label_vectors(b)
    assert lv.projection == "per_level" and lv.cosine is True
    assert lv.names == b.hierarchy.names == head.hierarchy.names  # hierarchy order
    torch.testing.assert_close(lv.vectors, head.labels.weight.detach().cpu(), rtol=0, atol=0)
    assert lv.level.tolist() == [int(d) for d in b.hierarchy.depth]
    want = head.label_embeddings()
    assert lv.per_level().keys() == want.keys()
    for lvl, e in want.items():
        torch.testing.assert_close(lv.per_level()[lvl], e.cpu(), rtol=0, atol=0)
    # the per-level model exports as a program and predicts from its weights alike
    assert "program" in b.manifest, b.manifest.get("program_error")
    pred = Predictor(b)
    assert pred.source == "weights"
    images = torch.randint(0, 256, (3, 16, 16, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    pre = pred.fn.pre
    with torch.no_grad():
        ref = PredictProgram(exp.model.cpu().eval(), pre)(images)
    torch.testing.assert_close(torch.cat(pred.level_probs(images), -1), ref)


def test_label_vectors_file_is_checksummed(trained, tmp_path):
    _, path = trained
    b = Path(shutil.copytree(path, tmp_path / "edited"))
    f = b / LABEL_VECTORS_FILE
    d = torch.load(f, weights_only=True)
    d["vectors"] = d["vectors"] + 1.0
    torch.save(d, f)
    with pytest.raises(ExportError, match=f"checksum mismatch for .*{LABEL_VECTORS_FILE}"):
        load_bundle(b)
    sums = (b / "SHA256SUMS").read_text().splitlines()
    (b / "SHA256SUMS").write_text("\n".join(x for x in sums
                                            if not x.endswith(LABEL_VECTORS_FILE)) + "\n")
    with pytest.raises(ExportError, match=f"{LABEL_VECTORS_FILE} not covered by SHA256SUMS"):
        load_bundle(b)


def test_label_vectors_checked_against_the_hierarchy(trained, tmp_path):
    _, path = trained
    good = load_bundle(path)
    # a verified bundle whose file does not match its hierarchy (e.g. hand-assembled)
    d = torch.load(path / LABEL_VECTORS_FILE, weights_only=True)
    d["names"] = list(reversed(d["names"]))
    torch.save(d, tmp_path / LABEL_VECTORS_FILE)
    odd = Bundle(tmp_path, good.manifest, good.hierarchy)
    with pytest.raises(ExportError, match="not the label vectors of the bundle's hierarchy"):
        load_label_vectors(odd)
    torch.save({"x": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ExportError, match="not the label vectors"):
        load_label_vectors(Bundle(tmp_path, {**good.manifest, "label_vectors": "other.pt"},
                                  good.hierarchy))
    # a planted pickle is refused, nothing in it run
    torch.save({"x": _Planted()}, tmp_path / "planted.pt")
    with pytest.raises(ExportError, match="refused: it holds more than tensors"):
        load_label_vectors(Bundle(tmp_path, {**good.manifest, "label_vectors": "planted.pt"},
                                  good.hierarchy))
    assert _RAN == []
    with pytest.raises(ExportError, match="has no label vectors; only cosine_embedding"):
        load_label_vectors(Bundle(tmp_path, {"family": "per_level"}, good.hierarchy))
