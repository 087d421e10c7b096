"""The test rule "no assert after a fixed sleep, none on a duration", checked over the test modules.

A test waits on the condition itself (``tests.helpers.until``: bounded, fails in words) or asserts
on a fact that decides (a ledger event, a count of commands or polls); timings go to ``bench/``.
Read from the source with ``ast`` (job scripts inside strings are not seen: review those by eye).

Flagged:

- a ``time.sleep(...)`` (or ``await asyncio.sleep(n)``, n != 0) statement, not inside a loop (a
  loop's sleep is a polling wait), with an ``assert`` after it in the same function;
- an ``assert`` comparing ``time.monotonic() - ...`` (or ``time.time()`` / ``perf_counter()``).
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent

#: Offenders in modules this rule's owner did not own when it was written, by (module, test):
#: remove an entry once its test waits on a fact.  Every other test must pass the check.
KNOWN: set[tuple[str, str]] = set()  # offenders still to fix: none

_CLOCKS = {"monotonic", "time", "perf_counter"}


def _is_sleep(node: ast.AST) -> bool:
    """``time.sleep(x)`` or ``await asyncio.sleep(x)`` with x not the constant 0 (a bare yield)."""
    if isinstance(node, ast.Await):
        node = node.value
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "sleep"):
        return False
    owner = node.func.value
    if not (isinstance(owner, ast.Name) and owner.id in ("time", "asyncio")):
        return False
    return not (node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value == 0)


def _is_clock(node: ast.AST) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _CLOCKS
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "time")


def _has_assert(stmts: list[ast.stmt]) -> bool:
    for stmt in stmts:
        for node in ast.walk(stmt):
            if isinstance(node, ast.Assert):
                return True
    return False


def _duration_asserts(fn: ast.AST) -> list[int]:
    lines = []
    for node in ast.walk(fn):
        if isinstance(node, ast.Assert):
            for sub in ast.walk(node.test):
                if isinstance(sub, ast.Compare):
                    for side in (sub.left, *sub.comparators):
                        if isinstance(side, ast.BinOp) and isinstance(side.op, ast.Sub) and _is_clock(side.left):
                            lines.append(node.lineno)
    return lines


def _sleeps_then_asserts(body: list[ast.stmt], after: list[list[ast.stmt]], in_loop: bool) -> list[int]:
    """Lines of sleep statements in ``body`` (and the blocks nested in it) followed by an assert:
    later in their own block, or in an enclosing block (``after``: what follows each enclosing
    statement).  A sleep inside a loop is a polling wait; nested functions are checked on their own."""
    found = []
    for i, stmt in enumerate(body):
        rest = [body[i + 1:], *after]
        if isinstance(stmt, ast.Expr) and _is_sleep(stmt.value) and not in_loop:
            if any(_has_assert(block) for block in rest):
                found.append(stmt.lineno)
            continue
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        loop = isinstance(stmt, (ast.For, ast.AsyncFor, ast.While))
        for field in ("body", "orelse", "finalbody", "handlers"):
            block = getattr(stmt, field, None)
            if not block:
                continue
            if field == "handlers":
                for handler in block:
                    found += _sleeps_then_asserts(handler.body, rest, in_loop or loop)
            else:
                found += _sleeps_then_asserts(block, rest, in_loop or loop)
    return found


def offenders(source: str) -> list[tuple[str, int, str]]:
    """(function, line, what) for every sleep-then-assert and duration assert in a module's source."""
    found = []
    for fn in ast.walk(ast.parse(source)):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            sleeps = _sleeps_then_asserts(fn.body, [], False)
            found += [(fn.name, line, "assert after a fixed sleep") for line in sleeps]
            own = [n for n in fn.body if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
            found += [(fn.name, line, "assert on a duration") for stmt in own for line in _duration_asserts(stmt)]
    return sorted(set(found), key=lambda f: f[1])


def _outer_test(tree: ast.Module, line: int) -> str:
    """The module-level function (a test) holding ``line``."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.lineno <= line <= (node.end_lineno or 0):
            return node.name
    return "<module>"


def test_the_checker_finds_both_kinds_and_spares_polling_waits():
    bad = '''
import time
def test_a():
    start()
    time.sleep(1.0)  # hoping it happened by now
    assert done()
def test_b():
    t0 = time.monotonic()
    run()
    assert time.monotonic() - t0 < 15
def test_c():
    try:
        if fault:
            time.sleep(5)
    finally:
        pass
    assert ok()
async def test_d():
    await asyncio.sleep(0.2)
    assert x
'''
    good = '''
import time
def test_e():
    deadline = time.monotonic() + 30
    while not done():
        assert time.monotonic() < deadline, "not done"
        time.sleep(0.1)
    assert result()
async def test_f():
    await asyncio.sleep(0)
    assert x
def test_g():
    def job():
        time.sleep(1)
    assert run(job)
'''
    assert [(f, what) for f, _, what in offenders(bad)] == [
        ("test_a", "assert after a fixed sleep"), ("test_b", "assert on a duration"),
        ("test_c", "assert after a fixed sleep"), ("test_d", "assert after a fixed sleep")]
    assert offenders(good) == []


def test_no_test_asserts_after_a_fixed_sleep_or_on_a_duration():
    found = []
    for path in sorted(TESTS.rglob("test_*.py")):
        source = path.read_text()
        tree = ast.parse(source)
        module = path.relative_to(TESTS).as_posix()
        for fn, line, what in offenders(source):
            if (module, _outer_test(tree, line)) not in KNOWN:
                found.append(f"tests/{module}:{line} ({fn}): {what}")
    assert not found, ("wait on the condition (tests.helpers.until) or assert on a deciding fact; "
                       "timings belong in bench/:\n" + "\n".join(found))
