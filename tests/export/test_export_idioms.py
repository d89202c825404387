"""The exported folder with the idioms people type, in plain transformers (a fresh process, no foundry import):
`model.generate(**tok(prompt, return_tensors='pt'))`, generation with the KV cache, and the exported dtype."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from foundry.export.hf import export_hf
from tests.checkpoint.helpers import tiny_mpt, write_full, write_meta

PLAIN_TRANSFORMERS = textwrap.dedent('''
    import json, sys, torch, transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    assert not any(m.startswith('foundry') for m in sys.modules)
    folder = sys.argv[1]
    tok = AutoTokenizer.from_pretrained(folder)
    # transformers 5 loads in the recorded dtype by default; 4.x only when asked for 'auto'.
    dtype_arg = {} if int(transformers.__version__.split('.')[0]) >= 5 else {'torch_dtype': 'auto'}
    model = AutoModelForCausalLM.from_pretrained(folder, **dtype_arg)
    enc = tok('t1 t2 t3', return_tensors='pt')
    out = model.generate(**enc, max_new_tokens=5, do_sample=False)
    cached = model(**enc, use_cache=None)
    print(json.dumps({'keys': sorted(enc), 'class': type(model).__name__, 'dtype': str(model.dtype),
                      'new_tokens': out.shape[1] - enc['input_ids'].shape[1],
                      'generation_uses_cache': model.generation_config.use_cache,
                      'forward_returns_cache': cached.past_key_values is not None}))
''')


def test_exported_folder_works_with_the_idioms_people_type(tmp_path):
    model = tiny_mpt(seed=0)
    folder = tmp_path / 'checkpoints'
    write_full(str(folder / 'ep0-ba8-rank0.pt'), {k: v for k, v in model.state_dict().items() if k != 'lm_head.weight'})
    write_meta(str(folder), model.config)
    out = tmp_path / 'hf'
    export_hf(str(folder / 'ep0-ba8-rank0.pt'), str(out), dtype='bf16')

    with open(out / 'tokenizer_config.json') as f:
        assert json.load(f)['model_input_names'] == ['input_ids', 'attention_mask']
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    run = subprocess.run([sys.executable, '-c', PLAIN_TRANSFORMERS, str(out)], capture_output=True, text=True,
                         env=env, cwd=str(tmp_path), timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen == {'keys': ['attention_mask', 'input_ids'], 'class': 'MptForCausalLM', 'dtype': 'torch.bfloat16',
                    'new_tokens': 5, 'generation_uses_cache': True, 'forward_returns_cache': True}, seen
