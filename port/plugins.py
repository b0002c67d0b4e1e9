"""Plugins: Python files or modules, run before a definition is read, that register custom layers.

Their options ``--proto`` and ``--plugin`` are declared by :func:`port.command.add_definition_options`
(re-exported here for older imports).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path

from .command import add_definition_options
from .errors import ToolError

__all__ = ["add_definition_options", "load_plugin", "load_plugins"]


# Plugin module name -> the custom layer keys its run registered. A plugin runs once per process,
# unless one of those registrations has since been removed (port.unregister_layer): then it runs
# again, so that a test or a long-lived session that cleaned up can load it anew.
_REGISTERED_BY: dict[str, frozenset] = {}


def _still_registered(name: str) -> bool:
    from .layers import CUSTOM_LAYERS

    return _REGISTERED_BY.get(name, frozenset()) <= CUSTOM_LAYERS.keys()


def _run_recorded(name: str, run) -> None:
    """Run a plugin's code and record which custom layers it registered."""
    from .layers import CUSTOM_LAYERS

    before = set(CUSTOM_LAYERS)
    run()
    _REGISTERED_BY[name] = frozenset(set(CUSTOM_LAYERS) - before)


def _exec_file(name: str, path: Path) -> None:
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:  # not a suffix Python loads
        raise ToolError(f"plugin {path}: not a Python file (a plugin file's name ends in .py)")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


def load_plugin(spec: str) -> None:
    """Run a plugin: a ``.py`` file path, or an importable module name (once per process, again
    if a layer it registered has been unregistered since)."""
    path = Path(spec)
    try:
        if spec.endswith(".py") or path.exists():
            if not path.is_file():
                raise ToolError(f"plugin {spec}: no such file")
            if path.suffix != ".py":
                raise ToolError(
                    f"plugin {spec}: not a .py file; give a Python file ending in .py or an "
                    "importable module name"
                )
            digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
            name = f"_caffe_port_plugin_{path.stem}_{digest}"
            if name not in sys.modules or not _still_registered(name):
                _run_recorded(name, lambda: _exec_file(name, path))
        elif spec not in sys.modules:
            _run_recorded(spec, lambda: importlib.import_module(spec))
        elif not _still_registered(spec):
            _run_recorded(spec, lambda: importlib.reload(sys.modules[spec]))
    except ToolError:
        raise
    except SystemExit as exc:  # a plugin registers layers; ending the run is not its to decide
        raise ToolError(
            f"plugin {spec} tried to end the process (sys.exit({exc.code!r})); a plugin may only "
            "define and register layers"
        ) from None
    except Exception as exc:  # a user's file: say which one failed, and how
        raise ToolError(f"plugin {spec} failed: {type(exc).__name__}: {exc}") from exc


def load_plugins(specs: Sequence[str]) -> None:
    for spec in specs:
        load_plugin(spec)
