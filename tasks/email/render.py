"""Mail templates: Jinja2 files rendered into a subject, an HTML body and a plain-text body.

A template NAME is up to three files in the templates directories (the operator's
`CONVEYOR_TEMPLATES_DIR` first, then the ones shipped in `tasks/email/templates/`):

    NAME.html          the HTML body (autoescaped)
    NAME.txt           the plain-text body (not escaped); derived from the HTML when absent
    NAME.subject.txt   the subject (one line); the payload's `subject` overrides it

Rendering is strict: a variable the template uses and the context does not give is an error
(`TemplateVariableMissing`), raised at enqueue time by the input model. Optional variables
are written `{{ x | default("") }}` or guarded by `{% if x is defined %}`, so the templates
still render when they are left out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from tasks.email.errors import TemplateNotFound, TemplateVariableMissing

SHIPPED = Path(__file__).resolve().parent / "templates"
NAME = re.compile(r"^[A-Za-z0-9_]+(?:/[A-Za-z0-9_]+)*$")
PARTS = ("html", "txt", "subject.txt")


@dataclass(frozen=True)
class Rendered:
    subject: str | None
    html: str | None
    text: str


def _dirs(extra: Path | None) -> tuple[str, ...]:
    return tuple(str(d) for d in (extra, SHIPPED) if d is not None)


@lru_cache(maxsize=16)
def environment(dirs: tuple[str, ...]) -> jinja2.Environment:
    """The (cached) environment over `dirs`; templates reload when their file changes."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(list(dirs)),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )
    return env


@lru_cache(maxsize=1)
def string_environment() -> SandboxedEnvironment:
    """For subjects given in a payload: user input, so sandboxed."""
    return SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)


def check_name(name: str) -> None:
    if not NAME.match(name or ""):
        raise TemplateNotFound(f"{name!r} is not a template name (letters, digits, '_', '/')")


def _part(env: jinja2.Environment, name: str, part: str) -> jinja2.Template | None:
    try:
        return env.get_template(f"{name}.{part}")
    except jinja2.TemplateNotFound:
        return None


def _render(template: jinja2.Template | jinja2.environment.Template, context: dict[str, Any],
            what: str) -> str:
    try:
        return template.render(context)
    except jinja2.UndefinedError as exc:
        raise TemplateVariableMissing(f"{what}: {exc.message}; give it in the context") from None
    except jinja2.TemplateError as exc:
        raise TemplateVariableMissing(f"{what} failed to render: {exc}") from None
    except (TypeError, ValueError, AttributeError, LookupError) as exc:
        raise TemplateVariableMissing(f"{what} failed to render with this context: {exc}") from None


def one_line(text: str) -> str:
    return " ".join(text.split())


def render_subject(subject: str, context: dict[str, Any]) -> str:
    """A subject from a payload, with `{{ variables }}` filled from the context."""
    if "{" not in subject:
        return subject
    try:
        template = string_environment().from_string(subject)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateVariableMissing(f"the subject is not a valid template: {exc}") from None
    return one_line(_render(template, context, "the subject"))


def render_template(name: str, context: dict[str, Any], extra_dir: Path | None = None) -> Rendered:
    """Render template `name` with `context`; raise `TemplateNotFound`/`TemplateVariableMissing`."""
    check_name(name)
    env = environment(_dirs(extra_dir))
    html_t, text_t, subject_t = (_part(env, name, p) for p in PARTS)
    if html_t is None and text_t is None:
        where = ", ".join(_dirs(extra_dir))
        raise TemplateNotFound(f"no mail template {name!r} ({name}.html or {name}.txt) in {where}")
    html = _render(html_t, context, f"template {name}.html") if html_t else None
    text = _render(text_t, context, f"template {name}.txt") if text_t else html_to_text(html or "")
    subject = one_line(_render(subject_t, context, f"template {name}.subject.txt")) if subject_t else None
    return Rendered(subject or None, html, text)


def html_to_text(html: str) -> str:
    """A plain-text alternative of `html`: layout kept (lists, tables), links shown."""
    if not html.strip():
        return ""
    from inscriptis import get_text
    from inscriptis.model.config import ParserConfig

    text = get_text(html, ParserConfig(display_links=True))
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def template_names(extra_dir: Path | None = None) -> dict[str, dict[str, Any]]:
    """Every template found: its parts and the variables it uses (required or guarded)."""
    from jinja2 import meta

    env = environment(_dirs(extra_dir))
    found: dict[str, dict[str, Any]] = {}
    for rel in env.list_templates(filter_func=lambda n: not Path(n).name.startswith("_")):
        for part in PARTS:
            if rel.endswith(f".{part}") and NAME.match(rel[: -len(part) - 1]):
                name = rel[: -len(part) - 1]
                entry = found.setdefault(name, {"parts": [], "variables": set()})
                if part not in entry["parts"]:
                    entry["parts"].append(part)
                source = env.loader.get_source(env, rel)[0]  # type: ignore[union-attr]
                entry["variables"] |= meta.find_undeclared_variables(env.parse(source))
                break
    return {n: {"parts": sorted(e["parts"]), "variables": sorted(e["variables"])}
            for n, e in sorted(found.items())}
