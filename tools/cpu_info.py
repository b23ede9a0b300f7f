"""Print where the code runs: CPU model, torch's CPU capability, whether bf16 is native, threads.

    python tools/cpu_info.py

`.ci/run` prints this before the tests, so every CI log says on which kind of CPU it ran. Floating
point results of vectorised kernels differ between capabilities (AVX-512 / AVX2 / default) in the last
bits; the parity tests compare in float64 for that reason (tests/golden/README.md).
"""
import os
import platform


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def main() -> None:
    import torch

    flags = cpu_flags()
    # bf16 matmuls are fast only with AVX512-BF16 or AMX; elsewhere they are emulated and much slower.
    native_bf16 = bool(flags & {"avx512_bf16", "amx_bf16"})
    overrides = {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if k in os.environ}
    print(f"cpu: {cpu_model()} ({os.cpu_count()} logical cores)")
    print(f"torch {torch.__version__}: cpu capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} threads, bf16 native: {'yes' if native_bf16 else 'no'}"
          + (f", overridden by {overrides}" if overrides else ""))


if __name__ == "__main__":
    main()
