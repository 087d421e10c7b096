"""The Sources section: which compute sources the sweep uses, their slots and health.

Each source type is a small *form* class registered in ``FORMS``; adding a type
(SSH, Slurm, Grid Engine, PBS) is one new form, nothing else changes here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import ipywidgets as w

from ..core.base.source import ComputeSource
from ..core.model.errors import ConfigError
from ..core.spec.environment import Environment
from ..core.spec.options import JobOptions
from ..sources import LocalComputeSource
from .html import esc


class SourceForm:
    """Widgets to describe one source of a type, and ``build()`` to make it."""

    kind = "?"

    def __init__(self) -> None:
        self.widget = w.VBox()

    def build(self) -> ComputeSource:
        raise NotImplementedError


class EnvironmentFields:
    """What jobs run in, the same on every form: conda env, venv, modules, pre-commands."""

    def __init__(self) -> None:
        self.conda = w.Text(placeholder="name or folder (optional)", description="Conda env")
        self.venv = w.Text(placeholder="e.g. ~/venvs/project (optional)", description="Venv")
        self.modules = w.Text(placeholder="e.g. cuda/12.1, gcc (optional)", description="Modules")
        self.pre = w.Textarea(placeholder="shell lines run before each job (optional)", description="Pre-commands")
        self.widgets = [self.conda, self.venv, self.modules, self.pre]

    def build(self) -> Environment:
        """ConfigError names the field (``environment.modules``, ...)."""
        pre = self.pre.value.strip("\n")
        return Environment(conda_env=self.conda.value.strip() or None, venv=self.venv.value.strip() or None,
                           modules=self.modules.value, pre_script=(pre,) if pre.strip() else ())


class OptionFields:
    """Widgets for some of the shared job options (``core.options.JobOptions``), made from the
    dataclass's own field metadata (label, hint, kind): every form asks for an option the same way,
    and ``values()`` gives the constructor keywords.  ``defaults`` pre-fills a field for one form."""

    def __init__(self, names: Sequence[str], defaults: Mapping[str, str] | None = None) -> None:
        meta = {f.name: f.metadata for f in fields(JobOptions)}
        self.fields: dict[str, Any] = {}
        for name in names:
            m = meta[name]
            if m["kind"] == "environment":
                self.fields[name] = EnvironmentFields()
            else:
                self.fields[name] = w.Text(value=(defaults or {}).get(name, ""), placeholder=m["hint"],
                                           description=m["label"])

    def __getitem__(self, name: str) -> Any:
        return self.fields[name]

    @property
    def widgets(self) -> list[w.Widget]:
        out: list[w.Widget] = []
        for field in self.fields.values():
            out += field.widgets if isinstance(field, EnvironmentFields) else [field]
        return out

    def values(self) -> dict[str, Any]:
        """The options filled in, as constructor keywords (a field left empty is left out)."""
        meta = {f.name: f.metadata for f in fields(JobOptions)}
        out: dict[str, Any] = {}
        for name, field in self.fields.items():
            kind = meta[name]["kind"]
            if kind == "environment":
                out[name] = field.build()
                continue
            text = field.value.strip()
            if not text:
                continue
            if kind == "ints":
                try:
                    out[name] = [int(g) for g in text.replace(" ", "").split(",") if g]
                except ValueError:
                    raise ConfigError(f"must be GPU numbers separated by commas, got {field.value!r}", name) from None
            elif kind == "words":
                out[name] = [t for t in text.replace(",", " ").split() if t]
            elif kind == "env":
                pairs = [line.split("=", 1) for line in text.splitlines() if line.strip()]
                if any(len(p) != 2 for p in pairs):
                    raise ConfigError(f"must be NAME=value lines, got {field.value!r}", name)
                out[name] = {k.strip(): v for k, v in pairs}
            else:
                out[name] = text
        return out


class LocalForm(SourceForm):
    kind = "this machine"

    def __init__(self) -> None:
        import os

        self.name = w.Text(value="local", description="Name")
        self.slots = w.BoundedIntText(value=os.cpu_count() or 1, min=1, max=4096, description="Slots")
        self.options = OptionFields(("gpus", "environment"))
        self.gpus, self.environment = self.options["gpus"], self.options["environment"]
        self.widget = w.VBox([self.name, self.slots, *self.options.widgets])

    def build(self) -> ComputeSource:
        return LocalComputeSource(self.name.value.strip(), int(self.slots.value), **self.options.values())


def ssh_config_hosts(path: Path = Path("~/.ssh/config")) -> list[str]:
    """Host aliases from an OpenSSH config (patterns with * or ? left out)."""
    try:
        text = path.expanduser().read_text()
    except OSError:
        return []
    hosts: list[str] = []
    for line in text.splitlines():
        words = line.strip().split()
        if len(words) > 1 and words[0].lower() == "host":
            hosts += [h for h in words[1:] if not any(c in h for c in "*?!")]
    return hosts


class SSHForm(SourceForm):
    kind = "SSH host"

    def __init__(self) -> None:
        self.host = w.Combobox(options=ssh_config_hosts(), placeholder="alias from ~/.ssh/config, or a host name",
                               description="Host", ensure_option=False)
        self.name = w.Text(placeholder="(the host)", description="Name")
        self.user = w.Text(placeholder="(from ssh config / your user)", description="User")
        self.port = w.Text(placeholder="22", description="Port")
        self.key = w.Text(placeholder="~/.ssh/id_ed25519 (optional: agent/config)", description="Key")
        self.known_hosts = w.Text(placeholder="~/.ssh/known_hosts", description="Known hosts")
        self.slots = w.BoundedIntText(value=1, min=1, max=4096, description="Slots")
        self.options = OptionFields(("python", "environment"), defaults={"python": "python3"})
        self.python, self.environment = self.options["python"], self.options["environment"]
        self.trust = w.Checkbox(value=False, description="trust a host seen for the first time")
        self.widget = w.VBox([self.host, self.name, self.user, self.port, self.key, self.known_hosts,
                              self.slots, *self.options.widgets, self.trust])

    def build(self) -> ComputeSource:
        from ..sources import SSHComputeSource

        host = self.host.value.strip()
        if not host:
            raise ConfigError("give a host name or an alias from ~/.ssh/config", "host")
        port = self.port.value.strip()
        if port and not port.isdigit():
            raise ConfigError(f"must be a number, got {port!r}", "port")
        return SSHComputeSource(
            host, self.name.value.strip() or None, int(self.slots.value), port=int(port) if port else None,
            username=self.user.value.strip() or None,
            client_keys=[self.key.value.strip()] if self.key.value.strip() else None,
            known_hosts=self.known_hosts.value.strip() or None, trust_new_host=self.trust.value,
            **self.options.values())


class SlurmForm(SourceForm):
    kind = "Slurm cluster"

    def __init__(self) -> None:
        self.name = w.Text(value="slurm", description="Name")
        self.partition = w.Text(placeholder="(the default partition)", description="Partition")
        self.walltime = w.Text(placeholder="e.g. 02:00:00", description="Walltime")
        self.cpus = w.Text(placeholder="e.g. 4", description="CPUs")
        self.mem = w.Text(placeholder="e.g. 16G", description="Memory")
        self.gpus = w.Text(placeholder="e.g. 1", description="GPUs")
        self.account = w.Text(placeholder="(optional)", description="Account")
        self.slots = w.BoundedIntText(value=500, min=1, max=100000, description="Submit at once")
        self.options = OptionFields(("environment",))
        self.environment = self.options["environment"]
        self.widget = w.VBox([self.name, self.partition, self.walltime, self.cpus, self.mem, self.gpus,
                              self.account, self.slots, *self.options.widgets])

    def build(self) -> ComputeSource:
        from ..core.model.state import ResourceSpec
        from ..sources import SlurmComputeSource

        def number(text: str, field: str):
            text = text.strip()
            if not text:
                return None
            if not text.isdigit():
                raise ConfigError(f"must be a whole number, got {text!r}", field)
            return int(text)

        spec = ResourceSpec(walltime=self.walltime.value.strip() or None, cpus=number(self.cpus.value, "cpus"),
                            mem=self.mem.value.strip() or None, gpus=number(self.gpus.value, "gpus"),
                            partition=self.partition.value.strip() or None,
                            account=self.account.value.strip() or None)
        return SlurmComputeSource(self.name.value.strip() or "slurm", int(self.slots.value), resources=spec,
                                  **self.options.values())


def free_name(name: str, taken: set[str]) -> str:
    """``name``, or ``name-2``, ``name-3``, ... : the first not in ``taken``."""
    if name not in taken:
        return name
    n = 2
    while f"{name}-{n}" in taken:
        n += 1
    return f"{name}-{n}"


def _whole(text: str, field: str) -> int | None:
    text = text.strip()
    if not text:
        return None
    if not text.isdigit():
        raise ConfigError(f"must be a whole number, got {text!r}", field)
    return int(text)


class _QueueForm(SourceForm):
    """A batch scheduler with queues (Grid Engine, PBS): the resources every task asks for."""

    default_name = "?"

    def __init__(self) -> None:
        self.name = w.Text(value=self.default_name, description="Name")
        self.queue = w.Text(placeholder="(the default queue)", description="Queue")
        self.walltime = w.Text(placeholder="e.g. 02:00:00", description="Walltime")
        self.cpus = w.Text(placeholder="e.g. 4", description="CPUs")
        self.mem = w.Text(placeholder="e.g. 16G (the job's)", description="Memory")
        self.gpus = w.Text(placeholder="e.g. 1", description="GPUs")
        self.account = w.Text(placeholder="(optional)", description="Account")
        self.slots = w.BoundedIntText(value=500, min=1, max=100000, description="Submit at once")
        self.options = OptionFields(("environment",))
        self.environment = self.options["environment"]
        self.widget = w.VBox([self.name, *self.own(), self.queue, self.walltime, self.cpus, self.mem, self.gpus,
                              self.account, self.slots, *self.options.widgets])

    def own(self) -> list[w.Widget]:
        return []

    def spec(self):
        from ..core.model.state import ResourceSpec

        return ResourceSpec(walltime=self.walltime.value.strip() or None, cpus=_whole(self.cpus.value, "cpus"),
                            mem=self.mem.value.strip() or None, gpus=_whole(self.gpus.value, "gpus"),
                            partition=self.queue.value.strip() or None, account=self.account.value.strip() or None)


class SGEForm(_QueueForm):
    kind = "Grid Engine cluster"
    default_name = "sge"

    def own(self) -> list[w.Widget]:
        self.pe = w.Text(value="smp", placeholder="the parallel environment for CPUs > 1", description="PE")
        return [self.pe]

    def build(self) -> ComputeSource:
        from ..sources.sge import SGEComputeSource

        return SGEComputeSource(self.name.value.strip() or "sge", int(self.slots.value), resources=self.spec(),
                                pe=self.pe.value.strip() or "smp", **self.options.values())


class PBSForm(_QueueForm):
    kind = "PBS cluster"
    default_name = "pbs"

    def own(self) -> list[w.Widget]:
        self.flavor = w.Dropdown(options=[("PBS Pro / OpenPBS", "pro"), ("Torque", "torque")], description="Flavor")
        return [self.flavor]

    def build(self) -> ComputeSource:
        from ..sources.pbs import PBSComputeSource

        return PBSComputeSource(self.name.value.strip() or "pbs", int(self.slots.value), flavor=self.flavor.value,
                                resources=self.spec(), **self.options.values())


#: Source types offered in the panel, by label: one small form class per type.
FORMS: dict[str, type[SourceForm]] = {LocalForm.kind: LocalForm, SSHForm.kind: SSHForm, SlurmForm.kind: SlurmForm,
                                      SGEForm.kind: SGEForm, PBSForm.kind: PBSForm}


class SourcesView:
    """The chosen sources with their health; add and remove them before launch."""

    def __init__(self, sources: list[ComputeSource], report: Callable[[Exception], None]):
        self.sources = list(sources)
        self._report = report
        self.health: dict[str, dict] = {}
        self.list_html = w.HTML()
        self.list_html.add_class("hsm-sources")
        # Adding is a separate, closed-by-default form for a NEW source (its own title, a free name):
        # open, it never reads as an editor of a row of the list above.
        self.open_add = w.ToggleButton(value=False, description="Add a source…", icon="plus")
        self.open_add.add_class("hsm-open-add")
        self.kind = w.Dropdown(options=list(FORMS), description="Type")
        self.form_box = w.VBox()
        self.add_button = w.Button(description="Add source", icon="plus", button_style="success",
                                   layout=w.Layout(align_self="flex-start"))
        self.add_form = w.VBox([w.HTML("<b>New source</b> (added to the list above)"), self.kind, self.form_box,
                                self.add_button], layout=w.Layout(display="none", border="1px solid #ccc",
                                                                  padding="4px", margin="4px 0"))
        self.add_form.add_class("hsm-add-form")
        self.open_add.observe(lambda change: self._show_add(bool(change["new"])), "value")
        self.remove = w.Dropdown(options=[], description="Remove")
        self.remove_button = w.Button(description="Remove", icon="trash")
        self.add_button.on_click(lambda _: self._guard(self._add))
        self.remove_button.on_click(lambda _: self._guard(self._remove))
        self.kind.observe(lambda _: self._new_form(), "value")
        self._new_form()
        self.editor = w.VBox([w.HBox([self.open_add, self.remove, self.remove_button]), self.add_form])
        self.control = w.Dropdown(options=[], description="Source")
        self.drain_button = w.Button(description="Drain", tooltip="no new tasks; running ones finish")
        self.disable_button = w.Button(description="Disable", tooltip="stop its tasks and run them elsewhere")
        self.enable_button = w.Button(description="Enable")
        for b, css in ((self.drain_button, "hsm-drain"), (self.disable_button, "hsm-disable"),
                       (self.enable_button, "hsm-enable")):
            b.add_class(css)
        self.controls = w.HBox([self.control, self.drain_button, self.disable_button, self.enable_button])
        self.controls.layout.display = "none"
        self.widget = w.VBox([self.list_html, self.editor, self.controls])
        self.render()

    def _guard(self, action: Callable[[], None]) -> None:
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - the UI boundary: shown in the panel
            self._report(exc)

    def _show_add(self, shown: bool) -> None:
        self.add_form.layout.display = "" if shown else "none"
        self.open_add.description = "Close the new source" if shown else "Add a source…"
        self.open_add.icon = "minus" if shown else "plus"

    def _new_form(self) -> None:
        """A fresh form of the chosen type; a default name already in the list becomes a free one."""
        self.form = FORMS[self.kind.value]()
        name = getattr(self.form, "name", None)
        taken = {s.name for s in self.sources}
        if isinstance(name, w.Text) and name.value in taken:
            name.value = free_name(name.value, taken)
        self.form_box.children = [self.form.widget]

    def _add(self) -> None:
        source = self.form.build()
        if source.name in {s.name for s in self.sources}:
            raise ConfigError(f"a source named {source.name!r} is already in the list; give another name", "name")
        self.sources.append(source)
        self.render()
        self._new_form()  # ready for another, with a free name
        self.open_add.value = False

    def _remove(self) -> None:
        self.sources = [s for s in self.sources if s.name != self.remove.value]
        self.render()

    def lock(self) -> None:
        """After launch the list is fixed; per-source controls appear instead."""
        self.editor.layout.display = "none"
        self.controls.layout.display = ""
        self.control.options = [s.name for s in self.sources]

    def render_stats(self, stats) -> None:
        """While a sweep runs: per-source state, health (with the reason), load and throughput."""
        if stats is None or stats.empty or "health" not in stats.columns:
            return self.render()
        cols = ["source", "type", "state", "health", "reason", "slots", "active", "completed", "failed",
                "per_minute", "avg_duration_s"]
        from .html import table

        shown = stats[[c for c in cols if c in stats.columns]]
        self.list_html.value = table(shown, "hsm-source-stats", state_column=None)
        names = list(stats["source"])
        if list(self.control.options) != names:
            self.control.options = names

    def render(self) -> None:
        rows = []
        for s in self.sources:
            h = self.health.get(s.name, {})
            status = h.get("status", "not checked")
            color = {"healthy": "#080", "degraded": "#a60", "unhealthy": "#c00"}.get(status, "#888")
            reason = h.get("reason") or ""
            rows.append(f"<tr><td>{esc(s.name)}</td><td>{esc(s.source_type)}</td><td>{s.max_parallel_jobs}</td>"
                        f"<td style='color:{color}'>{esc(status)}</td><td>{esc(reason)}</td></tr>")
        self.list_html.value = ("<table><tr><th>source</th><th>type</th><th>slots</th><th>health</th><th></th></tr>"
                                + "".join(rows) + "</table>")
        self.remove.options = [s.name for s in self.sources]
