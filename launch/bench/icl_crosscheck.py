"""Cross-check `foundry eval` against lm-evaluation-harness on the same tasks, model and CPU.

    python launch/bench/icl_crosscheck.py [--hf demo_out/hf] [--tasks eval/yamls/smoke_tasks.yaml] [--batch-size 16]

1. Every task of TASKS.yaml at every few-shot count is written as an lm-eval local task
   (`dataset_path: json`, `dataset_kwargs.data_files`, loaded with `--include_path`). Few-shot
   draws differ between the tools, so the prompts foundry builds (foundry.eval.prompts, with its
   shots already in them) are what lm-eval gets, at `num_fewshot: 0` and `target_delimiter: ""`:
   both score exactly the same strings.
     language_modeling  -> output_type loglikelihood, metric acc (lm-eval's is_greedy)
     multiple_choice    -> output_type multiple_choice, metric acc (summed log-likelihood)
     schema             -> multiple_choice with one input per context option (doc_to_text: the gold
                           index, doc_to_choice: the contexts, as lm-eval's winogrande does)
     generation         -> generate_until, greedy, until the example delimiter, exact_match
2. `foundry eval` (its default: a multiple_choice question's choices share one context pass) and,
   for the timing, `foundry eval --no-share-context`, then `lm_eval --model hf` on the same
   Hugging Face folder, batch size and max length, all on this CPU one after the other.
3. A table of accuracies (foundry's summed rule next to lm-eval's acc, and per-example agreement)
   and wall times, written to OUT/comparison.md and OUT/comparison.json.

lm-eval runs from `.bench/lmeval-venv` (launch/bench/lmeval_venv.py), never from foundry's env.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / 'launch' / 'bench'))

OUTPUT_TYPE = {'language_modeling': 'loglikelihood', 'multiple_choice': 'multiple_choice', 'schema': 'multiple_choice',
               'generation_task_with_answers': 'generate_until'}


def write_lmeval_tasks(tasks_yaml: str, hf_dir: str, out_dir: str, max_seq_len: int) -> dict[str, dict]:
    """One lm-eval task per (label, shots); returns {lm-eval task name: {label, shots, type}}."""
    import yaml

    from foundry.data.tokenizer import build_tokenizer
    from foundry.eval.cli import _read_tasks_file
    from foundry.eval.prompts import build_item, generation_budget
    from foundry.eval.tasks import load_examples, parse_icl_tasks

    tokenizer = build_tokenizer(hf_dir)
    os.makedirs(out_dir, exist_ok=True)
    names = {}
    for task in parse_icl_tasks(_read_tasks_file(tasks_yaml)[0]):
        examples = load_examples(task)
        for k in task.num_fewshot:
            name = f'foundry_{task.label}_{k}shot'
            rows = []
            for i, ex in enumerate(examples):
                item = build_item(task, examples, i, k, tokenizer, task.max_seq_len or max_seq_len)
                kind = task.icl_task_type
                if kind == 'language_modeling':
                    rows.append({'ctx': item.prompt_text[0], 'cont': ex['continuation']})
                elif kind == 'multiple_choice':
                    rows.append({'ctx': item.prompt_text[0], 'choices': ex['choices'], 'gold': ex['gold']})
                elif kind == 'schema':
                    rows.append({'contexts': item.prompt_text, 'cont': ex['continuation'], 'gold': ex['gold']})
                else:
                    rows.append({'ctx': item.prompt_text[0].rstrip() or item.prompt_text[0],
                                 'answers': [ex['answer'], *ex.get('aliases', [])]})
            data = os.path.join(out_dir, f'{name}.jsonl')
            with open(data, 'w', encoding='utf-8') as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + '\n' for r in rows)
            spec = {'task': name, 'dataset_path': 'json', 'dataset_kwargs': {'data_files': {'test': data}},
                    'test_split': 'test', 'output_type': OUTPUT_TYPE[task.icl_task_type], 'num_fewshot': 0,
                    'target_delimiter': ''}
            if task.icl_task_type == 'language_modeling':
                spec.update(doc_to_text='ctx', doc_to_target='cont', metric_list=[{'metric': 'acc'}])
            elif task.icl_task_type == 'multiple_choice':
                spec.update(doc_to_text='ctx', doc_to_choice='choices', doc_to_target='gold',
                            metric_list=[{'metric': 'acc'}])
            elif task.icl_task_type == 'schema':
                spec.update(doc_to_text='gold', doc_to_choice='contexts', doc_to_target='cont',
                            metric_list=[{'metric': 'acc'}])
            else:
                spec.update(doc_to_text='ctx', doc_to_target='{{answers[0]}}',
                            generation_kwargs={'until': [task.example_delimiter], 'do_sample': False,
                                               'max_gen_toks': generation_budget(task, examples, tokenizer)},
                            metric_list=[{'metric': 'exact_match', 'ignore_case': True, 'ignore_punctuation': True}])
            with open(os.path.join(out_dir, f'{name}.yaml'), 'w') as f:
                yaml.safe_dump(spec, f, sort_keys=False)
            names[name] = {'label': task.label, 'shots': f'{k}-shot', 'type': task.icl_task_type}
    return names


def run_timed(cmd: list[str], log_path: str, env: dict | None = None) -> float:
    start = time.perf_counter()
    with open(log_path, 'w') as log:
        result = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f'{cmd[0]} failed (exit {result.returncode}); see {log_path}')
    return seconds


def lmeval_results(out_dir: str) -> tuple[dict, dict[str, dict[int, dict]]]:
    results_file = sorted(glob.glob(os.path.join(out_dir, '**', 'results_*.json'), recursive=True))[-1]
    with open(results_file) as f:
        results = json.load(f)
    samples = {}
    for path in glob.glob(os.path.join(os.path.dirname(results_file), 'samples_*.jsonl')):
        task = os.path.basename(path)[len('samples_'):].rsplit('_', 1)[0]
        with open(path) as f:
            samples[task] = {row['doc_id']: row for row in map(json.loads, f)}
    return results, samples


def compare(names: dict, foundry_report: dict, lm_results: dict, lm_samples: dict) -> list[dict]:
    rows = []
    for name, meta in names.items():
        ours = foundry_report['results'][meta['label']][meta['shots']]
        kind = meta['type']
        metric = 'exact_match' if kind == 'generation_task_with_answers' else 'acc'
        theirs = lm_results['results'][name]
        lm_value = next(v for k, v in theirs.items() if k.split(',')[0] == metric)
        our_key = 'accuracy_sum' if kind in ('multiple_choice', 'schema') else 'accuracy'
        agree = total = same_text = 0
        per_example = {p['index']: p for p in ours.get('per_example', [])}
        our_field = 'correct_sum' if our_key == 'accuracy_sum' else 'correct'
        for doc_id, sample in lm_samples.get(name, {}).items():
            mine = per_example.get(doc_id)
            if mine is None or mine.get('skipped'):
                continue
            total += 1
            agree += bool(mine[our_field]) == bool(sample[metric])
            if kind == 'generation_task_with_answers':
                same_text += mine['generated'] == sample['resps'][0][0]
        rows.append({'task': meta['label'], 'shots': meta['shots'], 'type': kind, 'foundry_rule': our_key,
                     'foundry': ours[our_key], 'foundry_mean_rule': ours['accuracy'] if our_key == 'accuracy_sum' else None,
                     'lm_eval_metric': metric, 'lm_eval': lm_value, 'examples_agreeing': f'{agree}/{total}',
                     'truncated': ours['truncated'],
                     'same_generated_text': f'{same_text}/{total}' if kind == 'generation_task_with_answers' else ''})
    return rows


def markdown(rows: list[dict], times: dict, meta: dict) -> str:
    lines = [f'# foundry eval vs lm-evaluation-harness {meta["lm_eval"]}', '',
             f'model: {meta["hf"]}; tasks: {meta["tasks"]}; batch size {meta["batch_size"]}, max length '
             f'{meta["max_seq_len"]}; CPU ({os.cpu_count()} cores, shared machine: load average at start '
             f'{meta["load"]}); {meta["torch"]}', '',
             '| task | shots | type | foundry | lm-eval | same verdict | foundry, mean rule | same generated text | truncated |',
             '|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        mean = '' if r['foundry_mean_rule'] is None else f'{100 * r["foundry_mean_rule"]:.1f}%'
        lines.append(f'| {r["task"]} | {r["shots"].split("-")[0]} | {r["type"]} | {100 * r["foundry"]:.1f}% '
                     f'({r["foundry_rule"]}) | {100 * r["lm_eval"]:.1f}% ({r["lm_eval_metric"]}) | '
                     f'{r["examples_agreeing"]} | {mean} | {r["same_generated_text"]} | {r["truncated"]} |')
    lines += ['', '| tool | wall time (process start to exit) | vs lm-eval |', '|---|---|---|']
    for tool, seconds in times.items():
        lines.append(f'| {tool} | {seconds:.1f} s | {times["lm-eval"] / seconds:.2f}x |')
    return '\n'.join(lines) + '\n'


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--hf', default=str(REPO / 'demo_out' / 'hf'), help='Hugging Face folder (foundry export hf)')
    parser.add_argument('--tasks', default=str(REPO / 'eval' / 'yamls' / 'smoke_tasks.yaml'))
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--max-seq-len', type=int, default=None, help="default: the model's max_seq_len")
    parser.add_argument('--out', default=str(REPO / '.bench' / 'icl-crosscheck'))
    args = parser.parse_args()

    from lmeval_venv import ensure_lmeval_venv

    lm_python = ensure_lmeval_venv(log=lambda m: print(m, file=sys.stderr))
    with open(os.path.join(args.hf, 'config.json')) as f:
        max_seq_len = args.max_seq_len or json.load(f)['max_seq_len']
    out = os.path.abspath(args.out)
    task_dir = os.path.join(out, 'lmeval_tasks')
    names = write_lmeval_tasks(args.tasks, args.hf, task_dir, max_seq_len)
    load = os.getloadavg()[0]
    # The task files carry batch_size for training-time evaluation; both tools get --batch-size here.
    foundry_tasks = os.path.join(out, 'foundry_tasks.yaml')
    _write_without_batch_size(args.tasks, foundry_tasks)

    foundry = [sys.executable, '-m', 'foundry.eval.cli', args.hf, foundry_tasks, '--batch-size', str(args.batch_size),
               '--max-seq-len', str(max_seq_len), '--device', 'cpu', '--examples']
    times = {}
    times['foundry eval'] = run_timed(foundry + ['--out', os.path.join(out, 'foundry')], os.path.join(out, 'foundry.log'))
    times['foundry eval --no-share-context'] = run_timed(
        foundry + ['--no-share-context', '--out', os.path.join(out, 'foundry-noshare')], os.path.join(out, 'foundry-noshare.log'))
    lm_eval = [str(Path(lm_python).parent / 'lm_eval'), '--model', 'hf', '--model_args',
               f'pretrained={os.path.abspath(args.hf)},dtype=float32,max_length={max_seq_len}', '--tasks', ','.join(names),
               '--include_path', task_dir, '--batch_size', str(args.batch_size), '--device', 'cpu',
               '--output_path', os.path.join(out, 'lmeval'), '--log_samples']
    times['lm-eval'] = run_timed(lm_eval, os.path.join(out, 'lmeval.log'),
                                 env={'HF_DATASETS_OFFLINE': '1', 'HF_HUB_OFFLINE': '1', 'TOKENIZERS_PARALLELISM': 'false'})

    with open(os.path.join(out, 'foundry', 'results.json')) as f:
        report = json.load(f)
    lm_results, lm_samples = lmeval_results(os.path.join(out, 'lmeval'))
    rows = compare(names, report, lm_results, lm_samples)
    versions = subprocess.run([str(lm_python), '-c', 'from importlib.metadata import version; print(version("lm_eval"))'],
                              capture_output=True, text=True).stdout.strip()
    import torch

    meta = {'hf': args.hf, 'tasks': args.tasks, 'batch_size': args.batch_size, 'max_seq_len': max_seq_len,
            'load': f'{load:.1f}', 'lm_eval': versions, 'torch': f'foundry torch {torch.__version__}, lm-eval torch 2.7.0'}
    text = markdown(rows, times, meta)
    with open(os.path.join(out, 'comparison.md'), 'w') as f:
        f.write(text)
    with open(os.path.join(out, 'comparison.json'), 'w') as f:
        json.dump({'rows': rows, 'seconds': times, **meta}, f, indent=2)
    print(text)
    print(f'written: {os.path.join(out, "comparison.md")}')
    return 0


def _write_without_batch_size(src: str, dst: str) -> None:
    import yaml

    with open(src) as f:
        data = yaml.safe_load(f)
    tasks = data['icl_tasks']
    if isinstance(tasks, str):
        raise SystemExit(f'{src}: give the crosscheck a file that lists its tasks inline')
    data['icl_tasks'] = [{k: v for k, v in t.items() if k != 'batch_size'} for t in tasks]
    data.pop('eval_gauntlet', None)
    with open(dst, 'w') as f:
        yaml.safe_dump(data, f, sort_keys=False)


if __name__ == '__main__':
    sys.exit(main())
