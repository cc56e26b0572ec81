"""Edge-prediction metrics for order-preserving embeddings (pure functions, torch in/out).

An edge is predicted iff its energy E <= t (low energy = edge; ties at t count as edges, as in
both published codes). F1 = 2TP / (2TP + FP + FN); precision of an empty prediction is 0.

The best threshold is searched over *all unique energies* (the published protocol) with one
sort + cumsum: for the k smallest energies predicted positive, F1(k) = 2·TP(k) / (k + P), where
P is the number of positives. Only the last index of every run of equal energies is a valid
cut. The first maximum wins, i.e. the smallest best threshold.

Every t in [e_k, e_{k+1}) (e_k the energy at the best cut, e_{k+1} the next larger energy)
gives the same F1 on the set it is chosen on. The published protocol returns t = e_k, which
is the largest positive energy when the set is separated: any held-out positive just above
it is missed. ``placement="midpoint"`` returns (e_k + e_{k+1}) / 2 instead, the max-margin
choice in that interval (e_k when nothing lies above the cut).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from hpsearch.errors import DataError, NonFiniteLossError


def _flat(x: Tensor, name: str) -> Tensor:
    x = torch.as_tensor(x).detach().reshape(-1)
    if not torch.isfinite(x).all():
        raise NonFiniteLossError(f"{name} energies contain NaN/inf; the embedding diverged")
    return x.to(torch.float64)


THRESHOLD_PLACEMENTS = ("lowest", "midpoint")


def f1_optimal_interval(pos_energy: Tensor, neg_energy: Tensor
                        ) -> tuple[float, float, float, float, float]:
    """The interval [lo, hi) of thresholds maximising F1 of "edge iff E <= t".

    lo is the energy at the best cut (the first maximum over the unique energies), hi the next
    larger energy (``inf`` when every energy is predicted an edge). Every t in [lo, hi) scores
    the same F1 on these energies.

    Returns:
        ``(lo, hi, f1, precision, recall)``.

    Raises:
        DataError: no positives (F1 is undefined).
        NonFiniteLossError: an energy is NaN/inf.
    """
    pos, neg = _flat(pos_energy, "positive"), _flat(neg_energy, "negative")
    n_pos = len(pos)
    if n_pos == 0:
        raise DataError("best_threshold_f1 needs at least one positive energy")
    e = torch.cat([pos, neg])
    lab = torch.cat([torch.ones_like(pos), torch.zeros_like(neg)])
    e, order = torch.sort(e, stable=True)
    tp = torch.cumsum(lab[order], 0)
    k = torch.arange(1, len(e) + 1, dtype=torch.float64, device=e.device)
    last = torch.ones_like(e, dtype=torch.bool)
    last[:-1] = e[1:] != e[:-1]
    f1 = torch.where(last, 2 * tp / (k + n_pos), torch.full_like(tp, -1.0))
    i = int(torch.argmax(f1))  # first maximum; e[i + 1] > e[i] since i is a run's last index
    hi = float(e[i + 1]) if i + 1 < len(e) else math.inf
    return float(e[i]), hi, float(f1[i]), float(tp[i] / k[i]), float(tp[i] / n_pos)


def best_threshold_f1(pos_energy: Tensor, neg_energy: Tensor, *, placement: str = "lowest"
                      ) -> tuple[float, float, float, float]:
    """The threshold t maximising F1 of "edge iff E <= t" over the unique energies.

    Args:
        pos_energy: energies of true edges (any shape).
        neg_energy: energies of non-edges (any shape).
        placement: ``"lowest"`` returns the energy at the best cut (the published protocol);
            ``"midpoint"`` the middle of the interval up to the next larger energy, which
            scores the same F1 here (see the module docstring).

    Returns:
        ``(t, f1, precision, recall)`` at the best (smallest on ties) cut.

    Raises:
        DataError: no positives (F1 is undefined), or an unknown ``placement``.
        NonFiniteLossError: an energy is NaN/inf.
    """
    lo, hi, f1, prec, rec = f1_optimal_interval(pos_energy, neg_energy)
    return place_threshold(lo, hi, placement), f1, prec, rec


def place_threshold(lo: float, hi: float, placement: str) -> float:
    """A threshold in the F1-optimal interval [lo, hi): ``lo`` (``"lowest"``) or its middle
    (``"midpoint"``; ``lo`` when hi is infinite or no float lies strictly between)."""
    if placement not in THRESHOLD_PLACEMENTS:
        raise DataError(f"threshold placement {placement!r} is not one of "
                        f"{', '.join(THRESHOLD_PLACEMENTS)}")
    if placement == "lowest" or not math.isfinite(hi):
        return lo
    mid = lo + (hi - lo) / 2
    return mid if mid < hi else lo


def f1_at_threshold(pos_energy: Tensor, neg_energy: Tensor, threshold: float
                    ) -> tuple[float, float, float]:
    """``(f1, precision, recall)`` of "edge iff E <= threshold"."""
    pos, neg = _flat(pos_energy, "positive"), _flat(neg_energy, "negative")
    tp = float((pos <= threshold).sum())
    fp = float((neg <= threshold).sum())
    fn = len(pos) - tp
    p = tp / (tp + fp) if tp + fp > 0 else 0.0
    r = tp / len(pos) if len(pos) else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) > 0 else 0.0
    return f1, p, r


def graph_reconstruction(energy: Tensor | Iterable[Tensor], positives: Tensor
                         ) -> dict[str, float]:
    """Reconstruction of a whole graph from pairwise energies (thesis §6.1.1).

    Every ordered pair (u, v), u != v, is classified: ``positives`` are the true edges, every
    other ordered pair is a negative. The threshold maximises F1 *on this same set* (as the
    thesis did; there is no held-out set), then TPR = TP/|P| and TNR = TN/|N| are read at it.

    Args:
        energy: ``[N, N]`` matrix with ``energy[u, v] = E(f(u), f(v))``, or an iterable of
            consecutive row blocks ``[r_i, N]`` (to build it chunk-wise on the device).
        positives: ``[E, 2]`` (u, v) index pairs of true edges.

    Returns:
        ``{"tpr", "tnr", "f1", "precision", "threshold"}``.
    """
    blocks = [energy] if isinstance(energy, Tensor) else energy
    pos_e, neg_e = [], []
    positives = torch.as_tensor(positives).reshape(-1, 2)
    row0 = 0
    n = None
    for blk in blocks:
        blk = blk.detach()
        r, n = blk.shape
        mask = torch.zeros(r, n, dtype=torch.bool, device=blk.device)
        sel = (positives[:, 0] >= row0) & (positives[:, 0] < row0 + r)
        p = positives[sel].to(blk.device)
        mask[p[:, 0] - row0, p[:, 1]] = True
        diag = torch.arange(row0, min(row0 + r, n), device=blk.device)
        keep = torch.ones(r, n, dtype=torch.bool, device=blk.device)
        keep[diag - row0, diag] = False
        pos_e.append(blk[mask & keep])
        neg_e.append(blk[~mask & keep])
        row0 += r
    if n is None or row0 != n:
        raise DataError(f"graph_reconstruction: row blocks cover {row0} rows of a "
                        f"{n}-column energy matrix; they must cover it exactly")
    pos, neg = torch.cat(pos_e), torch.cat(neg_e)
    t, f1, prec, _ = best_threshold_f1(pos, neg)
    tpr = float((pos <= t).double().mean())
    tnr = float((neg > t).double().mean()) if len(neg) else 1.0
    return {"tpr": tpr, "tnr": tnr, "f1": f1, "precision": prec, "threshold": t}


def embedding_reconstruction(energy: Callable[[Tensor, Tensor], Tensor], emb: Tensor,
                             closure: Tensor, basic: Tensor, *, chunk_elems: int
                             ) -> dict[str, float]:
    """:func:`graph_reconstruction` of an embedding table ``emb [N, d]``: the energies
    ``energy(x, y)`` of all ordered pairs are built in row blocks of about ``chunk_elems``
    energy × dimension elements, then scored against the ``closure`` edges (``recon_tpr``,
    ``recon_tnr``, ``full_f1``, ``recon_threshold``) and against the ``basic`` edges alone
    (``recon_basic_f1``), the two protocols of thesis §6.1.1 vs its published code."""
    n, d = emb.shape
    rows = max(1, chunk_elems // max(n * d, 1))
    blocks = [energy(emb[s:s + rows, None, :], emb[None, :, :]) for s in range(0, n, rows)]
    full = graph_reconstruction(blocks, closure)
    base = graph_reconstruction(blocks, basic)
    return {"recon_tpr": full["tpr"], "recon_tnr": full["tnr"], "full_f1": full["f1"],
            "recon_threshold": full["threshold"], "recon_basic_f1": base["f1"]}
