"""Write the documentation's two reference pages from the code, so they cannot drift from it.

- `docs/reference/configuration.md` from the pydantic settings (`strata.config.Settings` and every
  section it composes): setting path, environment variable, type and bounds, default, and the
  description (the field's `description`, else the comments written beside it in the source).
- `docs/reference/cli.md` from the typer app (`strata.cli.app`, through its click command):
  every group and command with its help, usage line and parameters.

MkDocs runs `on_pre_build` below (`hooks:` in mkdocs.yml), so every `mkdocs build` regenerates
both pages (and `on_page_markdown`, which reconciles GitHub's and Python-Markdown's tables). They are also committed, so the links into them work when the repository is read
on its host; a file is rewritten only when its text changed. `--check` exits 1 when a committed
page differs from what the code gives (tests/unit/test_docs.py runs it).

    .venv/bin/python docs/gen_ref.py [--check]
"""

from __future__ import annotations

import ast
import html
import inspect
import io
import json
import re
import sys
import textwrap
import tokenize
import types
import typing
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "reference"
_CODE = re.compile(r"(`[^`]*`)")
_SKIP_COMMENTS = ("fmt:", "type:", "noqa")
_BOUNDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))


def md(text: str) -> str:
    """Escape Markdown/HTML outside `code spans` (help texts hold `<item_id>` and `*`)."""
    parts = _CODE.split(text)
    for i in range(0, len(parts), 2):
        parts[i] = html.escape(parts[i], quote=False).replace("*", r"\*")
    return "".join(parts)


def cell(text: str) -> str:
    """One table cell: escaped, on one line, pipes escaped."""
    return md(" ".join(text.split())).replace("|", r"\|")


# --- configuration ---------------------------------------------------------------------------


def field_comments(cls: type) -> dict[str, str]:
    """Field name -> the comment lines right above its definition plus those on its lines."""
    src = textwrap.dedent(inspect.getsource(cls))
    lines = src.splitlines()
    comments = {
        tok.start[0]: tok.string.lstrip("#").strip()
        for tok in tokenize.generate_tokens(io.StringIO(src).readline)
        if tok.type == tokenize.COMMENT
    }
    comments = {k: v for k, v in comments.items() if not v.startswith(_SKIP_COMMENTS)}
    out: dict[str, str] = {}
    for node in typing.cast(ast.ClassDef, ast.parse(src).body[0]).body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above, ln = [], node.lineno - 1
        while ln in comments and lines[ln - 1].lstrip().startswith("#"):
            above.insert(0, comments[ln])
            ln -= 1
        end = node.end_lineno or node.lineno
        on = [comments[i] for i in range(node.lineno, end + 1) if i in comments]
        out[node.target.id] = " ".join(above + on)
    return out


def type_name(tp: Any) -> str:
    """A readable type: `int`, `"a" | "b"`, `str | None`, `tuple[int, ...]`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else type_name(a) for a in args)
        return f"{origin.__name__}[{inner}]"
    return "None" if tp is type(None) else getattr(tp, "__name__", str(tp))


def bounds(field: Any) -> str:
    """The field's validation bounds (`>= 1`, `< 1.0`, a pattern), as one string."""
    found = []
    for meta in field.metadata:
        found += [f"{sym} {getattr(meta, a)}" for a, sym in _BOUNDS if hasattr(meta, a)]
        if getattr(meta, "pattern", None):
            found.append(f"matches `{meta.pattern}`")
    return ", ".join(found)


def default_text(field: Any) -> str:
    """The default as JSON (the form lists take in the environment), or what computes it."""
    if field.default_factory is not None:
        doc = inspect.getdoc(field.default_factory) or f"{field.default_factory.__name__}()"
        return cell(doc.splitlines()[0])
    value = field.default
    if isinstance(value, tuple):
        value = list(value)
    return "`" + json.dumps(value, default=str) + "`"


def sub_models(tp: Any) -> list[type]:
    """The config classes a field holds: one section, or each variant of a tagged union."""
    from pydantic import BaseModel

    if typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    union = typing.get_origin(tp) in (typing.Union, types.UnionType)
    cands = typing.get_args(tp) if union else (tp,)
    return [c for c in cands if isinstance(c, type) and issubclass(c, BaseModel)]


def config_sections(
    model: type, path: list[str], env: str, sep: str, variant: bool = False
) -> list[str]:
    """The Markdown sections of one config class and, after it, of every class it composes."""
    notes = field_comments(model)
    rows, nested = [], []
    for name, field in model.model_fields.items():  # type: ignore[attr-defined]
        subs = sub_models(field.annotation)
        if subs:
            nested += [(sub, [*path, name], len(subs) > 1) for sub in subs]
            continue
        key = ".".join([*path, name])
        var = env + sep.join(p.upper() for p in [*path, name])
        kind = type_name(field.annotation) + (f", {bounds(field)}" if bounds(field) else "")
        about = field.description or notes.get(name, "")
        rows.append(f"| `{key}` | `{var}` | {cell(kind)} | {default_text(field)} | {cell(about)} |")
    title = ".".join(path) or "root"
    if variant:  # one choice of a tagged union: `type` selects it
        title += f" (type = {json.dumps(model.model_fields['type'].default)})"  # type: ignore[attr-defined]
    out = [f"## {title}\n\n`{model.__name__}`: {md(inspect.getdoc(model) or '')}\n"]
    if rows:
        head = "| setting | environment variable | type | default | description |"
        out.append("\n".join([head, "|---|---|---|---|---|", *rows]) + "\n")
    for sub, sub_path, is_variant in nested:
        out += config_sections(sub, sub_path, env, sep, is_variant)
    return out


def configuration_page() -> str:
    """docs/reference/configuration.md."""
    from strata.config import Settings

    env = Settings.model_config.get("env_prefix", "")
    sep = Settings.model_config.get("env_nested_delimiter") or "__"
    intro = (
        "# Configuration reference\n\n"
        "<!-- generated by docs/gen_ref.py from src/strata/config.py: do not edit -->\n\n"
        f"Generated from the pydantic models in `src/strata/config.py` (and the storage sections "
        f"of `src/strata/config_storage.py`). Every setting comes from the environment: prefix "
        f"`{env}`, `{sep}` between levels. Unknown keys are rejected; a list, or a whole section "
        f"in one variable, is JSON (`{env}CTR{sep}MODEL{sep}DEEP='[256, 256]'`). A section with "
        f"a `type` has one table per choice of `type`. What the main knobs mean in practice: "
        f"[Configuration](../configuration.md).\n"
    )
    return "\n".join([intro, *config_sections(Settings, [], env, sep)])


# --- command line ----------------------------------------------------------------------------


def command_sections(cmd: Any, path: list[str], parent: Any) -> list[str]:
    """The Markdown of one command or group, then of its subcommands in registration order.

    Typer carries its own copy of click, so this duck-types its objects; each parameter is shown
    with the help record `--help` prints (names, metavar, help, default, range, required)."""
    ctx = cmd.context_class(cmd, info_name=path[-1], parent=parent)
    group = hasattr(cmd, "list_commands")
    out = []
    if parent is not None:
        level = "#" * min(len(path), 4)
        usage = " ".join(cmd.collect_usage_pieces(ctx))
        text = md(inspect.cleandoc(cmd.help or ""))
        out.append(f"{level} {' '.join(path)}\n\n{text}\n\n```\n{ctx.command_path} {usage}\n```\n")
        records = [p.get_help_record(ctx) for p in cmd.get_params(ctx) if p.name != "help"]
        rows = [f"| `{r[0]}` | {cell(r[1])} |" for r in records if r and not group]
        if rows:
            out.append("\n".join(["| parameter | help |", "|---|---|", *rows]) + "\n")
    if group:
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                out += command_sections(sub, [*path, name], ctx)
    return out


def cli_page() -> str:
    """docs/reference/cli.md."""
    import typer

    from strata.cli import app

    root = typer.main.get_command(app)
    intro = (
        "# Command-line reference\n\n"
        "<!-- generated by docs/gen_ref.py from src/strata/cli: do not edit -->\n\n"
        f"Generated from the typer app in `src/strata/cli`. {md(root.help or '')} "
        "Bad input exits 2 with one line naming the file or field; `strata COMMAND --help` "
        "prints the same help. What the commands are for: [Commands](../commands.md).\n"
    )
    return "\n".join([intro, *command_sections(root, ["strata"], None)])


# --- entry points ----------------------------------------------------------------------------


def generate(out: Path = OUT, check: bool = False) -> list[Path]:
    """Write (or with `check`, only compare) both pages; returns the paths that differed."""
    pages = {"configuration.md": configuration_page(), "cli.md": cli_page()}
    stale = []
    out.mkdir(parents=True, exist_ok=True)
    for name, text in pages.items():
        path = out / name
        if not path.is_file() or path.read_text() != text:
            stale.append(path)
            if not check:
                path.write_text(text)  # only on change: `mkdocs serve` watches this folder
    return stale


def on_pre_build(config: Any, **_: Any) -> None:
    """MkDocs hook: regenerate the reference pages before every build."""
    generate(Path(config["docs_dir"]) / "reference")


def on_page_markdown(markdown: str, **_: Any) -> str:
    """MkDocs hook: in table rows, unescape `\\|` inside code spans. GitHub needs the escape there
    (a bare pipe splits the cell); Python-Markdown never splits inside code and would print it."""
    return "\n".join(
        _CODE.sub(lambda m: m.group(0).replace("\\|", "|"), line)
        if line.lstrip().startswith("|")
        else line
        for line in markdown.split("\n")
    )


if __name__ == "__main__":
    differ = generate(check="--check" in sys.argv[1:])
    for p in differ:
        print(f"{'stale' if '--check' in sys.argv else 'wrote'}: {p}")
    sys.exit(1 if differ and "--check" in sys.argv[1:] else 0)
