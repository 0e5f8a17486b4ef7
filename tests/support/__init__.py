"""Test doubles and shared helpers, kept out of the installed `bitconv` package.

fakehub (+ fakehub_http): a local, fault-injecting stand-in for the Hugging Face Hub, used by the
tests (the `hub` fixture in tests/conftest.py) and by `make demo` / `make release-demo`
(`python -m tests.support.fakehub`, from the repository root). cli: the one way tests run the CLI.
files: byte-level helpers for the tests that damage a file on purpose.
"""
