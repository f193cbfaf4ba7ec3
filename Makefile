# varserve — one non-recursive Makefile.
#   make              build build/varserve (CPU backend; CUDA backend too when nvcc is found)
#   make test         unit tests, sanitizer unit tests (ASan+UBSan; TSan: the pool),
#                     the CUDA suite on the emulated device, tool tests
#   make run          install missing packages (as root), build, serve the bundled model
#   make bench        benchmarks (results go to bench/RESULTS.md by hand, with machine and date)
#   make deps         install the Debian packages the build needs (apt-get as root)
#   make SANITIZER=address|undefined|thread   a sanitized build in build/<sanitizer>/
#   make CUDA=0       force the CPU-only build
#   make CUDA=emu     the CUDA backend on the emulated device (runtime/cuda_emu/), in build/cuda-emu/
#   make fuzz         libFuzzer targets (tests/fuzz/, Debian's clang), FUZZ_SECONDS each (default 600)

CC      ?= cc
CXX     ?= c++
NVCC    ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
PYTHON  ?= /usr/bin/python3
PORT    ?= 8080
MODEL   ?= models/mnist-var.safetensors

# The toolkit's root, asked of nvcc itself (it may be a wrapper script outside the toolkit,
# e.g. /usr/local/bin/nvcc), and where its runtime libraries live. CUDA is on by default only
# when nvcc AND libcudart/libcublas/libcudnn are found, so a compiler-only install still builds.
ifneq ($(NVCC),)
  CUDA_HOME ?= $(shell $(NVCC) --dryrun -x cu -c /dev/null -o /dev/null 2>&1 | sed -n 's/^\#\$$ TOP=//p' | head -n1)
  CUDA_LIBDIR := $(firstword $(foreach d,$(CUDA_HOME)/lib64 $(CUDA_HOME)/targets/x86_64-linux/lib $(CUDA_HOME)/targets/sbsa-linux/lib $(CUDA_HOME)/lib,$(if $(wildcard $(d)/libcudart.so),$(if $(wildcard $(d)/libcublas.so),$(if $(wildcard $(d)/libcudnn.so),$(d))))))
endif
ifeq ($(origin CUDA),undefined)
  CUDA := $(if $(NVCC),$(if $(CUDA_LIBDIR),1,0),0)
endif

SANITIZER ?=
ifeq ($(CUDA),emu)
  ifneq ($(SANITIZER),)
    $(error CUDA=emu runs kernels on fibers the sanitizers do not know; build it without SANITIZER)
  endif
  BUILD := build/cuda-emu
  SANFLAGS :=
else ifeq ($(SANITIZER),)
  BUILD := build
  SANFLAGS :=
else
  BUILD := build/$(SANITIZER)
  SANFLAGS := -fsanitize=$(SANITIZER) -fno-omit-frame-pointer
  ifeq ($(SANITIZER),address)
    SANFLAGS += -fsanitize=undefined -fno-sanitize-recover=undefined
  endif
  ifeq ($(SANITIZER),undefined)
    SANFLAGS += -fno-sanitize-recover=undefined
  endif
  CUDA := 0
endif

BLAS_INC := $(firstword $(wildcard /usr/include/x86_64-linux-gnu/openblas-pthread /usr/include/aarch64-linux-gnu/openblas-pthread /usr/include/openblas))
WARN    := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wformat=2
CFLAGS  ?= -O2 -g
ALL_CFLAGS := -std=c11 $(CFLAGS) $(WARN) -D_GNU_SOURCE -I. $(if $(BLAS_INC),-I$(BLAS_INC)) -MMD -MP $(SANFLAGS)
LDLIBS  := -lopenblas -lmicrohttpd -lcjson -lpng -lcurl -lz -lsentencepiece -lm -lpthread -lstdc++
CHECK_LIBS := $(shell pkg-config --libs check 2>/dev/null || echo -lcheck -lsubunit -lrt -lm)

LIB_SRC := $(wildcard common/*.c runtime/*.c kvcache/*.c config/*.c) $(filter-out server/main.c,$(wildcard server/*.c))
# C++ only where a library has no C API (runtime/t5_tok.cc: SentencePiece)
CXX_SRC := $(wildcard runtime/*.cc)
LIB_CXXFLAGS := -std=c++17 $(CFLAGS) -Wall -Wextra -Werror -Wshadow -D_GNU_SOURCE -I. -MMD -MP $(SANFLAGS)
ifeq ($(CUDA),emu)
  # the same kernel source, compiled as C++ against the emulation layer
  CU_SRC  := $(wildcard runtime/*.cu)
  EMU_SRC := $(wildcard runtime/cuda_emu/*.cc)
  ALL_CFLAGS += -DVS_HAVE_CUDA=1
  LDLIBS  += -lstdc++
  EMU_CXXFLAGS := -std=c++17 $(CFLAGS) -Wall -Wextra -Werror -Wno-unknown-pragmas -D_GNU_SOURCE \
    -DVS_CUDA_EMU=1 -I. $(if $(BLAS_INC),-I$(BLAS_INC)) -MMD -MP
else ifeq ($(CUDA),1)
  CU_SRC  := $(wildcard runtime/*.cu)
  ALL_CFLAGS += -DVS_HAVE_CUDA=1
  LDLIBS  += -L$(CUDA_LIBDIR) -Wl,-rpath,$(CUDA_LIBDIR) -lcudart -lcublas -lcublasLt -lcudnn -lstdc++
  # Ampere and Hopper machine code, plus Hopper PTX that newer GPUs compile at load time
  NVARCH  ?= -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90
  NVFLAGS := -O2 -g -std=c++17 -I. -Xcompiler -Wall,-Wextra,-Werror $(NVARCH) -MMD -MP
else
  CU_SRC  :=
endif
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o) $(CXX_SRC:%.cc=$(BUILD)/%.o) $(CU_SRC:%.cu=$(BUILD)/%.cu.o) $(EMU_SRC:%.cc=$(BUILD)/%.o) \
  $(BUILD)/gen/playground_html.o
TEST_SRC := $(wildcard tests/check_*.c)
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
# suites that need a GPU run in their own binary (CK_NOFORK) and skip without one
UNIT_BIN := $(filter-out %_cuda,$(TEST_BIN))
# the CUDA-vs-CPU suite: every backend op and the tiny fixture; prints a skip line without a GPU
CUDA_CHECK := $(BUILD)/tests/check_cuda

.PHONY: all test unit sanitize tsan emu run serve bench deps clean model cuda-info parity-simd fuzz fuzz-smoke
all: cuda-info $(BUILD)/varserve

cuda-info:
	@if [ "$(CUDA)" = emu ]; then echo "varserve: CUDA backend ON, on the emulated device (runtime/cuda_emu/), in $(BUILD)/"; \
	 elif [ "$(CUDA)" = 1 ]; then echo "varserve: CUDA backend ON (nvcc: $(NVCC))"; \
	 else echo "varserve: CUDA backend OFF ($(if $(NVCC),$(if $(CUDA_LIBDIR),CUDA=0 given,nvcc found but no libcudart/libcublas/libcudnn under $(or $(CUDA_HOME),its toolkit)),no nvcc found)); CPU backend only"; fi

$(BUILD)/libvarserve.a: $(LIB_OBJ)
	@mkdir -p $(dir $@)
	@rm -f $@ # rebuilt whole: no stale member (backend_cuda.cu.o after CUDA=0) survives
	ar rcs $@ $^

$(BUILD)/varserve: $(BUILD)/server/main.o $(BUILD)/libvarserve.a
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(LDLIBS)

# objects remember whether they were built with CUDA: switching CUDA=0/1 rebuilds them all
# (backend.c's stub for vs_rt_backend_cuda_new must not mix with backend_cuda.cu)
CUDA_STAMP := $(BUILD)/.built-with-cuda-$(CUDA)
$(CUDA_STAMP):
	@mkdir -p $(dir $@)
	@rm -f $(BUILD)/.built-with-cuda-*
	@touch $@

$(BUILD)/%.o: %.c $(CUDA_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c -o $@ $<

$(CXX_SRC:%.cc=$(BUILD)/%.o): $(BUILD)/%.o: %.cc $(CUDA_STAMP)
	@mkdir -p $(dir $@)
	$(CXX) $(LIB_CXXFLAGS) -c -o $@ $<

ifeq ($(CUDA),emu)
$(BUILD)/%.cu.o: %.cu $(CUDA_STAMP)
	@mkdir -p $(dir $@)
	$(CXX) $(EMU_CXXFLAGS) -x c++ -c -o $@ $<

$(BUILD)/%.o: %.cc $(CUDA_STAMP)
	@mkdir -p $(dir $@)
	$(CXX) $(EMU_CXXFLAGS) -c -o $@ $<
else
$(BUILD)/%.cu.o: %.cu $(CUDA_STAMP)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -c -o $@ $<
endif

# the playground page (GET /), embedded: server/playground.html as a C array (server/playground.h)
$(BUILD)/gen/playground_html.c: server/playground.html
	@mkdir -p $(dir $@)
	@{ echo '#include "server/playground.h"'; echo 'const unsigned char vs_srv_playground_html[] = {'; \
	   xxd -i < $<; echo '};'; \
	   echo 'const size_t vs_srv_playground_html_len = sizeof vs_srv_playground_html;'; } > $@.tmp && mv $@.tmp $@

$(BUILD)/gen/playground_html.o: $(BUILD)/gen/playground_html.c
	$(CC) $(ALL_CFLAGS) -c -o $@ $<

$(BUILD)/tests/%: tests/%.c $(BUILD)/libvarserve.a
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $< $(BUILD)/libvarserve.a $(CHECK_LIBS) $(LDLIBS)

# Unit suites, each in its own process; CK_FORK=no keeps sanitizer reports in one process.
unit: $(UNIT_BIN) $(CUDA_CHECK) $(BUILD)/varserve
	@set -e; for t in $(UNIT_BIN); do echo "== $$t"; VARSERVE_BIN=$(BUILD)/varserve $$t; done
	@echo "== $(CUDA_CHECK)"; CK_FORK=no $(CUDA_CHECK)

sanitize:
	$(MAKE) SANITIZER=address unit

# ThreadSanitizer over the fork-join pool's suite, built from the pool's own sources (seconds; the
# whole library under TSan is make SANITIZER=thread, and tests/check_server.c against
# build/thread/varserve covers the server's threads, by hand: minutes).
TSAN_POOL := build/thread-pool/check_threads
$(TSAN_POOL): tests/check_threads.c runtime/threads.c runtime/fpenv.c runtime/threads.h runtime/fpenv.h
	@mkdir -p $(dir $@)
	$(CC) -std=c11 $(CFLAGS) $(WARN) -D_GNU_SOURCE -I. -fsanitize=thread -fno-omit-frame-pointer \
	  -o $@ tests/check_threads.c runtime/threads.c runtime/fpenv.c $(CHECK_LIBS) -lpthread
tsan: $(TSAN_POOL)
	@echo "== $(TSAN_POOL) (ThreadSanitizer)"; CK_FORK=no TSAN_OPTIONS=halt_on_error=1 $(TSAN_POOL)

# The CUDA backend on the emulated device, on every machine: every kernel runs (make CUDA=emu emu).
# check_emu first: the emulator's own semantics (barriers, warps, faults, cuBLAS), then check_cuda.
emu: $(BUILD)/tests/check_emu $(CUDA_CHECK) $(BUILD)/varserve
	@if [ "$(CUDA)" != emu ]; then echo "make emu: run it as make CUDA=emu emu"; exit 2; fi
	@echo "== $(BUILD)/tests/check_emu"; $(BUILD)/tests/check_emu
	@echo "== $(CUDA_CHECK) (emulated device)"; CK_FORK=no $(CUDA_CHECK)

ifeq ($(CUDA),emu)
$(BUILD)/tests/check_emu: tests/check_emu.cu $(BUILD)/libvarserve.a
	@mkdir -p $(dir $@)
	$(CXX) $(EMU_CXXFLAGS) -o $@ -x c++ $< -x none $(BUILD)/libvarserve.a $(CHECK_LIBS) $(LDLIBS)
endif

test: deps-check all
	$(MAKE) unit
	$(MAKE) sanitize
	$(MAKE) tsan
	$(MAKE) CUDA=emu emu  # also builds build/cuda-emu/varserve, which tests/test_cli.py uses
	$(MAKE) parity-simd
	@set -e; for t in tests/test_*.py; do [ -e "$$t" ] || continue; echo "== $$t"; \
	  VARSERVE_BIN=build/varserve $(PYTHON) $$t; done
	@if command -v $(FUZZ_CC) >/dev/null 2>&1; then $(MAKE) fuzz-smoke; \
	 else echo "make test: no $(FUZZ_CC), the fuzz targets were not run (apt-get install clang)"; fi
	@echo "make test: all suites passed"

# The parity suites with each CPU vector path this CPU runs forced by VARSERVE_CPU_SIMD
# (runtime/simd.h): every one must give the same tokens and pixels as the fixtures.
parity-simd: $(BUILD)/tests/check_parity $(BUILD)/tests/check_simd $(BUILD)/varserve
	@set -e; for p in scalar avx2 avx512; do \
	  $(BUILD)/tests/check_simd --runs $$p || { echo "== parity, simd $$p: this CPU does not run it"; continue; }; \
	  echo "== parity, VARSERVE_CPU_SIMD=$$p"; VARSERVE_CPU_SIMD=$$p $(BUILD)/tests/check_parity; \
	  VARSERVE_CPU_SIMD=$$p VARSERVE_BIN=$(BUILD)/varserve $(PYTHON) tests/test_mnist_parity.py; done

# libFuzzer targets: the library built again with clang under ASan+UBSan (CPU only), one binary
# per tests/fuzz/fuzz_*.c, seeded from tests/fuzz/corpus/<target>/ (read only: what a run finds
# goes to build/fuzz/corpus-<target>/). fuzz-smoke is make test's few seconds per target.
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 600
FUZZ_NAMES   := $(patsubst tests/fuzz/fuzz_%.c,%,$(wildcard tests/fuzz/fuzz_*.c))
FUZZ_CFLAGS  := -std=c11 -O1 -g -Wall -Wextra -Werror -D_GNU_SOURCE -I. $(if $(BLAS_INC),-I$(BLAS_INC)) -MMD -MP \
  -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
# only what the three targets reach: the parsers, the loader (model.c on safetensors.c and vae_tensors.c) and
# the policy registry they name
FUZZ_SRC     := $(wildcard common/*.c kvcache/policy*.c) kvcache/calibrate.c config/config.c runtime/kv_compact.c \
  runtime/model.c runtime/safetensors.c runtime/vae_tensors.c server/api.c
FUZZ_OBJ     := $(FUZZ_SRC:%.c=build/fuzz/%.o)
.SECONDARY: $(FUZZ_OBJ) # built by a chain of pattern rules, but kept: make test reuses them

build/fuzz/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -c -o $@ $<

build/fuzz/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_OBJ)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer -o $@ $< $(FUZZ_OBJ) $(LDLIBS)

fuzz: $(FUZZ_NAMES:%=build/fuzz/fuzz_%)
	@for t in $(FUZZ_NAMES); do mkdir -p build/fuzz/corpus-$$t; echo "== fuzz_$$t ($(FUZZ_SECONDS) s)"; \
	  if (cd build/fuzz && ./fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 corpus-$$t \
	      ../../tests/fuzz/corpus/$$t >fuzz_$$t.log 2>&1); then grep -E "^Done [0-9]+ runs" build/fuzz/fuzz_$$t.log; \
	  else tail -n 40 build/fuzz/fuzz_$$t.log; echo "fuzz_$$t FAILED: see build/fuzz/fuzz_$$t.log and build/fuzz/crash-*"; exit 1; fi; done

fuzz-smoke:
	@$(MAKE) FUZZ_SECONDS=5 fuzz

deps-check:
	@tools/deps.sh --check

deps:
	@tools/deps.sh

run: deps all
	./build/varserve serve --model $(MODEL) --port $(PORT)

# the engine on the tiny reference-shaped model (the issue's settings), then the bundled model
# under the full cache and ScaleKV; record results in bench/RESULTS.md with machine and date
bench: all
	./build/varserve bench --model tests/fixtures/tiny/model.safetensors --batch 1,8 --reps 3 --top-k 900 --top-p 0.96 --cfg 1.5
	@if [ -f $(MODEL) ]; then \
	  ./build/varserve bench --model $(MODEL) --batch 1,8,32 --reps 3 && \
	  ./build/varserve bench --model $(MODEL) --batch 1,8,32 --reps 3 --kv-policy scalekv --kv-budget 0.1; fi

clean:
	rm -rf build

-include $(shell find build -name '*.d' 2>/dev/null)

# hot CPU loops: vectorise harder; -fno-trapping-math lets float selects (clamps) be if-converted.
# No fast-math: results stay exact and thread-count independent.
$(BUILD)/runtime/backend_cpu.o $(BUILD)/runtime/sample.o $(BUILD)/runtime/simd.o $(BUILD)/runtime/simd_avx2.o \
  $(BUILD)/runtime/simd_avx512.o $(BUILD)/runtime/simd_conv_avx512.o $(BUILD)/runtime/simd_conv_avx512_copied.o \
  $(BUILD)/runtime/simd_conv_avx2.o: ALL_CFLAGS += -O3 -fno-trapping-math

# retrain the bundled model (not part of make test): Debian's python3-torch on CPU, about 50 min on 2 cores (measured 50.4 min, see tools/README_mnist.md)
model:
	@dpkg-query -W -f='$${Status}' python3-torch 2>/dev/null | grep -q "install ok installed" || \
	  { [ "$$(id -u)" = 0 ] && apt-get install -y -q python3-torch python3-numpy; } || \
	  { echo "make model needs python3-torch: sudo apt-get install -y python3-torch"; exit 1; }
	$(PYTHON) tools/train_mnist.py --out $(MODEL)
