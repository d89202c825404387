"""MPT folders across code bases: llm-foundry 0.22 -> foundry, foundry -> llm-foundry (and transformers).

    .venv/bin/python launch/bench/llmfoundry_parity.py [--out launch/bench/results/llmfoundry_parity.md]

For each small fp32 variant (MHA/GQA/MQA, biases, qk_ln with each norm_type, learned positions,
clip_qkv, softmax_scale, alibi_bias_max, norm_eps, ...):
  (a) llm-foundry builds it, randomises every weight, save_pretrained; foundry's
      MPTForCausalLM.from_pretrained loads the folder; logits on the same ids are compared;
  (b) foundry builds and saves it; llm-foundry's own MPTForCausalLM.from_pretrained loads it (and
      transformers' native MptForCausalLM, where the export says the features map to it).
Then a short foundry training run (real launcher, 2 processes) starts from a folder llm-foundry wrote,
through `model.pretrained_model_name_or_path`.

llm-foundry runs in its own venv (launch/bench/llmfoundry_venv.py; never a dependency of foundry),
through launch/bench/llmfoundry_side.py, which imports llm-foundry only.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

TOLERANCE = 1e-4
BASE = dict(d_model=64, n_heads=4, n_layers=2, expansion_ratio=4, max_seq_len=64, vocab_size=128, no_bias=True,
            learned_pos_emb=False, norm_type='low_precision_layernorm', norm_eps=1e-5, tie_word_embeddings=True,
            attn_config=dict(attn_impl='torch', attn_type='multihead_attention', alibi=True, alibi_bias_max=8,
                             qk_ln=False, clip_qkv=None, softmax_scale=None))


def variant(name: str, attn: dict | None = None, **top) -> dict:
    config = copy.deepcopy(BASE)
    config.update(top)
    config['attn_config'].update(attn or {})
    return {'name': name, 'config': config}


GQA = {'attn_type': 'grouped_query_attention', 'kv_n_heads': 2}
VARIANTS = [
    variant('mha-alibi (MPT-7B)'),
    variant('gqa-2kv', GQA),
    variant('mqa', {'attn_type': 'multiquery_attention'}),
    variant('biases', no_bias=False),
    variant('qk_ln low_precision_layernorm', {'qk_ln': True}),
    variant('qk_ln layernorm', {'qk_ln': True}, norm_type='layernorm'),
    variant('qk_ln rmsnorm', {'qk_ln': True}, norm_type='rmsnorm'),
    variant('qk_ln low_precision_rmsnorm gqa', {'qk_ln': True, **GQA}, norm_type='low_precision_rmsnorm'),
    variant('qk_ln biases eps 1e-3', {'qk_ln': True}, no_bias=False, norm_eps=1e-3),
    variant('learned positions', {'alibi': False}, learned_pos_emb=True),
    variant('clip_qkv 6', {'clip_qkv': 6.0}),
    variant('softmax_scale 0.3', {'softmax_scale': 0.3}),
    variant('alibi_bias_max 16', {'alibi_bias_max': 16}),
    variant('norm_eps 1e-3', norm_eps=1e-3),
    variant('untied, expansion 2', tie_word_embeddings=False, expansion_ratio=2),
]


def foundry_logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def run_side(python: str, mode: str, spec: str, root: str) -> None:
    side = os.path.join(REPO, 'launch', 'bench', 'llmfoundry_side.py')
    run = subprocess.run([python, side, mode, spec, root], capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f'llm-foundry side ({mode}) failed:\n{run.stderr[-4000:]}')


def parity(python: str, work: str) -> list[dict]:
    from llmfoundry_side import _randomize  # the same weight randomisation on both sides

    from foundry.export.hf import transformers_incompatibilities
    from foundry.models.mpt.configuration import MPTConfig
    from foundry.models.mpt.modeling import MPTForCausalLM

    ids = torch.randint(0, BASE['vocab_size'], (2, 48), generator=torch.Generator().manual_seed(0))
    spec = os.path.join(work, 'variants.json')
    with open(spec, 'w') as f:
        json.dump({'ids': ids.tolist(), 'variants': VARIANTS}, f)
    from_llmfoundry, to_llmfoundry = os.path.join(work, 'from_llmfoundry'), os.path.join(work, 'to_llmfoundry')

    run_side(python, 'build', spec, from_llmfoundry)
    rows = []
    for i, v in enumerate(VARIANTS):
        folder = os.path.join(from_llmfoundry, v['name'])
        theirs = torch.load(os.path.join(folder, 'logits_llmfoundry.pt'))
        ours = foundry_logits(MPTForCausalLM.from_pretrained(folder).eval(), ids)
        rows.append({'variant': v['name'], 'llm-foundry -> foundry': (ours - theirs).abs().max().item()})

        torch.manual_seed(i)
        model = MPTForCausalLM(MPTConfig(**v['config'])).eval()
        _randomize(model, seed=100 + i)
        out = os.path.join(to_llmfoundry, v['name'])
        model.save_pretrained(out)
        torch.save(foundry_logits(model, ids), os.path.join(out, 'logits_foundry.pt'))
        rows[-1]['native'] = None
        if not transformers_incompatibilities(model.config):
            from transformers import MptForCausalLM

            native = MptForCausalLM.from_pretrained(out).eval()
            with torch.no_grad():
                rows[-1]['native'] = (native(input_ids=ids).logits - foundry_logits(model, ids)).abs().max().item()
    run_side(python, 'load', spec, to_llmfoundry)
    for v, row in zip(VARIANTS, rows):
        out = os.path.join(to_llmfoundry, v['name'])
        ours, theirs = (torch.load(os.path.join(out, f)) for f in ('logits_foundry.pt', 'logits_llmfoundry.pt'))
        row['foundry -> llm-foundry'] = (ours - theirs).abs().max().item()
    return rows


def train_from_llmfoundry_folder(python: str, work: str) -> dict:
    """llm-foundry writes a 512-token model; foundry trains it 6 batches on 2 processes from that folder."""
    from foundry.data.prep.demo_corpus import build_demo_data
    from foundry.loggers.jsonl import read_metrics

    data = os.path.join(work, 'data')
    build_demo_data(data, seq_len=32, max_bytes_per_stream=150_000, vocab_size=512, verbose=False)
    spec = os.path.join(work, 'train_variant.json')
    trained = variant('train', vocab_size=512, max_seq_len=32, d_model=64)
    with open(spec, 'w') as f:
        json.dump({'ids': [[0, 1, 2]], 'variants': [trained]}, f)
    run_side(python, 'build', spec, os.path.join(work, 'llmfoundry_folder'))
    folder = os.path.join(work, 'llmfoundry_folder', 'train')
    # As a folder from a GPU run says (llm-foundry's default kernel); llm-foundry itself refuses ALiBi with
    # 'flash' where flash-attn is not installed, so it is built with 'torch' and the record changed after.
    with open(os.path.join(folder, 'config.json')) as f:
        written = json.load(f)
    written['attn_config']['attn_impl'] = 'flash'
    with open(os.path.join(folder, 'config.json'), 'w') as f:
        json.dump(written, f, indent=2)

    import yaml

    with open(os.path.join(REPO, 'tests', 'fixtures', 'tiny.yaml')) as f:
        cfg = yaml.safe_load(f)
    cfg['model'] = {'name': 'mpt_causal_lm', 'pretrained_model_name_or_path': folder}
    run_yaml = os.path.join(work, 'from_llmfoundry.yaml')
    with open(run_yaml, 'w') as f:
        yaml.safe_dump(cfg, f)
    composer = os.path.join(os.path.dirname(sys.executable), 'composer')
    cmd = [composer, '-n', '2', os.path.join(REPO, 'launch', 'train.py'), run_yaml, f'variables.data_root={data}',
           f'train_loader.dataset.local={data}/english', f'run_folder={work}/run', f'save_folder={work}/ckpt',
           'max_duration=6ba']
    start = time.time()
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if run.returncode != 0:
        raise SystemExit(f'training from the llm-foundry folder failed:\n{run.stderr[-4000:]}')
    losses = {b: m['loss/train/total'] for b, m in read_metrics(f'{work}/run/metrics.jsonl').items()
              if 'loss/train/total' in m}
    loaded = [line for line in run.stderr.splitlines() if 'tensors from the Hugging Face folder' in line]
    return {'command': ' '.join(cmd[:4]) + ' ...', 'seconds': time.time() - start, 'losses': losses,
            'loaded': loaded[0].split(': ', 1)[-1] if loaded else '(no load line)'}


def format_report(rows: list[dict], training: dict, venv_versions: str) -> str:
    def cell(x):
        return 'n/a (transformers has no such feature)' if x is None else f'{x:.2e}'

    lines = [f'# MPT folders across code bases (llm-foundry {venv_versions}; foundry on torch {torch.__version__})', '',
             f'Max |logit difference| on 2x48 ids, fp32, random weights; pass = every cell <= {TOLERANCE:g}.', '',
             '| variant | llm-foundry -> foundry | foundry -> llm-foundry | foundry -> transformers MptForCausalLM |',
             '|---|---|---|---|']
    for r in rows:
        lines.append(f"| {r['variant']} | {cell(r['llm-foundry -> foundry'])} | {cell(r['foundry -> llm-foundry'])} | "
                     f"{cell(r['native'])} |")
    losses = training['losses']
    lines += ['', f"Training from a folder llm-foundry wrote (`model.pretrained_model_name_or_path`, attn_impl 'flash' "
                  f"in its config.json, 2 processes, {training['seconds']:.0f} s): {training['loaded']}",
              'per-batch loss: ' + ', '.join(f'{b}: {losses[b]:.4f}' for b in sorted(losses))]
    return '\n'.join(lines) + '\n'


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default=os.path.join(REPO, 'launch', 'bench', 'results', 'llmfoundry_parity.md'))
    args = parser.parse_args()
    warnings.filterwarnings('ignore')
    from llmfoundry_venv import ensure_llmfoundry_venv

    python = str(ensure_llmfoundry_venv(log=lambda m: print(m, file=sys.stderr)))
    versions = subprocess.run([python, '-c', 'import llmfoundry, torch, transformers; print(llmfoundry.__version__, '
                               '"on torch", torch.__version__, "transformers", transformers.__version__)'],
                              capture_output=True, text=True, check=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix='foundry-parity-') as work:
        rows = parity(python, work)
        training = train_from_llmfoundry_folder(python, work)
    report = format_report(rows, training, versions)
    print(report)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, 'w') as f:
        f.write(report)
    worst = max(max(r['llm-foundry -> foundry'], r['foundry -> llm-foundry'], r['native'] or 0) for r in rows)
    ok = worst <= TOLERANCE and all(v == v for v in training['losses'].values())
    print(f'{"PASS" if ok else "FAIL"}: worst difference {worst:.2e}')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
