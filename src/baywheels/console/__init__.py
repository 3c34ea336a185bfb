"""The operators' console (/ui): server-rendered pages (Jinja2 templates, htmx and its SSE extension vendored
under ``static/``), people's sessions and their CSRF protection, and the SVG the pages draw."""

from pathlib import Path

HERE = Path(__file__).resolve().parent
TEMPLATES_DIR = HERE / "templates"
STATIC_DIR = HERE / "static"
