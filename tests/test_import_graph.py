"""The import graph of foundry/: no cycles, and the layering the package's layout promises.

Static (ast only, nothing is imported), so it runs in well under a second. Every import counts,
including the ones inside functions: a deferred import still makes the two modules depend on
each other, and a cycle through one is as hard to follow (and to move) as any other.
`if TYPE_CHECKING:` blocks are left out (they never run).
"""

from __future__ import annotations

import ast
import functools
import os
from typing import Optional

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = 'foundry'

# (importer prefix, imported prefix): edges the layout forbids, and why.
FORBIDDEN = [
    ('foundry.data.prep', 'foundry.data.stream', 'conversion (data/prep) never imports training-time streaming'),
    ('foundry.data.stream', 'foundry.data.prep', 'training-time streaming (data/stream) never imports conversion'),
    ('foundry.checkpoint', 'foundry.export', 'checkpoint/ owns checkpoint files; export/ reads through it'),
]


def module_files(root: str) -> dict[str, str]:
    """Module name -> file for every .py under root/PACKAGE (a package is its __init__.py)."""
    modules = {}
    for folder, dirs, files in os.walk(os.path.join(root, PACKAGE)):
        dirs[:] = sorted(d for d in dirs if d != '__pycache__')
        for name in files:
            if not name.endswith('.py'):
                continue
            path = os.path.join(folder, name)
            parts = os.path.relpath(path, root)[:-3].split(os.sep)
            if parts[-1] == '__init__':
                parts = parts[:-1]
            modules['.'.join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == 'TYPE_CHECKING') or \
        (isinstance(test, ast.Attribute) and test.attr == 'TYPE_CHECKING')


def _imports(tree: ast.AST):
    """Import nodes, skipping `if TYPE_CHECKING:` bodies."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _resolve(name: str, modules: dict[str, str]) -> Optional[str]:
    """The foundry module `name` lands in: itself, or the nearest package above it that exists."""
    while name:
        if name in modules:
            return name
        name = name.rpartition('.')[0]
    return None


@functools.lru_cache(maxsize=None)  # both checks read the same graph: parse the package once
def import_graph(root: str = REPO) -> dict[str, dict[str, int]]:
    """module -> {imported foundry module: line of the first such import} (do not modify: cached)."""
    modules = module_files(root)
    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        with open(path, encoding='utf-8') as f:
            tree = ast.parse(f.read(), filename=path)
        is_package = os.path.basename(path) == '__init__.py'
        package = module if is_package else module.rpartition('.')[0]
        edges: dict[str, int] = {}
        for node in _imports(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = package.split('.')
                    base = base[:len(base) - (node.level - 1)]
                    prefix = '.'.join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ''
                # `from pkg import mod` imports the module pkg.mod when there is one.
                targets = [f'{prefix}.{alias.name}' if f'{prefix}.{alias.name}' in modules else prefix
                           for alias in node.names]
            for target in targets:
                if not target.startswith(PACKAGE):
                    continue
                resolved = _resolve(target, modules)
                if resolved and resolved != module:
                    edges.setdefault(resolved, node.lineno)
        graph[module] = edges
    return graph


def find_cycle(graph: dict[str, dict[str, int]]) -> Optional[list[str]]:
    """One cycle as [a, b, ..., a], or None (iterative depth-first search, deterministic order)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path = [start]
        iters = [iter(sorted(graph[start]))]
        state[start] = 1
        while iters:
            nxt = next(iters[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                iters.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                iters.append(iter(sorted(graph.get(nxt, {}))))
    return None


def describe_cycle(cycle: list[str], graph: dict[str, dict[str, int]], root: str = REPO) -> str:
    files = module_files(root)
    steps = [f'  {a} -> {b}  ({os.path.relpath(files[a], root)}:{graph[a][b]})' for a, b in zip(cycle, cycle[1:])]
    return 'import cycle: ' + ' -> '.join(cycle) + '\n' + '\n'.join(steps)


def forbidden_edges(graph: dict[str, dict[str, int]], root: str = REPO) -> list[str]:
    files = module_files(root)
    found = []
    for module, edges in sorted(graph.items()):
        for target, line in sorted(edges.items()):
            for importer, imported, why in FORBIDDEN:
                if _under(module, importer) and _under(target, imported):
                    found.append(f'{module} imports {target} ({os.path.relpath(files[module], root)}:{line}): {why}')
    return found


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + '.')


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 50, 'the graph should cover all of foundry/'
    cycle = find_cycle(graph)
    assert cycle is None, describe_cycle(cycle, graph)


def test_layers_import_one_way():
    problems = forbidden_edges(import_graph())
    assert not problems, '\n'.join(problems)


def test_checker_finds_a_cycle_and_a_forbidden_edge(tmp_path):
    """The checks themselves, on a small package written here: they must name what they find."""
    pkg = tmp_path / PACKAGE
    for folder in ('', 'checkpoint', 'export', 'data', 'data/prep', 'data/stream'):
        (pkg / folder).mkdir(parents=True, exist_ok=True)
        (pkg / folder / '__init__.py').write_text('')
    (pkg / 'checkpoint' / 'store.py').write_text('def f():\n    from foundry.export import hf\n')
    (pkg / 'export' / 'hf.py').write_text('from ..checkpoint.store import f\n')
    (pkg / 'data' / 'prep' / 'convert.py').write_text('from foundry.data import sizes\n')
    (pkg / 'data' / 'sizes.py').write_text('')
    (pkg / 'data' / 'stream' / 'reader.py').write_text(
        'from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from foundry.data.prep import convert\n')
    graph = import_graph(str(tmp_path))
    assert graph['foundry.data.prep.convert'] == {'foundry.data.sizes': 1}
    assert graph['foundry.data.stream.reader'] == {}  # TYPE_CHECKING imports never run
    cycle = find_cycle(graph)
    assert cycle == ['foundry.checkpoint.store', 'foundry.export.hf', 'foundry.checkpoint.store']
    message = describe_cycle(cycle, graph, str(tmp_path))
    assert f'foundry.checkpoint.store -> foundry.export.hf  ({os.path.join(PACKAGE, "checkpoint", "store.py")}:2)' \
        in message
    assert forbidden_edges(graph, str(tmp_path)) == [
        f'foundry.checkpoint.store imports foundry.export.hf ({os.path.join(PACKAGE, "checkpoint", "store.py")}:2): '
        f'checkpoint/ owns checkpoint files; export/ reads through it']

