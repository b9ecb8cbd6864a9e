"""How the demo pair is trained: the model, its optimizer and schedule, the loops, saving and loading."""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .data import (
    CODE_QUESTIONS,
    IM_END,
    PYDOC_QUESTIONS,
    SYSTEM_PROMPT,
    Record,
    chat_examples,
    chat_rows,
    cycle_batches,
    cycle_rows,
    encode_conversations,
    replay_schedule,
)

OPTIMIZER = "AdamW, linear warmup then cosine to min_lr_ratio"
PRECISION = "bf16 autocast, fp32 master weights and loss"


@dataclass
class TrainConfig:
    """Every hyperparameter of one run (logged verbatim)."""

    # corpus
    corpus_seed: int = 0
    math_docs: int = 300
    max_docs_per_source: int | None = None
    # tokenizer
    vocab_size: int = 4096
    # model
    hidden_size: int = 256
    num_layers: int = 6
    num_heads: int = 8
    num_kv_heads: int = 4
    intermediate_size: int = 704
    max_positions: int = 1024
    rope_theta: float = 10000.0
    # base pretraining
    seq_len: int = 1024
    batch_size: int = 4
    base_steps: int | None = None  # None: chosen from `minutes` and a timed benchmark
    base_lr: float = 2e-3
    base_warmup: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    # instruct fine-tuning
    instruct_steps: int = 300
    instruct_lr: float = 5e-4
    instruct_warmup: int = 20
    instruct_weight_decay: float = 0.0
    instruct_replay_fraction: float = 0.0625  # share of instruct rows taken from the pretraining stream (replay)
    # bookkeeping
    log_every: int = 10
    threads: int = 2
    eval_batch_tokens: int = 8192
    eval_max_doc_tokens: int | None = None  # skip longer held-out documents (quick runs only; logged)
    chat_eval_per_kind: int = 15
    chat_eval_new_tokens: int = 128


QUICK = TrainConfig(
    math_docs=12, max_docs_per_source=12, vocab_size=320, hidden_size=32, num_layers=2, num_heads=2,
    num_kv_heads=1, intermediate_size=64, max_positions=128, seq_len=64, batch_size=2, base_steps=6, base_warmup=2,
    instruct_steps=4, instruct_warmup=1, instruct_replay_fraction=0.25, log_every=2, chat_eval_per_kind=2,
    chat_eval_new_tokens=8, eval_batch_tokens=1024, eval_max_doc_tokens=1500, threads=1,
)

Batches = Callable[[], tuple[torch.Tensor, torch.Tensor]]  # (inputs, targets) of the next step


def make_model(cfg: TrainConfig, seed: int):
    """A freshly initialised Llama with tied embeddings; EOT (id 0) is its bos, eos and pad."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_positions, rope_theta=cfg.rope_theta, tie_word_embeddings=True,
        bos_token_id=0, eos_token_id=0, pad_token_id=0, attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def lm_loss(model, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over targets != -100; bf16 autocast matmuls, fp32 loss."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = model.model(input_ids=inputs, use_cache=False).last_hidden_state
        logits = model.lm_head(hidden)
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)


def adamw(model, lr: float, weight_decay: float, betas) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on norms)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": no_decay,
                              "weight_decay": 0.0}], lr=lr, betas=betas, eps=1e-8)


def make_optimizer(model, lr: float, weight_decay: float, betas, warmup: int, steps: int, min_ratio: float):
    """AdamW and transformers' linear warmup then cosine to min_ratio * lr.

    The shipped weights were trained with warmup factor (step + 1) / warmup, this one is step / warmup (0 at the first
    step), so a retrain does not reproduce them bit for bit; their training_log.json records the old schedule."""
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    opt = adamw(model, lr, weight_decay, betas)
    return opt, get_cosine_with_min_lr_schedule_with_warmup(opt, warmup, steps, min_lr_rate=min_ratio)


def train_loop(model, batches: Batches, steps: int, opt, sched, cfg: TrainConfig, label: str) -> tuple[list, float]:
    """Run `steps` optimizer steps; returns the loss curve [[step, mean loss since last entry, lr], ...] and the
    wall time in seconds."""
    model.train()
    curve, window, t0 = [], [], time.perf_counter()
    for step in range(1, steps + 1):
        inputs, targets = batches()
        loss = lm_loss(model, inputs, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        lr = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        window.append(loss.item())
        if step % cfg.log_every == 0 or step == steps:
            curve.append([step, round(sum(window) / len(window), 5), round(lr, 8)])
            window = []
            elapsed = time.perf_counter() - t0
            print(f"[{label}] step {step}/{steps} loss {curve[-1][1]:.4f} lr {lr:.2e} {elapsed:.0f}s",
                  file=sys.stderr, flush=True)
    return curve, time.perf_counter() - t0


def time_steps(model, batches: Batches, cfg: TrainConfig, n: int = 4) -> float:
    """Median seconds per optimizer step, measured on a throwaway copy (the real model and data are untouched)."""
    trial = copy.deepcopy(model)
    opt = adamw(trial, cfg.base_lr, cfg.weight_decay, cfg.betas)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        inputs, targets = batches()
        lm_loss(trial, inputs, targets).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    return float(np.median(times[1:]))


def save_model(model, tokenizer, folder: Path, generation_eos: list[int]) -> None:
    """bfloat16 safetensors + config + tokenizer + generation config, replacing the folder's files."""
    from transformers import GenerationConfig

    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.iterdir():
        if stale.is_file():
            stale.unlink()
    shipped = copy.deepcopy(model).to(torch.bfloat16)
    shipped.generation_config = GenerationConfig(bos_token_id=0, eos_token_id=generation_eos, pad_token_id=0)
    shipped.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def load_model(folder: Path):
    """The saved model as float32, in eval mode, and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.eval()
    return model, AutoTokenizer.from_pretrained(folder)


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------- base


def _inputs_and_targets(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return rows[:, :-1], rows[:, 1:]


def _benchmark_steps(model, rows: torch.Tensor, cfg: TrainConfig, minutes: float) -> tuple[int, dict]:
    """Base step count that fills `minutes` (a multiple of 10, at least 20), timed on the first rows."""
    probe = iter(rows[i : i + cfg.batch_size] for i in range(0, cfg.batch_size * 4, cfg.batch_size))
    step_s = time_steps(model, lambda: _inputs_and_targets(next(probe)), cfg)
    steps = max(20, int(minutes * 60 / step_s) // 10 * 10)
    print(f"benchmark: {step_s:.3f} s/step -> {steps} base steps for {minutes} min", file=sys.stderr)
    return steps, {"seconds_per_step": round(step_s, 4), "minutes_budget": minutes, "chosen_steps": steps}


def train_base(cfg: TrainConfig, seed: int, minutes: float, rows: torch.Tensor, tokenizer, base_dir: Path) -> dict:
    """Pretrain on packed rows, save to base_dir; returns the log's parameters and training sections."""
    model = make_model(cfg, seed)
    order = cycle_batches(len(rows), cfg.batch_size, seed)
    steps, bench = cfg.base_steps, None
    if steps is None:
        steps, bench = _benchmark_steps(model, rows, cfg, minutes)
    opt, sched = make_optimizer(model, cfg.base_lr, cfg.weight_decay, cfg.betas, cfg.base_warmup, steps,
                                cfg.min_lr_ratio)
    curve, wall = train_loop(model, lambda: _inputs_and_targets(rows[next(order)]), steps, opt, sched, cfg, "base")
    save_model(model, tokenizer, base_dir, [tokenizer.eos_token_id])
    return {
        "parameters": parameter_count(model),
        "training": {"objective": "next-token prediction on all tokens of packed rows",
                     "data": "training split in corpus order, joined as EOT d1 EOT d2 ... EOT, cut into rows of "
                             "seq_len+1 tokens overlapping by one, rows shuffled each epoch",
                     "rows": len(rows), "steps": steps, "tokens_seen": steps * cfg.batch_size * cfg.seq_len,
                     "epochs": round(steps * cfg.batch_size / len(rows), 3), "wall_time_s": round(wall, 1),
                     "step_time_benchmark": bench, "precision": PRECISION, "optimizer": OPTIMIZER,
                     "loss_curve": curve},
    }


# ------------------------------------------------------------------------------------------- instruct


def _chat_batches(chat_ids: torch.Tensor, chat_mask: torch.Tensor, rows: torch.Tensor, n_replay: list[int],
                  batch_size: int, seed: int) -> Batches:
    """Each step: chat rows (targets: trained tokens only) plus that step's replayed pretraining rows (all tokens)."""
    chat_order, replay_order = cycle_rows(len(chat_ids), seed + 1), cycle_rows(len(rows), seed + 2)
    replays = iter(n_replay)

    def next_batch():
        r = next(replays)
        index = torch.tensor([next(chat_order) for _ in range(batch_size - r)], dtype=torch.int64)
        ids, mask = chat_ids[index], chat_mask[index]
        inputs, targets = ids[:, :-1], torch.where(mask[:, 1:], ids[:, 1:], -100)
        if r:
            replay = rows[torch.tensor([next(replay_order) for _ in range(r)], dtype=torch.int64)]
            inputs, targets = torch.cat([inputs, replay[:, :-1]]), torch.cat([targets, replay[:, 1:]])
        return inputs, targets

    return next_batch


def train_instruct(model, cfg: TrainConfig, seed: int, train: list[Record], rows: torch.Tensor, chat_tokenizer,
                   inst_dir: Path) -> dict:
    """Fine-tune `model` on chat conversations made from `train` (plus replayed `rows`), save it to inst_dir;
    returns the log's training section."""
    kinds = chat_examples(train, seed)
    convs, dropped = encode_conversations(chat_tokenizer, kinds, cfg.seq_len + 1, seed)
    eot = chat_tokenizer.eos_token_id
    chat_ids, chat_mask = chat_rows(convs, cfg.seq_len, eot)
    n_replay = replay_schedule(cfg.instruct_replay_fraction, cfg.batch_size, cfg.instruct_steps)
    batches = _chat_batches(chat_ids, chat_mask, rows, n_replay, cfg.batch_size, seed)
    opt, sched = make_optimizer(model, cfg.instruct_lr, cfg.instruct_weight_decay, cfg.betas, cfg.instruct_warmup,
                                cfg.instruct_steps, cfg.min_lr_ratio)
    curve, wall = train_loop(model, batches, cfg.instruct_steps, opt, sched, cfg, "instruct")
    save_model(model, chat_tokenizer, inst_dir, [chat_tokenizer.convert_tokens_to_ids(IM_END), eot])
    chat_rows_used = cfg.instruct_steps * cfg.batch_size - sum(n_replay)
    return {
        "objective": "next-token loss on assistant content and its <|im_end|> only"
                     + ("; plus replayed pretraining rows (all tokens)" if sum(n_replay) else ""),
        "data": {"conversations": {k: len(v) for k, v in kinds.items()}, "dropped_longer_than_row": dropped,
                 "rows": len(chat_ids), "trained_tokens_per_epoch": int(chat_mask.sum()),
                 "chat_rows_used": chat_rows_used, "replay_rows_used": sum(n_replay),
                 "replay": "pretraining rows (the base's own data) mixed into the batches: "
                           "instruct_replay_fraction of all rows, spread evenly over the steps",
                 "system_prompt": SYSTEM_PROMPT + " (in a seeded half of the conversations)",
                 "questions": {"pydoc": PYDOC_QUESTIONS, "code": CODE_QUESTIONS},
                 "math": "the training split's Question/Answer pairs, 1-3 per conversation as turns"},
        "steps": cfg.instruct_steps, "chat_epochs": round(chat_rows_used / len(chat_ids), 3),
        "wall_time_s": round(wall, 1), "precision": PRECISION, "optimizer": OPTIMIZER, "loss_curve": curve,
    }
