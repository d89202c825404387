"""Next-token cross-entropy, shared by MPTForCausalLM and the composer wrapper.

Labels arrive aligned with input_ids (the collator copies input_ids and puts -100 on padding), so
position t is scored against labels[t + 1]. We shift the labels, not the logits: slicing logits
would copy a (batch, seq, vocab) tensor, the biggest activation in the model.

Two implementations of the same loss (`model.loss_fn`):

- `torch_crossentropy` (`causal_lm_loss`): logits for the whole batch, then F.cross_entropy. The
  logits, their fp32 log-softmax and its gradient are each (tokens x vocab): with MPT's 50k vocab
  they dwarf every other activation of a small model.
- `chunked_crossentropy` (`chunked_causal_lm_loss`): takes the final hidden states and the output
  embedding instead of logits, and walks the tokens in chunks of about 2^23 (CPU) or 2^27 (GPU)
  logits. Each chunk's fp32 logits become its loss and, right away, its gradients with respect to
  the hidden states and the embedding (softmax minus one-hot, two matmuls), with one exp per
  logit where log-softmax and its backward take two (on a CPU the exps, not the matmuls, are
  most of the time of a large-vocabulary loss); only those gradients
  (the size of the hidden states and of the embedding) are kept for backward, which just scales
  them by the incoming gradient. Full-vocabulary logits exist one chunk at a time, and no matmul
  is recomputed: the FLOPs are those of the plain loss (one forward, two backward matmuls).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
# llm-foundry's `model.loss_fn` values; all compute the same cross-entropy, only the kernel differs.
# 'fused_crossentropy' (its flash-attn Triton kernel, for the same purpose) runs as the chunked loss.
LOSS_FNS = ("torch_crossentropy", "fused_crossentropy", "chunked_crossentropy")
DEFAULT_LOSS_FN = "chunked_crossentropy"
# Elements of one chunk's fp32 logits, by device: on CPU 2^23 (32 MiB; not tuned: timings on the
# shared development machine were too noisy to rank 2^22..2^25), on a GPU 2^27 (512 MiB: fewer,
# larger kernels; on an H200, mpt-125m at seq 2048 ran 46% faster than with 2^23, see
# launch/bench/gpu_bench.py --loss-chunk-elements). Either is small next to the full
# (tokens x vocab) logits of a real batch. CHUNK_ELEMENTS, when set, overrides both.
CPU_CHUNK_ELEMENTS = 2 ** 23
GPU_CHUNK_ELEMENTS = 2 ** 27
CHUNK_ELEMENTS: Optional[int] = None


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """targets[:, t] = labels[:, t + 1]; the last position has no next token and is ignored."""
    targets = torch.full_like(labels, IGNORE_INDEX)
    targets[:, :-1] = labels[:, 1:]
    return targets


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over every next-token target that is not -100 (computed in fp32)."""
    targets = shift_labels(labels)
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)


def chunk_tokens_for(vocab_size: int, chunk_elements: Optional[int] = None, device_type: str = "cpu") -> int:
    if chunk_elements is None:
        chunk_elements = CHUNK_ELEMENTS or (CPU_CHUNK_ELEMENTS if device_type == "cpu" else GPU_CHUNK_ELEMENTS)
    return max(1, chunk_elements // vocab_size)


def chunked_causal_lm_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                           logit_scale: Optional[float] = None,
                           chunk_tokens: Optional[int] = None) -> torch.Tensor:
    """`causal_lm_loss(F.linear(hidden, weight) * logit_scale, labels)` without the full logits.

    hidden: (batch, seq, d_model) final hidden states; weight: (vocab, d_model) output embedding
    (the tied `wte.weight`); labels: (batch, seq), unshifted, -100 where ignored.
    """
    targets = shift_labels(labels).flatten()
    chunk = chunk_tokens or chunk_tokens_for(weight.shape[0], device_type=hidden.device.type)
    return _ChunkedLinearCrossEntropy.apply(hidden.flatten(0, 1), weight, targets, logit_scale, chunk)


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Mean CE of (h @ w.T * scale) against targets, chunked over tokens; gradients made in forward."""

    @staticmethod
    def forward(ctx, h, w, targets, scale, chunk):
        device_type = h.device.type
        if torch.is_autocast_enabled(device_type):
            dtype = torch.get_autocast_dtype(device_type)  # as F.linear would compute the logits
        else:
            dtype = torch.promote_types(h.dtype, w.dtype)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        valid = targets != IGNORE_INDEX
        safe_targets = targets.masked_fill(~valid, 0)
        n_tokens = h.shape[0]
        loss_sum = torch.zeros((), dtype=torch.float32, device=h.device)
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros(w.shape, dtype=torch.float32, device=w.device) if need_w else None
        with torch.autocast(device_type, enabled=False):
            hc_all = h.to(dtype)
            wc = w.to(dtype)
            for start in range(0, n_tokens, chunk):
                end = min(start + chunk, n_tokens)
                hc = hc_all[start:end]
                logits = (hc @ wc.t()).float()
                if scale is not None:
                    logits.mul_(scale)
                tgt = safe_targets[start:end]
                v = valid[start:end].to(logits.dtype)
                target_logit = logits.gather(1, tgt[:, None]).squeeze(1)
                # One exp over the chunk serves both the loss (log of the sum) and the gradient
                # (the normalised exponentials), in place: the chunk's logits are the only big buffer.
                row_max = logits.amax(dim=-1, keepdim=True)
                exps = logits.sub_(row_max).exp_()
                sum_exp = exps.sum(dim=-1)
                lse = sum_exp.log() + row_max.squeeze(1)
                loss_sum += ((lse - target_logit) * v).sum()
                if need_h or need_w:
                    # d(sum of token losses)/d(logits) = softmax - one_hot, zero on ignored rows
                    # (and times the logit scale, for the gradient of the unscaled product).
                    row_factor = v * (1.0 if scale is None else scale)
                    g = exps.mul_((row_factor / sum_exp)[:, None])
                    g.scatter_add_(1, tgt[:, None], -row_factor[:, None])
                    g = g.to(dtype)
                    if need_h:
                        grad_h[start:end] = g @ wc
                    if need_w:
                        if dtype == torch.float32:
                            grad_w.addmm_(g.t(), hc)
                        else:
                            grad_w += (g.t() @ hc).float()
        n_valid = valid.sum()
        ctx.save_for_backward(grad_h, grad_w, n_valid)
        ctx.w_dtype = w.dtype
        return loss_sum / n_valid  # NaN when every target is ignored, as F.cross_entropy

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w, n_valid = ctx.saved_tensors
        factor = grad_out / n_valid
        dh = (grad_h * factor.to(grad_h.dtype)) if grad_h is not None else None
        dw = (grad_w * factor).to(ctx.w_dtype) if grad_w is not None else None
        return dh, dw, None, None, None
