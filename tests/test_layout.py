"""The layout is the architecture: the core is pure, the trainer never uses the daemon."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# What makes code an adapter: threads, sockets, event loops, processes, servers, torch.
NOT_IN_CORE = {"daemon", "trainer", "torch", "transformers", "onnxruntime", "zmq", "websockets",
               "asyncio", "threading", "socket", "subprocess", "sqlite3", "sounddevice",
               "concurrent", "multiprocessing"}


def imports(folder: str) -> dict[str, set[str]]:
    """Top-level module names each file of a package imports."""
    out = {}
    for path in sorted((REPO / folder).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        out[str(path.relative_to(REPO))] = names
    return out


def test_core_imports_no_adapter():
    bad = {f: sorted(n & NOT_IN_CORE) for f, n in imports("emoclap").items() if n & NOT_IN_CORE}
    assert bad == {}


def test_trainer_imports_the_core_not_the_daemon():
    found = imports("trainer")
    assert {f for f, n in found.items() if "daemon" in n} == set()
    assert any("emoclap" in n for n in found.values())


def test_modules_stay_small():
    sizes = {str(p.relative_to(REPO)): len(p.read_text(encoding="utf-8").splitlines())
             for folder in ("emoclap", "daemon", "trainer") for p in (REPO / folder).rglob("*.py")}
    assert {f: n for f, n in sizes.items() if n > 450} == {}
