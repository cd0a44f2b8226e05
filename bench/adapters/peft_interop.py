"""BaLoRA for PEFT models and the `transformers` Trainer (extra `hf`).

Adds BaLoRA (docs/papers/balora.md §3) to an existing PEFT / Trainer script with one line:

    from peft import LoraConfig, get_peft_model
    from bench.adapters.peft_interop import BalancedLoRACallback
    model = get_peft_model(base_model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    trainer = transformers.Trainer(model=model, args=training_args, train_dataset=train_set)
    trainer.add_callback(BalancedLoRACallback())   # project after every optimizer step
    trainer.train()

Without a Trainer, call `balance_peft_model(model)` after each `optimizer.step()` (never before
the first: at B A = 0 the projection gives the saddle (0, 0)).

Each LoRA pair (A = `lora_A[name].weight`, r x in; B = `lora_B[name].weight`, out x r) of every
active adapter is replaced in place by its Frobenius-closest balanced factorisation
(`project_balanced`): B A is kept (to rounding), A A^T = B^T B afterwards. The scale
alpha / r stays outside and does not change the balanced point (docs/papers/balora.md §2).
Optimizer moments
are kept as they are (the paper's default); with the Procrustes alignment the new factors are the
balanced ones closest to the old, so there is no frame jump for them to fight.

Which layers: PEFT `LoraLayer`s whose `lora_A` / `lora_B` are `nn.Linear`, i.e. LoRA on
`nn.Linear`, on `transformers.Conv1D` (GPT-2's `c_attn`, `c_proj`, `fan_in_fan_out=True`: PEFT
still stores A as r x in and B as out x r), on `nn.MultiheadAttention` and on quantised linears.
Skipped, with their names in the stats: LoRA on embeddings (`lora_embedding_A/B`, parameters not
Linear modules) and on convolutions (A and B are conv kernels, not matrices), and
`target_parameters` wrappers (one A, B pair holds several experts, so balancing the stacked
pair would mix them). Parameters sharded by DeepSpeed ZeRO-3 / FSDP are not supported: every
process must hold whole A and B (plain DDP is fine: each replica projects the same factors).
"""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn as nn

from bench.adapters.balancing import ALIGNMENTS, project_balanced

try:  # the callback must subclass TrainerCallback when transformers is there
    from transformers import TrainerCallback as _CallbackBase
except ImportError:  # the module still imports (and balance_peft_model works) without it
    _CallbackBase = object


def _lora_layer_class():
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError as e:
        raise ImportError(
            "balance_peft_model needs peft (the `hf` extra): pip install -e '.[hf]'"
        ) from e
    return LoraLayer


def _is_expert_wrapper(layer: nn.Module) -> bool:
    """PEFT's `target_parameters` wrapper (ParamWrapper): A and B stack several experts."""
    return type(layer).__name__ == "ParamWrapper"


def lora_pairs(model: nn.Module) -> tuple[list[tuple[str, nn.Linear, nn.Linear]], list[str]]:
    """([(name, lora_A module, lora_B module)], [skipped names]) for every active adapter.

    `name` is `<module name>:<adapter name>`. Raises ValueError when the model has no LoRA layer.
    """
    LoraLayer = _lora_layer_class()
    pairs, skipped, n_layers = [], [], 0
    for module_name, layer in model.named_modules():
        if not isinstance(layer, LoraLayer):
            continue
        n_layers += 1
        for adapter in layer.active_adapters:
            name = f"{module_name}:{adapter}"
            lora_a, lora_b = layer.lora_A, layer.lora_B
            if adapter not in lora_a or adapter not in lora_b:
                if adapter in getattr(layer, "lora_embedding_A", {}):
                    skipped.append(name)
                continue
            A, B = lora_a[adapter], lora_b[adapter]
            linear = isinstance(A, nn.Linear) and isinstance(B, nn.Linear)
            if not linear or _is_expert_wrapper(layer) or A.weight.dim() != 2:
                skipped.append(name)
                continue
            pairs.append((name, A, B))
    if n_layers == 0:
        raise ValueError(
            f"{type(model).__name__} has no PEFT LoRA layer: wrap the model with "
            "peft.get_peft_model(model, LoraConfig(...)) before balancing it"
        )
    return pairs, skipped


@torch.no_grad()
def balance_peft_model(
    model: nn.Module,
    alignment: str = "procrustes",
    *,
    compute_dtype: torch.dtype = torch.float64,
) -> dict:
    """Project every LoRA pair of a PEFT model onto A A^T = B^T B in place, keeping B A.

    Returns {"layers": number of (layer, adapter) pairs projected, "gap": their mean
    ||B^T B - A A^T||_F before the projection, "gap_max": the largest, "skipped": number of LoRA
    layers left alone (embeddings, convolutions, expert wrappers; see the module docstring)}.
    Pairs of equal shape, dtype and device are projected in one batched call, in
    `compute_dtype` (float64 by default; never below float32). Raises ValueError for an unknown
    `alignment` or a model without LoRA layers.
    """
    if alignment not in ALIGNMENTS:
        raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {alignment!r}")
    pairs, skipped = lora_pairs(model)
    groups: dict[tuple, list[tuple[nn.Linear, nn.Linear]]] = defaultdict(list)
    for _, A, B in pairs:
        wa, wb = A.weight, B.weight
        groups[(wa.shape, wb.shape, wa.dtype, wb.dtype, wa.device)].append((A, B))
    gaps = []
    for group in groups.values():
        A = torch.stack([a.weight for a, _ in group])  # (L, r, in)
        B = torch.stack([b.weight for _, b in group])  # (L, out, r)
        A64, B64 = A.to(compute_dtype), B.to(compute_dtype)
        gaps.append(torch.linalg.matrix_norm(B64.mT @ B64 - A64 @ A64.mT).cpu())
        A_new, B_new = project_balanced(A, B, alignment, compute_dtype=compute_dtype)
        for i, (a, b) in enumerate(group):
            a.weight.copy_(A_new[i])
            b.weight.copy_(B_new[i])
    gap = torch.cat(gaps) if gaps else torch.zeros(0, dtype=torch.float64)
    return {
        "layers": len(pairs),
        "gap": float(gap.mean()) if len(pairs) else 0.0,
        "gap_max": float(gap.max()) if len(pairs) else 0.0,
        "skipped": len(skipped),
    }


class BalancedLoRACallback(_CallbackBase):
    """`transformers.TrainerCallback`: BaLoRA's projection after optimizer steps.

    The Trainer calls `on_step_end` after `optimizer.step()`, the scheduler step and
    `zero_grad`, with `state.global_step` already counting that step (1 after the first), once
    per optimizer step whatever the gradient accumulation. The callback projects at
    global steps start_step, start_step + project_every, ... (never before step 1).

    The mean gap before the latest projection is kept in `last_stats`; when the Trainer logs a
    training loss, "balora/gap" is added to that log entry (`state.log_history`, and the `logs`
    seen by callbacks added after this one).
    """

    def __init__(self, alignment: str = "procrustes", start_step: int = 1, project_every: int = 1):
        if alignment not in ALIGNMENTS:
            raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {alignment!r}")
        if int(start_step) < 1:
            raise ValueError(
                f"start_step={start_step} must be >= 1: projecting before the first optimizer "
                "step maps B A = 0 to the saddle (0, 0)"
            )
        if int(project_every) < 1:
            raise ValueError(f"project_every={project_every} must be >= 1")
        self.alignment = alignment
        self.start_step = int(start_step)
        self.project_every = int(project_every)
        self.last_stats: dict | None = None
        self.last_step: int | None = None
        self.projections = 0

    def due(self, step: int) -> bool:
        """Whether the projection runs after optimizer step `step` (counted from 1)."""
        return step >= self.start_step and (step - self.start_step) % self.project_every == 0

    def on_step_end(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        if model is None or not self.due(step):
            return None
        self.last_stats = balance_peft_model(model, self.alignment)
        self.last_step = step
        self.projections += 1
        return None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs or self.last_stats is None:
            return None
        if self.last_step != state.global_step:
            return None
        logs["balora/gap"] = self.last_stats["gap"]
        history = state.log_history
        if history and history[-1].get("step") == state.global_step and "loss" in history[-1]:
            history[-1]["balora/gap"] = self.last_stats["gap"]
        return None
