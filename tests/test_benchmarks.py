"""The input-pipeline benchmark runs both paths on the same images (no timing assertions)."""

from __future__ import annotations

import io
import math
import tarfile

import numpy as np
import pytest
import torch

from hpsearch.bench import (
    JpegFiles,
    compare_pipelines,
    extract_members,
    input_pipeline,
    resize_benchmark,
    write_jpegs,
)
from hpsearch.config import DataConfig
from hpsearch.data import load_dataset
from hpsearch.errors import ConfigError, DataError
from tests.conftest import TINY_DATA


@pytest.fixture(scope="module")
def tiny():
    return load_dataset(DataConfig(params=TINY_DATA))


def test_both_paths_same_images_finite_losses(tiny, tmp_path):
    files = write_jpegs(np.asarray(tiny.train.images), tmp_path / "jpg")
    assert len(files) == len(tiny.train)
    res = compare_pipelines(tiny.train, files, tiny.hierarchy, mean=tiny.mean, std=tiny.std,
                            image_size=32, width=4, batches=2, batch_size=8, num_workers=0)
    # 2 batches of 8 on every pass, the same count for both pipelines
    assert {k: r.images for k, r in res.items()} == {
        "memmap_data": 16, "memmap_train": 16, "jpeg_data": 16, "jpeg_train": 16}
    for k in ("memmap_train", "jpeg_train"):
        assert len(res[k].losses) == 2
        assert all(math.isfinite(v) for v in res[k].losses)
    assert res["memmap_data"].losses == [] and res["jpeg_data"].losses == []
    # the first training step sees the same images, labels and init on both paths, so the
    # first losses agree up to JPEG loss and the different (same-distribution) augmentation
    assert res["memmap_train"].losses[0] == pytest.approx(res["jpeg_train"].losses[0], rel=0.5)


def test_jpeg_dataset_matches_source_without_augmentation(tmp_path):
    """A decoded q95 JPEG of a smooth image ≈ the source after the same normalisation."""
    ramp = np.linspace(30, 220, 32)
    imgs = np.stack([np.stack(np.broadcast_arrays(ramp[None, :] + k, ramp[:, None],
                                                  np.full((32, 32), 90.0 + 40 * k)), -1)
                     for k in range(3)]).round().astype(np.uint8)  # smooth [3, 32, 32, 3]
    labels = np.array([[0, 1], [1, 2], [0, 0]])
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    files = write_jpegs(imgs, tmp_path / "jpg")
    ds = JpegFiles(files, labels, mean=mean, std=std, size=32, augment=False)
    x, y = ds[1]
    assert x.shape == (3, 32, 32)
    assert y.tolist() == [1, 2]
    ref = torch.from_numpy(imgs[1]).permute(2, 0, 1).float() / 255
    ref = (ref - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)
    assert (x - ref).abs().mean() < 0.1  # JPEG q95 error, in normalised units
    # resizing happens in the worker when the stored side differs from the model's
    small = JpegFiles(files, labels, mean=mean, std=std, size=16, augment=True)[0][0]
    assert small.shape == (3, 16, 16)


def test_input_pipeline_synthetic_end_to_end(tmp_path):
    rep = input_pipeline(dataset="synthetic", batches=2, batch_size=4, width=4, num_workers=0,
                         work_dir=str(tmp_path))
    assert rep.memmap_train.images == rep.jpeg_train.images == 8
    assert rep.cache_build_s is not None and rep.cache_build_s > 0
    assert "memmap cache" in rep.markdown() and "JPEG files" in rep.markdown()


def test_extract_members_in_order(tmp_path):
    arc = tmp_path / "a.tar.gz"
    with tarfile.open(arc, "w:gz") as tf:
        for name, data in (("train/cat/1.jpg", b"one"), ("train/dog/2.jpg", b"two")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    got = extract_members(arc, ["train/dog/2.jpg", "train/cat/1.jpg"], tmp_path / "x")
    assert [p.read_bytes() for p in got] == [b"two", b"one"]
    with pytest.raises(DataError, match="train/cow/3.jpg"):
        extract_members(arc, ["train/cow/3.jpg"], tmp_path / "y")


def test_bad_budget_is_config_error(tiny, tmp_path):
    with pytest.raises(ConfigError, match="batches"):
        compare_pipelines(tiny.train, [], tiny.hierarchy, mean=tiny.mean, std=tiny.std,
                          image_size=32, batches=0)


def test_resize_benchmark_rows():
    rows = resize_benchmark(n=2, src=64, dst=32, repeats=1)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    assert [r["method"] for r in rows] == ["pil", "pil_draft", "torchvision", "hpsearch_cache"] \
        + [f"hpsearch_cache_batch_{d}" for d in devices]
    by = {r["method"]: r for r in rows}
    assert by["torchvision"]["mean_abs_diff_vs_torchvision"] == 0.0
    # the batched cache path decodes and resizes exactly like the per-image one on the CPU
    assert by["hpsearch_cache_batch_cpu"]["mean_abs_diff_vs_torchvision"] == 0.0
    assert all(r["images_per_s"] > 0 for r in rows)
    # every method produces the same picture up to resampling differences (0-255 scale)
    assert all(r["mean_abs_diff_vs_torchvision"] < 10 for r in rows)


def test_label_throughput_counts_the_epoch_it_times(tmp_path):
    from hpsearch.bench import label_throughput

    lines = [f"r c{i}" for i in range(4)] + [f"c{i} g{i}{j}" for i in range(4) for j in range(5)]
    f = tmp_path / "h.txt"
    f.write_text("\n".join(lines))
    res = label_throughput(family="hyperbolic_cone", dim=3, label_source="parent_child",
                           source_params={"path": str(f)}, batch_size=8, negatives_per_side=2,
                           non_basic_fraction=0.0, epochs=2, ceiling_batch=64,
                           ceiling_steps=2, threads=1)
    # 25 nodes; closure = 24 basic + 20 root->grandchild edges; p = 0: train = the basic edges
    assert (res["nodes"], res["closure_edges"], res["train_positives"]) == (25, 44, 24)
    assert res["steps_per_epoch"] == 3 and len(res["epoch_s"]) == 2
    assert math.isclose(res["train_energies_per_s"],
                        24 * (1 + 2 * 2) / res["epoch_s_median"], rel_tol=1e-9)
    assert res["ceiling_energies_per_s"] > 0 and math.isfinite(res["ceiling_energies_per_s"])


def test_trial_rows_show_what_the_search_varied(tmp_path):
    from hpsearch.bench import compare_best, trial_rows
    from hpsearch.search.tuner import search_tracker
    from hpsearch.tracking import default_tracking_uri

    t = search_tracker(default_tracking_uri(tmp_path), "joint", tmp_path)
    parent = t.search_run("s", "s", tags={}, params={})
    for i, (margin, val, full) in enumerate([(0.1, 0.7, 0.9), (0.5, 0.8, 0.6)]):
        rid, _ = t.trial_run(parent, "s", f"t{i}", name=f"t{i}", tags={})
        t.log_params(rid, {"model.family": "joint_order_embedding", "model.params.margin": margin,
                           "optim.batch_size": 100})
        t.log_metrics(rid, {"val_micro_f1": val - 0.1}, step=1)
        t.log_metrics(rid, {"val_micro_f1": val, "best_val_micro_f1": val, "best_epoch": 2,
                            "test_micro_f1": val - 0.05, "test_full_f1": full}, step=2)
    rows = trial_rows(t, "val_micro_f1", ("micro_f1",))
    assert [r["model.params.margin"] for r in rows] == ["0.5", "0.1"]  # best first, varied
    assert rows[0]["val_micro_f1"] == 0.8 and rows[0]["test_full_f1"] == 0.6
    assert "test_edge_f1" not in rows[0]  # not logged by these runs: no empty column
    table = compare_best(str(tmp_path), ["joint"])
    assert "| joint | joint_order_embedding |" in table and "0.7500" in table
