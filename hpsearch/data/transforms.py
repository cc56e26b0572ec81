"""Batches and GPU-side transforms of decoded images (no model, no training).

The input pipeline works on decoded ``uint8 [N, H, W, C]`` arrays (see :mod:`hpsearch.data`):
a batch is sliced from the (memory-mapped) array (:func:`iterate_batches`, in the order of
:func:`epoch_indices`), moved to the device as uint8, and converted, normalised and augmented
there (:class:`Preprocess`), so a GPU does the per-pixel work and the CPU only copies bytes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def epoch_indices(n: int, *, epoch: int, seed: int, rank: int = 0, world_size: int = 1,
                  weights: np.ndarray | None = None, shuffle: bool = True) -> np.ndarray:
    """The sample order of one epoch for one DDP rank.

    Without weights: a seeded permutation (or ``arange``), padded by wrap-around to a multiple
    of ``world_size`` and strided by rank, as ``DistributedSampler`` does. With weights: ``n``
    draws with replacement ∝ weights (``WeightedRandomSampler``), then strided the same way, so
    every rank sees a disjoint share of one global weighted sample.
    """
    rng = np.random.default_rng([seed, epoch])
    if weights is not None:
        idx = rng.choice(n, size=n, replace=True, p=weights)
    elif shuffle:
        idx = rng.permutation(n)
    else:
        idx = np.arange(n)
    if world_size > 1:
        total = math.ceil(len(idx) / world_size) * world_size
        idx = np.concatenate([idx, idx[: total - len(idx)]])[rank::world_size]
    return idx


@dataclass(frozen=True)
class Preprocess:
    """uint8 NHWC batch -> normalised float NCHW on the device, with optional augmentation.

    Attributes:
        mean, std: per-channel normalisation (of the *input* channels).
        size: output side; batches of another size are resized (bilinear, antialiased).
        grayscale: average RGB to one channel (thesis Table 4.9).
        augment: random crop (pad size/8, reflect) + horizontal flip, per sample.
        channels_last: memory format for convolutions on CUDA.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: int
    grayscale: bool = False
    augment: bool = False
    channels_last: bool = False

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        x = images.permute(0, 3, 1, 2).float().div_(255.0)  # [B, C, H, W]
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear",
                              antialias=True, align_corners=False)
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        x = (x - mean) / std
        if self.grayscale and x.shape[1] == 3:
            x = x.mean(1, keepdim=True)
        if self.augment:
            x = random_crop_flip(x, pad=max(1, self.size // 8), generator=generator)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def random_crop_flip(x: Tensor, pad: int, generator: torch.Generator | None = None) -> Tensor:
    """Per-sample random translation by up to ``pad`` pixels (reflect padding) and a random
    horizontal flip, fully batched (one gather, no Python loop over samples)."""
    b, _, h, w = x.shape
    dev = x.device
    xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    ox = torch.randint(0, 2 * pad + 1, (b,), device="cpu", generator=generator).to(dev)
    oy = torch.randint(0, 2 * pad + 1, (b,), device="cpu", generator=generator).to(dev)
    flip = torch.rand(b, generator=generator).to(dev) < 0.5
    cols = torch.arange(w, device=dev).expand(b, w)
    cols = torch.where(flip[:, None], w - 1 - cols, cols) + ox[:, None]  # [B, W]
    rows = torch.arange(h, device=dev)[None, :] + oy[:, None]  # [B, H]
    xp = xp.gather(2, rows[:, None, :, None].expand(-1, xp.shape[1], -1, xp.shape[3]))
    return xp.gather(3, cols[:, None, None, :].expand(-1, xp.shape[1], h, -1))


def iterate_batches(images: np.ndarray, labels: np.ndarray, order: np.ndarray, batch_size: int,
                    device: torch.device, *, drop_last: bool = False
                    ) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(uint8 images [B,H,W,C], int64 labels [B,L])`` on ``device`` in ``order``."""
    pin = device.type == "cuda"
    stop = len(order) - (len(order) % batch_size if drop_last else 0)
    for s in range(0, stop, batch_size):
        idx = np.sort(order[s:s + batch_size]) if isinstance(images, np.memmap) else \
            order[s:s + batch_size]
        xb = torch.from_numpy(np.ascontiguousarray(images[idx]))
        yb = torch.from_numpy(labels[idx])
        if pin:
            xb = xb.pin_memory()
        yield xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
