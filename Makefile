.PHONY: setup test demo bench chaos lint
setup:
	scripts/bootstrap.sh
test:
	scripts/test.sh
demo:
	scripts/bootstrap.sh
	.venv/bin/python scripts/demo.py
lint:
	scripts/bootstrap.sh
	.venv/bin/ruff check chunker resume uploader tests bench
	.venv/bin/mypy
