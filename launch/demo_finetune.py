"""`make demo-finetune`: instruction-tune the `make demo` model on CPU, after `make demo`.

1. Export the demo checkpoint to demo_out/hf if `make demo` has not (it usually has).
2. Build docstring -> function examples from the demo's code corpus into demo_out/finetune/
   (foundry/data/prep/finetuning/demo_data.py) and print the packing report for them.
3. Train yamls/finetune/demo-finetune.yaml with the real Composer launcher on 2 CPU processes
   (train_loader.name: finetuning, loss on responses only, packed, starting from demo_out/hf).
4. Summarise: the response-only loss (train, and held-out eval before/after), and greedy samples
   from the model before and after finetuning on held-out instructions.

Extra `key=value` arguments are passed to the training config, e.g. `max_duration=20ba`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, 'demo_out')
YAML = os.path.join(REPO, 'yamls', 'finetune', 'demo-finetune.yaml')
BASE = os.path.join(OUT, 'hf')
TUNED = os.path.join(OUT, 'hf-finetune')
DATA = os.path.join(OUT, 'finetune')
TOKENIZER = os.path.join(OUT, 'data', 'tokenizer.json')
RUN = 'demo-finetune'


def ensure_base_model() -> None:
    checkpoint = os.path.join(OUT, 'checkpoints', 'demo', 'latest-rank0.pt')
    corpus = os.path.join(OUT, 'data', 'corpus', 'code.jsonl')
    if not os.path.isfile(corpus) or not (os.path.isfile(os.path.join(BASE, 'config.json'))
                                          or os.path.exists(checkpoint)):
        sys.exit('demo-finetune: error: no demo model under demo_out/; run `make demo` first.')
    if not os.path.isfile(os.path.join(BASE, 'config.json')):
        from foundry.export.hf import export_hf

        export_hf(checkpoint, BASE)


def build_data() -> None:
    from foundry.data.prep.finetuning.demo_data import build_instruction_data
    from foundry.data.stream.finetuning.report import report_main

    counts = build_instruction_data(os.path.join(OUT, 'data', 'corpus', 'code.jsonl'), DATA)
    print(f'[demo-finetune] instruction data in {DATA}: {counts}', flush=True)
    report_main([os.path.join(DATA, 'train.jsonl'), '--tokenizer', TOKENIZER, '--max_seq_len',
                 '128', '--batch_size', '8'])


def run_training(overrides: list[str]) -> float:
    for stale in (os.path.join('checkpoints', RUN), os.path.join('runs', RUN), 'hf-finetune'):
        shutil.rmtree(os.path.join(OUT, stale), ignore_errors=True)
    composer = os.path.join(os.path.dirname(sys.executable), 'composer')
    cmd = [composer, '-n', '2', os.path.join(REPO, 'launch', 'train.py'), YAML, *overrides]
    print('[demo-finetune] ' + ' '.join(cmd), flush=True)
    start = time.time()
    subprocess.run(cmd, cwd=REPO, check=True)
    return time.time() - start


def held_out_prompts(n: int = 3) -> list[dict]:
    with open(os.path.join(DATA, 'val.jsonl'), encoding='utf-8') as handle:
        rows = [json.loads(line) for line in handle]
    rows.sort(key=lambda r: len(r['response']))  # short functions: readable in a terminal
    return rows[len(rows) // 4:][:n]


def generate(model_dir: str, prompts: list[str]) -> list[str]:
    import torch

    from foundry.data.tokenizer import build_tokenizer
    from foundry.models.mpt.modeling import MPTForCausalLM

    tokenizer = build_tokenizer(TOKENIZER)
    model = MPTForCausalLM.from_pretrained(model_dir).eval()
    outs = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors='pt')['input_ids']
        with torch.no_grad():
            # Greedy, with a repetition penalty: a 1.8M-parameter model otherwise loops.
            out = model.generate(ids, max_new_tokens=128 - ids.shape[1], do_sample=False,
                                 repetition_penalty=1.3, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id or 0)
        outs.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    return outs


def heldout_loss(model_dir: str) -> tuple[float, int]:
    """Mean cross-entropy over the response tokens of every held-out example, and their count."""
    import torch

    from foundry.data.stream.text_loader import build_text_dataloader
    from foundry.data.tokenizer import build_tokenizer
    from foundry.models.mpt.loss import causal_lm_loss
    from foundry.models.mpt.modeling import MPTForCausalLM

    tokenizer = build_tokenizer(TOKENIZER)
    model = MPTForCausalLM.from_pretrained(model_dir).eval()
    spec = build_text_dataloader({'name': 'finetuning', 'num_workers': 0, 'drop_last': False,
                                  'dataset': {'hf_name': DATA, 'split': 'val', 'max_seq_len': 128}},
                                 tokenizer, 16)
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in spec.dataloader:
            logits = model(input_ids=batch['input_ids']).logits
            n = int((batch['labels'][:, 1:] != -100).sum())
            total += float(causal_lm_loss(logits, batch['labels'])) * n
            count += n
    return total / count, count


def summarise(seconds: float) -> None:
    from foundry.export.hf import export_hf
    from foundry.loggers.jsonl import read_metrics

    metrics = read_metrics(os.path.join(OUT, 'runs', RUN, 'metrics.jsonl'))
    train = [(b, m['loss/train/total']) for b, m in sorted(metrics.items())
             if 'loss/train/total' in m]
    evals = [(b, v) for b, m in sorted(metrics.items()) for k, v in m.items()
             if k.startswith('metrics/eval/') and k.endswith('LanguageCrossEntropy')]
    export_hf(os.path.join(OUT, 'checkpoints', RUN, 'latest-rank0.pt'), TUNED)
    head, tail = [l for _, l in train[:5]], [l for _, l in train[-5:]]
    print('\n============== foundry demo-finetune summary ==============')
    print(f'batches trained           : {len(train)}  ({seconds:.0f}s wall, launcher start to exit)')
    print(f'train loss (responses)    : first {train[0][1]:.3f} (mean of first 5: '
          f'{sum(head) / len(head):.3f}) -> last {train[-1][1]:.3f} (mean of last 5: '
          f'{sum(tail) / len(tail):.3f})')
    before_loss, count = heldout_loss(BASE)
    after_loss, _ = heldout_loss(TUNED)
    print(f'held-out loss (responses) : {before_loss:.3f} before -> {after_loss:.3f} after '
          f'({count:,} response tokens of the val functions, prompts not scored)')
    if evals:
        print('  during training (eval)  : ' + ', '.join(f'batch {b}: {v:.3f}' for b, v in evals))
    print(f'finetuned model           : {TUNED}')
    examples = held_out_prompts()
    before = generate(BASE, [e['prompt'] for e in examples])
    after = generate(TUNED, [e['prompt'] for e in examples])
    for example, b, a in zip(examples, before, after):
        print('-' * 60)
        print('prompt (held out):\n  ' + example['prompt'].rstrip().replace('\n', '\n  '))
        print('before finetuning:\n  ' + b.rstrip().replace('\n', '\n  '))
        print('after finetuning:\n  ' + a.rstrip().replace('\n', '\n  '))
        print('reference:\n  ' + example['response'].rstrip().replace('\n', '\n  '))
    print('===========================================================')


def main() -> int:
    ensure_base_model()
    build_data()
    seconds = run_training(sys.argv[1:])
    summarise(seconds)
    return 0


if __name__ == '__main__':
    sys.exit(main())
