"""Static analysis of a (transformed) cell: which names it reads before binding them, which it binds, and a
normalized form of its code that ignores comments and layout.

The walk follows evaluation order at the top level (`x = x + 1` reads `x`; `x = 1; print(x)` does not), so
a name the cell defines for itself is not mistaken for an input. Only a binding on every path counts: after
`if flag: y = 1`, a loop body, a `try` body or a `match` case, `y` may still be the namespace's old value, so
reading it afterwards makes it an input. Bodies of functions, lambdas and classes
defined in the cell contribute the globals they read. Names inside IPython magic calls (`%time f(x)`) are
picked out of the magic's argument text. Over-approximation is safe (a spurious input only costs a
fingerprint); the namespace diff after the run catches bindings the analysis cannot see.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

# Directory listings count only in cells that list: the import system lists folders of sys.path too.
_LISTERS = frozenset({"listdir", "scandir", "glob", "iglob", "iterdir", "walk", "rglob"})
_MAGIC_CALLS = {"run_line_magic", "run_cell_magic", "system", "getoutput"}
_IDENT = re.compile(r"[A-Za-z_]\w*")


@dataclass(frozen=True)
class CellAnalysis:
    normalized: str
    reads: tuple[str, ...]
    binds: tuple[str, ...]
    deletes: tuple[str, ...]
    has_result: bool
    environ: tuple[str, ...] = ()  # environment variables read by name: os.environ["X"], os.getenv("X")
    strings: tuple[str, ...] = ()  # string constants: the paths native readers (pyarrow, polars) are given
    lists_dirs: bool = False  # the code names a directory lister (os.listdir, glob, Path.iterdir...)
    imports: tuple[str, ...] = ()  # modules the cell's own import statements import (a replay may import them)


@lru_cache(maxsize=512)
def analyze(code: str) -> CellAnalysis:
    """Analyze transformed cell code. Raises SyntaxError like `compile` would."""
    tree = ast.parse(code)
    walker = _Walker()
    for stmt in tree.body:
        walker.visit(stmt)
    last = tree.body[-1] if tree.body else None
    return CellAnalysis(
        normalized=ast.dump(tree, annotate_fields=False, include_attributes=False),
        reads=tuple(dict.fromkeys(walker.reads)),
        binds=tuple(dict.fromkeys(walker.binds)),
        deletes=tuple(dict.fromkeys(walker.deletes)),
        has_result=isinstance(last, ast.Expr) and not _ends_with_semicolon(code),
        environ=tuple(dict.fromkeys(_environ_reads(tree))),
        lists_dirs=any((isinstance(n, ast.Attribute) and n.attr in _LISTERS) or (isinstance(n, ast.Name)
                       and n.id in _LISTERS) for n in ast.walk(tree)),
        strings=tuple(dict.fromkeys(n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
                                    and isinstance(n.value, str) and 0 < len(n.value) < 4096)),
        imports=tuple(dict.fromkeys(_imported_modules(tree.body))),
    )


def _imported_modules(body: list[ast.stmt]) -> list[str]:
    """Absolute modules that running these statements imports (not those of functions it only defines):
    `import a.b` → a.b; `from a.b import c` → a.b, and a.b.c in case c is a submodule; `from a import *` → a, a.*."""
    found: list[str] = []
    imports = [n for n in _walk_same_scope(body) if isinstance(n, ast.Import | ast.ImportFrom)]
    for node in sorted(imports, key=lambda n: (n.lineno, n.col_offset)):  # in the order the cell runs them
        if isinstance(node, ast.Import):
            found.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append(node.module)
            found.extend(f"{node.module}.{a.name}" for a in node.names)  # a.* : whatever a.__all__ names
    return found


def _environ_reads(tree: ast.AST) -> list[str]:
    """Names in `os.environ["X"]`, `os.environ.get("X")`, `os.getenv("X")` (and `environ`, `getenv` imported)."""
    def environ(node: ast.AST) -> bool:
        return (isinstance(node, ast.Attribute) and node.attr == "environ") or (
            isinstance(node, ast.Name) and node.id == "environ")

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and environ(node.value):
            key = node.slice
        elif isinstance(node, ast.Call) and node.args and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "get" and environ(node.func.value))
                or (isinstance(node.func, ast.Attribute) and node.func.attr == "getenv")
                or (isinstance(node.func, ast.Name) and node.func.id == "getenv")):
            key = node.args[0]
        else:
            continue
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            found.append(key.value)
    return found


def _ends_with_semicolon(code: str) -> bool:
    lines = [ln.split("#", 1)[0].rstrip() for ln in code.rstrip().splitlines()]
    lines = [ln for ln in lines if ln]
    return bool(lines) and lines[-1].endswith(";")


def _local_names(body: list[ast.stmt], args: ast.arguments | None) -> tuple[set[str], set[str]]:
    """Names a function scope binds locally, and names it declares global."""
    local: set[str] = set()
    declared: set[str] = set()
    if args is not None:
        for a in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
            if a is not None:
                local.add(a.arg)
    for node in _walk_same_scope(body):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
            local.add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            local.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            local.update(_import_names(node))
        elif isinstance(node, ast.ExceptHandler) and node.name:
            local.add(node.name)
        elif isinstance(node, ast.Global | ast.Nonlocal):
            declared.update(node.names)
    return local - declared, declared


def _walk_same_scope(body: list[ast.stmt]) -> list[ast.AST]:
    """All nodes of a scope, not descending into nested function/class/lambda/comprehension bodies."""
    out: list[ast.AST] = []
    todo: list[ast.AST] = list(body)
    while todo:
        node = todo.pop()
        out.append(node)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            continue
        todo.extend(ast.iter_child_nodes(node))
    return out


def _import_names(node: ast.Import | ast.ImportFrom) -> list[str]:
    return [(a.asname or a.name.split(".")[0]) for a in node.names if a.name != "*"]


class _Walker(ast.NodeVisitor):
    """Visits the top level in evaluation order; nested scopes report their global reads."""

    def __init__(self) -> None:
        self.reads: list[str] = []
        self.binds: list[str] = []
        self.deletes: list[str] = []
        self.bound: set[str] = set()
        # Stack of function-like scopes: (locals, declared-global) — a non-empty stack means "nested".
        self.scopes: list[tuple[set[str], set[str]]] = []

    def _read(self, name: str) -> None:
        if any(name in local for local, _ in self.scopes):
            return
        if name not in self.bound:
            self.reads.append(name)

    def _bind(self, name: str) -> None:
        if self.scopes:
            if name in self.scopes[-1][1]:
                self.binds.append(name)
            return
        self.bound.add(name)
        self.binds.append(name)

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self._read(node.id)
        else:
            self._bind(node.id)
            if isinstance(node.ctx, ast.Del) and not self.scopes:
                self.deletes.append(node.id)

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        for target in node.targets:
            self.visit(target)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self.visit(node.value)
        if isinstance(node.target, ast.Name):
            self._read(node.target.id)
        self.visit(node.target)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)
            self.visit(node.target)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value)
        self.visit(node.target)

    def _branches(self, *branches: Sequence[ast.AST]) -> None:
        """Alternative paths: after them, a name counts as bound only if every path binds it."""
        before = set(self.bound)
        after: set[str] | None = None
        for branch in branches:
            self.bound = set(before)
            for node in branch:
                self.visit(node)
            after = self.bound if after is None else after & self.bound
        self.bound = before | (after or set())

    def _maybe(self, *nodes: ast.AST) -> None:
        """Code that may not run at all (a loop body): its bindings do not count afterwards."""
        self._branches(list(nodes), [])

    def visit_If(self, node: ast.If) -> None:
        self.visit(node.test)
        self._branches(node.body, node.orelse)

    def visit_IfExp(self, node: ast.IfExp) -> None:
        self.visit(node.test)
        self._branches([node.body], [node.orelse])

    def visit_BoolOp(self, node: ast.BoolOp) -> None:
        first, *rest = node.values
        self.visit(first)
        self._maybe(*rest)

    def visit_For(self, node: ast.For | ast.AsyncFor) -> None:
        self.visit(node.iter)
        self._maybe(node.target, *node.body, *node.orelse)

    visit_AsyncFor = visit_For

    def visit_While(self, node: ast.While) -> None:
        self.visit(node.test)
        self._maybe(*node.body, *node.orelse)

    def visit_Try(self, node: ast.Try | ast.TryStar) -> None:
        # The body may stop at any statement; a handler runs after part of it.
        self._branches([*node.body, *node.orelse], *([h] for h in node.handlers))
        for stmt in node.finalbody:
            self.visit(stmt)

    visit_TryStar = visit_Try

    def visit_Match(self, node: ast.Match) -> None:
        self.visit(node.subject)
        # No case may match: the cases' bindings never count afterwards.
        self._branches(*([c] for c in node.cases), [])

    def visit_match_case(self, node: ast.match_case) -> None:
        self.visit(node.pattern)
        if node.guard is not None:
            self.visit(node.guard)
        for stmt in node.body:
            self.visit(stmt)

    def visit_With(self, node: ast.With | ast.AsyncWith) -> None:
        for item in node.items:
            self.visit(item.context_expr)
            if item.optional_vars is not None:
                self.visit(item.optional_vars)
        for stmt in node.body:
            self.visit(stmt)

    visit_AsyncWith = visit_With

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.type is not None:
            self.visit(node.type)
        if node.name:
            self._bind(node.name)
        for stmt in node.body:
            self.visit(stmt)

    def visit_Import(self, node: ast.Import | ast.ImportFrom) -> None:
        for name in _import_names(node):
            self._bind(name)

    visit_ImportFrom = visit_Import

    def visit_Global(self, node: ast.Global) -> None:
        return

    def _visit_function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        args = node.args
        for default in [*args.defaults, *[d for d in args.kw_defaults if d is not None]]:
            self.visit(default)
        if not isinstance(node, ast.Lambda):
            for deco in node.decorator_list:
                self.visit(deco)
            for a in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
                if a is not None and a.annotation is not None:
                    self.visit(a.annotation)
            self._bind(node.name)
            body: list[ast.stmt] = node.body
        else:
            body = [ast.Expr(node.body)]
        self.scopes.append(_local_names(body, args))
        for stmt in body:
            self.visit(stmt)
        self.scopes.pop()

    visit_FunctionDef = _visit_function
    visit_AsyncFunctionDef = _visit_function
    visit_Lambda = _visit_function

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for expr in [*node.decorator_list, *node.bases, *(k.value for k in node.keywords)]:
            self.visit(expr)
        self._bind(node.name)
        # A class body is a scope whose locals are not visible to the methods defined in it.
        class_locals, declared = _local_names(node.body, None)
        self.scopes.append((set(), declared))
        for stmt in node.body:
            if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
                self.visit(stmt)
            else:
                self.scopes[-1] = (class_locals, declared)
                self.visit(stmt)
                self.scopes[-1] = (set(), declared)
        self.scopes.pop()

    def _visit_comprehension(self, node: ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp) -> None:
        first, *rest = node.generators
        self.visit(first.iter)
        targets = {n.id for g in node.generators for n in ast.walk(g.target) if isinstance(n, ast.Name)}
        self.scopes.append((targets, set()))
        for cond in first.ifs:
            self.visit(cond)
        for gen in rest:
            self.visit(gen.iter)
            for cond in gen.ifs:
                self.visit(cond)
        for elt in ([node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]):
            self.visit(elt)
        self.scopes.pop()

    visit_ListComp = _visit_comprehension
    visit_SetComp = _visit_comprehension
    visit_GeneratorExp = _visit_comprehension
    visit_DictComp = _visit_comprehension

    def visit_MatchAs(self, node: ast.MatchAs) -> None:
        if node.pattern is not None:
            self.visit(node.pattern)
        if node.name:
            self._bind(node.name)

    def visit_MatchStar(self, node: ast.MatchStar) -> None:
        if node.name:
            self._bind(node.name)

    def visit_MatchMapping(self, node: ast.MatchMapping) -> None:
        self.generic_visit(node)
        if node.rest:
            self._bind(node.rest)

    def visit_Call(self, node: ast.Call) -> None:
        self.generic_visit(node)
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in _MAGIC_CALLS:
            for arg in node.args[1:] if func.attr.startswith("run_") else node.args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    for name in _IDENT.findall(arg.value):
                        self._read(name)
