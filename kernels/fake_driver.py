"""A fake CUDA driver for Triton: the real dispatch and compiler, with only the launch stubbed.

Triton compiles to PTX and cubin (its bundled ptxas) on any machine; only loading and launching a kernel needs a
GPU. With this driver active, ``kernel[grid](...)`` on CPU tensors runs Triton's whole Python dispatch (argument
binding, specialisation, the compiled-kernel cache) and compiles for ``sm_<capability>``, and the launch itself is
a counted no-op. Two uses:

- ``tests/test_kernels_compile.py``: the launchers and autograd functions compile for a GPU, without one;
- ``rdpo-zoo bench --host``: the host cost of a call, everything but the driver's launch.

``install`` must run before the first ``@triton.jit`` kernel is launched, in a process where ``TRITON_INTERPRET``
is unset (the interpreter replaces the compiler); it cannot be undone, so run it in a process of its own.
"""

from __future__ import annotations

import os

__all__ = ["FakeCudaDriver", "install", "installed", "launch_count"]

#: the device properties Triton asks for (an H100's: 132 SMs, 227 KiB of shared memory per block)
FAKE_PROPERTIES = {"max_shared_mem": 232448, "multiprocessor_count": 132, "max_num_regs": 65536, "warpSize": 32,
                   "sm_clock_rate": 1755000, "mem_clock_rate": 2619000, "mem_bus_width": 5120}

_state = {"driver": None, "launches": 0}


class _FakeUtils:
    def load_binary(self, name, kernel, shared, device):
        # (module, function, n_regs, n_spills, n_max_threads)
        return 1, 1, 32, 0, 1024

    def unload_module(self, module):
        pass

    def get_device_properties(self, device):
        return dict(FAKE_PROPERTIES)


class _FakeLauncher:
    """The launch: counts and returns (the arguments were bound and packed by Triton up to here)."""

    def __init__(self, src, metadata):
        self.name = getattr(metadata, "name", "?")

    def __call__(self, *args):
        _state["launches"] += 1


class FakeCudaDriver:
    """Enough of ``triton.runtime.driver``'s CUDA driver for compiling and dispatching (``capability`` 80 or 90)."""

    def __init__(self, capability: int = 90):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", capability, 32)
        self.utils = _FakeUtils()
        self.launcher_cls = _FakeLauncher

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def set_current_device(self, device):
        pass

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        import torch

        return torch.device("cpu")

    def is_active(self):
        return True

    def get_device_interface(self):  # pragma: no cover - only for Triton's benchmarking helpers
        raise RuntimeError("the fake CUDA driver cannot time kernels")


def install(capability: int = 90) -> FakeCudaDriver:
    """Make the fake driver Triton's active driver (once per process)."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("the fake CUDA driver needs the Triton compiler: unset TRITON_INTERPRET")
    if _state["driver"] is None:
        from triton.runtime.driver import driver

        _state["driver"] = FakeCudaDriver(capability)
        driver.set_active(_state["driver"])
    return _state["driver"]


def installed() -> bool:
    return _state["driver"] is not None


def launch_count() -> int:
    """Kernel launches that reached the (stubbed) driver so far."""
    return _state["launches"]
