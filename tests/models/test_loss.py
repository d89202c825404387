"""The chunked cross-entropy equals the plain one (loss and gradients) without full logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from mpt_helpers import VOCAB, make_ids, tiny_config
from torch.utils._python_dispatch import TorchDispatchMode

from foundry.models import ComposerMPTCausalLM, build_mpt_causal_lm
from foundry.models.mpt.loss import causal_lm_loss, chunk_tokens_for, chunked_causal_lm_loss


def plain(h, w, labels, scale=None):
    logits = F.linear(h, w)
    if scale is not None:
        logits = logits * scale
    return causal_lm_loss(logits, labels)


def inputs(batch=3, seq=20, d=16, vocab=VOCAB, seed=0, ignore=True):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(batch, seq, d, generator=g, requires_grad=True)
    w = torch.randn(vocab, d, generator=g, requires_grad=True)
    labels = torch.randint(0, vocab, (batch, seq), generator=g)
    if ignore:
        labels[1, 12:] = -100  # right padding
        labels[2, 3] = -100
    return h, w, labels


@pytest.mark.parametrize("chunk", [1, 7, 16, 60, 1000])
@pytest.mark.parametrize("scale", [None, 0.25])
def test_chunked_equals_plain_loss_and_gradients(chunk, scale):
    h, w, labels = inputs()
    ref = plain(h, w, labels, scale)
    ref_gh, ref_gw = torch.autograd.grad(ref, (h, w))
    out = chunked_causal_lm_loss(h, w, labels, scale, chunk_tokens=chunk)
    gh, gw = torch.autograd.grad(out, (h, w))
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(gh, ref_gh, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(gw, ref_gw, atol=1e-6, rtol=1e-5)


def test_incoming_gradient_scales_the_result():
    h, w, labels = inputs()
    (ref_gh,) = torch.autograd.grad(plain(h, w, labels) * 3.5, h)
    (gh,) = torch.autograd.grad(chunked_causal_lm_loss(h, w, labels, chunk_tokens=8) * 3.5, h)
    torch.testing.assert_close(gh, ref_gh, atol=1e-6, rtol=1e-5)


def test_only_requested_gradients_and_no_grad_mode():
    h, w, labels = inputs()
    w_frozen = w.detach()
    (gh,) = torch.autograd.grad(chunked_causal_lm_loss(h, w_frozen, labels, chunk_tokens=8), h)
    (ref,) = torch.autograd.grad(plain(h, w_frozen, labels), h)
    torch.testing.assert_close(gh, ref, atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(chunked_causal_lm_loss(h, w, labels), plain(h, w, labels))


def test_every_target_ignored_gives_nan_like_plain():
    h, w, labels = inputs()
    labels[:] = -100
    assert torch.isnan(plain(h, w, labels)) and torch.isnan(chunked_causal_lm_loss(h, w, labels))


def test_bf16_autocast_close_to_plain():
    h, w, labels = inputs(d=32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = plain(h, w, labels)
        out = chunked_causal_lm_loss(h, w, labels, chunk_tokens=9)
    ref_gh, ref_gw = torch.autograd.grad(ref, (h, w))
    gh, gw = torch.autograd.grad(out, (h, w))
    assert gh.dtype == h.dtype and gw.dtype == w.dtype
    torch.testing.assert_close(out, ref, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(gh, ref_gh, atol=2e-3, rtol=5e-2)
    torch.testing.assert_close(gw, ref_gw, atol=2e-3, rtol=5e-2)


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_no_full_vocabulary_logits_exist():
    batch, seq, vocab = 4, 64, 4096
    h, w, labels = inputs(batch=batch, seq=seq, d=16, vocab=vocab)
    chunk = 32
    with LargestTensor() as plain_seen:
        plain(h, w, labels).backward()
    with LargestTensor() as chunked_seen:
        chunked_causal_lm_loss(h, w, labels, chunk_tokens=chunk).backward()
    assert plain_seen.largest >= batch * seq * vocab
    assert chunked_seen.largest == max(chunk * vocab, w.numel())  # one chunk's logits at most


def test_default_chunk_size():
    assert chunk_tokens_for(50432) == 166  # CPU: 2^23 logits per chunk
    assert chunk_tokens_for(50432, device_type="cuda") == 2661  # GPU: 2^27
    assert chunk_tokens_for(8) == 2 ** 20
    assert chunk_tokens_for(8, chunk_elements=64) == 8


# ---------------------------------------------------------------- through the model and the builder
def test_composer_model_chunked_equals_plain():
    ids = make_ids(batch=3, seq=24)
    labels = ids.clone()
    labels[0, 20:] = -100
    batch = {"input_ids": ids, "labels": labels, "attention_mask": (labels != -100).long(),
             "sequence_id": torch.zeros_like(ids)}
    losses, grads = {}, {}
    for loss_fn in ("torch_crossentropy", "chunked_crossentropy"):
        torch.manual_seed(0)
        model = ComposerMPTCausalLM(tiny_config(logit_scale="inv_sqrt_d_model"), loss_fn=loss_fn).train()
        loss = model.loss(model(batch), batch)
        loss.backward()
        losses[loss_fn] = loss.detach()
        grads[loss_fn] = {n: p.grad for n, p in model.named_parameters()}
    torch.testing.assert_close(losses["chunked_crossentropy"], losses["torch_crossentropy"], atol=1e-6, rtol=1e-5)
    for name, g in grads["torch_crossentropy"].items():
        torch.testing.assert_close(grads["chunked_crossentropy"][name], g, atol=1e-6, rtol=1e-5, msg=name)


def test_chunked_model_still_gives_logits_for_eval():
    torch.manual_seed(0)
    model = ComposerMPTCausalLM(tiny_config(), loss_fn="chunked_crossentropy").eval()
    ids = make_ids()
    batch = {"input_ids": ids, "labels": ids}
    out = model(batch)
    assert out.logits is None and out.loss.ndim == 0
    logits = model.eval_forward(batch, out)
    assert logits.shape == (*ids.shape, VOCAB)
    assert model.loss(logits, batch).item() == pytest.approx(out.loss.item(), rel=1e-5)


def test_builder_selects_chunked_loss_without_warning(recwarn):
    section = {"d_model": 32, "n_heads": 4, "n_layers": 2, "max_seq_len": 64, "vocab_size": VOCAB}
    model = build_mpt_causal_lm({**section, "loss_fn": "chunked_crossentropy"})
    assert model.loss_fn == "chunked_crossentropy"
    assert not [w for w in recwarn if "loss_fn" in str(w.message)]
    assert build_mpt_causal_lm(section).loss_fn == "chunked_crossentropy"  # the default
    assert build_mpt_causal_lm({**section, "loss_fn": "fused_crossentropy"}).loss_fn == "chunked_crossentropy"
    assert build_mpt_causal_lm({**section, "loss_fn": "torch_crossentropy"}).loss_fn == "torch_crossentropy"
