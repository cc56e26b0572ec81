"""Hand-computed losses and probabilities of the hierarchy-injected heads.

Tree (global index: name): level 0 {0: a, 1: b}; level 1 {2: a1, 3: a2, 4: b1};
level 2 {5: a1x, 6: a1y, 7: a2x, 8: b1x, 9: b1y}.
"""

from __future__ import annotations

import math

import pytest
import torch

from hpsearch.hierarchy import Hierarchy
from hpsearch.models.cosine import CosineEmbeddingHead, invert_embeddings
from hpsearch.models.hsoftmax import HSoftmaxHead, sibling_groups
from hpsearch.models.marginalization import MarginalizationHead, segment_logsumexp
from hpsearch.models.masked import MaskedPerLevelHead
from hpsearch.models.multilabel import MultiLabelHead
from hpsearch.models.per_level import PerLevelHead

ROWS = [("a", "a1", "a1x"), ("a", "a1", "a1y"), ("a", "a2", "a2x"),
        ("b", "b1", "b1x"), ("b", "b1", "b1y")]
H = Hierarchy.from_level_labels(ROWS)
LN2 = math.log(2)


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def close(a, b, tol=1e-5):
    a, b = (v.detach() if isinstance(v, torch.Tensor) else v for v in (a, b))
    return abs(float(a) - float(b)) < tol


def test_layout():
    assert H.names == ("a", "b", "a1", "a2", "b1", "a1x", "a1y", "a2x", "b1x", "b1y")


# ----------------------------------------------------------------------------- multilabel
def test_multilabel_loss_eq_3_1():
    head = MultiLabelHead(4, H)
    x = torch.zeros(1, 10)
    x[0, 0] = math.log(3)  # sigmoid = 0.75 on the (true) label a
    y = torch.tensor([[0, 0, 0]])  # a, a1, a1x -> global 0, 2, 5
    # BCE(true, p=.75) = ln(4/3); the 9 other labels have logit 0 -> ln 2 each
    assert close(head.loss(x, y), (math.log(4 / 3) + 9 * LN2) / 10)
    cw = [torch.tensor([2.0, 1.0]), torch.ones(3), torch.ones(5)]
    assert close(head.loss(x, y, class_weights=cw), (2 * math.log(4 / 3) + 9 * LN2) / 10)
    # level 1 (3 labels) switched off; still a mean over all 10 labels
    assert close(head.loss(x, y, level_weights=[1, 0, 1]), (math.log(4 / 3) + 6 * LN2) / 10)


def test_multilabel_thresholds_default_and_calibrated():
    head = MultiLabelHead(4, H, "pcdb")
    assert "thresholds" in head.state_dict()
    x = torch.full((4, 10), -1.0)
    x[:, 0] = torch.tensor([0.9, 0.2, -0.5, 0.1])  # label a
    y = torch.tensor([[0, 0, 0], [1, 2, 3], [0, 1, 2], [1, 2, 4]])  # a true for rows 0, 2
    before = head.predict_multihot(x)
    assert before[:, 0].tolist() == [True, True, False, True]  # logit >= 0 <=> p >= 0.5
    head.calibrate(x, y)
    # label a: sweep 0.9 (F1 2/3), 0.2 (1/2), 0.1 (2/5), -0.5 (2/3) -> highest best = 0.9
    assert close(head.thresholds[0], 0.9)
    assert head.predict_multihot(x)[:, 0].tolist() == [True, False, False, False]
    # label b1x (global 8) is true in row 1 only, but every score is a tie at -1
    # -> the only candidate predicts all four rows: threshold -1
    assert close(head.thresholds[8], -1.0)
    restored = MultiLabelHead(4, H, "pcdb")
    restored.load_state_dict(head.state_dict())  # thresholds travel with the checkpoint
    assert torch.equal(restored.predict_multihot(x), head.predict_multihot(x))
    head2 = MultiLabelHead(4, H, "ofadb")
    head2.calibrate(x, y)
    assert torch.unique(head2.thresholds).numel() == 1
    ev = head.eval_metrics(x, y)
    assert set(ev) >= {"labels_per_image_min", "labels_per_image_max",
                       "labels_per_image_mean", "labels_per_image_std", "tpr", "tnr"}


def test_multilabel_ofadb_by_hand():
    head = MultiLabelHead(4, H, "ofadb")
    # two images; true labels: row 0 -> 0, 2, 5; row 1 -> 1, 4, 9
    y = torch.tensor([[0, 0, 0], [1, 2, 4]])
    x = torch.full((2, 10), -3.0)
    x[0, [0, 2, 5]] = torch.tensor([2.0, 1.0, 0.5])
    x[1, [1, 4, 9]] = torch.tensor([2.0, 1.0, -3.0])  # last true label ties with negatives
    head.calibrate(x, y)
    # thr 0.5 -> TP 5, FP 0, FN 1: F1 = 10/11, better than any other cut
    assert close(head.thresholds[3], 0.5)
    assert head.predict_multihot(x).sum() == 5


# ----------------------------------------------------------------------------- masked
def _masked_logits():
    z = torch.zeros(1, 10)
    z[0, 0:2] = t(1.0, 0.0)  # a, b
    z[0, 2:5] = t(5.0, 0.0, 7.0)  # a1, a2, b1
    z[0, 5:10] = t(3.0, 3.0, 0.0, 9.0, 9.0)
    return z


def test_masked_loss_uses_ground_truth_parent():
    head = MaskedPerLevelHead(4, H)
    z = _masked_logits()
    y = torch.tensor([[0, 1, 2]])  # a, a2, a2x
    l0 = math.log(1 + math.exp(-1))
    l1 = math.log(1 + math.exp(5))  # over {a1, a2}: b1's 7 is masked
    # level 2: a2 has one child -> CE = 0 although the model prefers a1 at level 1
    assert close(head.loss(z, y), l0 + l1)
    assert close(head.loss(z, y, level_weights=[1, 2, 1]), l0 + 2 * l1)
    # batch mean, not sum (the published code summed)
    assert close(head.loss(z.repeat(2, 1), y.repeat(2, 1)), l0 + l1)


def test_masked_loss_full_level_after_mistake():
    head = MaskedPerLevelHead(4, H, after_wrong_parent="full_level")
    z = _masked_logits()
    y = torch.tensor([[0, 1, 2]])
    # level 0 predicted right (a) -> level 1 masked by GT parent; level 1 predicted a1 (wrong)
    # -> level 2 uses the whole level: logsumexp(3, 3, 0, 9, 9) - 0
    lse = math.log(2 * math.exp(3) + 1 + 2 * math.exp(9))
    expected = math.log(1 + math.exp(-1)) + math.log(1 + math.exp(5)) + lse
    assert close(head.loss(z, y), expected, 1e-4)


def test_masked_class_weights_weighted_mean():
    head = MaskedPerLevelHead(4, H)
    z = torch.zeros(2, 10)
    y = torch.tensor([[0, 0, 0], [1, 2, 3]])
    cw = [torch.tensor([1.0, 3.0]), torch.ones(3), torch.ones(5)]
    # all logits 0: level 0 CE ln 2 for both; level 1: a has 2 children (ln 2), b has 1 (0);
    # level 2: a1 -> ln 2, b1 -> ln 2
    exp = LN2 + (LN2 + 0) / 2 + LN2
    assert close(head.loss(z, y, class_weights=cw), exp)
    cw[1] = torch.tensor([3.0, 1.0, 1.0])  # weighted mean of (ln2 w=3, 0 w=1)
    assert close(head.loss(z, y, class_weights=cw), LN2 + 3 * LN2 / 4 + LN2)


def test_masked_level_probs_follow_prediction():
    head = MaskedPerLevelHead(4, H)
    p = head.level_probs(_masked_logits())
    e = math.exp(1)
    torch.testing.assert_close(p[0], t([e / (e + 1), 1 / (e + 1)]))
    e5 = math.exp(5)
    torch.testing.assert_close(p[1], t([e5 / (e5 + 1), 1 / (e5 + 1), 0.0]))
    torch.testing.assert_close(p[2], t([0.5, 0.5, 0.0, 0.0, 0.0]))  # children of a1 only
    assert head.predict_levels(_masked_logits()).tolist() == [[0, 0, 0]]


# ----------------------------------------------------------------------------- marginalization
LEAF_P = [0.1, 0.2, 0.3, 0.15, 0.25]  # a1x a1y a2x b1x b1y -> a1 .3, a2 .3, b1 .4; a .6, b .4


def test_marginalization_probs_and_loss():
    head = MarginalizationHead(4, H)
    z = torch.log(t(LEAF_P))
    p = head.level_probs(z)
    torch.testing.assert_close(p[1], t([0.3, 0.3, 0.4]))
    torch.testing.assert_close(p[0], t([0.6, 0.4]))
    y = torch.tensor([[1, 2, 3]])  # b, b1, b1x
    assert close(head.loss(z, y), -2 * math.log(0.4) - math.log(0.15))
    assert close(head.loss(z, y, level_weights=[0, 0, 1]), -math.log(0.15))  # Table 4.10
    assert close(head.loss(z, y, level_weights=[2, 0, 0]), -2 * math.log(0.4))


def test_marginalization_class_weights():
    head = MarginalizationHead(4, H)
    z = torch.log(t(LEAF_P, LEAF_P))
    y = torch.tensor([[1, 2, 3], [0, 0, 0]])
    cw = [torch.tensor([1.0, 3.0]), torch.ones(3), torch.ones(5)]
    exp = (3 * -math.log(0.4) + 1 * -math.log(0.6)) / 4
    assert close(head.loss(z, y, level_weights=[1, 0, 0], class_weights=cw), exp)


def test_marginalization_no_underflow():
    head = MarginalizationHead(4, H)
    z = t([0.0, -200.0, 0.0, 0.0, 0.0]).requires_grad_()
    y = torch.tensor([[0, 0, 1]])  # target a1y has probability ~e^-200 (0 in float32)
    loss = head.loss(z, y, level_weights=[0, 0, 1])
    assert torch.isfinite(loss) and close(loss, 200 + math.log(4), 1e-3)
    loss.backward()
    assert torch.isfinite(z.grad).all()


def test_segment_logsumexp():
    x = t([0.0, math.log(3), 1.0, -math.inf])
    seg = torch.tensor([0, 0, 2, 2])
    out = segment_logsumexp(x, seg, 4)[0]
    assert close(out[0], math.log(4)) and close(out[2], 1.0)
    assert out[1] == -math.inf and out[3] == -math.inf  # empty groups


# ----------------------------------------------------------------------------- hsoftmax
def _hs_logits():
    z = torch.zeros(1, 10)
    z[0, 0:2] = torch.log(t(1.0, 3.0))  # p(a) .25, p(b) .75
    z[0, 2:4] = torch.log(t(1.0, 4.0))  # p(a1|a) .2, p(a2|a) .8 ; b1 alone -> 1
    z[0, 4] = 17.0
    z[0, 5:7] = torch.log(t(2.0, 2.0))  # .5, .5
    z[0, 7] = -4.0  # a2x alone -> 1
    z[0, 8:10] = torch.log(t(1.0, 9.0))  # .1, .9
    return z


def test_hsoftmax_groups():
    groups, n = sibling_groups(H)
    assert n == 1 + 5  # virtual root + 5 internal nodes
    assert groups.tolist() == [0, 0, 1, 1, 2, 3, 3, 4, 5, 5]


def test_hsoftmax_joint_and_loss():
    head = HSoftmaxHead(4, H)
    z = _hs_logits()
    p = head.level_probs(z)
    torch.testing.assert_close(p[0], t([0.25, 0.75]))
    torch.testing.assert_close(p[1], t([0.05, 0.2, 0.75]))
    torch.testing.assert_close(p[2], t([0.025, 0.025, 0.2, 0.075, 0.675]))
    y = torch.tensor([[1, 2, 4]])
    assert close(head.loss(z, y), -math.log(0.675))  # leaf only (eq. 3.12)
    assert close(head.loss(z, y, level_weights=[1, 1, 1]),
                 -2 * math.log(0.75) - math.log(0.675))
    cw = [torch.ones(2), torch.ones(3), torch.tensor([1.0, 1, 1, 1, 3])]
    y2 = torch.tensor([[1, 2, 4], [0, 1, 2]])
    exp = (3 * -math.log(0.675) + 1 * -math.log(0.2)) / 4
    assert close(head.loss(z.repeat(2, 1), y2, class_weights=cw), exp)


def test_hsoftmax_leaf_path_prediction():
    z = _hs_logits()
    z[0, 0:2] = torch.log(t(0.55, 0.45))  # p(a) .55, p(b) .45
    # leaves: a1x .055, a1y .055, a2x .44, b1x .045, b1y .405 -> leaf path (a, a2, a2x)
    assert HSoftmaxHead(4, H, "leaf_path").predict_levels(z).tolist() == [[0, 1, 2]]
    # marginal argmax: level 1 a1 .11, a2 .44, b1 .45 -> b1: inconsistent with level 0 = a
    assert HSoftmaxHead(4, H, "marginal").predict_levels(z).tolist() == [[0, 2, 2]]


# ----------------------------------------------------------------------------- cosine
def _cos_head(**kw):
    head = CosineEmbeddingHead(3, H, dim=2, **kw)
    with torch.no_grad():
        head.proj.weight.copy_(t([1.0, 0.0, 0.0], [0.0, 1.0, 0.0]))  # keep feature dims 0-1
        w = torch.zeros(10, 2)
        w[:, 0] = torch.arange(10, dtype=torch.float32) + 1
        w[:, 1] = 1.0
        w[0] = t(3.0, 4.0)
        head.labels.weight.copy_(w)
    return head


def test_cosine_dot_product_logits_and_loss():
    head = _cos_head()
    f = t([2.0, -1.0, 7.0])
    out = head(f)
    w = head.labels.weight.detach()
    torch.testing.assert_close(out[0], w @ t(2.0, -1.0))
    assert out[0, 0] == 3 * 2 - 4
    y = torch.tensor([[0, 2, 4]])
    ref = PerLevelHead(3, H)
    assert close(head.loss(out, y, level_weights=[1, 2, 3]),
                 ref.loss(out, y, level_weights=[1, 2, 3]))
    emb = head.label_embeddings()
    assert [e.shape for e in emb.values()] == [(2, 2), (3, 2), (5, 2)]
    torch.testing.assert_close(emb[1][0], w[2])


def test_cosine_normalised_logits():
    head = _cos_head(cosine=True, scale=5.0, learn_scale=True)
    out = head(t([0.0, 2.0, 1.0]))  # image embedding (0, 2) -> direction (0, 1)
    assert close(out[0, 0], 5.0 * 4 / 5)  # cos((0,1),(3,4)) = 0.8
    assert isinstance(head.scale, torch.nn.Parameter)
    out.sum().backward()
    assert head.scale.grad is not None
    assert "scale" not in dict(_cos_head().named_parameters())


def test_inverted_embeddings_eq_6_1():
    x = t([3.0, 4.0], [0.0, 1.0], [0.0, 2.5])  # norms 5 (max), 1, 2.5
    inv = invert_embeddings(x, r=2.0)
    torch.testing.assert_close(inv, t([1.2, 1.6], [0.0, 10.0], [0.0, 4.0]))
    assert close(inv.norm(dim=-1).min(), 2.0)  # r is the minimum norm
    head = _cos_head()
    inv_h = head.inverted_label_embeddings(r=3.0)
    w = head.labels.weight.detach()
    m = w.norm(dim=-1).max()
    torch.testing.assert_close(inv_h[2][4], 3.0 * w[9] * m / w[9].norm() ** 2)
    with pytest.raises(ValueError, match="r must be > 0"):
        invert_embeddings(x, r=0.0)
