"""Short training of one network on a `Dataset`, then top-1 accuracy on its validation split.

The recipe follows ProxylessNAS' training of sampled networks (Cai et al., ICLR 2019,
github.com/mit-han-lab/proxylessnas): SGD with Nesterov momentum 0.9, cosine learning
rate decay per step, weight decay 4e-5 and label smoothing 0.1. Deviations: far fewer
epochs (a search-time proxy, not a final training), no warm-up and no data augmentation;
as in their `no_decay_keys="bn#bias"`, biases and norm weights are not decayed.
Same seed, same data and same thread count on the same machine give the same numbers.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import torch
from torch import nn

from nas.errors import UserError
from nas.evaluate.data import Dataset

log = logging.getLogger(__name__)

_MOMENTUM = 0.9
_WEIGHT_DECAY = 4e-5
_LABEL_SMOOTHING = 0.1


OnEpoch = Callable[[int, dict[str, float]], None]
"""`on_epoch(epoch, metrics)` of `train_and_evaluate`: epochs count from 1."""


def train_and_evaluate(
    model: nn.Module,
    data: Dataset,
    epochs: int,
    batch_size: int = 64,
    lr: float = 0.05,
    seed: int = 0,
    max_batches: int | None = None,
    on_epoch: OnEpoch | None = None,
) -> dict[str, float]:
    """Train `model` in place on `data.x_train`, then measure accuracy on `data.x_val`.

    Args:
        model: network mapping (B, 3, R, R) to (B, num_classes) logits; trained on its own device.
        data: train and validation tensors.
        epochs: passes over the training split (each cut to `max_batches` steps if given).
        batch_size: images per step; the last, smaller batch of an epoch is kept.
        lr: initial learning rate, decayed to zero by a per-step cosine.
        seed: seeds weight-independent randomness: batch order and `torch` ops (dropout).
        max_batches: cap on steps per epoch, for quick smoke runs.
        on_epoch: called as `on_epoch(epoch, metrics)` after each epoch (1, 2, ...) that did not
            diverge, with the metrics this function returns measured then (after the last epoch,
            exactly the returned ones): what an early-stopping scheduler judges an arch by. Each
            call costs a BN recalibration and a validation pass, outside `train_seconds`; training
            itself is unchanged (the RNG state is restored), so the returned numbers are the same
            with or without it. An exception it raises stops the training.

    Returns:
        `accuracy` (top-1 on validation, 0..1), `train_loss` (mean loss of the last
        epoch; NaN if training diverged, which also stops it early) and `train_seconds`.
    """
    _check_positive(epochs=epochs, batch_size=batch_size, lr=lr, max_batches=max_batches)
    torch.manual_seed(seed)
    order = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    n = len(data.y_train)
    steps = math.ceil(n / batch_size)
    if max_batches is not None:
        steps = min(steps, max_batches)
    optimizer = _optimizer(model, lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=_LABEL_SMOOTHING)

    model.train()
    start = time.perf_counter()
    eval_seconds = 0.0  # spent measuring epochs for `on_epoch`: not training time
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=order)
        loss_sum, seen = 0.0, 0
        for step in range(steps):
            idx = perm[step * batch_size:(step + 1) * batch_size]
            x, y = data.x_train[idx].to(device), data.y_train[idx].to(device)
            loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum += loss.item() * len(idx)
            seen += len(idx)
        if not math.isfinite(loss_sum):
            log.warning("training diverged in epoch %d (loss %s); stopping early", epoch + 1, loss_sum)
            break
        if on_epoch is not None and epoch + 1 < epochs:  # the last epoch is reported with the result below
            tick = time.perf_counter()
            metrics = _measure(model, data, batch_size, loss_sum / seen, tick - start - eval_seconds)
            eval_seconds += time.perf_counter() - tick
            on_epoch(epoch + 1, metrics)
    recalibrate_bn(model, data, batch_size)
    train_seconds = time.perf_counter() - start - eval_seconds
    train_loss = loss_sum / seen if math.isfinite(loss_sum) else math.nan
    result = {"accuracy": accuracy(model, data, batch_size=4 * batch_size),
              "train_loss": train_loss, "train_seconds": train_seconds}
    if on_epoch is not None and math.isfinite(loss_sum):
        on_epoch(epochs, dict(result))
    return result


def _measure(model: nn.Module, data: Dataset, batch_size: int, train_loss: float,
             train_seconds: float) -> dict[str, float]:
    """The metrics of `train_and_evaluate` after an epoch, leaving training as it was: BN is recalibrated (as at
    the end) and the model put back in train mode, and the RNG state is restored (a BN pass in train mode may
    draw from it, for dropout), so the next epoch trains exactly as it would have without this measurement."""
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        recalibrate_bn(model, data, batch_size)
        value = accuracy(model, data, batch_size=4 * batch_size)
    model.train()
    return {"accuracy": value, "train_loss": train_loss, "train_seconds": train_seconds}


def recalibrate_bn(model: nn.Module, data: Dataset, batch_size: int, max_batches: int = 20) -> None:
    """Re-estimate batch-norm running statistics as exact averages over training batches.

    After a few hundred steps the running averages (momentum 0.1) still lag the weights,
    so eval-mode accuracy of a briefly trained network can sit at chance; the one-shot
    NAS literature recalibrates BN before evaluating a sub-network (Guo et al., SPOS, 2020).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    device = next(model.parameters()).device
    model.train()
    with torch.no_grad():
        for i in range(0, min(len(data.y_train), max_batches * batch_size), batch_size):
            model(data.x_train[i:i + batch_size].to(device))
    for m, momentum in zip(norms, saved, strict=True):
        m.momentum = momentum


def accuracy(model: nn.Module, data: Dataset, batch_size: int = 256) -> float:
    """Top-1 accuracy of `model` (in eval mode) on the validation split."""
    device = next(model.parameters()).device
    model.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(data.y_val), batch_size):
            logits = model(data.x_val[i:i + batch_size].to(device))
            correct += int((logits.argmax(1).cpu() == data.y_val[i:i + batch_size]).sum())
    return correct / len(data.y_val)


def _optimizer(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum; weight decay on conv and linear weights only (ndim > 1)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": _WEIGHT_DECAY},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]
    return torch.optim.SGD([g for g in groups if g["params"]], lr=lr, momentum=_MOMENTUM, nesterov=True)


def _check_positive(**values: float | None) -> None:
    for name, value in values.items():
        if value is not None and not value > 0:
            flag = "--" + name.replace("_", "-")
            raise UserError(f"{flag}: must be positive, got {value!r}")


__all__ = ["OnEpoch", "accuracy", "recalibrate_bn", "train_and_evaluate"]
