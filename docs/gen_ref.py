"""Write the documentation's two reference pages from the code, so they cannot drift from it.

- `docs/reference/configuration.md` from the pydantic settings (`strata.config.Settings` and every
  section it composes): setting path, environment variable, type and bounds, default, and the
  description (the field's `description`, else the comments written beside it in the source).
- `docs/reference/cli.md` from the typer app (`strata.cli.app`): every group and command with
  its help, usage line and parameters, as `--help` prints them.

MkDocs runs the `on_*` hooks below (`hooks:` in mkdocs.yml), so every `mkdocs build` regenerates
both pages. They are also committed, so links into them work on the repository's host too; a
page is rewritten only when its text changed, and `--check` exits 1 when a committed page differs
from what the code gives (tests/unit/test_docs.py runs it).

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
_BOUNDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))


def md(text: str) -> str:
    """Escape Markdown/HTML outside `code spans` (help texts hold `<item_id>` and `*`)."""
    parts = _CODE.split(text)  # odd indices are the code spans, kept as they are
    return "".join(
        t if i % 2 else html.escape(t, quote=False).replace("*", r"\*") for i, t in enumerate(parts)
    )


def cell(text: str) -> str:
    """One table cell: escaped, on one line, pipes escaped."""
    return md(" ".join(text.split())).replace("|", r"\|")


def field_comments(cls: type) -> dict[str, str]:
    """Field name -> the comment lines right above its definition plus those on its lines."""
    src = textwrap.dedent(inspect.getsource(cls))
    lines = src.splitlines()
    notes = {
        tok.start[0]: tok.string.lstrip("#").strip()
        for tok in tokenize.generate_tokens(io.StringIO(src).readline)
        if tok.type == tokenize.COMMENT and not re.match(r"#\s*(fmt|type|noqa)\b", tok.string)
    }
    out: dict[str, str] = {}
    for node in typing.cast(ast.ClassDef, ast.parse(src).body[0]).body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            first = node.lineno
            while first - 1 in notes and lines[first - 2].lstrip().startswith("#"):
                first -= 1  # the comment block right above the field
            end = node.end_lineno or node.lineno
            out[node.target.id] = " ".join(notes[i] for i in range(first, end + 1) if i in notes)
    return out


def type_name(tp: Any) -> str:
    """A readable type: `int`, `"a" | "b"`, `str | None`, `tuple[int, ...]`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else type_name(a) for a in args)
        return f"{origin.__name__}[{inner}]"
    return "None" if tp is type(None) else getattr(tp, "__name__", str(tp))


def type_and_bounds(field: Any) -> str:
    """The type, then the validation bounds (`>= 1`, `< 1.0`, a pattern)."""
    found = [type_name(field.annotation)]
    for meta in field.metadata:
        found += [f"{sym} {getattr(meta, a)}" for a, sym in _BOUNDS if hasattr(meta, a)]
        found += [f"matches `{meta.pattern}`"] if getattr(meta, "pattern", None) else []
    return ", ".join(found)


def default_text(field: Any) -> str:
    """The default as JSON (the form lists take in the environment), or what computes it."""
    if field.default_factory is not None:
        doc = inspect.getdoc(field.default_factory) or f"{field.default_factory.__name__}()"
        return cell(doc.splitlines()[0])
    value = list(field.default) if isinstance(field.default, tuple) else field.default
    return "`" + json.dumps(value, default=str) + "`"


def config_sections(
    model: Any, path: list[str], env: str, sep: str, tag: bool = False
) -> list[str]:
    """The Markdown section of one config class, then those of every class it composes (a
    tagged union, e.g. `online`, gets one section per choice of its `type`)."""
    from pydantic import BaseModel

    notes, rows, nested = field_comments(model), [], []
    for name, field in model.model_fields.items():
        tp = field.annotation
        subs = (
            typing.get_args(tp)
            if typing.get_origin(tp) in (typing.Union, types.UnionType)
            else (tp,)
        )
        subs = [c for c in subs if isinstance(c, type) and issubclass(c, BaseModel)]
        nested += [(sub, [*path, name], len(subs) > 1) for sub in subs]
        if not subs:
            var = env + sep.join(p.upper() for p in [*path, name])
            about = field.description or notes.get(name, "")
            rows.append(f"| `{'.'.join([*path, name])}` | `{var}` | {cell(type_and_bounds(field))} "
                        f"| {default_text(field)} | {cell(about)} |")  # fmt: skip
    title = ".".join(path) or "root"
    title += f" (type = {json.dumps(model.model_fields['type'].default)})" if tag else ""
    out = [f"## {title}\n\n`{model.__name__}`: {md(inspect.getdoc(model) or '')}\n"]
    if rows:
        head = "| setting | environment variable | type | default | description |\n" + "|---" * 5
        out.append("\n".join([head + "|", *rows]) + "\n")
    for sub, sub_path, is_tag in nested:
        out += config_sections(sub, sub_path, env, sep, is_tag)
    return out


def configuration_page() -> str:
    """docs/reference/configuration.md."""
    from strata.config import Settings

    env = Settings.model_config.get("env_prefix", "")
    sep = Settings.model_config.get("env_nested_delimiter") or "__"
    intro = (
        "# Configuration reference\n\n<!-- generated by docs/gen_ref.py: do not edit -->\n\n"
        "Generated from the pydantic models in `src/strata/config.py` (and the storage sections "
        f"of `src/strata/config_storage.py`). Every setting comes from the environment: prefix "
        f"`{env}`, `{sep}` between levels. Unknown keys are rejected; a list, or a whole section "
        f"in one variable, is JSON (`{env}CTR{sep}MODEL{sep}DEEP='[256, 256]'`). What the main "
        "knobs do in practice: [Configuration](../configuration.md).\n"
    )
    return "\n".join([intro, *config_sections(Settings, [], env, sep)])


def command_sections(cmd: Any, path: list[str], parent: Any) -> list[str]:
    """The Markdown of one command or group, then of its subcommands in registration order.
    Typer carries its own copy of click, so its objects are duck-typed here; each parameter is
    the help record `--help` prints (names, metavar, help, default, range, required)."""
    ctx = cmd.context_class(cmd, info_name=path[-1], parent=parent)
    group, out = hasattr(cmd, "list_commands"), []
    if parent is not None:
        usage = f"{ctx.command_path} {' '.join(cmd.collect_usage_pieces(ctx))}"
        text = md(inspect.cleandoc(cmd.help or ""))
        out.append(f"{'#' * min(len(path), 4)} {' '.join(path)}\n\n{text}\n\n```\n{usage}\n```\n")
        records = [p.get_help_record(ctx) for p in cmd.get_params(ctx) if p.name != "help"]
        rows = [f"| `{r[0]}` | {cell(r[1])} |" for r in records if r and not group]
        if rows:
            out.append("\n".join(["| parameter | help |", "|---|---|", *rows]) + "\n")
    for name in cmd.list_commands(ctx) if group else []:
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
        "# Command-line reference\n\n<!-- generated by docs/gen_ref.py: do not edit -->\n\n"
        f"Generated from the typer app in `src/strata/cli`. {md(root.help or '')} "
        "Bad input exits 2 with one line naming the file or field; `strata COMMAND --help` "
        "prints the same help. What the commands are for: [Commands](../commands.md).\n"
    )
    return "\n".join([intro, *command_sections(root, ["strata"], None)])


def generate(out: Path = OUT, check: bool = False) -> list[Path]:
    """Write (or with `check`, only compare) both pages; returns the paths that differed."""
    pages = {"configuration.md": configuration_page(), "cli.md": cli_page()}
    stale = [out / n for n, text in pages.items() if not (out / n).is_file()
             or (out / n).read_text(encoding="utf-8") != text]  # fmt: skip
    for path in [] if check else stale:  # only on change: `mkdocs serve` watches the folder
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(pages[path.name], encoding="utf-8")
    return stale


def on_pre_build(config: Any, **_: Any) -> None:
    """MkDocs hook: regenerate the reference pages before every build."""
    generate(Path(config["docs_dir"]) / "reference")


def on_page_markdown(markdown: str, **_: Any) -> str:
    """MkDocs hook: in table rows, unescape `\\|` inside code spans. GitHub needs the escape there
    (a bare pipe splits the cell); Python-Markdown never splits inside code and would print it."""
    unescape = lambda m: m.group(0).replace("\\|", "|")  # noqa: E731
    rows = markdown.split("\n")
    return "\n".join(_CODE.sub(unescape, r) if r.lstrip().startswith("|") else r for r in rows)


if __name__ == "__main__":
    CHECK = "--check" in sys.argv[1:]
    for p in (differ := generate(check=CHECK)):
        print(f"{'stale' if CHECK else 'wrote'}: {p}")
    sys.exit(1 if differ and CHECK else 0)
