"""Loading a workflow from a file: Python (``.py``), JSON or YAML.

A Python file is imported as a module named after the file (its folder goes on
``sys.path`` so that it can import its neighbours) and must define one ``Workflow``
at module level, or several with one called ``workflow``; a module-level ``inputs``
dict gives default inputs. JSON and YAML files name tasks by their registered Celery
name and never make gleitzeit import anything; ``-I module`` imports task modules.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gleitzeit.errors import LoadError, WorkflowValidationError
from gleitzeit.workflow import Workflow


@dataclass(frozen=True)
class Loaded:
    workflow: Workflow
    inputs: dict[str, Any] = field(default_factory=dict)


def _failed(what: str, exc: Exception, *, file: Path | None = None) -> LoadError:
    """Why importing ``what`` failed, as one line with the file and line it failed at
    (in ``file`` when the failure passed through it: the user's own line)."""
    if isinstance(exc, SyntaxError):
        where = f"{exc.filename}:{exc.lineno}"
        return LoadError(f"{where}: syntax error in {what}: {exc.msg}")
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if not frame.filename.startswith("<frozen")
    ]
    if file is not None:
        mine = [frame for frame in frames if Path(frame.filename).resolve() == file.resolve()]
        frames = mine or frames
    where = f"{frames[-1].filename}:{frames[-1].lineno}: " if frames else ""
    return LoadError(f"{where}cannot load {what}: {type(exc).__name__}: {exc}")


def import_modules(names: list[str]) -> None:
    """Import task modules (``-I``), with the current folder importable as Celery does.

    Raises :class:`LoadError` naming the module, and the file and line that failed.
    """
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    for name in names:
        for part in name.split(","):
            if part.strip():
                _import_tasks(part.strip())


def _import_tasks(module: str) -> None:
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module == missing or module.startswith(missing + "."):
            raise LoadError(
                f"-I {module}: no module named {missing!r} "
                f"(looked in {Path.cwd()} and on PYTHONPATH)"
            ) from exc
        raise _failed(f"task module {module!r} (-I)", exc) from exc
    except Exception as exc:
        raise _failed(f"task module {module!r} (-I)", exc) from exc


def _load_python(path: Path) -> Loaded:
    folder = str(path.parent.resolve())
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise LoadError(f"{path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[path.stem]
        raise _failed(f"workflow file {str(path)!r}", exc, file=path) from exc
    found = {name: value for name, value in vars(module).items() if isinstance(value, Workflow)}
    if not found:
        raise WorkflowValidationError([f"{path}: defines no Workflow at module level"])
    if len(found) > 1 and "workflow" not in found:
        raise WorkflowValidationError(
            [f"{path}: defines several workflows {sorted(found)}; name one 'workflow'"]
        )
    workflow = found.get("workflow") or next(iter(found.values()))
    inputs = getattr(module, "inputs", {})
    return Loaded(workflow, dict(inputs) if isinstance(inputs, dict) else {})


def load_workflow(path: str | Path) -> Loaded:
    """The workflow (and default inputs) that the file at ``path`` defines."""
    path = Path(path)
    if not path.is_file():
        raise LoadError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".py":
        return _load_python(path)
    text = path.read_text()
    if suffix == ".json":
        return Loaded(Workflow.from_json(text, source=str(path)))
    if suffix in (".yaml", ".yml"):
        return Loaded(Workflow.from_yaml(text, source=str(path)))
    raise LoadError(f"{path}: expected a .py, .json, .yaml or .yml file")
