"""The LoRA training loop behind ``tune_local`` (torch + peft; imported only when tuning runs)."""

from __future__ import annotations

import math
import random
import sys
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from numpy.typing import NDArray

Row = tuple[list[int], list[int]]


@dataclass(frozen=True)
class TrainOutcome:
    """Trained LoRA pairs ``{hf_module: (A (r, in), B (out, r))}`` and how training went."""

    pairs: dict[str, tuple[NDArray[Any], NDArray[Any]]]
    steps: int
    train_tokens: int
    final_train_loss: float
    initial_validation_loss: float | None
    validation_loss: float | None


class TrainingStopped(Exception):
    """Training was stopped before it ended (its ``stop`` event was set): nothing is written."""


def train_lora(model: Any, train_rows: Sequence[Row], val_rows: Sequence[Row], config: Any,
               stop: threading.Event | None = None) -> TrainOutcome:
    """Wrap ``model`` with LoRA, train on ``train_rows`` and return the adapter weights.

    Same seed, data, config and thread count give bit-identical weights: the RNG is seeded, batches are
    drawn from a seeded ``random.Random``, and CPU kernels are deterministic for a fixed thread count.
    ``stop``, checked before each step, raises ``TrainingStopped``: training on a worker thread (which Ctrl-C does
    not interrupt) is stopped by whoever stops waiting for it.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from tqdm.auto import tqdm

    previous_threads = torch.get_num_threads()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        torch.manual_seed(config.seed)
        model.config.use_cache = False
        with warnings.catch_warnings():
            # peft reads transformers' `is_gradient_checkpointing`, deprecated in transformers 5: a FutureWarning on
            # every run (it reached the terminal of `genroute tune --local`) that no setting of the user's can change.
            warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated",
                                    category=FutureWarning)
            peft_model = get_peft_model(model, LoraConfig(
                r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                target_modules=list(config.target_modules), bias="none", task_type="CAUSAL_LM"))
        net = peft_model.get_base_model()
        trainable = [p for p in peft_model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)

        batches_per_epoch = math.ceil(len(train_rows) / config.batch_size)
        total = config.epochs * batches_per_epoch
        if config.max_steps is not None:
            total = min(total, config.max_steps)
        initial_val = evaluate(net, val_rows, config.batch_size)
        order_rng = random.Random(config.seed)
        steps = tokens = 0
        recent: list[float] = []
        bar = tqdm(total=total, desc="LoRA", unit="step", disable=not config.progress)
        # With the bar: on stderr, as the bar is (tqdm writes to stdout by default, which is the caller's:
        # ``genroute graduate`` prints its report there); without it, nothing.
        if initial_val is not None and config.progress:
            bar.write(f"validation loss before training: {initial_val:.4f}", file=sys.stderr)
        while steps < total:
            order = list(range(len(train_rows)))
            order_rng.shuffle(order)
            for start in range(0, len(order), config.batch_size):
                if steps >= total:
                    break
                if stop is not None and stop.is_set():
                    raise TrainingStopped(f"stopped after {steps} of {total} steps")
                batch = [train_rows[i] for i in order[start:start + config.batch_size]]
                peft_model.train()
                loss_sum, n_target = batch_loss(net, batch)
                loss = loss_sum / n_target
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                steps += 1
                tokens += sum(len(ids) for ids, _ in batch)
                recent = (recent + [loss.item()])[-batches_per_epoch:]
                bar.set_postfix(loss=f"{loss.item():.4f}")
                bar.update(1)
            if config.progress and val_rows and (steps % batches_per_epoch == 0 or steps >= total):
                bar.write(f"step {steps}: validation loss {evaluate(net, val_rows, config.batch_size):.4f}",
                          file=sys.stderr)
        bar.close()
        final_val = evaluate(net, val_rows, config.batch_size)
        return TrainOutcome(
            pairs=lora_pairs(net),
            steps=steps,
            train_tokens=tokens,
            final_train_loss=sum(recent) / len(recent) if recent else math.nan,
            initial_validation_loss=initial_val,
            validation_loss=final_val,
        )
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(previous_deterministic)


def batch_loss(net: Any, rows: Sequence[Row]) -> tuple[Any, int]:
    """Summed cross-entropy over the labelled (output) tokens of ``rows``, and how many there are.

    The vocabulary projection runs only at positions that predict a labelled token: for short outputs
    that is a few rows instead of the whole sequence times 262k words.
    """
    import torch
    import torch.nn.functional as F

    width = max(len(ids) for ids, _ in rows)
    pad = net.config.pad_token_id or 0
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, labs) in enumerate(rows):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        labels[i, :len(labs)] = torch.tensor(labs)
        mask[i, :len(ids)] = 1
    hidden = net.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
    targets = labels[:, 1:]
    selected = targets != -100
    logits = net.lm_head(hidden[:, :-1][selected])
    cap = getattr(net.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    loss = F.cross_entropy(logits.float(), targets[selected], reduction="sum")
    return loss, int(selected.sum())


def evaluate(net: Any, rows: Sequence[Row], batch_size: int) -> float | None:
    """Mean per-token loss on ``rows`` (``None`` without rows), dropout off."""
    import torch

    if not rows:
        return None
    was_training = net.training
    net.eval()
    total = 0.0
    count = 0
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            loss_sum, n = batch_loss(net, rows[start:start + batch_size])
            total += loss_sum.item()
            count += n
    net.train(was_training)
    return total / count


def lora_pairs(net: Any) -> dict[str, tuple[NDArray[Any], NDArray[Any]]]:
    """``{module name: (lora_A, lora_B)}`` of every LoRA layer in ``net`` (names as in the base model)."""
    pairs = {}
    for name, module in net.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if lora_a is None or "default" not in lora_a:
            continue
        a = lora_a["default"].weight.detach().float().cpu().numpy()
        b = module.lora_B["default"].weight.detach().float().cpu().numpy()
        pairs[name] = (a, b)
    return pairs
