"""The llm-foundry half of launch/bench/llmfoundry_parity.py; runs in llm-foundry's own venv.

    python llmfoundry_side.py build VARIANTS.json OUT_DIR   # build, save_pretrained and score each variant
    python llmfoundry_side.py load  VARIANTS.json IN_DIR    # load foundry's folders, score them

Each variant is `{"name", "config": {MPTConfig kwargs}}`. Scores are the fp32 logits on the ids in
VARIANTS.json, written as `{dir}/{name}/logits_llmfoundry.pt`. Imports llm-foundry, never foundry.
"""

from __future__ import annotations

import json
import os
import sys
import warnings

import torch


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Weights far from init (norms' weights and biases too), so a tensor loaded into the wrong place shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            base = 1.0 if ('norm' in name or '_ln' in name) and name.endswith('weight') else 0.0
            p.copy_(base + 0.2 * torch.randn(p.shape, generator=gen))


def main() -> int:
    from llmfoundry.models.mpt import MPTConfig, MPTForCausalLM

    warnings.filterwarnings('ignore')
    mode, spec_path, root = sys.argv[1:4]
    with open(spec_path) as f:
        spec = json.load(f)
    ids = torch.tensor(spec['ids'])
    for i, variant in enumerate(spec['variants']):
        folder = os.path.join(root, variant['name'])
        if mode == 'build':
            torch.manual_seed(i)
            model = MPTForCausalLM(MPTConfig(**variant['config'])).eval()
            _randomize(model, seed=100 + i)
            model.save_pretrained(folder)
        else:
            model = MPTForCausalLM.from_pretrained(folder).eval()
        with torch.no_grad():
            logits = model(input_ids=ids).logits
        torch.save(logits, os.path.join(folder, 'logits_llmfoundry.pt'))
        print(f'{mode} {variant["name"]}: ok', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
