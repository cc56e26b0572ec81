"""Staged initialisation of a joint model's label table from a finished run (thesis §6.2.6)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from hpsearch.errors import ConfigError
from hpsearch.tasks.base import LabelTable
from hpsearch.tasks.checkpoint import BEST_FILE, CHECKPOINT_FILE, experiment_from_checkpoint
from hpsearch.tasks.label_embedding import (
    EMBEDDINGS_FILE,
    NODES_FILE,
    load_embedding_tensor,
)
from hpsearch.tasks.label_embedding import META_FILE as LABEL_META_FILE

JOINT_META_FILE = "joint_embedding.json"


def load_label_table(path: str | Path, nodes: tuple[str, ...], geometry: str) -> Tensor:
    """``[N, d]`` label embeddings of a finished run, rows in the order of ``nodes``.

    ``path`` is an exported ``label_embeddings.pt``, the folder holding it (with
    ``label_nodes.json`` the rows are matched by name), or a run's checkpoint directory
    (``best.pt``/``checkpoint.pt`` of a ``label_embedding`` or ``joint_embedding`` run).
    """
    p = Path(path).expanduser()
    names: list[str] | None = None
    src_geometry: str | None = None
    folder = p if p.is_dir() else p.parent
    if p.is_dir() and not (p / EMBEDDINGS_FILE).is_file() and (
            (p / BEST_FILE).is_file() or (p / CHECKPOINT_FILE).is_file()):
        exp = experiment_from_checkpoint(p)
        if not isinstance(exp, LabelTable):
            raise ConfigError(f"init_from={str(path)!r} is a {exp.cfg.model.family!r} run; "
                              "staged init needs a label_embedding (or joint) run")
        x = exp.embeddings().detach().cpu()
        names = [str(s) for s in exp.nodes]
        src_geometry = exp.geometry
    else:
        x = load_embedding_tensor(p)
        if (folder / NODES_FILE).is_file():
            names = [str(s) for s in json.loads((folder / NODES_FILE).read_text())]
        for meta in (LABEL_META_FILE, JOINT_META_FILE):
            if (folder / meta).is_file():
                src_geometry = json.loads((folder / meta).read_text()).get("geometry")
                break
    if src_geometry is not None and src_geometry != geometry:
        raise ConfigError(f"init_from={str(path)!r} holds {src_geometry} embeddings; this "
                          f"family needs {geometry} ones (use a run of the matching family)")
    if names is not None:
        if len(names) != len(x):
            raise ConfigError(f"init_from={str(path)!r}: {len(names)} node names for "
                              f"{len(x)} embedding rows")
        index = {n: i for i, n in enumerate(names)}
        missing = [n for n in nodes if n not in index]
        if missing:
            raise ConfigError(f"init_from={str(path)!r} has no embedding for {len(missing)} of "
                              f"the {len(nodes)} labels (e.g. {missing[0]!r}); it was trained on "
                              "another label hierarchy")
        x = x[torch.as_tensor([index[n] for n in nodes], dtype=torch.int64)]
    elif len(x) != len(nodes):
        raise ConfigError(f"init_from={str(path)!r} has {len(x)} rows but the hierarchy has "
                          f"{len(nodes)} labels")
    return x
