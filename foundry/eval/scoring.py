"""The model passes behind every ICL metric: log-likelihoods and greedy generation.

Three kinds of batch, each a fixed number of forward passes known before it runs (so ranks
that shard the model can agree on a count before the first one, see runner.py):

- `full`: each request's context + continuation (minus its last token) as one right-padded
  row; one forward. Used for language_modeling and schema (schema's contexts differ).
- `shared`: questions whose choices share one context (multiple_choice). The contexts run
  once, left-padded, filling a KV cache; the cache rows are then repeated per choice and every
  choice's continuation runs in one batch against it: two forwards per batch whatever the
  number of choices, and each context is computed once instead of once per choice.
- `generate`: greedy decoding with a KV cache, a fixed number of steps per batch (the batch's
  longest answer budget); no early stop, so the count is known in advance.

Every log-probability is taken in fp32 from the logits.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from transformers import DynamicCache

from foundry.eval.prompts import Item


@dataclass
class Loglik:
    """Sum of the continuation's token log-probabilities, its token count, and whether every token was the argmax."""

    logprob: float
    n_tokens: int
    greedy: bool

    @property
    def mean(self) -> float:
        return self.logprob / self.n_tokens


class ModelRunner:
    """Calls an MPTForCausalLM-like model without gradients and counts its forward passes."""

    def __init__(self, model: torch.nn.Module, device: torch.device,
                 precision_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                 pad_id: int = 0):
        self.model = model
        self.device = device
        self.precision_context = precision_context
        self.pad_id = pad_id
        self.forwards = 0

    def __call__(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, cache=None,
                 use_cache: bool = False):
        if use_cache and cache is None:
            cache = _LeafCache()
        with torch.no_grad(), self.precision_context():
            out = self.model(input_ids=input_ids.to(self.device),
                             attention_mask=None if attention_mask is None else attention_mask.to(self.device),
                             past_key_values=cache, use_cache=use_cache)
        self.forwards += 1
        return out.logits.float(), cache

    def idle_forward(self) -> None:
        """A one-token pass whose result is dropped: keeps a rank in step with ranks that have more work."""
        self(torch.full((1, 1), self.pad_id, dtype=torch.long))


class _LeafCache(DynamicCache):
    """A DynamicCache that torch's pytree treats as one opaque leaf.

    transformers 4.x registers DynamicCache as a pytree node, and FSDP2 maps over each sharded block's
    forward arguments with pytree, so every block appended its keys and values to a rebuilt copy and the
    caller's cache stayed empty (seen as a mask/bias length mismatch on the second pass under FSDP on the
    stable stack). Registration is by exact type, so a subclass is passed through as the same object.
    """


# ---------------------------------------------------------------- planning

def plan_batches(items: list[Item], kind: str, batch_size: int) -> list[list[Item]]:
    """Group items into batches (longest first, for little padding); the same call plans and runs."""
    work = [it for it in items if not it.skipped]
    work.sort(key=lambda it: (-max(len(c) + len(k) for c, k in it.requests), it.index))
    if kind == 'full':
        # Batch by request (schema items hold one per context option); keep an item's requests together.
        batches, current, rows = [], [], 0
        for it in work:
            if current and rows + len(it.requests) > batch_size:
                batches.append(current)
                current, rows = [], 0
            current.append(it)
            rows += len(it.requests)
        if current:
            batches.append(current)
        return batches
    return [work[i:i + batch_size] for i in range(0, len(work), batch_size)]


def forwards_in(batches: list[list[Item]], kind: str) -> int:
    if kind == 'full':
        return len(batches)
    if kind == 'shared':
        return 2 * len(batches)
    return sum(max(it.max_new_tokens for it in batch) for batch in batches)


# ---------------------------------------------------------------- passes

def score_full(runner: ModelRunner, batch: list[Item]) -> dict[int, list[Loglik]]:
    """One right-padded forward over every request of the batch's items."""
    rows = [(it.index, ctx, cont) for it in batch for ctx, cont in it.requests]
    width = max(len(ctx) + len(cont) - 1 for _, ctx, cont in rows)
    input_ids = torch.full((len(rows), width), runner.pad_id, dtype=torch.long)
    for r, (_, ctx, cont) in enumerate(rows):
        seq = (ctx + cont)[:-1]
        input_ids[r, :len(seq)] = torch.tensor(seq)
    # Right padding needs no mask: causal attention never lets a real token see a later pad.
    logits, _ = runner(input_ids)
    logprobs = F.log_softmax(logits, dim=-1)
    out: dict[int, list[Loglik]] = {}
    for r, (index, ctx, cont) in enumerate(rows):
        positions = torch.arange(len(ctx) - 1, len(ctx) + len(cont) - 1)
        out.setdefault(index, []).append(_loglik(logprobs[r, positions], logits[r, positions], cont))
    return out


def score_shared(runner: ModelRunner, batch: list[Item]) -> dict[int, list[Loglik]]:
    """Contexts once (KV cache), then every choice of every question in one batch against it."""
    contexts = [it.requests[0][0] for it in batch]
    if any(ctx != contexts[q] for q, it in enumerate(batch) for ctx, _ in it.requests):
        raise ValueError('score_shared needs one context per question (prompts.build_item makes it so)')
    ctx_width = max(map(len, contexts))
    ctx_ids = torch.full((len(batch), ctx_width), runner.pad_id, dtype=torch.long)
    ctx_mask = torch.zeros((len(batch), ctx_width), dtype=torch.long)
    for q, ctx in enumerate(contexts):  # left padding: every context ends at the same position
        ctx_ids[q, ctx_width - len(ctx):] = torch.tensor(ctx)
        ctx_mask[q, ctx_width - len(ctx):] = 1
    last_logits, cache = runner(ctx_ids, ctx_mask, use_cache=True)
    last_logits = last_logits[:, -1]
    last_logprobs = F.log_softmax(last_logits, dim=-1)

    rows = [(q, it.index, cont) for q, it in enumerate(batch) for _, cont in it.requests]
    cont_width = max(1, max(len(cont) - 1 for _, _, cont in rows))
    cont_ids = torch.full((len(rows), cont_width), runner.pad_id, dtype=torch.long)
    cont_mask = torch.zeros((len(rows), cont_width), dtype=torch.long)
    for r, (_, _, cont) in enumerate(rows):
        cont_ids[r, :len(cont) - 1] = torch.tensor(cont[:-1], dtype=torch.long)
        cont_mask[r, :len(cont) - 1] = 1
    question_of_row = torch.tensor([q for q, _, _ in rows])
    cache.batch_select_indices(question_of_row.to(runner.device))
    mask = torch.cat([ctx_mask[question_of_row], cont_mask], dim=1)
    logits, _ = runner(cont_ids, mask, cache=cache, use_cache=True)
    logprobs = F.log_softmax(logits, dim=-1)

    out: dict[int, list[Loglik]] = {}
    for r, (q, index, cont) in enumerate(rows):
        # Token 0 is predicted by the context's last position, token j > 0 by continuation position j - 1.
        lp = torch.cat([last_logprobs[q, None], logprobs[r, :len(cont) - 1]])
        lg = torch.cat([last_logits[q, None], logits[r, :len(cont) - 1]])
        out.setdefault(index, []).append(_loglik(lp, lg, cont))
    return out


def generate_greedy(runner: ModelRunner, batch: list[Item]) -> dict[int, list[int]]:
    """Greedy continuation of each prompt, the batch's largest `max_new_tokens` steps."""
    prompts = [it.requests[0][0] for it in batch]
    steps = max(it.max_new_tokens for it in batch)
    width = max(map(len, prompts))
    ids = torch.full((len(batch), width), runner.pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for b, prompt in enumerate(prompts):
        ids[b, width - len(prompt):] = torch.tensor(prompt)
        mask[b, width - len(prompt):] = 1
    logits, cache = runner(ids, mask, use_cache=True)
    generated = []
    for step in range(steps):
        next_ids = logits[:, -1].argmax(dim=-1, keepdim=True).cpu()
        generated.append(next_ids)
        if step == steps - 1:
            break
        mask = torch.cat([mask, torch.ones_like(next_ids)], dim=1)
        logits, cache = runner(next_ids, mask, cache=cache, use_cache=True)
    tokens = torch.cat(generated, dim=1)
    return {it.index: tokens[b, :it.max_new_tokens].tolist() for b, it in enumerate(batch)}


def _loglik(logprobs: torch.Tensor, logits: torch.Tensor, cont: list[int]) -> Loglik:
    target = torch.tensor(cont, device=logprobs.device)
    picked = logprobs.gather(-1, target[:, None]).squeeze(-1)
    greedy = bool((logits.argmax(dim=-1) == target).all())
    return Loglik(logprob=float(picked.sum()), n_tokens=len(cont), greedy=greedy)
