"""Runs schemathesis's command line (tests/schemathesis.rs and docs/http.md use it).

CPython 3.11's ast.parse can raise SystemError ("AST constructor recursion depth mismatch",
fixed in later CPython releases) when hypothesis parses a module's source to describe a lambda
in a strategy's repr. The description is cosmetic: a failure there falls back to a placeholder
instead of ending the operation's tests with a runtime error.
"""

import sys

from hypothesis.internal import lambda_sources

_describe = lambda_sources.lambda_description


def _described(f):
    try:
        return _describe(f)
    except SystemError:
        return "lambda: <source not parsed>"


lambda_sources.lambda_description = _described

from schemathesis.cli import schemathesis  # noqa: E402

sys.exit(schemathesis())
