"""MkDocs hooks: the CLI reference, generated from the parsers at build time."""

import re

COMMANDS = ("patch", "spt", "effect", "study", "report")
MARKER = "<!-- sycointerp-cli-reference -->"


def _reference() -> str:
    import importlib

    from sycointerp.cli.main import usage

    parts = ["## sycointerp", "", "```text", usage(), "```", ""]
    for name in COMMANDS:
        module = importlib.import_module(f"sycointerp.cli.{name}")
        text = module.build_parser(f"sycointerp {name}").format_help()
        parts += [f"## sycointerp {name}", "", "```text", text.rstrip(), "```", ""]
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Replace the CLI reference's marker with every command's ``--help``."""
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, _reference())


# Sphinx roles in the docstrings (``:class:`~a.b.C```) render as their target's name in code.
_ROLE = re.compile(r":(?:class|func|mod|meth|data|attr|exc|obj):(<code>)(~?)([\w.]+)(</code>)")


def _role(match: re.Match) -> str:
    name = match.group(3).rsplit(".", 1)[-1] if match.group(2) else match.group(3)
    return f"{match.group(1)}{name}{match.group(4)}"


def on_page_content(html: str, page, config, files) -> str:
    """Render Sphinx roles left in docstrings as plain code names."""
    return _ROLE.sub(_role, html)
