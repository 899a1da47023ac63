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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gleitzeit.errors import WorkflowValidationError
from gleitzeit.workflow import Workflow


@dataclass(frozen=True)
class Loaded:
    workflow: Workflow
    inputs: dict[str, Any] = field(default_factory=dict)


def import_modules(names: list[str]) -> None:
    """Import task modules (``-I``), with the current folder importable as Celery does."""
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    for name in names:
        for part in name.split(","):
            if part.strip():
                importlib.import_module(part.strip())


def _load_python(path: Path) -> Loaded:
    folder = str(path.parent.resolve())
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise WorkflowValidationError([f"{path}: cannot be imported as a Python module"])
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
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
        raise WorkflowValidationError([f"{path}: no such file"])
    suffix = path.suffix.lower()
    if suffix == ".py":
        return _load_python(path)
    text = path.read_text()
    if suffix == ".json":
        return Loaded(Workflow.from_json(text, source=str(path)))
    if suffix in (".yaml", ".yml"):
        return Loaded(Workflow.from_yaml(text, source=str(path)))
    raise WorkflowValidationError([f"{path}: expected a .py, .json, .yaml or .yml file"])
