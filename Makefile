# One-command set-up and runs. PY picks the interpreter; nothing here needs a GPU.
PY ?= python3
PIP := $(PY) -m pip install -q

.PHONY: setup demo test test-fast pictures bench bench-cpu repro-rcm clean

setup:  ## install torch (if missing), the test/plot tools and this package (editable)
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) torch==2.13.0
	@$(PY) -c "import triton" 2>/dev/null || $(PIP) "triton>=3.2"
	$(PIP) numpy pytest hypothesis pytest-benchmark matplotlib pillow tqdm pybind11
	$(PIP) --no-build-isolation -e .

demo: setup  ## the main job: masks, attention, its JVP, checks and timings on this machine
	$(PY) -m jvp_flash_attn.demo

test: setup  ## the whole test suite (Triton runs in its interpreter without a GPU)
	$(PY) -m pytest -q -p no:cacheprovider tests

test-fast: ## tests without re-running set-up
	HYPOTHESIS_PROFILE=dev $(PY) -m pytest -q -x tests

pictures: setup  ## the mask pictures in docs/
	$(PY) -m jvp_flash_attn.masks teacher_forcing --frames 4 --tokens-per-frame 6 --out docs/tf.png
	$(PY) -m jvp_flash_attn.masks block_causal --frames 6 --tokens-per-frame 5 --frames-per-chunk 2 \
		--window 2 --sink 1 --out docs/block_causal_window_sink.png

bench: setup  ## DESIGN §6 benchmarks on the GPU (W1-W8, all providers) into bench/results/latest
	$(PY) -m bench.run --out bench/results/latest
	-$(PY) bench/bench_masks.py   # host-side mask timing; reports (and exits 1) when over 5 ms

bench-cpu: setup  ## a tiny CPU smoke of the benchmark runner
	$(PY) -m bench.run --scale 0.005 --device cpu --out /tmp/jfa-bench-cpu

repro-rcm: setup  ## the toy Causal-rCM reproduction on a GPU; resumable, so run it again until it says done
	bash examples/causal_rcm/run_rcm_repro.sh

clean:
	rm -rf build *.egg-info python/*.egg-info .pytest_cache .hypothesis
