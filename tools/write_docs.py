"""The documentation's generated pages, written from the code at every build, so that a renamed
option or a newly registered kind cannot leave a stale page.

``mkdocs build`` runs this file through mkdocs-gen-files (``mkdocs.yml``); it writes, beside the
hand-written pages under ``docs/``:

- ``reference/config.md``: every key of an experiment config and of a sweep file, walked from the
  pydantic models (:mod:`perturbd.config`, :mod:`perturbd.sweep.config`): type, bounds, default,
  description; the trigger section's own keys and, per kind, its ``Params``;
- ``reference/cli.md``: every command of the Typer app with its usage, help, arguments and options;
- ``triggers/<kind>.md`` and ``defenses/<name>.md``: one page per registered trigger kind and
  defence (its parameters as ``perturbd trigger list`` / ``perturbd defenses`` read them, and the
  docstrings that name its paper and where perturbd departs from it), with their indexes and
  ``SUMMARY.md`` (the navigation, read by mkdocs-literate-nav);
- ``triggers/<kind>.png``: what ``perturbd trigger show KIND`` draws, for every kind that needs
  no model;
- ``changelog.md`` and ``contributing.md``: the repository's ``CHANGELOG.md`` and ``CONTRIBUTING.md``.
"""

from __future__ import annotations

import inspect
import json
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))  # this checkout's perturbd


from griffe import Extension, Object
from pydantic import BaseModel

from perturbd.cli.catalog import describe_params, live_defense_entries, trigger_entries

ROOT = Path(__file__).resolve().parent.parent
OpenFile = Callable[..., IO[Any]]

# --------------------------------------------------------------------------- markdown text

_CODE = re.compile(r"(`[^`]*`)")
_ROLE = re.compile(r":[a-z]+:`~?([^`<]*?)(?: <[^`>]*>)?`")


def text(value: str) -> str:
    """``value`` as Markdown text: ``<`` and ``>`` escaped outside code spans (``<name>-<hash8>``
    is not HTML); code spans kept."""
    parts = _CODE.split(value)
    return "".join(p if p.startswith("`") else p.replace("<", "&lt;").replace(">", "&gt;") for p in parts)


def cell(value: str) -> str:
    """``value`` for a table cell: one line, ``|`` escaped, ``*`` literal outside code spans."""
    parts = _CODE.split(" ".join(value.split()))
    return text("".join(p if p.startswith("`") else p.replace("*", r"\*") for p in parts)).replace("|", r"\|")


def docstring(doc: str | None) -> str:
    """A docstring in reStructuredText's habits as Markdown: ````x```` as `` `x` ``, a
    ``:func:`~a.b.c``` role as `` `c` ``, the rest as written (its paragraphs, lists and
    indented examples read the same in Markdown)."""
    body = inspect.cleandoc(doc or "").replace("``", "`")
    return text(roles(body))


def roles(doc: str) -> str:
    """Sphinx's cross-reference roles as code spans: ``:func:`~a.b.c``` as `` `c` ``,
    ``:mod:`a.b``` as `` `a.b` ``."""
    return _ROLE.sub(lambda m: f"`{m.group(1).rsplit('.', 1)[-1] if m.group(0).count('~') else m.group(1)}`", doc)


class SphinxRoles(Extension):
    """A griffe extension (``mkdocs.yml``): the API reference shows the docstrings' Sphinx roles
    as code spans, as the generated pages do, instead of as raw text."""

    def on_instance(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = roles(obj.docstring.value)


def literal(value: Any) -> str:
    """A default as YAML reads it (``null``, ``true``, ``"mnist5k"``, ``[0, 1]``), in a code span."""
    return f"`{json.dumps(value, ensure_ascii=False, default=str)}`"


def params_table(entries: list[dict[str, Any]], prefix: str = "") -> str:
    """A table of parameters as :func:`perturbd.cli.catalog.describe_params` lists them."""
    rows = ["| key | type | bounds | default | description |", "|---|---|---|---|---|"]
    for p in entries:
        bounds = cell(p["range"]) or "–"
        rows.append(f"| `{prefix}{p['name']}` | {cell(p['type'])} | {bounds} | {literal(p['default'])} | {cell(p['description'])} |")
    return "\n".join(rows) + "\n"


# --------------------------------------------------------------------------- configuration


def _sections(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, type[BaseModel]]]:
    """``(dotted prefix, model)`` for ``model`` and every section nested in it, depth first."""
    yield prefix, model
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _sections(ann, f"{prefix}{name}.")


def config_page() -> str:
    from perturbd.config import DefenseSpec, ExperimentConfig, TriggerConfig
    from perturbd.sweep.config import SweepConfig
    from perturbd.trigger_params import KINDS

    out = [
        "# Configuration reference\n",
        "Generated from the pydantic models at every build. An experiment is one YAML mapping; every key can also be "
        "set on the command line with `--set section.key=value` (the value read as YAML). Amplitudes and budgets are in "
        "pixel units of the 0–255 scale, rates are fractions in [0, 1]. A key that is not listed here is an error, "
        "with the closest valid key suggested.\n",
        "## Experiment config\n",
    ]
    for prefix, model in _sections(ExperimentConfig):
        entries = [e for e in describe_params(model) if not _is_section(model, e["name"])]
        if model is TriggerConfig:
            entries = [e for e in entries if e["name"] != "params"]
        out.append(f"### `{prefix.rstrip('.')}`\n" if prefix else "### Top level\n")
        if model.__doc__ and model is not ExperimentConfig:
            out.append(docstring(model.__doc__.split("\n\n")[0]) + "\n")
        out.append(params_table(entries, prefix))
        if model is TriggerConfig:
            out.append(_trigger_keys(KINDS.names()))
    out += [
        "### `defenses`\n",
        "A list; each item is a registered defence's name, or a mapping (see [Defences](../defenses/index.md)):\n",
        docstring(DefenseSpec.__doc__) + "\n",
        params_table(describe_params(DefenseSpec), "defenses[]."),
        "## Sweep file\n",
        "The file `perturbd sweep` reads: the experiment config every run starts from (`base`), the axes and "
        "variants that change it, the seeds and where the runs execute.\n",
    ]
    for prefix, model in _sections(SweepConfig):
        entries = [e for e in describe_params(model) if not _is_section(model, e["name"])]
        out += [f"### `{prefix.rstrip('.')}`\n" if prefix else "### Top level\n", params_table(entries, prefix)]
    return "\n".join(out)


def _is_section(model: type[BaseModel], name: str) -> bool:
    ann = model.model_fields[name].annotation
    return name == "defenses" or (isinstance(ann, type) and issubclass(ann, BaseModel))


def _trigger_keys(kinds: list[str]) -> str:
    """The trigger section's kind-specific keys: which kinds take each (their pages hold the rest)."""
    from perturbd.trigger_params import params_of

    takers: dict[str, list[str]] = {}
    for kind in kinds:
        for key in params_of(kind).model_fields:
            takers.setdefault(key, []).append(kind)
    rows = [
        "Beside `kind`, `psnr` and `ssim`, the section holds the chosen kind's own parameters; "
        "each kind's page gives their types, bounds and defaults.\n",
        "| key | kinds that take it |",
        "|---|---|",
    ]
    rows += [f"| `trigger.{key}` | {', '.join(f'[{k}](../triggers/{k}.md)' for k in ks)} |" for key, ks in sorted(takers.items())]
    return "\n".join(rows) + "\n"


# --------------------------------------------------------------------------- command line


def _help(value: str | None) -> str:
    """A help text as written (rich's ``\\[`` unescaped)."""
    return (value or "").replace("\\[", "[")


def _usage(command: Any, ctx: Any) -> str:
    pieces = []
    for p in command.get_params(ctx):
        if p.param_type_name == "argument":
            name = p.name.upper() + ("..." if p.nargs == -1 else "")
            pieces.append(name if p.required else f"[{name}]")
    sub = " COMMAND [ARGS]..." if hasattr(command, "list_commands") else ""
    return f"{ctx.command_path} [OPTIONS]{' ' + ' '.join(pieces) if pieces else ''}{sub}"


def _commands(command: Any, ctx: Any) -> Iterator[tuple[Any, Any]]:
    """``(command, context)`` for every command under the group ``command``, in its help's order."""
    from typer._click import Context

    for name in command.list_commands(ctx):
        sub = command.get_command(ctx, name)
        sub_ctx = Context(sub, info_name=name, parent=ctx)
        yield sub, sub_ctx
        if hasattr(sub, "list_commands"):
            yield from _commands(sub, sub_ctx)


def cli_page() -> str:
    import typer
    from typer._click import Context

    from perturbd.cli import app

    group = typer.main.get_command(app)
    root = Context(group, info_name="perturbd", **group.context_settings)
    out = [
        "# Command-line reference\n",
        "Generated from the Typer app at every build: what `perturbd COMMAND -h` prints. Every user mistake is "
        "one line on stderr and exit code 2.\n",
        f"```\n{_usage(group, root)}\n```\n",
        text(_help(group.help)) + "\n",
        _options(group, root),
    ]
    for command, ctx in _commands(group, root):
        out += [f"## `{ctx.command_path}`\n", f"```\n{_usage(command, ctx)}\n```\n", text(_help(command.help)) + "\n"]
        arguments = [p for p in command.get_params(ctx) if p.param_type_name == "argument"]
        if arguments:
            out.append("| argument | required | default | help |\n|---|---|---|---|")
            out += [
                f"| `{p.name.upper()}` | {'yes' if p.required else 'no'} | {literal(p.default) if p.default is not None else '–'} "
                f"| {cell(_help(p.help))} |"
                for p in arguments
            ]
            out.append("")
        out.append(_options(command, ctx))
    return "\n".join(out)


def _options(command: Any, ctx: Any) -> str:
    rows = ["| option | help |", "|---|---|"]
    for p in command.get_params(ctx):
        record = p.get_help_record(ctx) if p.param_type_name == "option" else None
        if record is not None:
            rows.append(f"| `{record[0]}` | {cell(_help(record[1]))} |")
    return "\n".join(rows) + "\n"


# --------------------------------------------------------------------------- triggers and defences


def _picture(kind: str, folder: Path) -> tuple[bytes | None, str]:
    """``perturbd trigger show KIND``'s PNG, or None and the one line it answered instead."""
    from typer.testing import CliRunner

    from perturbd.cli import app
    from perturbd.errors import PerturbdError

    path = folder / f"{kind}.png"
    result = CliRunner().invoke(app, ["trigger", "show", kind, "-o", str(path)])
    if isinstance(result.exception, PerturbdError):
        return None, str(result.exception)
    if result.exit_code != 0:
        raise RuntimeError(f"perturbd trigger show {kind} failed: {result.exception!r}\n{result.output}")
    return path.read_bytes(), ""


Files = dict[str, str | bytes]


def _registry_pages(
    folder: str, intro: list[str], header: str, entries: list[dict[str, Any]], page: Callable[[dict[str, Any]], Files]
) -> Files:
    """One registry's pages: ``folder/index.md`` (``intro``, then a row per entry under ``header``:
    its name, kind and one line), ``folder/SUMMARY.md`` (their navigation, for mkdocs-literate-nav)
    and each entry's own files, ``page(entry)`` (names relative to ``folder``)."""
    out: Files = {}
    index = [*intro, header, "|---|---|---|"]
    summary = ["* [Overview](index.md)"]
    for entry in entries:
        name = entry["name"]
        index.append(f"| [`{name}`]({name}.md) | {entry['kind']} | {cell(entry['about'])} |")
        summary.append(f"* [{name}]({name}.md)")
        out.update({f"{folder}/{path}": content for path, content in page(entry).items()})
    out[f"{folder}/index.md"] = "\n".join(index) + "\n"
    out[f"{folder}/SUMMARY.md"] = "\n".join(summary) + "\n"
    return out


def trigger_pages() -> Files:
    import perturbd.triggers  # noqa: F401  (attaches every kind's factory and family)
    from perturbd.trigger_params import KINDS
    from perturbd.triggers.base import Trigger

    def page(entry: dict[str, Any]) -> Files:
        name = entry["name"]
        kind = KINDS.get(name)
        files: Files = {}
        lines = [f"# `{name}`\n", text(entry["about"]) + "\n"]
        lines.append(
            f"Strength: `trigger.{kind.params.strength_key}` (symbol {kind.params.symbol}), the key `trigger.psnr` / "
            "`trigger.ssim` search. "
            + ("Computed from the adversary's model: `perturbd trigger make` builds it without training a victim.\n"
               if kind.params.needs_model else "A fixed function of the image: no model is needed to build it.\n")
        )  # fmt: skip
        lines += ["## Parameters\n", params_table(entry["params"], "trigger.")]
        if not kind.params.needs_model:
            png, why = _picture(name, Path(tmp))
            lines.append("## Picture\n")
            if png is None:
                lines.append(f"`perturbd trigger show {name}` with its defaults answers: {text(why)}\n")
            else:
                files[f"{name}.png"] = png
                lines.append(
                    f"`perturbd trigger show {name}` (its defaults, the first test images of mnist5k), drawn at build time:\n\n"
                    f"![{name}]({name}.png)\n"
                )
        module = sys.modules.get(kind.build.__module__) if kind.build else None
        family = kind.family if kind.family not in (None, Trigger) else None
        docs = [module.__doc__ if module else None, kind.build.__doc__ if kind.build else None, family.__doc__ if family else None]
        lines.append("## How it works\n")
        lines += [docstring(d) + "\n" for d in docs if d]
        if module is not None:
            lines.append(f"Source: `{module.__name__}`.\n")
        files[f"{name}.md"] = "\n".join(lines)
        return files

    intro = [
        "# Trigger kinds\n",
        "Every registered kind, generated from the trigger registry at every build (`perturbd trigger list` prints the "
        "same). Set one with `trigger: {kind: NAME, ...}` in a config, or `--set trigger.kind=NAME`; a kind's parameters "
        "sit beside `kind`. *Fixed* kinds are a function of the image alone; kinds *from model* are computed from the "
        "adversary's model.\n",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        return _registry_pages("triggers", intro, "| kind | made | what it is |", trigger_entries(), page)


def defense_pages() -> Files:
    from perturbd.defenses import get_defense
    from perturbd.evaluation.kinds import KINDS

    def page(entry: dict[str, Any]) -> Files:
        name = entry["name"]
        cls = get_defense(name)
        kind = KINDS.get(entry["kind"])
        first = entry["params"][0] if entry["params"] else None
        example = f" -p {name}.{first['name']}={json.dumps(first['default'])}" if first else ""
        lines = [
            f"# `{name}`\n",
            text(entry["about"]) + "\n",
            f"Kind: **{entry['kind']}**{f' ({text(kind.about)})' if kind else ''}.\n",
            f"Run it after training with `defenses: [{name}]` in a config, on a saved model with "
            f'`perturbd defend MODEL -d {name}{example}`, or from Python with `perturbd.defend(model, data, "{name}")`.\n',
            "## Parameters\n",
            params_table(entry["params"], f"{name}.") if entry["params"] else "None.\n",
            "## How it works\n",
        ]
        module = sys.modules.get(cls.__module__)
        docs = [module.__doc__ if module else None, cls.__dict__.get("__doc__")]
        # the first line of the first docstring is the page's opening line already
        lines += [docstring(d.strip().removeprefix(entry["about"])) + "\n" for d in docs if d]
        lines.append(f"Source: `{cls.__module__}`.\n")
        return {f"{name}.md": "\n".join(lines)}

    intro = [
        "# Defences\n",
        "Every registered defence, generated from the defence registry at every build (`perturbd defenses` prints the "
        "same). A defence is built with its parameters and fitted like a scikit-learn estimator; its kind says what "
        "it returns and how a run measures it.\n",
        "| kind | what a defence of it does |",
        "|---|---|",
        *[f"| {kind.name} | {cell(kind.about)} |" for kind in KINDS.values()],
        "",
    ]
    return _registry_pages("defenses", intro, "| defence | kind | what it is |", live_defense_entries(), page)


# --------------------------------------------------------------------------- all pages


def pages() -> Files:
    """Every generated file: its path under the site's sources → its text or bytes."""
    out: Files = {
        "reference/config.md": config_page(),
        "reference/cli.md": cli_page(),
        **trigger_pages(),
        **defense_pages(),
    }
    for page, source in (("changelog.md", "CHANGELOG.md"), ("contributing.md", "CONTRIBUTING.md")):
        out[page] = (ROOT / source).read_text()
    return out


def write(open_file: OpenFile) -> None:
    """Write :func:`pages` through ``open_file(path, mode)`` (mkdocs-gen-files' ``open``)."""
    for path, content in pages().items():
        with open_file(path, "wb" if isinstance(content, bytes) else "w") as f:
            f.write(content)


if __name__ == "<run_path>":  # run by mkdocs-gen-files (mkdocs.yml)
    import mkdocs_gen_files

    write(mkdocs_gen_files.open)
