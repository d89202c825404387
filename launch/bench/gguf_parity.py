"""The GGUF parity table: foundry's writer and llama.cpp's converter, run in the real llama.cpp, against foundry's model.

    python launch/bench/gguf_parity.py [--demo demo_out] [--out launch/bench/results/gguf_parity.md]

Needs the llama.cpp build (`python launch/bench/llamacpp_venv.py`, once per machine). Models:
  demo        the `make demo` checkpoint (trained, its own 8,192-token BPE), from demo_out/
  tiny-neox   a default MPT with the GPT-NeoX tokenizer (the one llama.cpp's converter knows), random and
              trained 30 steps on the text (the slow test's model)
For each file: the max |logit difference| over all positions relative to the largest |logit|, the
share of positions with the same top-1 token, and how many of 32 greedy tokens match (llama.cpp
fed its own argmax back through its KV cache; foundry generate() with do_sample=False), at 1x the
training length (max_seq_len positions) and 2x. KV cache f32 unless the row says f16 (llama.cpp's
default). Then the lines `foundry export gguf` refuses with.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gguf_harness as harness  # noqa: E402
import llamacpp_venv  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # tests.checkpoint.helpers / tests.export.bpe: real checkpoint files and a small BPE
NEOX = '/work/shared/tokenizers/gpt-neox-20b/tokenizer.json'


def demo_model(demo: Path, work: Path):
    """The demo checkpoint, and its HF folder exported now by `foundry export hf` (what llama.cpp's converter gets)."""
    from foundry.eval.cli import load_model
    from foundry.export.hf import export_hf

    ckpt = demo / 'checkpoints' / 'demo' / 'latest-rank0.pt'
    model, tokenizer = load_model(str(ckpt))
    with contextlib.redirect_stdout(io.StringIO()):
        export_hf(str(ckpt), str(work / 'demo-hf'))
    return model.eval(), tokenizer, str(ckpt), str(work / 'demo-hf')


def tiny_neox(work: Path, text: str):
    """The slow test's default model: random, trained 30 steps on the text, through a Composer checkpoint."""
    from foundry.checkpoint.meta import write_run_meta
    from foundry.data.tokenizer import build_tokenizer
    from foundry.export.hf import export_hf
    from tests.checkpoint.helpers import write_full

    tokenizer = build_tokenizer(NEOX)
    model = harness.tiny_model(0, 50432, 128, train_on=tokenizer(text, add_special_tokens=False)['input_ids'][:256])
    ckpt = write_full(str(work / 'tiny-neox' / 'ep0-ba1-rank0.pt'), model.state_dict())
    write_run_meta(str(work / 'tiny-neox'), model.config, tokenizer)
    with contextlib.redirect_stdout(io.StringIO()):
        export_hf(ckpt, str(work / 'tiny-neox-hf'))
    return model, tokenizer, ckpt, str(work / 'tiny-neox-hf')


def measure(name, model, tokenizer, src, hf, text, work: Path, rows: list, notes: list) -> None:
    from foundry.export.gguf import export_gguf

    seq = model.config.max_seq_len
    ids = tokenizer(text, add_special_tokens=False)['input_ids'][:2 * seq]
    assert len(ids) == 2 * seq, f'{name}: the text gives only {len(ids)} tokens'
    files = {}
    for outtype in ('f32', 'f16', 'q8_0'):
        path = work / f'{name}-foundry-{outtype}.gguf'
        with contextlib.redirect_stdout(io.StringIO()):
            export_gguf(src, str(path), outtype=outtype)
        files[('foundry', outtype)] = path
        path = work / f'{name}-llamacpp-{outtype}.gguf'
        done = harness.run_converter(hf, str(path), outtype)
        if done.returncode == 0:
            files[('llama.cpp convert_hf_to_gguf.py', outtype)] = path
        elif outtype == 'f32':
            lines = done.stderr.strip().splitlines()
            # Its MPT class falls back to sentencepiece when the gpt2 vocabulary fails: the first cause comes first.
            causes = [line.strip() for line in lines if 'not recognized' in line][:1] + lines[-1:]
            notes.append(f'{name}: llama.cpp\'s converter fails on foundry\'s HF export: '
                         + '; then '.join(f'`{c.strip()}`' for c in causes))
    jobs = []
    for (writer, outtype), path in files.items():
        for kv in (('f32', 'f16') if outtype == 'f32' else ('f32',)):
            jobs.append({'name': f'{writer}|{outtype}|{kv}'.replace(' ', '_').replace('/', '_'), 'model': str(path),
                         'n_ctx': 2 * seq, 'kv': kv, 'prompt': ids, 'greedy': 32,
                         'greedy_prompts': [ids[:seq - 32], ids[:2 * seq - 32]], 'meta': (writer, outtype, kv)})
    results = harness.run_llamacpp([{k: v for k, v in j.items() if k != 'meta'} for j in jobs], work / name)
    ours = harness.foundry_logits(model, ids)
    greedy = [harness.foundry_greedy(model, p, 32) for p in (ids[:seq - 32], ids[:2 * seq - 32])]
    for job in jobs:
        got = results[job['name']]
        writer, outtype, kv = job['meta']
        cells = []
        for i, n in enumerate((seq, 2 * seq)):
            same = sum(a == b for a, b in zip(got['greedy'][i].tolist(), greedy[i]))
            cells += [f'{harness.max_relative_difference(ours[:n], got["logits"][:n]):.2e}',
                      f'{harness.top1_agreement(ours[:n], got["logits"][:n]):.3f}', f'{same}/32']
        rows.append([name, writer, outtype, kv, *cells])


def refusals(work: Path) -> list[str]:
    """The lines `foundry export gguf` prints for what llama.cpp would compute differently (real checkpoints)."""
    from foundry.checkpoint.meta import write_run_meta
    from foundry.cli import main as foundry_cli
    from tests.checkpoint.helpers import tiny_mpt, write_full, write_meta
    from tests.export.bpe import bpe_tokenizer

    cases = {'rmsnorm': dict(norm_type='rmsnorm'), 'softmax_scale': dict(attn_config={'softmax_scale': 0.5}),
             'qk_ln': dict(attn_config={'qk_ln': True}), 'logit_scale': dict(logit_scale='inv_sqrt_d_model'),
             'wordlevel_tokenizer': {}}
    lines = []
    for name, overrides in cases.items():
        model = tiny_mpt(**{'vocab_size': 320, 'n_heads': 4, **overrides})
        folder = work / 'refused' / name
        write_full(str(folder / 'ep0-ba1-rank0.pt'), model.state_dict())
        if name == 'wordlevel_tokenizer':
            write_meta(str(folder), model.config)
        else:
            write_run_meta(str(folder), model.config, bpe_tokenizer())
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = foundry_cli(['export', 'gguf', str(folder / 'ep0-ba1-rank0.pt'), str(folder / 'out.gguf')])
        lines.append(f'{name} (exit {code}, file written: {(folder / "out.gguf").exists()}): {err.getvalue().strip()}')
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--demo', default=str(REPO / 'demo_out'))
    parser.add_argument('--out', default=str(REPO / 'launch' / 'bench' / 'results' / 'gguf_parity.md'))
    args = parser.parse_args()
    if not llamacpp_venv.is_ready():
        print(f'llama.cpp is not built: run `{llamacpp_venv.BUILD_COMMAND}` first', file=sys.stderr)
        return 2
    start = time.time()
    rows, notes = [], []
    text = Path(__import__('argparse').__file__).read_text()[:20000]  # code, like the demo's corpus
    with tempfile.TemporaryDirectory(prefix='gguf-parity-') as tmp:
        work = Path(tmp)
        if (Path(args.demo) / 'checkpoints' / 'demo' / 'hf_meta').is_dir():
            measure('demo', *demo_model(Path(args.demo), work), text, work, rows, notes)
        else:
            notes.append(f'no demo checkpoint in {args.demo} (run `make demo`): demo rows left out')
        if os.path.isfile(NEOX):
            measure('tiny-neox', *tiny_neox(work, text), text, work, rows, notes)
        refused = refusals(work)
    header = ('| model | writer | outtype | KV cache | max rel diff 1x | top-1 1x | greedy 1x | max rel diff 2x | '
              'top-1 2x | greedy 2x |')
    table = [header, '|' + '---|' * 10] + ['| ' + ' | '.join(r) + ' |' for r in rows]
    import gguf
    import torch
    import transformers

    report = '\n'.join([
        '# GGUF parity: foundry vs llama.cpp (llama-cpp-python ' + llamacpp_venv.VERSION + ', CPU)', '',
        f'`python launch/bench/gguf_parity.py`, {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}, '
        f'{platform.machine()} {os.cpu_count()} cores (shared machine), torch {torch.__version__}, transformers '
        f'{transformers.__version__}, gguf {gguf.__version__ if hasattr(gguf, "__version__") else "0.19"}; '
        f'{time.time() - start:.0f} s.', '',
        '1x = max_seq_len positions (demo: 128), 2x = twice that (past the training length; ALiBi). '
        'max rel diff: max |llama.cpp - foundry| over every position and token / max |foundry logit|. '
        'greedy: tokens equal position by position, 32 greedy tokens after a prompt of n-32 tokens.', '',
        *table, '', *[f'- {n}' for n in notes], '', '## Refused (one line each, no file written)', '',
        *[f'- {line}' for line in refused], ''])
    Path(args.out).write_text(report)
    print(report)
    return 0


if __name__ == '__main__':
    sys.exit(main())
