"""`icl_tasks:` entries and their examples, in llm-foundry's keys and local JSONL formats.

A task list is either inline (a list of mappings) or a path to a YAML file holding one under
`icl_tasks:` (llm-foundry's `eval/yamls/tasks*.yaml` layout). Each example is one JSON object
per line; the fields each task type needs are checked when the file is read, and a bad line
is reported as FILE:LINE with the fields it has.

`dataset_uri` is a local path (relative paths resolve against the current directory), an
`s3://bucket/key` (honours S3_ENDPOINT_URL), or `hf://ORG/NAME/FILE.jsonl`, a file in a Hugging
Face dataset repository fetched with huggingface_hub.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

from foundry.config.errors import ConfigError
from foundry.data.errors import DataError

TaskType = Literal['language_modeling', 'multiple_choice', 'schema', 'generation_task_with_answers']

# The fields each task type reads from a JSONL line, with the JSON types they must have.
REQUIRED_FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    'language_modeling': {'context': str, 'continuation': str},
    'multiple_choice': {'query': str, 'choices': list, 'gold': int},
    'schema': {'context_options': list, 'continuation': str, 'gold': int},
    'generation_task_with_answers': {'context': str, 'answer': str},
}


@dataclass
class ICLTaskConfig:
    """One entry of `icl_tasks:` (llm-foundry's key names and defaults)."""

    label: str
    dataset_uri: str
    icl_task_type: TaskType
    num_fewshot: list[int] = field(default_factory=lambda: [0])
    continuation_delimiter: str = ' '
    example_delimiter: str = '\n'
    prompt_string: str = ''
    # None: `icl_seq_len` if set, else the model's max_seq_len.
    max_seq_len: Optional[int] = None
    # None: device_eval_batch_size (training) or --batch-size (foundry eval).
    batch_size: Optional[int] = None
    has_categories: bool = False
    fewshot_random_seed: int = 1234
    # generation_task_with_answers: tokens generated past the longest answer (llm-foundry pads too).
    generation_extra_tokens: int = 2

    UNSUPPORTED_KEYS = {
        'metric_names': 'foundry picks the metric from icl_task_type; remove the key',
        'pass_at_k': 'code evaluation tasks are not supported; remove the key',
        'generations_per_sample': 'sampled generation is not supported (greedy only); remove the key',
        'hf_loading_vars': 'hub datasets are read as files: use dataset_uri: hf://ORG/NAME/FILE.jsonl',
        'hf_parsing_map': 'map your fields to the JSONL format of icl_task_type instead',
    }

    def check(self, path: str) -> None:
        if not self.num_fewshot or any(n < 0 for n in self.num_fewshot):
            raise ConfigError(f'`{path}.num_fewshot` must be a non-empty list of counts >= 0, got {self.num_fewshot}')
        for key in ('max_seq_len', 'batch_size'):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ConfigError(f'`{path}.{key}` must be positive, got {value}')
        if not self.label or '/' in self.label:
            raise ConfigError(f'`{path}.label` must be a non-empty name without "/" (it is part of metric names), '
                              f'got {self.label!r}')


def parse_icl_tasks(value: Union[str, list, None], where: str = 'icl_tasks') -> list[ICLTaskConfig]:
    """Validate `icl_tasks` (a list, or a YAML path holding `icl_tasks:`) into task configs."""
    from foundry.config.validate import from_mapping

    if value is None:
        return []
    if isinstance(value, str):
        value = _read_task_yaml(value, where)
        where = f'{where} ({value[1]})'
        value = value[0]
    if not isinstance(value, list):
        raise ConfigError(f'`{where}` must be a list of tasks or a path to a YAML file that lists them under icl_tasks:')
    tasks = [from_mapping(ICLTaskConfig, entry, f'{where}[{i}]') for i, entry in enumerate(value)]
    labels = [t.label for t in tasks]
    duplicates = sorted({lab for lab in labels if labels.count(lab) > 1})
    if duplicates:
        raise ConfigError(f'`{where}` has more than one task labelled {duplicates[0]!r}; labels name the metrics, '
                          f'make them unique')
    for i, task in enumerate(tasks):
        if _is_local(task.dataset_uri) and not os.path.isfile(task.dataset_uri):
            raise ConfigError(f'`{where}[{i}].dataset_uri`: no such file {task.dataset_uri!r} (relative paths resolve '
                              f'against {os.getcwd()})')
    return tasks


def _read_task_yaml(path: str, where: str) -> tuple[Any, str]:
    import yaml

    if not os.path.isfile(path):
        raise ConfigError(f'`{where}` names {path!r}, which is not a file (expected a YAML listing icl_tasks:)')
    try:
        with open(path, encoding='utf-8') as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ConfigError(f'{path} is not valid YAML: {str(e).splitlines()[0]}') from None
    if not isinstance(data, dict) or 'icl_tasks' not in data:
        raise ConfigError(f'{path} must hold a mapping with an `icl_tasks:` list')
    return data['icl_tasks'], path


def _is_local(uri: str) -> bool:
    return '://' not in uri


def read_text(uri: str) -> str:
    """The task file's text from a local path, s3:// or hf://ORG/NAME/FILE."""
    if uri.startswith('hf://'):
        parts = uri[len('hf://'):].split('/', 2)
        if len(parts) != 3:
            raise DataError(f'dataset_uri {uri!r}: a hub file is hf://ORG/NAME/PATH/IN/REPO.jsonl')
        from huggingface_hub import hf_hub_download

        local = hf_hub_download(repo_id=f'{parts[0]}/{parts[1]}', filename=parts[2], repo_type='dataset')
        with open(local, encoding='utf-8') as f:
            return f.read()
    if uri.startswith('s3://'):
        from foundry.data.objstore import read_bytes

        return read_bytes(uri).decode('utf-8')
    if not _is_local(uri):
        raise DataError(f'dataset_uri {uri!r}: foundry reads local paths, s3:// and hf://ORG/NAME/FILE')
    try:
        with open(uri, encoding='utf-8') as f:
            return f.read()
    except FileNotFoundError:
        raise DataError(f'dataset_uri {uri!r}: no such file') from None


def load_examples(task: ICLTaskConfig) -> list[dict[str, Any]]:
    """Every example of `task`, each checked for its task type's fields."""
    text = read_text(task.dataset_uri)
    required = REQUIRED_FIELDS[task.icl_task_type]
    examples = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f'{task.dataset_uri}:{lineno}'
        try:
            example = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f'{where}: not a JSON object ({e.msg}); task files are JSON Lines') from None
        if not isinstance(example, dict):
            raise DataError(f'{where}: not a JSON object; task files hold one object per line')
        _check_example(example, required, task, where)
        examples.append(example)
    if not examples:
        raise DataError(f'{task.dataset_uri}: no examples (task {task.label!r})')
    return examples


def _check_example(example: dict, required: dict, task: ICLTaskConfig, where: str) -> None:
    kind = task.icl_task_type
    for name, tp in required.items():
        if name not in example:
            raise DataError(f'{where}: a {kind} example needs {", ".join(repr(k) for k in required)}; this one has '
                            f'{", ".join(repr(k) for k in example) or "no fields"}')
        if not isinstance(example[name], tp) or (tp is int and isinstance(example[name], bool)):
            raise DataError(f'{where}: field {name!r} must be a JSON {_json_type(tp)}, got {example[name]!r}')
    options = example.get('choices') if kind == 'multiple_choice' else example.get('context_options')
    if options is not None:
        if len(options) < 2 or not all(isinstance(o, str) for o in options):
            raise DataError(f'{where}: {"choices" if kind == "multiple_choice" else "context_options"} must be a list '
                            f'of at least 2 strings')
        if not 0 <= example['gold'] < len(options):
            raise DataError(f'{where}: gold is {example["gold"]}, outside 0..{len(options) - 1}')
    if kind == 'generation_task_with_answers':
        aliases = example.get('aliases', [])
        if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
            raise DataError(f'{where}: aliases must be a list of strings')
    if task.has_categories and not isinstance(example.get('category'), str):
        raise DataError(f'{where}: task {task.label!r} has has_categories: true, so every example needs a string '
                        f'"category"')


def _json_type(tp) -> str:
    return {str: 'string', list: 'list', int: 'integer'}.get(tp, str(tp))
