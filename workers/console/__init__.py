"""The run console (``docs/console.md``): ``abstractruntime console``, a small authenticated
web app to find runs, watch them move, answer them and check their ledgers. An optional extra
(``.[console]``: Starlette, Jinja2, uvicorn); nothing else imports it."""

from .app import make_app
from .auth import AuthFile, AuthFileError, hash_password

__all__ = ["make_app", "AuthFile", "AuthFileError", "hash_password"]
