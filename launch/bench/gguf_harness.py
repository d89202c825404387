"""Shared by tests/export/test_gguf_llamacpp.py and launch/bench/gguf_parity.py: foundry's numbers, llama.cpp's, and the measures.

llama.cpp runs in its own venv (llamacpp_venv.py) through llamacpp_run.py; llama.cpp's converter
(convert_hf_to_gguf.py from the same source package) runs in the calling Python with the vendored
gguf-py first on its path, as the script arranges itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import llamacpp_venv

HERE = Path(__file__).resolve().parent


def tiny_model(seed: int, vocab_size: int, max_seq_len: int, train_on=None, **overrides):
    """A d_model-64, 2-layer MPT with every weight random (a tensor in the wrong place shows), trained 30 steps on
    `train_on` if given: a trained model's clear top-1 margins (a random model's top two of 50k logits are so
    close that q8_0's rounding reorders them far more often than in any trained model)."""
    import torch

    from foundry.models.mpt.configuration import MPTConfig
    from foundry.models.mpt.modeling import MPTForCausalLM

    kwargs = dict(d_model=64, n_heads=4, n_layers=2, expansion_ratio=4, max_seq_len=max_seq_len, vocab_size=vocab_size,
                  attn_config={'attn_impl': 'torch'}, init_device='cpu')
    kwargs.update(overrides)
    torch.manual_seed(seed)
    model = MPTForCausalLM(MPTConfig(**kwargs))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    if train_on is not None:
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        ids = torch.tensor([train_on])
        for _ in range(30):
            loss = torch.nn.functional.cross_entropy(model(ids).logits[0, :-1], ids[0, 1:])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def foundry_logits(model, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float().numpy()


def foundry_greedy(model, prompt: list[int], n: int) -> list[int]:
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def run_llamacpp(jobs: list[dict], work: Path) -> dict[str, dict[str, np.ndarray]]:
    """Each job's llama.cpp results (see llamacpp_run.py), from one process in the llamacpp venv."""
    work.mkdir(parents=True, exist_ok=True)
    spec = work / "jobs.json"
    spec.write_text(json.dumps(jobs))
    done = subprocess.run([str(llamacpp_venv.venv_python()), str(HERE / "llamacpp_run.py"), str(spec), str(work)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"llama.cpp run failed ({done.returncode}):\n{done.stderr[-4000:]}")
    results = {}
    for job in jobs:
        with np.load(work / f"{job['name']}.npz") as data:
            results[job["name"]] = {k: data[k] for k in data.files}
    return results


def run_converter(hf_dir: str, out: str, outtype: str = "f32") -> subprocess.CompletedProcess:
    """llama.cpp's own convert_hf_to_gguf.py on a Hugging Face folder (returns the finished process)."""
    env = dict(os.environ)
    env.pop("NO_LOCAL_GGUF", None)  # the script then puts its vendored gguf-py first
    return subprocess.run([sys.executable, str(llamacpp_venv.converter_script()), hf_dir, "--outfile", out,
                           "--outtype", outtype], capture_output=True, text=True, env=env)


def max_relative_difference(reference: np.ndarray, other: np.ndarray) -> float:
    """max |difference| over every position and token, relative to the largest |logit| of the reference."""
    return float(np.abs(reference - other).max() / np.abs(reference).max())


def top1_agreement(reference: np.ndarray, other: np.ndarray) -> float:
    return float((reference.argmax(-1) == other.argmax(-1)).mean())
