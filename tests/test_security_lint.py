"""An AST lint for dangerous calls in the project's code (``hmrmamba/``, ``tasks/``, ``flows/``,
``benchmarks/``), and proof that it catches each of them.

Refused: ``pickle.load(s)`` / ``pickle.Unpickler`` (and ``_pickle``, ``dill``, ``joblib``,
``pandas.read_pickle``, ``numpy.load(allow_pickle=True)``) outside the restricted unpickler
(``hmrmamba/safe_pickle.py``); ``torch.load`` without ``weights_only=True``; ``eval``/``exec``;
``yaml.load`` without a safe loader (and ``yaml.unsafe_load``/``full_load``); ``subprocess`` with
``shell=True`` (and ``subprocess.getoutput``); ``os.system``/``os.popen``. Import aliases
(``import pickle as p``, ``from os import system as run``) are followed.
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("hmrmamba", "tasks", "flows", "benchmarks")
#: the one module allowed to drive the pickle machinery: it resolves globals through an allow-list
RESTRICTED_UNPICKLER = "hmrmamba/safe_pickle.py"

PICKLE_LOADERS = {
    "pickle.load",
    "pickle.loads",
    "pickle.Unpickler",
    "_pickle.load",
    "_pickle.loads",
    "_pickle.Unpickler",
    "cPickle.load",
    "cPickle.loads",
    "dill.load",
    "dill.loads",
    "joblib.load",
    "pandas.read_pickle",
    "shelve.open",
    "marshal.load",
    "marshal.loads",
}
SUBPROCESS = {
    "subprocess.run",
    "subprocess.call",
    "subprocess.check_call",
    "subprocess.check_output",
    "subprocess.Popen",
}
ALWAYS_SHELL = {"subprocess.getoutput", "subprocess.getstatusoutput", "os.system", "os.popen"}
SAFE_YAML_LOADERS = {"yaml.SafeLoader", "yaml.CSafeLoader", "yaml.BaseLoader", "yaml.CBaseLoader"}


@dataclass(frozen=True)
class Finding:
    file: str
    line: int
    rule: str
    code: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.rule}: {self.code}"


class _Lint(ast.NodeVisitor):
    def __init__(self, file: str, source: str):
        self.file, self.source = file, source
        self.aliases: dict[str, str] = {}
        self.findings: list[Finding] = []

    # -- names ------------------------------------------------------------------------------
    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            self.aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module and not node.level:
            for a in node.names:
                self.aliases[a.asname or a.name] = f"{node.module}.{a.name}"

    def qualname(self, node: ast.AST) -> str | None:
        """``pk.loads`` -> ``pickle.loads`` after ``import pickle as pk``; None for non-names."""
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            return None
        head = self.aliases.get(node.id, node.id)
        return ".".join([head, *reversed(parts)])

    # -- checks -----------------------------------------------------------------------------
    def flag(self, node: ast.AST, rule: str) -> None:
        code = ast.get_source_segment(self.source, node) or ""
        self.findings.append(Finding(self.file, node.lineno, rule, " ".join(code.split())[:120]))

    @staticmethod
    def kw(node: ast.Call, name: str) -> ast.expr | None:
        return next((k.value for k in node.keywords if k.arg == name), None)

    @staticmethod
    def is_true(node: ast.expr | None) -> bool:
        return isinstance(node, ast.Constant) and node.value is True

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for base in node.bases:
            if self.qualname(base) in PICKLE_LOADERS and self.file != RESTRICTED_UNPICKLER:
                self.flag(node, "pickle-unpickler-subclass")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        name = self.qualname(node.func) or ""
        if name in PICKLE_LOADERS and self.file != RESTRICTED_UNPICKLER:
            self.flag(node, "pickle-load")
        if name == "numpy.load" and self.is_true(self.kw(node, "allow_pickle")):
            self.flag(node, "pickle-load")
        if name == "torch.load" and not self.is_true(self.kw(node, "weights_only")):
            self.flag(node, "torch-load-without-weights-only")
        if name in ("eval", "exec", "builtins.eval", "builtins.exec") and not self._shadowed(node.func):
            self.flag(node, "eval-exec")
        if name in ("yaml.load", "yaml.load_all"):
            loader = self.kw(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
            if loader is None or self.qualname(loader) not in SAFE_YAML_LOADERS:
                self.flag(node, "yaml-load-unsafe")
        if name in ("yaml.unsafe_load", "yaml.unsafe_load_all", "yaml.full_load", "yaml.full_load_all"):
            self.flag(node, "yaml-load-unsafe")
        if (
            name in SUBPROCESS
            and self.kw(node, "shell") is not None
            and not (
                isinstance(self.kw(node, "shell"), ast.Constant) and self.kw(node, "shell").value is False
            )
        ):
            self.flag(node, "subprocess-shell")
        if name in ALWAYS_SHELL:
            self.flag(node, "os-system" if name.startswith("os.") else "subprocess-shell")
        self.generic_visit(node)

    def _shadowed(self, func: ast.expr) -> bool:
        """``model.eval()`` is a method, not the builtin."""
        return isinstance(func, ast.Attribute) and self.qualname(func) not in (
            "builtins.eval",
            "builtins.exec",
        )


def lint_source(source: str, file: str = "<snippet>") -> list[Finding]:
    tree = ast.parse(source, filename=file)
    lint = _Lint(file, source)
    lint.visit(tree)
    return lint.findings


def lint_tree(root: Path = ROOT, dirs: tuple[str, ...] = SCANNED) -> tuple[list[Finding], int]:
    """Lint every ``.py`` under ``dirs`` -> (findings, files scanned)."""
    findings, n = [], 0
    for d in dirs:
        for path in sorted((root / d).rglob("*.py")):
            rel = str(path.relative_to(root))
            findings += lint_source(path.read_text(encoding="utf-8"), rel)
            n += 1
    return findings, n


def test_project_code_has_no_dangerous_calls(record_property):
    findings, scanned = lint_tree()
    assert scanned > 50, "the lint scanned almost nothing"
    assert findings == [], "dangerous calls:\n" + "\n".join(map(str, findings))
    record_property(
        "reliability",
        f'{{"kind": "security", "target": "AST lint over {", ".join(SCANNED)}", '
        f'"case": "{scanned} files, no dangerous call"}}',
    )


VIOLATIONS = {
    "pickle-load": [
        "import pickle\npickle.load(open('f', 'rb'))",
        "import pickle as pk\npk.loads(b'')",
        "from pickle import loads as L\nL(b'')",
        "import pickle\npickle.Unpickler(f).load()",
        "import _pickle\n_pickle.loads(b'')",
        "import numpy as np\nnp.load('f.npy', allow_pickle=True)",
        "import pandas as pd\npd.read_pickle('f.pkl')",
        "import joblib\njoblib.load('f')",
    ],
    "pickle-unpickler-subclass": ["import pickle\nclass U(pickle.Unpickler):\n    pass"],
    "torch-load-without-weights-only": [
        "import torch\ntorch.load('x.pt')",
        "import torch\ntorch.load('x.pt', weights_only=False)",
        "from torch import load\nload('x.pt', map_location='cpu')",
        "import torch\nkw = {}\ntorch.load('x.pt', **kw)",
    ],
    "eval-exec": [
        "eval('1+1')",
        "exec('x = 1')",
        "import builtins\nbuiltins.eval('1')",
        "from builtins import exec as run\nrun('x')",
    ],
    "yaml-load-unsafe": [
        "import yaml\nyaml.load(s)",
        "import yaml\nyaml.load(s, Loader=yaml.Loader)",
        "import yaml\nyaml.load(s, yaml.UnsafeLoader)",
        "import yaml\nyaml.unsafe_load(s)",
        "import yaml\nyaml.full_load(s)",
        "from yaml import load\nload(s)",
    ],
    "subprocess-shell": [
        "import subprocess\nsubprocess.run('ls', shell=True)",
        "import subprocess as sp\nsp.Popen('ls', shell=1)",
        "from subprocess import check_output\ncheck_output('ls', shell=True)",
        "import subprocess\nsubprocess.getoutput('ls')",
    ],
    "os-system": [
        "import os\nos.system('ls')",
        "from os import system\nsystem('ls')",
        "import os\nos.popen('ls')",
    ],
}


@pytest.mark.parametrize("rule, snippet", [(r, s) for r, snippets in VIOLATIONS.items() for s in snippets])
def test_the_lint_catches_each_violation(rule, snippet):
    findings = lint_source(snippet)
    assert [f.rule for f in findings] == [rule], (snippet, findings)


SAFE = textwrap.dedent("""
    import pickle, subprocess, os
    import numpy as np
    import torch
    import yaml
    model = torch.nn.Linear(2, 2)
    model.eval()
    torch.load("x.pt", weights_only=True, map_location="cpu")
    yaml.safe_load("a: 1")
    yaml.load("a: 1", Loader=yaml.SafeLoader)
    yaml.load("a: 1", yaml.CSafeLoader)
    subprocess.run(["git", "rev-parse", "HEAD"], check=False)
    subprocess.run(["ls"], shell=False)
    np.load("x.npz", allow_pickle=False)
    pickle.dumps({"a": 1})
    os.path.join("a", "b")
    ref = os.system  # a reference (e.g. in a test fixture's __reduce__) is not a call
""")


def test_safe_code_is_not_flagged():
    assert lint_source(SAFE) == []


def test_the_restricted_unpickler_is_the_only_exception():
    code = "import pickle\nclass _R(pickle.Unpickler):\n    pass\npickle.loads(b'')"
    assert [f.rule for f in lint_source(code, "hmrmamba/other.py")] == [
        "pickle-unpickler-subclass",
        "pickle-load",
    ]
    assert lint_source(code, RESTRICTED_UNPICKLER) == []
