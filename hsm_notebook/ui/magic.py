"""``%load_ext hsm_notebook`` then ``%hsm [sweep.yaml | sweep dir]`` opens the panel."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

from ..core.launch import launch_options
from ..core.model.errors import HsmError
from ..core.spec.config import SweepFile
from .panel import SweepPanel
from .recent import open_sweep


def open_panel(arg: str = "") -> Any:
    """``""`` -> an empty panel listing the recent sweeps (each with Open); a sweep directory ->
    that sweep (the live one if this kernel already drives it; resumed if it was launched before,
    else shown with Launch, see :func:`~hsm_notebook.ui.recent.open_sweep`);
    a YAML file -> a panel filled from it (and from its reference project's ``.hsm/config.yaml``:
    command, sources, environment), ready to launch with every setting of the file."""
    words = shlex.split(arg)
    if words[:1] == ["compare"]:
        return compare_view(words[1:])
    if not words:
        panel = SweepPanel()
        panel.show_recent()
        return panel
    path = Path(words[0]).expanduser()
    if path.is_dir():
        return SweepPanel(open_sweep(path))
    options = launch_options(SweepFile.load(path), need_command=False)
    sources = options.pop("sources")
    panel = SweepPanel(sources=sources, options=options)
    editor = panel.editor
    editor.mode.value = "YAML"
    editor.yaml.value = path.read_text()
    command = options.pop("command")
    if command:
        editor.command.value = shlex.join(command)
    editor.workdir.value = str(Path(options.pop("workdir")).absolute())
    return panel


def compare_view(folders: list[str]) -> Any:
    """``%hsm compare a b ...``: the sweeps' results side by side (``CompareView``), by folder or name."""
    from .compare import CompareView, compare

    if len(folders) < 2:
        raise HsmError("%hsm compare needs two or more sweeps: %hsm compare sweeps/<id> sweeps/<other id> "
                       "(folders or names)")
    return CompareView(compare(*folders))


def register(ipython: Any) -> None:
    def hsm(line: str) -> Any:
        """%hsm [sweep.yaml | sweep directory]: open the sweep panel; %hsm compare a b: sweeps side by side."""
        try:
            return open_panel(line)
        except HsmError as exc:
            print(f"hsm: {exc}", file=sys.stderr)
            return None

    ipython.register_magic_function(hsm, magic_kind="line", magic_name="hsm")
