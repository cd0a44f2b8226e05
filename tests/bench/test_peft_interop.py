"""PEFT interop (extra `hf`): balance_peft_model and BalancedLoRACallback on a tiny random GPT-2.

Nothing is downloaded: the model is built from a config with random weights.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from bench.adapters.peft_interop import (  # noqa: E402
    BalancedLoRACallback,
    balance_peft_model,
    lora_pairs,
)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "disabled")


def tiny_gpt2(seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=2, vocab_size=256, n_positions=64,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(cfg)


def peft_gpt2(seed: int = 0, random_b: bool = True):
    """Tiny GPT-2 with LoRA (r=4) on c_attn and c_proj; B random so B A != 0, unbalanced."""
    config = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True,
        lora_dropout=0.0, init_lora_weights=True,
    )  # fmt: skip
    model = peft.get_peft_model(tiny_gpt2(seed), config)
    if random_b:
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for _, _, B in lora_pairs(model)[0]:
                B.weight.copy_(torch.randn(B.weight.shape, generator=g) * 0.3)
    return model


def factors(model) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{name: (A, B)} in float64, detached copies."""
    return {
        name: (A.weight.detach().double().clone(), B.weight.detach().double().clone())
        for name, A, B in lora_pairs(model)[0]
    }


def rel_gap(A: torch.Tensor, B: torch.Tensor) -> float:
    """||B^T B - A A^T|| / (||B^T B|| + ||A A^T||), computed independently."""
    ga, gb = A @ A.T, B.T @ B
    return float(torch.linalg.norm(gb - ga) / (torch.linalg.norm(gb) + torch.linalg.norm(ga)))


def test_balance_keeps_products_and_balances():
    model = peft_gpt2()
    before = factors(model)
    # 2 layers x (c_attn, attn.c_proj, mlp.c_proj)
    assert len(before) == 6
    assert all(rel_gap(A, B) > 0.1 for A, B in before.values())
    x = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(3))
    model.eval()
    with torch.no_grad():
        logits_before = model(input_ids=x).logits

    stats = balance_peft_model(model)

    assert stats["layers"] == 6 and stats["skipped"] == 0
    expected_gap = sum(
        float(torch.linalg.norm(B.T @ B - A @ A.T)) for A, B in before.values()
    ) / len(before)
    assert stats["gap"] == pytest.approx(expected_gap, rel=1e-6)
    after = factors(model)
    assert after.keys() == before.keys()
    for name, (A0, B0) in before.items():
        A1, B1 = after[name]
        assert A1.shape == A0.shape and B1.shape == B0.shape
        prod0 = B0 @ A0
        # stored in float32: product kept to float32 rounding
        assert torch.linalg.norm(B1 @ A1 - prod0) <= 1e-6 * torch.linalg.norm(prod0), name
        assert rel_gap(A1, B1) < 1e-6, name
        assert not torch.allclose(A1, A0)  # something actually moved
    with torch.no_grad():
        logits_after = model(input_ids=x).logits
    torch.testing.assert_close(logits_after, logits_before, atol=1e-5, rtol=1e-5)

    # a second projection of a balanced model is (almost) the identity
    stats2 = balance_peft_model(model)
    assert stats2["gap"] < 1e-5 * stats["gap"]
    again = factors(model)
    for name, (A1, B1) in after.items():
        torch.testing.assert_close(again[name][0], A1, atol=1e-6, rtol=0)
        torch.testing.assert_close(again[name][1], B1, atol=1e-6, rtol=0)


def test_balance_other_alignments_and_bad_input():
    for alignment in ("sign", "none"):
        model = peft_gpt2()
        before = factors(model)
        balance_peft_model(model, alignment=alignment)
        for name, (A1, B1) in factors(model).items():
            A0, B0 = before[name]
            assert torch.linalg.norm(B1 @ A1 - B0 @ A0) <= 1e-6 * torch.linalg.norm(B0 @ A0)
            assert rel_gap(A1, B1) < 1e-6
    with pytest.raises(ValueError, match="alignment"):
        balance_peft_model(peft_gpt2(), alignment="svd")
    with pytest.raises(ValueError, match="no PEFT LoRA layer"):
        balance_peft_model(tiny_gpt2())
    with pytest.raises(ValueError, match="start_step"):
        BalancedLoRACallback(start_step=0)


def test_embedding_lora_is_skipped():
    config = peft.LoraConfig(r=4, target_modules=["wte", "c_attn"], fan_in_fan_out=True)
    model = peft.get_peft_model(tiny_gpt2(), config)
    stats = balance_peft_model(model)
    assert stats["layers"] == 2 and stats["skipped"] == 1


class RandomBytes(torch.utils.data.Dataset):
    def __init__(self, n: int = 16, seq_len: int = 16):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 256, (n, seq_len), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def make_trainer(model, tmp_path, max_steps: int = 3):
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=max_steps,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="no",
        logging_strategy="steps",
        logging_steps=1,
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    return transformers.Trainer(model=model, args=args, train_dataset=RandomBytes())


def test_trainer_callback_balances_every_layer(tmp_path):
    model = peft_gpt2(random_b=False)  # PEFT's init: B = 0, so only training moves B
    trainer = make_trainer(model, tmp_path)
    callback = BalancedLoRACallback()
    trainer.add_callback(callback)
    trainer.train()

    assert trainer.state.global_step == 3
    assert callback.projections == 3
    assert callback.last_stats["layers"] == 6
    for name, (A, B) in factors(model).items():
        assert torch.linalg.norm(B) > 0, name  # training moved B
        assert rel_gap(A, B) < 1e-6, name
    logged = [row for row in trainer.state.log_history if "loss" in row]
    assert logged and all("balora/gap" in row for row in logged)


def test_callback_never_projects_before_step_one_and_honours_schedule(tmp_path):
    callback = BalancedLoRACallback(start_step=2, project_every=2)
    assert [s for s in range(0, 8) if callback.due(s)] == [2, 4, 6]
    assert not BalancedLoRACallback().due(0)

    model = peft_gpt2()  # random B: unbalanced, so a projection would show
    before = factors(model)
    state = transformers.TrainerState()
    control = transformers.TrainerControl()
    args = None
    for step in (0, 1):  # global_step 0 (before any optimizer step) and step 1 < start_step
        state.global_step = step
        callback.on_step_end(args, state, control, model=model)
    assert callback.projections == 0
    for name, (A, B) in factors(model).items():
        assert torch.equal(A, before[name][0]) and torch.equal(B, before[name][1])
    state.global_step = 2
    callback.on_step_end(args, state, control, model=model)
    assert callback.projections == 1
    assert all(rel_gap(A, B) < 1e-6 for A, B in factors(model).values())

    # on a real Trainer, the first call is after the first optimizer step (global_step == 1)
    seen = []

    class Spy(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            seen.append(state.global_step)

    trainer = make_trainer(peft_gpt2(random_b=False), tmp_path, max_steps=2)
    trainer.add_callback(Spy())
    trainer.train()
    assert seen == [1, 2]
