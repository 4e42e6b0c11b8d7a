"""No code path deserialises with code execution: a scan of the package sources.

Weight files are untrusted downloads. ``torch.load`` must always pass ``weights_only=True``; the
only ``pickle`` reader is the restricted unpickler of ``m2f_core/checkpoint.py`` (whose refusal of
``os.system`` / ``eval`` payloads is ``test_checkpoint.py::test_malicious_pickle_is_refused_and_never_runs``);
``numpy.load`` never allows pickles, and nothing calls ``eval`` / ``exec`` or ``yaml.load``.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for d in ("m2f_core", "training", "app") for p in (REPO / d).rglob("*.py")) + [REPO / "launch.py"]


def _calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return ast.literal_eval(kw.value) if isinstance(kw.value, ast.Constant) else ...
    return None


def test_no_unsafe_deserialisation_in_the_sources():
    problems = []
    for path in SOURCES:
        where = path.relative_to(REPO)
        for call, name in _calls(path):
            line = f"{where}:{call.lineno}: {name}"
            if name == "torch.load" and _keyword(call, "weights_only") is not True:
                problems.append(f"{line} without weights_only=True")
            if name in ("pickle.load", "pickle.loads", "pickle.Unpickler", "dill.load", "joblib.load",
                        "yaml.load", "eval", "exec", "marshal.loads"):
                problems.append(line)
            if name in ("np.load", "numpy.load") and _keyword(call, "allow_pickle") not in (None, False):
                problems.append(f"{line} with allow_pickle")
    assert not problems, "\n".join(problems)
    assert len(SOURCES) > 30  # the scan did find the package
