"""(e) export: `foundry export hf` of the resumed checkpoint, its logits in transformers against foundry's own model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any, Optional

from profiles import REPO, Profile
from report import Report, StepFailed
from runs import foundry_command

COMPARE = r'''
import json, sys, warnings
import torch
hf_dir, checkpoint, data_root, device, n_tokens = sys.argv[1:6]
n_tokens = int(n_tokens)
from transformers import AutoModelForCausalLM
from foundry.data.prep.demo_corpus import STREAMS
from foundry.data.tokenizer import build_tokenizer
from foundry.checkpoint.meta import find_run_meta
from foundry.checkpoint.reader import iter_model_tensors
from foundry.models.mpt.configuration import MPTConfig
from foundry.models.mpt.modeling import MPTForCausalLM

# Input: the start of one held-out (val) document per stream, in the run's tokenizer.
tokenizer = build_tokenizer(data_root + '/tokenizer.json')
rows = []
for stream in STREAMS:
    with open(f'{data_root}/corpus/{stream}.jsonl') as f:
        texts = [json.loads(line)['text'] for line in f]
    text = texts[-1]  # the last documents of each stream are its val split
    ids = tokenizer(text)['input_ids']
    while len(ids) < n_tokens:
        ids = ids + ids
    rows.append(ids[:n_tokens])
ids = torch.tensor(rows, device=device)
torch.backends.cuda.matmul.allow_tf32 = False  # fp32 on both sides, whatever imported modules set
torch.backends.cudnn.allow_tf32 = False

config = MPTConfig.from_pretrained(find_run_meta(checkpoint))
config.init_device = 'cpu'
ours = MPTForCausalLM(config)
state = {}
for group in iter_model_tensors(checkpoint):
    state.update(group)
missing, unexpected = ours.load_state_dict(state, strict=False)
assert not unexpected and set(missing) <= {'lm_head.weight'}, (missing, unexpected)
ours = ours.to(device).float().eval()
theirs = AutoModelForCausalLM.from_pretrained(hf_dir).to(device).float().eval()
with torch.no_grad(), warnings.catch_warnings():
    warnings.simplefilter('ignore')
    a = theirs(ids).logits.float()
    b = ours(input_ids=ids).logits.float()
    diff = (a - b).abs().max().item()
    generated = theirs.generate(ids[:1, :16], max_new_tokens=8, do_sample=False, pad_token_id=0)
print('COMPARE ' + json.dumps({
    'max_abs_diff': diff, 'max_abs_logit': b.abs().max().item(), 'shape': list(a.shape),
    'theirs_class': type(theirs).__name__, 'attn_impl': config.attn_config['attn_impl'],
    'argmax_agree': (a.argmax(-1) == b.argmax(-1)).float().mean().item(),
    'generated': tokenizer.decode(generated[0, 16:].tolist()), 'generated_len': int(generated.shape[1])}))
'''


def export_check(report: Report, profile: Profile, checkpoint: str, data: dict[str, Any], env: dict[str, str],
                 site: Optional[str], work: str, deadline: float) -> dict[str, Any]:
    hf_dir = os.path.join(work, 'hf')
    shutil.rmtree(hf_dir, ignore_errors=True)
    log = os.path.join(report.out, 'logs', 'export.log')
    cmd = [*foundry_command(site), 'export', 'hf', checkpoint, hf_dir]
    report.say('export: ' + ' '.join(cmd))
    started = time.time()
    with open(log, 'w') as f:
        f.write('$ ' + ' '.join(cmd) + '\n')
        f.flush()
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                              timeout=max(10, deadline - time.time()))
    if proc.returncode != 0:
        raise StepFailed(f'`foundry export hf` exited with {proc.returncode}; log tail:\n{_tail(log)}')
    export_s = time.time() - started
    device = 'cuda' if profile.device == 'gpu' else 'cpu'
    cmd = [sys.executable, '-c', COMPARE, hf_dir, checkpoint, data['out_root'], device, str(profile.logits_tokens)]
    with open(log, 'a') as f:
        f.write('$ python -c COMPARE ' + ' '.join(cmd[3:]) + '\n')
        f.flush()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=f, text=True, env=env, cwd=REPO,
                              timeout=max(10, deadline - time.time()))
        f.write(proc.stdout)
    if proc.returncode != 0:
        raise StepFailed(f'loading the export with transformers / comparing logits failed; log tail:\n{_tail(log)}')
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith('COMPARE '))[8:])
    result.update(hf_dir=hf_dir, checkpoint=checkpoint, bound=profile.logits_bound, export_s=export_s,
                  seconds=time.time() - started, device=device)
    with open(os.path.join(report.out, 'export.json'), 'w') as f:
        json.dump(result, f, indent=2)
    return result


def describe_export(r: dict[str, Any]) -> str:
    return (f'foundry export hf -> transformers {r["theirs_class"]} on {r["device"]}: max |logit diff| vs foundry '
            f'({r["attn_impl"]}) {r["max_abs_diff"]:.3g} (bound {r["bound"]:g}; logits up to {r["max_abs_logit"]:.1f}, '
            f'argmax agrees {r["argmax_agree"] * 100:.1f}%) on {r["shape"][0]} x {r["shape"][1]} held-out tokens; '
            f'greedy generate ok')


def _tail(path: str, chars: int = 3000) -> str:
    with open(path, errors='replace') as f:
        return f.read()[-chars:]
