# One-command set-up and runs. PY picks the interpreter; nothing here needs a GPU.
# Set-up installs only what is missing and rebuilds only when csrc/, setup.py or pyproject.toml
# changed (tools/dev_setup.py); without a visible GPU it compiles no CUDA kernel unless
# JFA_CUDA_BUILD=1 (JFA_CUDA_ARCHS, JFA_CUDA_VARIANTS: csrc/build_ext.py).
PY ?= python3
TORCH ?= torch==2.13.0
SETUP := $(PY) tools/dev_setup.py --torch "$(TORCH)"

.PHONY: setup setup-test demo test test-fast pictures bench bench-cpu repro-rcm clean

setup:  ## install torch (if missing) and this package (editable)
	@$(SETUP) --goal $(firstword $(MAKECMDGOALS) demo)

setup-test:  ## the same, with the test, trainer, triton and diffusers extras
	@$(SETUP) --goal test --extras test,trainer,triton,diffusers

demo: setup  ## the main job: masks, attention, its JVP, checks and timings on this machine
	$(PY) -m jvp_flash_attn.demo

test: setup-test  ## the whole test suite (Triton runs in its interpreter without a GPU)
	$(PY) -m pytest -q -p no:cacheprovider tests

test-fast: ## tests without re-running set-up
	HYPOTHESIS_PROFILE=dev $(PY) -m pytest -q -x tests

pictures: setup-test  ## the mask pictures in docs/
	$(PY) -m jvp_flash_attn.masks teacher_forcing --frames 4 --tokens-per-frame 6 --out docs/tf.png
	$(PY) -m jvp_flash_attn.masks block_causal --frames 10 --tokens-per-frame 3 --frames-per-chunk 2 \
		--window 2 --sink 1 --out docs/block_causal_window_sink.png

bench: setup-test  ## the benchmarks of docs/design/benchmarks.md on the GPU (W1-W8, all providers) into bench/results/latest
	$(PY) -m bench.run --out bench/results/latest
	-$(PY) bench/bench_masks.py   # host-side mask timing; reports (and exits 1) when over 5 ms

bench-cpu: setup-test  ## a tiny CPU smoke of the benchmark runner
	$(PY) -m bench.run --scale 0.005 --device cpu --out /tmp/jfa-bench-cpu

repro-rcm: setup-test  ## the toy Causal-rCM reproduction on a GPU; resumable, so run it again until it says done
	bash examples/causal_rcm/run_rcm_repro.sh

clean:
	rm -rf build *.egg-info python/*.egg-info .pytest_cache .hypothesis
