# Two commands: `make run` and `make test`. Both set everything up first, idempotently.
.PHONY: run test setup lint

setup:
	bash scripts/setup.sh

run: setup
	.venv/bin/amber serve

test: setup
	.venv/bin/python -m pytest

# ruff, mypy --strict (src, then tests and bench), and the import layering (pyproject.toml [tool.importlinter]).
lint: setup
	.venv/bin/ruff check src tests bench
	.venv/bin/mypy
	.venv/bin/mypy tests bench
	.venv/bin/lint-imports
