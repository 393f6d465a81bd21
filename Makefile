# unspur: `make demo` runs the main job, `make test` the test suite; both set up .venv first.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-stamp
export HF_HUB_OFFLINE := 1

.PHONY: setup demo test lint format bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt scripts/setup_env.sh scripts/install_wordnet.py scripts/torchvision_cpu_fix.py
	bash scripts/setup_env.sh
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/unspur demo

test: $(STAMP)
	$(PY) -m pytest tests -q -p no:cacheprovider --durations=20

lint: $(STAMP)
	$(VENV)/bin/ruff check unspur actors workflows tune_spaces tests benchmarks
	$(VENV)/bin/ruff format --check unspur actors workflows tune_spaces tests benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff format unspur actors workflows tune_spaces tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
