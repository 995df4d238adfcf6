#!/usr/bin/env bash
# FlashAttention-3 as a wheel for `wanq worker --attention-backend fa3|fa3-fp8` (Hopper GPUs).
#
# FA3 has no wheel on PyPI and its full build (~450 kernel files) takes hours. wanq needs only the forward kernels at
# head dim 128 (Wan's), bf16 and FP8 e4m3, on sm90: four sources, about 3 minutes on 2 cores. They are built against
# torch's stable ABI (flash-attention's flash_api_stable.cpp, torch >= 2.9), so one wheel runs on any later torch,
# and only torch's headers are needed here: a CPU build of torch will do, no GPU.
#
#   deploy/docker/build-fa3.sh OUT_DIR
#
# Needs git (or FA_SRC, a flash-attention checkout with csrc/cutlass), g++, a python whose torch is >= 2.9 ($PYTHON,
# default python3), and nvcc >= 12.3 under $CUDA_HOME (default /usr/local/cuda). Without a CUDA toolkit, the one on
# PyPI serves as CUDA_HOME: `pip install --target T nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88
# nvidia-nvvm==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85`, then CUDA_HOME=T/nvidia/cu13
# (the build measured in benchmarks/RESULTS.md was made so; match the CUDA major version of the worker's torch).
set -euo pipefail

OUT=${1:?usage: deploy/docker/build-fa3.sh OUT_DIR}
FA_COMMIT=${FA_COMMIT:-0251105a2fb19d2957484b7f023cd8c115286ced}
PYTHON=${PYTHON:-python3}
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
JOBS=${JOBS:-2}  # nvcc processes at once, each up to ~5 GB of memory
NVCC="$CUDA_HOME/bin/nvcc"
[ -x "$NVCC" ] || { echo "no nvcc at $NVCC: set CUDA_HOME to a CUDA toolkit >= 12.3 (see this script's header)" >&2; exit 2; }
TORCH_INCLUDE=$("$PYTHON" -c 'import torch.utils.cpp_extension as c; print(" ".join("-I" + p for p in c.include_paths()))') \
    || { echo "$PYTHON has no torch: install torch >= 2.9 (the CPU build will do)" >&2; exit 2; }
WORK=$(mktemp -d)
trap 'jobs -p | xargs -r kill 2>/dev/null; rm -rf "$WORK"' EXIT  # a failed compile stops the others too

if [ -n "${FA_SRC:-}" ]; then
    SRC=$FA_SRC
else
    SRC=$WORK/flash-attention
    git clone --quiet --filter=blob:none https://github.com/Dao-AILab/flash-attention.git "$SRC"
    git -C "$SRC" checkout --quiet "$FA_COMMIT"
    git -C "$SRC" submodule update --quiet --init --depth 1 csrc/cutlass
fi
HOPPER=$SRC/hopper
[ -f "$HOPPER/flash_api_stable.cpp" ] || { echo "$HOPPER has no flash_api_stable.cpp: FA_SRC must be a flash-attention checkout" >&2; exit 2; }

# Everything but the forward at head dim 128 in bf16 and e4m3, without split-KV, paged KV, softcap, local or varlen.
FEATURES="-DFLASHATTENTION_DISABLE_BACKWARD -DFLASHATTENTION_DISABLE_PAGEDKV -DFLASHATTENTION_DISABLE_SPLIT
 -DFLASHATTENTION_DISABLE_APPENDKV -DFLASHATTENTION_DISABLE_LOCAL -DFLASHATTENTION_DISABLE_SOFTCAP
 -DFLASHATTENTION_DISABLE_PACKGQA -DFLASHATTENTION_DISABLE_FP16 -DFLASHATTENTION_DISABLE_VARLEN
 -DFLASHATTENTION_DISABLE_HDIM64 -DFLASHATTENTION_DISABLE_HDIM96 -DFLASHATTENTION_DISABLE_HDIM192
 -DFLASHATTENTION_DISABLE_HDIM256 -DFLASHATTENTION_DISABLE_SM8x -DFLASH_ATTENTION_DISABLE_HDIMDIFF64
 -DFLASH_ATTENTION_DISABLE_HDIMDIFF192"
PY_INCLUDE=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
INCLUDES="-I$HOPPER -I$SRC/csrc/cutlass/include $TORCH_INCLUDE -I$CUDA_HOME/include -I$CUDA_HOME/include/cccl -I$PY_INCLUDE"
ABI="-DTORCH_TARGET_VERSION=0x0209000000000000 -D_GLIBCXX_USE_CXX11_ABI=1"
# hopper/setup.py's flags for its sm90 files
NVCC_FLAGS="-O3 -std=c++17 --use_fast_math -lineinfo -gencode arch=compute_90a,code=sm_90a
 -DCUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED -DCUTLASS_ENABLE_GDC_FOR_SM90 -DCUTLASS_DEBUG_TRACE_LEVEL=0 -DNDEBUG
 --expt-relaxed-constexpr --expt-extended-lambda -U__CUDA_NO_HALF_OPERATORS__ -U__CUDA_NO_HALF_CONVERSIONS__
 -U__CUDA_NO_BFLOAT16_CONVERSIONS__ -U__CUDA_NO_HALF2_OPERATORS__ -Xcompiler -fPIC"
mkdir -p "$WORK/obj" "$WORK/stubs" "$WORK/pkg/flash_attn_3" "$WORK/pkg/flash_attn_3-3.0.0.dist-info" "$OUT"

echo "building FlashAttention-3 ($FA_COMMIT) with $("$NVCC" --version | tail -1)"
# shellcheck disable=SC2086  # the flag lists are word-split on purpose
g++ -O3 -std=c++17 -fPIC -DPy_LIMITED_API=0x03090000 $ABI $FEATURES $INCLUDES -c "$HOPPER/flash_api_stable.cpp" \
    -o "$WORK/obj/flash_api_stable.o" 2> "$WORK/api.log" || { cat "$WORK/api.log" >&2; exit 1; }
pids=()
for src in instantiations/flash_fwd_hdim128_bf16_sm90.cu instantiations/flash_fwd_hdim128_e4m3_sm90.cu \
    flash_prepare_scheduler.cu; do
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 1; done
    echo "  $src"
    # shellcheck disable=SC2086
    "$NVCC" $NVCC_FLAGS $ABI $FEATURES $INCLUDES -c "$HOPPER/$src" -o "$WORK/obj/$(basename "$src").o" \
        > "$WORK/$(basename "$src").log" 2>&1 || { cat "$WORK/$(basename "$src").log" >&2; exit 1; } &
    pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || { echo "an nvcc compile failed (its output is above)" >&2; exit 1; }; done

# torch's and CUDA's libraries are the worker's, found by soname at import (after `import torch`): linked here
# against empty stand-ins of those names, so that no CUDA build of torch is needed to build
for lib in torch torch_cpu torch_cuda c10 c10_cuda; do
    echo "" | gcc -shared -x c - -o "$WORK/stubs/lib$lib.so" -Wl,-soname,"lib$lib.so"
done
# lib64 is a link to targets/<arch>/lib in NVIDIA's toolkits; the PyPI toolchain has a plain lib
CUDART=$(cd "$CUDA_HOME" && find -L lib lib64 -maxdepth 1 -name 'libcudart.so.*' 2>/dev/null | grep -E 'libcudart\.so\.[0-9]+$' | head -1 || true)
[ -n "$CUDART" ] || { echo "no libcudart.so.N under $CUDA_HOME/lib or lib64" >&2; exit 2; }
g++ -shared -o "$WORK/pkg/flash_attn_3/_C.abi3.so" "$WORK"/obj/*.o -Wl,--no-as-needed -L"$WORK/stubs" \
    -ltorch -ltorch_cpu -ltorch_cuda -lc10 -lc10_cuda -L"$CUDA_HOME/$(dirname "$CUDART")" -l:"$(basename "$CUDART")"

cp "$HOPPER/flash_attn_3/__init__.py" "$WORK/pkg/flash_attn_3/"
cp "$HOPPER/flash_attn_interface.py" "$WORK/pkg/"
"$PYTHON" - "$WORK/pkg" "$OUT" "$FEATURES" <<'EOF'
import base64, hashlib, os, sys, zipfile

pkg, out, features = sys.argv[1], sys.argv[2], sys.argv[3].split()
names = ["BACKWARD", "SPLIT", "PAGEDKV", "APPENDKV", "LOCAL", "SOFTCAP", "PACKGQA", "FP16", "FP8", "VARLEN", "CLUSTER",
         "HDIM64", "HDIM96", "HDIM128", "HDIM192", "HDIM256", "SM8x"]
flags = {f"FLASHATTENTION_DISABLE_{n}": f"-DFLASHATTENTION_DISABLE_{n}" in features for n in names}
flags |= {f"FLASH_ATTENTION_DISABLE_HDIMDIFF{n}": f"-DFLASH_ATTENTION_DISABLE_HDIMDIFF{n}" in features for n in (64, 192)}
flags["FLASHATTENTION_ENABLE_VCOLMAJOR"] = False
with open(os.path.join(pkg, "flash_attn_config.py"), "w") as f:
    f.write("# wanq's FlashAttention-3 build (deploy/docker/build-fa3.sh)\nCONFIG = " + repr({"build_flags": flags}) + "\n")
info = os.path.join(pkg, "flash_attn_3-3.0.0.dist-info")
with open(os.path.join(info, "METADATA"), "w") as f:
    f.write("Metadata-Version: 2.1\nName: flash_attn_3\nVersion: 3.0.0\n")
with open(os.path.join(info, "WHEEL"), "w") as f:
    f.write("Wheel-Version: 1.0\nGenerator: wanq build-fa3.sh\nRoot-Is-Purelib: false\nTag: cp39-abi3-linux_x86_64\n")
files = sorted(os.path.relpath(os.path.join(d, n), pkg) for d, _, ns in os.walk(pkg) for n in ns)
record = []
for rel in files:
    data = open(os.path.join(pkg, rel), "rb").read()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    record.append(f"{rel},sha256={digest},{len(data)}")
record.append("flash_attn_3-3.0.0.dist-info/RECORD,,")
wheel = os.path.join(out, "flash_attn_3-3.0.0-cp39-abi3-linux_x86_64.whl")
with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:
    for rel in files:
        z.write(os.path.join(pkg, rel), rel)
    z.writestr("flash_attn_3-3.0.0.dist-info/RECORD", "\n".join(record) + "\n")
print(wheel)
EOF
