"""What a finetuning example is, checked one example at a time, and how a chat becomes text.

Two formats, as llm-foundry reads them:
  * prompt/response: ``{"prompt": str, "response": str}``: one turn;
  * chat: ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``:
    an optional leading system message, then user/assistant turns, ending with assistant.

``to_turns`` turns either into ``[(prompt_text, response_text), ...]``: one pair per
assistant message, the prompt being everything the template renders between the previous
response and this one. Chats are rendered by the tokenizer's chat template, or by
``DEFAULT_CHAT_TEMPLATE`` (ChatML, what MPT-7B-Chat was trained with) when it has none.

Every problem is one DataError naming where the example came from (``file:line`` or
``source row N``), so a bad line in a 100k-line file is found without a debugger.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping

from foundry.data.errors import DataError

__all__ = ['DEFAULT_CHAT_TEMPLATE', 'ROLES', 'to_turns', 'chat_template_for', 'load_preprocessing_fn',
           'example_format']

# ChatML: <|im_start|>role\ncontent<|im_end|>\n per message. The markers are plain text for
# tokenizers that lack them as special tokens, which is fine: the model learns them as text.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

ROLES = ('system', 'user', 'assistant')


def example_format(example: Any, where: str) -> str:
    """'chat' or 'prompt_response'; an error naming the missing keys otherwise."""
    if not isinstance(example, Mapping):
        raise DataError(f'{where}: an example must be a JSON object with "prompt" and "response" '
                        f'or with "messages", not {type(example).__name__}.')
    if 'messages' in example:
        return 'chat'
    missing = [k for k in ('prompt', 'response') if k not in example]
    if not missing:
        return 'prompt_response'
    present = ', '.join(repr(k) for k in example) or 'none'
    if len(missing) == 1:
        raise DataError(f'{where}: the example has no {missing[0]!r} key (keys present: {present}); '
                        'prompt/response examples need both "prompt" and "response".')
    raise DataError(f'{where}: the example has neither "prompt"/"response" nor "messages" (keys '
                    f'present: {present}); map your columns with dataset.preprocessing_fn.')


def to_turns(example: Mapping[str, Any], where: str, tokenizer: Any,
             chat_template: str | None = None) -> list[tuple[str, str]]:
    """``[(prompt_text, response_text), ...]`` of one example, checked."""
    if example_format(example, where) == 'prompt_response':
        prompt, response = example['prompt'], example['response']
        for key, value in (('prompt', prompt), ('response', response)):
            if not isinstance(value, str):
                raise DataError(f'{where}: "{key}" must be a string, not {type(value).__name__}.')
        if not response.strip():
            raise DataError(f'{where}: the response is empty; every example needs something to '
                            'learn. Remove the example or fill in its response.')
        return [(prompt, response)]
    messages = _check_messages(example['messages'], where)
    return _chat_turns(messages, where, tokenizer, chat_template)


def _check_messages(messages: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise DataError(f'{where}: "messages" must be a non-empty list of {{"role", "content"}} '
                        f'objects, not {messages!r:.60}.')
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or 'role' not in message or 'content' not in message:
            raise DataError(f'{where}: messages[{i}] must be an object with "role" and "content", '
                            f'not {message!r:.80}.')
        role, content = message['role'], message['content']
        if role not in ROLES:
            raise DataError(f'{where}: messages[{i}] has role {role!r}; roles are '
                            f'{", ".join(ROLES)}.')
        if not isinstance(content, str):
            raise DataError(f'{where}: messages[{i}].content must be a string, not '
                            f'{type(content).__name__}.')
        if role == 'system' and i != 0:
            raise DataError(f'{where}: messages[{i}] is a system message; only the first message '
                            'may be one.')
        checked.append({'role': role, 'content': content})
    turns = [m for m in checked if m['role'] != 'system']
    for i, message in enumerate(turns):
        expected = 'user' if i % 2 == 0 else 'assistant'
        if message['role'] != expected:
            offset = len(checked) - len(turns)
            raise DataError(f'{where}: messages[{i + offset}] has role {message["role"]!r} where '
                            f'{expected!r} was expected: after an optional system message, '
                            'turns alternate user, assistant.')
    if not turns or turns[-1]['role'] != 'assistant':
        raise DataError(f'{where}: the conversation ends with a {checked[-1]["role"]!r} message; '
                        'it must end with an assistant message (the response to learn).')
    for i, message in enumerate(checked):
        if message['role'] == 'assistant' and not message['content'].strip():
            raise DataError(f'{where}: messages[{i}] is an empty assistant response.')
    return checked


def chat_template_for(tokenizer: Any) -> str:
    """The tokenizer's own chat template, else foundry's documented default (ChatML)."""
    template = getattr(tokenizer, 'chat_template', None)
    return template if isinstance(template, str) and template else DEFAULT_CHAT_TEMPLATE


def _render(tokenizer: Any, messages: list[dict[str, str]], template: str,
            generation_prompt: bool) -> str:
    if not messages:
        return ''
    return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                         add_generation_prompt=generation_prompt)


def _chat_turns(messages: list[dict[str, str]], where: str, tokenizer: Any,
                chat_template: str | None) -> list[tuple[str, str]]:
    """Cut the rendered chat at every assistant message into (prompt, response) text pairs.

    The prompt of turn k is what the template adds between the end of response k-1 and the
    start of response k (generation prompt included); the response is what rendering message k
    adds after that. Templates that rewrite earlier text as the chat grows cannot be cut this
    way and are refused by name.
    """
    template = chat_template or chat_template_for(tokenizer)
    turns, done = [], ''
    for k, message in enumerate(messages):
        if message['role'] != 'assistant':
            continue
        before = _render(tokenizer, messages[:k], template, True)
        upto = _render(tokenizer, messages[:k + 1], template, False)
        if not before.startswith(done) or not upto.startswith(before):
            raise DataError(f'{where}: the chat template does not render the conversation '
                            'incrementally (an earlier turn changes when a later one is added), '
                            'so prompts and responses cannot be told apart; set '
                            'dataset.chat_template to one that does.')
        turns.append((before[len(done):], upto[len(before):]))
        done = upto
    return turns


def load_preprocessing_fn(spec: str | None) -> Callable[[dict], dict] | None:
    """``'package.module:function'`` (llm-foundry's spelling) -> the function."""
    if spec is None:
        return None
    if not isinstance(spec, str) or ':' not in spec:
        raise DataError(f'dataset.preprocessing_fn is {spec!r}; write it as '
                        '"package.module:function".')
    module_name, _, attr = spec.partition(':')
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise DataError(f'dataset.preprocessing_fn: cannot import {module_name!r} ({err}); is it '
                        'on PYTHONPATH?') from err
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise DataError(f'dataset.preprocessing_fn: {module_name!r} has no function {attr!r}.')
    return fn
