.PHONY: setup test demo servers bench chaos lint
setup:
	scripts/bootstrap.sh
test:
	scripts/test.sh
demo:
	scripts/bootstrap.sh
	.venv/bin/python scripts/demo.py
# servers: local SeaweedFS + @tus/server to try the CLI by hand, until Ctrl-C.
servers:
	scripts/bootstrap.sh
	.venv/bin/python scripts/servers.py
lint:
	scripts/bootstrap.sh
	.venv/bin/ruff check chunker resume uploader tests bench
	.venv/bin/mypy
# bench: chunkhaul vs boto3, aws-cli, s5cmd, rclone, curl, tuspy, tus-js-client (bench/RESULTS.md).
# BENCH_ARGS=--quick for a 3-minute run; see `.venv/bin/python -m bench.run --help`.
bench:
	bench/setup.sh
	.venv/bin/python -m bench.run $(BENCH_ARGS)
.PHONY: bench-profile
bench-profile:
	bench/setup.sh
	.venv/bin/python -m bench.profile $(PROFILE_ARGS)
chaos:
	scripts/bootstrap.sh
	.venv/bin/python -m tests.chaos.chaos --uploads $${CHAOS_UPLOADS:-200} --seed $${CHAOS_SEED:-1} \
		--out $${TMPDIR:-/tmp}/chunkhaul-chaos-figures.json; chaos=$$?; \
	.venv/bin/python -m tests.chaos.kills --kills $${CHAOS_KILLS:-50} --seed $${CHAOS_SEED:-1} \
		--out $${TMPDIR:-/tmp}/chunkhaul-kill-figures.json; kills=$$?; \
	exit $$((chaos | kills))
