"""Run GGUF files in llama.cpp (llama-cpp-python) and save what it computes; runs in the llamacpp venv.

    <llamacpp venv python> launch/bench/llamacpp_run.py JOBS.json OUT_DIR

JOBS.json is a list of {"name", "model", "n_ctx", "prompt": [ids], "greedy": N, "greedy_prompts": [[ids], ...],
"text"}. For each job OUT_DIR/<name>.npz holds `logits` (every prompt position, float32), `greedy`
(per greedy prompt, N tokens chosen by argmax of llama.cpp's own logits, fed back one at a time
through its KV cache)
and `text_ids` (llama.cpp's tokenization of `text`, no special tokens added). The KV cache is f32 so
the comparison measures the model file, not cache rounding, unless the job says "kv": "f16"
(llama.cpp's default). Only llama_cpp and numpy are imported: this venv has no torch.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import llama_cpp
from llama_cpp import Llama


KV_TYPES = {"f32": llama_cpp.GGML_TYPE_F32, "f16": llama_cpp.GGML_TYPE_F16}


def run(job: dict, out_dir: str) -> None:
    llm = Llama(model_path=job["model"], n_ctx=job["n_ctx"], n_batch=job["n_ctx"], n_ubatch=job["n_ctx"],
                logits_all=True, n_threads=2, n_threads_batch=2, verbose=False, seed=0,
                type_k=KV_TYPES[job.get("kv", "f32")], type_v=KV_TYPES[job.get("kv", "f32")])
    result = {}
    if job.get("prompt"):
        llm.reset()
        llm.eval(job["prompt"])
        result["logits"] = np.array(llm.scores[: len(job["prompt"])], dtype=np.float32)
    if job.get("greedy"):
        runs = []
        for prompt in job["greedy_prompts"]:
            llm.reset()
            llm.eval(prompt)
            tokens = []
            for _ in range(job["greedy"]):
                token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
                tokens.append(token)
                llm.eval([token])
            runs.append(tokens)
        result["greedy"] = np.array(runs, dtype=np.int64)
    if job.get("text") is not None:
        result["text_ids"] = np.array(llm.tokenize(job["text"].encode("utf-8"), add_bos=False, special=False),
                                      dtype=np.int64)
    np.savez(os.path.join(out_dir, job["name"] + ".npz"), **result)
    llm.close()


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        jobs = json.load(f)
    for job in jobs:
        run(job, sys.argv[2])
    print(f"llama-cpp-python {llama_cpp.__version__}: ran {len(jobs)} job(s)")
