# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-requirements
export HF_HUB_OFFLINE ?= 1
export PYTHONUNBUFFERED := 1

.PHONY: setup test demo demo-data clean-demo benchmark

setup: $(STAMP)

# Re-install only when requirements.txt changes (idempotent).
$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	cp requirements.txt $(STAMP)

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo-data: setup
	$(PY) tools/make_demo_data.py --out data/demo

DEMO := experiments/demo

# Train on the offline demo data, then evaluate the best checkpoint and draw the heat maps.
demo: setup
	test -f data/demo/train.json || $(PY) tools/make_demo_data.py --out data/demo
	$(PY) tools/train_val.py --config $(DEMO)/config.yaml
	$(PY) tools/train_val.py --config $(DEMO)/config.yaml -e --opts saver.load_path=checkpoints/ckpt_best.pth.tar
	@echo "heat maps:   $(DEMO)/vis_compound/<class>/<defect>/"
	@echo "TensorBoard: $(VENV)/bin/tensorboard --logdir $(DEMO)/log"
	@echo "log:         $(DEMO)/log/train.log, metrics: $(DEMO)/log/metrics.jsonl"

clean-demo:
	rm -rf experiments/demo/checkpoints experiments/demo/log experiments/demo/vis_compound experiments/demo/result_eval_temp

# Default OpenMP settings, as training runs; on a loaded machine the benchmark warns and suggests
# OMP_WAIT_POLICY=PASSIVE (docs/PERFORMANCE.md).
benchmark: setup
	$(PY) tools/benchmark.py all
