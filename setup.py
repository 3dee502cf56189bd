"""The native part of the package, two libraries the engine loads with ctypes:
engine/native/roi_align.c (engine/roi_align.py), plain C, and engine/native/torch_kernels.cpp
(engine/torch_kernels.py), C++ for the standard library's sort algorithms. Both optional:
without a compiler the install goes on, the CPU backends keep the graphs' own RoiAlign and
ties between scores fall back to numpy's order. Everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension(
        "engine._roi_align",
        sources=["engine/native/roi_align.c"],
        # -O3 for the vector loops; the hot loop picks AVX-512/AVX2/SSE at run time
        # (target_clones), so a library built on one machine runs on any x86-64. No contraction
        # into fused multiply-adds: where the compiler may use FMA (CFLAGS=-march=native), the
        # sampling coordinates moved by 1e-5 px and the pooled values by 1e-5, past the
        # tolerance against torchvision, whose kernel rounds each product.
        extra_compile_args=["-O3", "-std=gnu11", "-ffp-contract=off"],
        libraries=["m"],
        optional=True,
    ),
    Extension(
        "engine._torch_kernels",
        sources=["engine/native/torch_kernels.cpp"],
        language="c++",
        # no contraction: the products SLEEF rounds separately must stay separate
        extra_compile_args=["-O2", "-std=c++17", "-ffp-contract=off"],
        optional=True,
    ),
])
